"""Neutral chat types shared by every backend, the pool and the router.

Backends translate these to and from their wire formats; nothing above the backends sees a wire
shape. All are frozen: they cross module (and task) boundaries.
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field


class Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Addressed(Frozen):
    """A request naming the model that serves it; the pool re-addresses it to the host's model."""

    model: str

    def for_model(self, model: str) -> Self:
        """This request addressed to ``model``: itself when it already is (no copy per request)."""
        return self if self.model == model else self.model_copy(update={"model": model})


Role = Literal["system", "user", "assistant", "tool"]


class Tier(StrEnum):
    """Model tiers by size, plus the two specialities."""

    MICRO = "micro"  # < 2B parameters
    SMALL = "small"  # < 6B
    FULL = "full"  # < 14B
    LARGE = "large"  # >= 14B
    CODE = "code"
    EMBEDDING = "embedding"


SIZE_TIERS: tuple[Tier, ...] = (Tier.MICRO, Tier.SMALL, Tier.FULL, Tier.LARGE)


def tier_for_size(parameters_b: float) -> Tier:
    """The size tier of a model with ``parameters_b`` billion parameters."""
    if parameters_b < 2:
        return Tier.MICRO
    if parameters_b < 6:
        return Tier.SMALL
    if parameters_b < 14:
        return Tier.FULL
    return Tier.LARGE


_SIZE_RE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([KMBT])?\s*$", re.IGNORECASE)
_SIZE_IN_NAME_RE = re.compile(r"(?<![0-9.])([0-9]+(?:\.[0-9]+)?)([mb])(?![a-z0-9])", re.IGNORECASE)


def parse_parameter_size(text: str | None) -> float | None:
    """Billions of parameters from Ollama's ``parameter_size`` ("8.2B", "137M", "30.5B")."""
    if not text:
        return None
    m = _SIZE_RE.match(text)
    if not m:
        return None
    value = float(m.group(1))
    unit = (m.group(2) or "B").upper()
    return value * {"K": 1e-6, "M": 1e-3, "B": 1.0, "T": 1e3}[unit]


def size_from_model_name(name: str) -> float | None:
    """Billions of parameters guessed from a tag such as ``qwen3:30b`` or ``SmolLM2-135M``."""
    matches = _SIZE_IN_NAME_RE.findall(name.rsplit("/", 1)[-1])
    if not matches:
        return None
    value, unit = matches[-1]
    return float(value) * (1e-3 if unit.lower() == "m" else 1.0)


class ChatMessage(Frozen):
    role: Role
    content: str


class ChatRequest(Addressed):
    """One chat completion, protocol-neutral."""

    messages: tuple[ChatMessage, ...]
    json_schema: dict[str, Any] | None = Field(
        default=None, description="Constrain the output to this JSON schema (structured output)."
    )
    max_tokens: int | None = None
    temperature: float | None = None
    logprobs: bool = False
    think: bool = False
    keep_alive: str | int | None = None
    stop: tuple[str, ...] = ()


class Usage(Frozen):
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens + self.cache_read_tokens + self.cache_write_tokens


class TokenLogprob(Frozen):
    """One generated token and its log-probability.

    ``top`` holds the log-probabilities of the host's top-k candidates at that position, as the host
    lists them (they normally include the chosen token); empty when the host gave none. Confidence
    reads the entropy of that short list (:func:`caelum_mcp.engine.calibration.token_signals`).
    """

    token: str
    logprob: float
    top: tuple[float, ...] = ()


class ChatResponse(Frozen):
    model: str
    content: str
    thinking: str | None = None
    finish_reason: str | None = None
    usage: Usage = Usage()
    logprobs: tuple[TokenLogprob, ...] | None = None
    load_ms: float | None = None  # time the host spent loading the model, where it says (Ollama)


class StreamChunk(Frozen):
    """A piece of a streamed answer; the last one has ``done`` and the full ``response``."""

    content: str = ""
    thinking: str = ""
    done: bool = False
    response: ChatResponse | None = None


class EmbedRequest(Addressed):
    inputs: tuple[str, ...]
    dimensions: int | None = None


class EmbedResponse(Frozen):
    model: str
    embeddings: tuple[tuple[float, ...], ...]
    usage: Usage = Usage()


class ModelInfo(Frozen):
    """A model a host serves, as discovered from the host (or set in config)."""

    name: str
    parameters_b: float | None = None
    family: str | None = None
    families: tuple[str, ...] = ()
    capabilities: tuple[str, ...] = ()
    context_length: int | None = None
    quantization: str | None = None
    size_bytes: int | None = None
    loaded: bool = False


class HealthReport(Frozen):
    ok: bool
    version: str | None = None
    latency_ms: float | None = None
    detail: str = ""
