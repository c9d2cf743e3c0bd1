"""Prices and cost: the one module that turns token counts into dollars.

- :class:`ModelPrice` is a model's price in USD per million tokens (input, output, cache reads,
  5-minute cache writes).
- :data:`DEFAULT_PRICES` is Anthropic's public price list as of 2026-11; ``[prices."<model>"]`` in
  the config overrides or extends it.
- :func:`cost_usd` is what a call's usage costs; :func:`estimate_cost_usd` is the guess made
  *before* a call (for the daily budget), from the prompt's size and the output allowance.

The ledger stores what these return; the router asks them; nothing else computes money.
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal

from pydantic import Field

from caelum_mcp.core.types import Frozen, Usage

# About four characters a token for English and JSON; used only for estimates before a call.
CHARS_PER_TOKEN = 4
# A model writes on average about a quarter of its output allowance (estimates only).
EXPECTED_OUTPUT_SHARE = 0.25


class ModelPrice(Frozen):
    """Price of one model in USD per million tokens."""

    input: float = Field(ge=0, allow_inf_nan=False)
    output: float = Field(ge=0, allow_inf_nan=False)
    cache_read: float = Field(default=0.0, ge=0, allow_inf_nan=False)
    cache_write: float = Field(default=0.0, ge=0, allow_inf_nan=False)


# Haiku 5.5 is the rate for prompts up to 100k tokens.
DEFAULT_PRICES: dict[str, ModelPrice] = {
    "claude-sonnet-5-5": ModelPrice(input=2.0, output=10.0, cache_read=0.10, cache_write=2.50),
    "claude-sonnet-5": ModelPrice(input=2.0, output=10.0, cache_read=0.20, cache_write=2.50),
    "claude-sonnet-4-6": ModelPrice(input=3.0, output=15.0, cache_read=0.30, cache_write=3.75),
    "claude-sonnet-4-5": ModelPrice(input=3.0, output=15.0, cache_read=0.30, cache_write=3.75),
    "claude-sonnet-4": ModelPrice(input=3.0, output=15.0, cache_read=0.30, cache_write=3.75),
    "claude-opus-5-5": ModelPrice(input=4.0, output=20.0, cache_read=0.20, cache_write=5.0),
    "claude-opus-5": ModelPrice(input=5.0, output=25.0, cache_read=0.50, cache_write=6.25),
    "claude-opus-4-8": ModelPrice(input=5.0, output=25.0, cache_read=0.50, cache_write=6.25),
    "claude-opus-4-7": ModelPrice(input=5.0, output=25.0, cache_read=0.50, cache_write=6.25),
    "claude-opus-4-6": ModelPrice(input=5.0, output=25.0, cache_read=0.50, cache_write=6.25),
    "claude-opus-4-5": ModelPrice(input=5.0, output=25.0, cache_read=0.50, cache_write=6.25),
    "claude-opus-4-1": ModelPrice(input=15.0, output=75.0, cache_read=1.50, cache_write=18.75),
    "claude-haiku-5-5": ModelPrice(input=0.10, output=0.50, cache_read=0.01, cache_write=0.125),
    "claude-haiku-4-5": ModelPrice(input=1.0, output=5.0, cache_read=0.10, cache_write=1.25),
}


def _dec(value: float) -> Decimal:
    # Through repr so that a price written as 0.3 is priced as 0.3, not as its binary neighbour.
    return Decimal(repr(value))


def cost_usd(usage: Usage, price: ModelPrice) -> float:
    """What ``usage`` costs at ``price``, in USD (the float nearest the exact decimal result)."""
    total = (
        usage.input_tokens * _dec(price.input)
        + usage.output_tokens * _dec(price.output)
        + usage.cache_read_tokens * _dec(price.cache_read)
        + usage.cache_write_tokens * _dec(price.cache_write)
    )
    return float(total / 1_000_000)


def estimate_cost_usd(prompt_chars: int, max_output_tokens: int, price: ModelPrice) -> float:
    """The expected cost of a call before it is made: the prompt at ~4 characters a token, and a
    quarter of the output allowance."""
    usage = Usage(
        input_tokens=prompt_chars // CHARS_PER_TOKEN,
        output_tokens=int(max_output_tokens * EXPECTED_OUTPUT_SHARE),
    )
    return cost_usd(usage, price)


def price_for(model: str, prices: Mapping[str, ModelPrice]) -> ModelPrice | None:
    """The price of ``model``: an exact key, else the longest key that prefixes it.

    Anthropic returns dated ids (``claude-sonnet-4-5-20250929``) while configs name the alias
    (``claude-sonnet-4-5``); the prefix match lets one table entry price both.
    """
    if model in prices:
        return prices[model]
    best = max((k for k in prices if k and model.startswith(k)), key=len, default=None)
    return prices[best] if best is not None else None
