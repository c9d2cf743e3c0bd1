"""What every model request passes on its way out: the secrets redaction, and a Claude call's cost bound."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import anyio

from caelum_mcp.core.pricing import ModelPrice, cost_usd
from caelum_mcp.core.redaction import redact_secrets
from caelum_mcp.core.types import ChatMessage, ChatRequest, Usage

# Prompts longer than this are redacted in a worker thread (~0.2 s a MB), off the event loop.
REDACT_INLINE_CHARS = 64_000
# The tokens that frame each message (role and turn markers) on top of its text's own.
MESSAGE_OVERHEAD_TOKENS = 8


async def redacted_request(request: ChatRequest) -> ChatRequest:
    """``request`` with secrets redacted from every message (see :mod:`caelum_mcp.core.redaction`)."""
    messages = await redacted_texts([m.content for m in request.messages])
    if all(new == m.content for new, m in zip(messages, request.messages, strict=True)):
        return request
    redacted = tuple(
        m if new == m.content else m.model_copy(update={"content": new})
        for new, m in zip(messages, request.messages, strict=True)
    )
    return request.model_copy(update={"messages": redacted})


async def redacted_texts(texts: Sequence[str]) -> tuple[str, ...]:
    """``texts`` through the secrets redaction: a long batch in a worker thread."""
    if sum(len(t) for t in texts) <= REDACT_INLINE_CHARS:
        return tuple(redact_secrets(t) for t in texts)
    return await anyio.to_thread.run_sync(lambda: tuple(redact_secrets(t) for t in texts))


def cost_bound(
    messages: Sequence[ChatMessage], schema: dict[str, Any] | None, max_tokens: int, price: ModelPrice
) -> float:
    """The most a Claude call may cost: its prompt at one token per UTF-8 byte, and its whole output
    allowance (what a budget reservation must hold so that concurrent calls cannot overrun).

    A token is never shorter than a byte, so the bound holds for any text: English runs ~4 bytes a
    token, but CJK about one token per character (3 bytes), and a characters-per-token guess let a
    CJK prompt spend 2.4 times the budget. The reservation is settled on the real usage."""
    size = sum(len(m.content.encode("utf-8", "surrogatepass")) + MESSAGE_OVERHEAD_TOKENS for m in messages)
    size += len(json.dumps(schema or {}, ensure_ascii=False).encode("utf-8", "surrogatepass"))
    return cost_usd(Usage(input_tokens=size, output_tokens=max_tokens), price)
