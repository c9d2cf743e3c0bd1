"""Confidence of an LLM answer, in [0, 1], from parts that are each reported.

The parts:

- ``validity`` V: 1.0 when the output parsed and matched the schema at once, 0.9 when it needed the
  one repair attempt, 0.0 when it still did not (an answer we cannot parse is worth nothing).
- ``self_reported``: the model's own ``confidence`` field (0..1). The weakest signal.
- ``token_probability``: the mean probability of the generated tokens, exp(logprob) averaged,
  when the backend returns logprobs (Ollama, llama.cpp, vLLM; not Claude).
- ``grounding``: the caller's check of the answer against reality (cited files, lines and rule ids
  exist; a patch applies; SQL executes), 0..1.

The score::

    S = (0.15·self_reported + 0.35·token_probability + 0.50·grounding) / (sum of the weights present)
    C = V · S

with three rules: no signal at all gives S = 0.5 (unknown); a self-reported number alone is capped at
0.6, so it can never clear the default threshold (0.75) by itself; and a grounding score below 0.5
caps C at the grounding score, because an answer that cites things that do not exist is wrong
however sure the model sounds.

That formula is the *raw* score (``ConfidenceParts.raw_score``). The score a tool reports is the
calibrated probability that the answer is right, mapped from every raw signal of the answer
(:class:`Signals`) by :mod:`caelum_mcp.engine.calibration`; ``[router] calibration = false`` reports the raw
score instead. :class:`Signals` lives here, below the calibration module, so that both can use it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from pydantic import Field

from caelum_mcp.core.types import Frozen, TokenLogprob

WEIGHTS = {"self_reported": 0.15, "token_probability": 0.35, "grounding": 0.50}
SELF_ONLY_CAP = 0.6
GROUNDING_CAP_BELOW = 0.5
REPAIRED_VALIDITY = 0.9


class Signals(Frozen):
    """Every raw signal of one answer; all optional except ``valid`` and ``repaired``.

    ``token_*`` and ``entropy`` come from :func:`caelum_mcp.engine.calibration.token_signals`; ``grounding``
    is the task's own check (0..1); ``agreement`` is the share of ``samples`` temperature samples
    whose answer equals the first (None: not sampled).
    """

    valid: bool
    repaired: bool = False
    self_reported: float | None = Field(default=None, ge=0, le=1)
    token_mean: float | None = Field(default=None, ge=0, le=1)
    token_min: float | None = Field(default=None, ge=0, le=1)
    token_tail: float | None = Field(default=None, ge=0, le=1)
    entropy: float | None = Field(default=None, ge=0, le=1)
    grounding: float | None = Field(default=None, ge=0, le=1)
    agreement: float | None = Field(default=None, ge=0, le=1)
    samples: int = Field(default=0, ge=0)
    output_tokens: int = Field(default=0, ge=0)


class ConfidenceParts(Frozen):
    """Every input of the score, and the score.

    ``score`` is what the router compares with the threshold: the calibrated P(correct) where
    calibration is on, else ``raw_score``. ``raw_score`` is the fixed-weight formula of this module
    (None only for parts built before it was kept apart); ``calibration`` names the table entry or
    prior that mapped the signals (None: not calibrated).
    """

    score: float = Field(ge=0, le=1)
    validity: float = Field(ge=0, le=1)
    repaired: bool = False
    self_reported: float | None = None
    token_probability: float | None = None
    grounding: float | None = None
    grounding_problems: tuple[str, ...] = ()
    raw_score: float | None = Field(default=None, ge=0, le=1)
    signals: Signals | None = None
    calibration: str | None = None


def mean_token_probability(logprobs: Sequence[TokenLogprob] | None) -> float | None:
    """exp(logprob) averaged over the generated tokens; None when there are none."""
    if not logprobs:
        return None
    probs = [math.exp(min(0.0, lp.logprob)) for lp in logprobs if math.isfinite(lp.logprob)]
    return sum(probs) / len(probs) if probs else None


def _clamp(value: float | None) -> float | None:
    if value is None or not math.isfinite(value):
        return None
    return min(1.0, max(0.0, float(value)))


def score(
    *,
    valid: bool,
    repaired: bool = False,
    self_reported: float | None = None,
    token_probability: float | None = None,
    grounding: float | None = None,
    grounding_problems: Sequence[str] = (),
) -> ConfidenceParts:
    """Combine the parts by the formula in the module docstring."""
    self_reported = _clamp(self_reported)
    token_probability = _clamp(token_probability)
    grounding = _clamp(grounding)
    validity = 0.0 if not valid else (REPAIRED_VALIDITY if repaired else 1.0)
    present = {
        name: value
        for name, value in (
            ("self_reported", self_reported),
            ("token_probability", token_probability),
            ("grounding", grounding),
        )
        if value is not None
    }
    if not present:
        signal = 0.5
    elif set(present) == {"self_reported"}:
        signal = min(present["self_reported"], SELF_ONLY_CAP)
    else:
        total = sum(WEIGHTS[n] for n in present)
        signal = sum(WEIGHTS[n] * v for n, v in present.items()) / total
    result = validity * signal
    if grounding is not None and grounding < GROUNDING_CAP_BELOW:
        result = min(result, grounding)
    return ConfidenceParts(
        score=round(result, 4),
        raw_score=round(result, 4),
        validity=validity,
        repaired=repaired,
        self_reported=self_reported,
        token_probability=None if token_probability is None else round(token_probability, 4),
        grounding=grounding,
        grounding_problems=tuple(grounding_problems),
    )


def raw_score(signals: Signals) -> float:
    """The fixed-weight formula of this module over ``signals`` (the mean token probability is the
    token part; the other token signals and agreement are the calibrator's alone)."""
    return score(
        valid=signals.valid,
        repaired=signals.repaired,
        self_reported=signals.self_reported,
        token_probability=signals.token_mean,
        grounding=signals.grounding,
    ).score


def clamp_unit(value: float | None) -> float | None:
    """``value`` clamped into [0, 1]; None for None, NaN or infinity."""
    return _clamp(value)
