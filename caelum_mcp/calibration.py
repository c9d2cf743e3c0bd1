"""Calibrated confidence: the raw signals of an answer mapped to P(correct) per (model, task kind).

The router's raw score (:mod:`caelum_mcp.confidence`) ranks answers but its level means nothing: with
a real 1.5B model every answer cleared 0.75 while a third were wrong (issue 21). This module turns
every raw signal of an answer (:class:`Signals`) into the probability that it is right, fitted from
labelled outcomes, so the threshold means "this share of what clears is right".

Step one, here: the token signals a host's logprobs give (:func:`token_signals`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from caelum_mcp.confidence import Signals
from caelum_mcp.types import TokenLogprob

__all__ = ["TAIL_SHARE", "Signals", "token_signals"]

# The tail is this share of the generated tokens with the lowest probability (at least one): a
# wrong answer often hangs on a few unsure tokens that the mean over a long reply hides.
TAIL_SHARE = 0.10


def token_signals(logprobs: Sequence[TokenLogprob] | None) -> dict[str, float | None]:
    """``token_mean``, ``token_min``, ``token_tail`` and ``entropy`` of the generated tokens.

    Probabilities are exp(logprob) (a logprob above 0 counts as 0; non-finite ones are skipped).
    ``token_tail`` is the mean probability of the lowest ``TAIL_SHARE`` of tokens (rounded up, at
    least one). ``entropy`` is the mean over tokens with at least two top-k candidates of the
    entropy of those candidates' probabilities (renormalised over the k listed) divided by log(k):
    0 when one candidate holds all the mass, 1 when the k are equally likely. Every value is None
    when there are no usable tokens; ``entropy`` is None when the host gave no top-k lists.
    """
    probs = sorted(math.exp(min(0.0, lp.logprob)) for lp in logprobs or () if math.isfinite(lp.logprob))
    if not probs:
        return {"token_mean": None, "token_min": None, "token_tail": None, "entropy": None}
    tail = probs[: max(1, math.ceil(TAIL_SHARE * len(probs)))]
    entropies = [e for e in (_top_entropy(lp.top) for lp in logprobs or ()) if e is not None]
    return {
        "token_mean": sum(probs) / len(probs),
        "token_min": probs[0],
        "token_tail": sum(tail) / len(tail),
        "entropy": sum(entropies) / len(entropies) if entropies else None,
    }


def _top_entropy(top: Sequence[float]) -> float | None:
    """Normalised entropy of one position's top-k candidates; None with fewer than two."""
    logs = [min(0.0, lp) for lp in top if math.isfinite(lp)]
    if len(logs) < 2:
        return None
    peak = max(logs)
    weights = [math.exp(lp - peak) for lp in logs]  # shifted so a very unlikely list cannot underflow
    total = sum(weights)
    entropy = -sum((w / total) * math.log(w / total) for w in weights if w > 0)
    return min(1.0, max(0.0, entropy / math.log(len(logs))))
