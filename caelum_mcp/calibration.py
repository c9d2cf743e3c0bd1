"""Calibrated confidence: the raw signals of an answer mapped to P(correct) per (model, task kind).

The router's raw score (:mod:`caelum_mcp.confidence`) ranks answers but its level means nothing: with
a real 1.5B model every answer cleared 0.75 while a third were wrong (issue 21). This module turns
every raw signal of an answer (:class:`Signals`) into the probability that it is right, fitted from
labelled outcomes, so the threshold means "this share of what clears is right".

- :func:`token_signals`: the token signals a host's logprobs give (mean, minimum, tail, top-k entropy).
- :func:`feature_vector` / :func:`fit`: an L2-regularised logistic regression over the signals
  (Newton's method in numpy, deterministic, Platt's smoothed targets so a small set cannot claim
  certainty), or isotonic regression over the raw score (pool-adjacent-violators, smoothed blocks).
- :func:`metrics`: AUROC, ECE (10 equal-width bins), Brier score, and the share that clears a
  threshold with its accuracy.
- :class:`CalibrationTable`: the entries per (model, kind) in JSON, looked up with conservative
  fallbacks (below).

The table file (``caelum_mcp/calibration_default.json`` ships with the package; the user's
``<data dir>/calibration.json``, written by ``caelum-mcp calibrate``, overrides it entry by entry)::

    {"version": 1,
     "prior": {"margin": 0.05, "verified_grounding": 0.99, "note": "..."},
     "entries": [{"model": "qwen2.5-coder:1.5b", "kind": "extraction", "base": {...}, ...}, ...]}

An entry's ``model`` may be ``"*"`` (that kind pooled over every measured model: the *family*) and
its ``kind`` may be ``"*"`` too (everything pooled).

Lookup (:meth:`CalibrationTable.lookup`), for an answer of ``model`` on a task of ``kind``:

1. the entry measured for (model, kind) itself;
2. else the family entry ("*", kind), then the pooled one ("*", "*"), used as it is but capped at
   what that entry measured: its accuracy among answers that cleared the threshold (its overall
   accuracy when none cleared). A pair with no measurements of its own therefore never reads
   higher than the entry it falls back to, nor higher than that entry's measured precision;
3. else, with nothing measured at all, the prior: the raw score, capped at ``threshold - margin``
   (so below the threshold) unless the task's own check verified the answer (grounding ≥
   ``verified_grounding``: the SQL ran, the quoted spans exist, the code passed its test). Why: the
   raw score was measured to pass wrong answers about half the time (issue 21), so an unmeasured
   answer that only *sounds* sure must not be served as if it were right; one the task verified
   against reality keeps today's score. Below-threshold answers escalate (to a larger local model,
   then Claude) or come back marked ``local_low_confidence``; they are never lost.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import Field, ValidationError, model_validator

from caelum_mcp.confidence import Signals, raw_score
from caelum_mcp.lazy_imports import lazy_module
from caelum_mcp.types import Frozen, TokenLogprob

if TYPE_CHECKING:
    import numpy as np
else:
    np = lazy_module("numpy")  # fitting and isotonic lookups only; the server starts without it

__all__ = [
    "DEFAULT_PATH",
    "FEATURES",
    "FEATURES_WITH_AGREEMENT",
    "MIN_KIND_ROWS",
    "MIN_ROWS",
    "TAIL_SHARE",
    "CalibrationEntry",
    "CalibrationError",
    "CalibrationTable",
    "Calibrator",
    "Prior",
    "Signals",
    "feature_vector",
    "fit",
    "metrics",
    "shift_to_kind",
    "token_signals",
]

log = logging.getLogger(__name__)

# The tail is this share of the generated tokens with the lowest probability (at least one): a
# wrong answer often hangs on a few unsure tokens that the mean over a long reply hides.
TAIL_SHARE = 0.10
# Fewer labelled answers than this cannot tell a calibrator's slope from noise.
MIN_ROWS = 20
# A kind's own level (one number: :func:`shift_to_kind`) over a pooled fit needs this many.
MIN_KIND_ROWS = 8
# The shipped table; the user's own <data dir>/calibration.json overrides it entry by entry.
DEFAULT_PATH = Path(__file__).resolve().parent / "calibration_default.json"
USER_FILE = "calibration.json"
FILE_VERSION = 1
ANY = "*"  # an entry pooled over every model (or every kind)

# The feature order of feature_vector (a stored logistic calibrator names them, so a file written
# for another order is refused instead of read wrong).
# ``valid`` is not among them: an answer that did not parse is worth 0 whatever else it shows, so
# calibrators are fitted on (and map) valid answers only.
FEATURES: tuple[str, ...] = (
    "repaired",
    "self_reported",
    "self_reported_missing",
    "token_mean_nines",
    "token_min",
    "token_tail",
    "tokens_missing",
    "entropy",
    "entropy_missing",
    "grounding",
    "grounding_missing",
    "output_tokens_log",
)
FEATURES_WITH_AGREEMENT: tuple[str, ...] = (*FEATURES, "agreement", "agreement_missing")
# "Nines" of a probability near 1: -log10(1 - p), over this many nines (0.9 -> 0.25, 0.99 -> 0.5,
# 0.999 -> 0.75): a model's mean token probability lives between 0.9 and 0.999, where p itself
# barely moves.
_NINES = 4.0
_LENGTH_SCALE = math.log1p(1024)  # output length: log(1 + tokens), 1.0 at 1024 tokens


class CalibrationError(ValueError):
    """Calibration data that cannot be used; the message says what to do."""


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


# features ----------------------------------------------------------------------------------------


def _nines(p: float) -> float:
    return min(1.0, -math.log10(max(1.0 - p, 10.0**-_NINES)) / _NINES)


def feature_vector(s: Signals, *, with_agreement: bool) -> list[float]:
    """The signals as numbers in the order of :data:`FEATURES` (or :data:`FEATURES_WITH_AGREEMENT`).

    Each value is in [0, 1]; a missing signal reads 0 and sets its ``*_missing`` indicator, so a
    host without logprobs or a task without a check is not read as a bad answer.
    """
    tokens_missing = s.token_mean is None
    vector = [
        float(s.repaired),
        s.self_reported or 0.0,
        float(s.self_reported is None),
        0.0 if s.token_mean is None else _nines(s.token_mean),
        s.token_min or 0.0,
        s.token_tail or 0.0,
        float(tokens_missing),
        s.entropy or 0.0,
        float(s.entropy is None),
        s.grounding or 0.0,
        float(s.grounding is None),
        min(1.0, math.log1p(s.output_tokens) / _LENGTH_SCALE),
    ]
    if with_agreement:
        sampled = s.agreement is not None and s.samples > 0
        vector += [(s.agreement or 0.0) if sampled else 0.0, float(not sampled)]
    return vector


# calibrators -------------------------------------------------------------------------------------


class Calibrator(Frozen):
    """Maps an answer's signals to P(correct).

    ``logistic``: sigmoid(weights · feature_vector + bias), its features named in ``features``.
    ``isotonic``: the raw score (:func:`caelum_mcp.confidence.raw_score`) through the monotone
    points ``xs`` → ``ys``, linearly between them. ``prior``: the raw score itself, capped at
    ``cap`` unless grounding ≥ ``verified_grounding``. For the other kinds ``cap``, when set, bounds
    the probability always (a fallback entry's cap). An invalid answer is worth 0 under every kind.
    """

    kind: Literal["logistic", "isotonic", "prior"]
    features: tuple[str, ...] = ()
    weights: tuple[float, ...] = ()
    bias: float = 0.0
    xs: tuple[float, ...] = ()
    ys: tuple[float, ...] = ()
    cap: float | None = Field(default=None, ge=0, le=1)
    verified_grounding: float = Field(default=0.99, ge=0, le=1)

    @model_validator(mode="after")
    def _consistent(self) -> Calibrator:
        if self.kind == "logistic":
            if self.features not in (FEATURES, FEATURES_WITH_AGREEMENT):
                raise ValueError(
                    "its features are not this version's (refit it: `caelum-mcp calibrate`); "
                    f"expected {list(FEATURES)} (+ agreement)"
                )
            if len(self.weights) != len(self.features):
                raise ValueError(f"{len(self.weights)} weights for {len(self.features)} features")
            if not all(math.isfinite(w) for w in (*self.weights, self.bias)):
                raise ValueError("a weight is not a finite number")
        elif self.kind == "isotonic":
            if not self.xs or len(self.xs) != len(self.ys):
                raise ValueError("isotonic needs as many ys as xs, at least one")
            if any(b < a for a, b in zip(self.xs, self.xs[1:], strict=False)) or any(
                b < a for a, b in zip(self.ys, self.ys[1:], strict=False)
            ):
                raise ValueError("isotonic xs and ys must both be non-decreasing")
            if not all(0.0 <= v <= 1.0 for v in (*self.xs, self.ys[0], self.ys[-1])):
                raise ValueError("isotonic xs and ys must lie in [0, 1]")
        elif self.cap is None:
            raise ValueError("a prior needs its cap")
        return self

    @property
    def uses_agreement(self) -> bool:
        return self.kind == "logistic" and self.features == FEATURES_WITH_AGREEMENT

    def probability(self, s: Signals) -> float:
        """P(correct) of the answer with signals ``s``, in [0, 1]."""
        if not s.valid:
            return 0.0
        if self.kind == "prior":
            raw = raw_score(s)
            verified = s.grounding is not None and s.grounding >= self.verified_grounding
            return raw if verified or self.cap is None else min(raw, self.cap)
        if self.kind == "logistic":
            z = self.bias + sum(
                w * x for w, x in zip(self.weights, feature_vector(s, with_agreement=self.uses_agreement), strict=True)
            )
            p = _sigmoid(z)
        else:
            p = float(np.interp(raw_score(s), self.xs, self.ys))
        p = min(1.0, max(0.0, p))
        return p if self.cap is None else min(p, self.cap)

    def capped(self, cap: float) -> Calibrator:
        """This calibrator, never reading above ``cap``."""
        return self.model_copy(update={"cap": cap if self.cap is None else min(self.cap, cap)})


def _sigmoid(z: float) -> float:
    if z >= 0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)
    return e / (1.0 + e)


def fit(
    signals: Sequence[Signals],
    labels: Sequence[bool],
    *,
    with_agreement: bool,
    method: Literal["logistic", "isotonic"] = "logistic",
    l2: float = 1.0,
) -> Calibrator:
    """A calibrator fitted on labelled answers (``labels[i]``: whether answer ``i`` was right).

    Only valid answers are fitted (an invalid one is worth 0 by rule); at least :data:`MIN_ROWS`
    of them are needed, else :class:`CalibrationError`. ``logistic`` minimises the log loss against
    Platt's smoothed targets ((positives + 1) / (positives + 2) and 1 / (negatives + 2)) plus
    ``l2``/2 · |weights|² (the bias is not penalised), by Newton's method from zero: the same data
    always gives the same calibrator. ``isotonic`` maps the raw score alone, so it cannot use
    agreement. The result is deterministic.
    """
    if len(signals) != len(labels):
        raise CalibrationError(f"{len(signals)} answers but {len(labels)} labels")
    rows = [(s, bool(y)) for s, y in zip(signals, labels, strict=True) if s.valid]
    if len(rows) < MIN_ROWS:
        raise CalibrationError(
            f"only {len(rows)} labelled valid answers; a calibrator needs at least {MIN_ROWS} (record more tasks)"
        )
    ys = np.array([1.0 if y else 0.0 for _, y in rows])
    if method == "isotonic":
        if with_agreement:
            raise CalibrationError("isotonic calibration maps the raw score alone; use logistic with agreement")
        return _fit_isotonic(np.array([raw_score(s) for s, _ in rows]), ys)
    if l2 < 0 or not math.isfinite(l2):
        raise CalibrationError(f"l2 must be a finite number >= 0, not {l2}")
    x = np.array([feature_vector(s, with_agreement=with_agreement) for s, _ in rows])
    weights, bias = _fit_logistic(x, _platt_targets(ys), l2)
    return Calibrator(
        kind="logistic",
        features=FEATURES_WITH_AGREEMENT if with_agreement else FEATURES,
        weights=tuple(round(float(w), 8) for w in weights),
        bias=round(float(bias), 8),
    )


def shift_to_kind(
    pooled: Calibrator, signals: Sequence[Signals], labels: Sequence[bool], *, l2: float = 1.0
) -> Calibrator:
    """``pooled`` (a logistic calibrator fitted on several task kinds) with its bias refitted on one
    kind's labelled answers: the weights (how the signals rank answers) stay those of the pooled
    fit, one number moves the level to that kind's accuracy.

    For a kind with too few rows of its own for a whole fit (:data:`MIN_ROWS`): kinds differ most
    in how often a model is right at all (a 1.5B model answers intent classification far better
    than arithmetic), which one pooled level cannot say, while one parameter is learnt from a few
    rows. The shift is penalised by ``l2``/2 · shift² (toward the pooled level) against Platt's
    smoothed targets, by Newton's method from zero; at least :data:`MIN_KIND_ROWS` valid answers.
    """
    if pooled.kind != "logistic":
        raise CalibrationError("only a logistic calibrator can be shifted to a kind")
    if len(signals) != len(labels):
        raise CalibrationError(f"{len(signals)} answers but {len(labels)} labels")
    rows = [(s, bool(y)) for s, y in zip(signals, labels, strict=True) if s.valid]
    if len(rows) < MIN_KIND_ROWS:
        raise CalibrationError(
            f"only {len(rows)} labelled valid answers of this kind; a shift needs at least {MIN_KIND_ROWS}"
        )
    ys = np.array([1.0 if y else 0.0 for _, y in rows])
    targets = _platt_targets(ys)
    weights = np.array(pooled.weights)
    z0 = np.array(
        [pooled.bias + float(weights @ feature_vector(s, with_agreement=pooled.uses_agreement)) for s, _ in rows]
    )
    shift = 0.0
    for _ in range(100):
        p = 1.0 / (1.0 + np.exp(-np.clip(z0 + shift, -40.0, 40.0)))
        gradient = float((p - targets).sum()) + l2 * shift
        hessian = float((p * (1 - p)).sum()) + l2
        step = gradient / hessian
        shift -= step
        if abs(step) < 1e-10:
            break
    return pooled.model_copy(update={"bias": round(pooled.bias + shift, 8)})


def _platt_targets(ys: np.ndarray) -> np.ndarray:
    positives = float(ys.sum())
    negatives = float(len(ys) - positives)
    return np.where(ys > 0.5, (positives + 1) / (positives + 2), 1 / (negatives + 2))


def _fit_logistic(x: np.ndarray, targets: np.ndarray, l2: float) -> tuple[np.ndarray, float]:
    n, d = x.shape
    design = np.hstack([x, np.ones((n, 1))])
    penalty = np.full(d + 1, l2)
    penalty[-1] = 0.0
    theta = np.zeros(d + 1)
    for _ in range(100):
        z = np.clip(design @ theta, -40.0, 40.0)
        p = 1.0 / (1.0 + np.exp(-z))
        gradient = design.T @ (p - targets) + penalty * theta
        hessian = (design * (p * (1 - p))[:, None]).T @ design + np.diag(penalty) + 1e-9 * np.eye(d + 1)
        step = np.linalg.solve(hessian, gradient)
        theta = theta - step
        if float(np.max(np.abs(step))) < 1e-10:
            break
    return theta[:-1], float(theta[-1])


def _fit_isotonic(raw: np.ndarray, ys: np.ndarray) -> Calibrator:
    order = np.argsort(raw, kind="stable")
    blocks: list[tuple[float, float, float, float]] = []  # x_low, x_high, sum of labels, count
    for x, y in zip(raw[order].tolist(), ys[order].tolist(), strict=True):
        if blocks and blocks[-1][1] == x:  # one block per distinct raw score
            low, high, total, count = blocks[-1]
            blocks[-1] = (low, high, total + y, count + 1)
        else:
            blocks.append((x, x, y, 1.0))
    merged = _pool_adjacent_violators(blocks, lambda total, count: total / count)
    # Each pooled block smoothed like Platt's targets (three right answers do not claim certainty),
    # then pooled again where the smoothing broke the order.
    merged = _pool_adjacent_violators(merged, lambda total, count: (total + 1) / (count + 2))
    xs: list[float] = []
    out: list[float] = []
    for low, high, total, count in merged:
        value = (total + 1) / (count + 2)
        xs += [low, high] if high > low else [low]
        out += [value, value] if high > low else [value]
    return Calibrator(kind="isotonic", xs=tuple(round(v, 6) for v in xs), ys=tuple(round(v, 6) for v in out))


def _pool_adjacent_violators(
    blocks: Sequence[tuple[float, float, float, float]], value: Callable[[float, float], float]
) -> list[tuple[float, float, float, float]]:
    """Adjacent (x_low, x_high, sum, count) blocks merged until ``value(sum, count)`` never falls."""
    stack: list[tuple[float, float, float, float]] = []
    for block in blocks:
        low, high, total, count = block
        while stack and value(stack[-1][2], stack[-1][3]) >= value(total, count):
            p_low, _, p_total, p_count = stack.pop()
            low, total, count = p_low, total + p_total, count + p_count
        stack.append((low, high, total, count))
    return stack


# metrics -----------------------------------------------------------------------------------------


def metrics(probs: Sequence[float], labels: Sequence[bool], threshold: float) -> dict[str, float | int | None]:
    """How well ``probs`` predict ``labels``.

    ``auroc``: the chance a right answer scores above a wrong one (ties count half; None with only
    one class). ``ece``: over 10 equal-width bins of the probability ([0, 0.1), …, [0.9, 1.0]), the
    answer-weighted mean |mean probability - accuracy|. ``brier``: mean (p - label)².
    ``clear_share``: the share with p ≥ ``threshold``; ``clear_accuracy``: their accuracy (None when
    none clears). ``accuracy`` and ``n`` over all.
    """
    if len(probs) != len(labels):
        raise CalibrationError(f"{len(probs)} probabilities but {len(labels)} labels")
    n = len(probs)
    if n == 0:
        return {
            "n": 0,
            "accuracy": None,
            "auroc": None,
            "ece": None,
            "brier": None,
            "clear_share": None,
            "clear_accuracy": None,
        }
    p = np.clip(np.array(probs, dtype=float), 0.0, 1.0)
    y = np.array([1.0 if v else 0.0 for v in labels])
    bins = np.minimum((p * 10).astype(int), 9)
    ece = 0.0
    for b in range(10):
        inside = bins == b
        if inside.any():
            ece += float(inside.sum()) / n * abs(float(p[inside].mean()) - float(y[inside].mean()))
    cleared = p >= threshold
    return {
        "n": n,
        "accuracy": float(y.mean()),
        "auroc": _auroc(p, y),
        "ece": ece,
        "brier": float(((p - y) ** 2).mean()),
        "clear_share": float(cleared.mean()),
        "clear_accuracy": float(y[cleared].mean()) if cleared.any() else None,
    }


def _auroc(p: np.ndarray, y: np.ndarray) -> float | None:
    positives = int(y.sum())
    negatives = len(y) - positives
    if positives == 0 or negatives == 0:
        return None
    order = np.argsort(p, kind="stable")
    ranks = np.empty(len(p))
    sorted_p = p[order]
    i = 0
    while i < len(p):  # average ranks over ties
        j = i
        while j + 1 < len(p) and sorted_p[j + 1] == sorted_p[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return float((ranks[y > 0.5].sum() - positives * (positives + 1) / 2) / (positives * negatives))


# the table ---------------------------------------------------------------------------------------


class CalibrationEntry(Frozen):
    """The calibration of one (model, kind), ``"*"`` for pooled; with what it measured.

    ``base`` maps an answer's own signals; ``with_agreement`` (optional) maps them plus sample
    agreement, which the router samples only while the base probability lies in ``band`` (where
    the answer is neither clearly right nor clearly wrong and agreement measurably helps).
    ``n``, ``accuracy``, ``clear_accuracy`` (accuracy of what cleared ``threshold``), ``ece`` and
    ``auroc`` are the held-out measurements; ``source`` says what it was fitted from.
    """

    model: str = Field(min_length=1)
    kind: str = Field(min_length=1)
    base: Calibrator
    with_agreement: Calibrator | None = None
    band: tuple[float, float] | None = None
    n: int = Field(default=0, ge=0)
    accuracy: float | None = Field(default=None, ge=0, le=1)
    clear_accuracy: float | None = Field(default=None, ge=0, le=1)
    ece: float | None = Field(default=None, ge=0, le=1)
    auroc: float | None = Field(default=None, ge=0, le=1)
    threshold: float = Field(default=0.75, ge=0, le=1)
    fitted_at: str = ""
    source: str = ""

    @model_validator(mode="after")
    def _consistent(self) -> CalibrationEntry:
        if self.base.uses_agreement:
            raise ValueError("base must not use agreement (it decides whether to sample)")
        if self.with_agreement is not None and not self.with_agreement.uses_agreement:
            raise ValueError("with_agreement must be a logistic calibrator over the agreement features")
        if self.band is not None and not 0.0 <= self.band[0] <= self.band[1] <= 1.0:
            raise ValueError(f"band must be two probabilities, low <= high, not {self.band}")
        return self

    @property
    def key(self) -> tuple[str, str]:
        return (self.model, self.kind)

    @property
    def fallback_cap(self) -> float:
        """What an unmeasured pair falling back to this entry may read at most: the precision this
        entry measured at its threshold (its accuracy when nothing cleared; 0 when unmeasured)."""
        if self.clear_accuracy is not None:
            return self.clear_accuracy
        return self.accuracy if self.accuracy is not None else 0.0


class Prior(Frozen):
    """The rule for answers with nothing measured at all (see the module docstring)."""

    margin: float = Field(default=0.05, ge=0, le=1)
    verified_grounding: float = Field(default=0.99, ge=0, le=1)
    note: str = ""

    def calibrator(self, threshold: float) -> Calibrator:
        return Calibrator(
            kind="prior", cap=max(0.0, threshold - self.margin), verified_grounding=self.verified_grounding
        )


class _TableFile(Frozen):
    version: int
    prior: Prior | None = None
    entries: list[CalibrationEntry] = []


class CalibrationTable:
    """Calibration entries by (model, kind), with the prior; see the module docstring.

    ``origins`` says where each entry came from ("default" or "user"), for the lookup's label;
    ``problems`` holds the one-line messages about files that could not be used.
    """

    def __init__(
        self,
        entries: Iterable[CalibrationEntry] = (),
        *,
        prior: Prior | None = None,
        threshold: float = 0.75,
        origins: Mapping[tuple[str, str], str] | None = None,
        problems: Sequence[str] = (),
    ) -> None:
        self.entries: dict[tuple[str, str], CalibrationEntry] = {e.key: e for e in entries}
        self.prior = prior or Prior()
        self.threshold = threshold
        self.origins = dict(origins or {})
        self.problems = list(problems)

    # files ---------------------------------------------------------------------------------------

    @classmethod
    def load(
        cls, user_path: Path | None = None, *, default_path: Path = DEFAULT_PATH, threshold: float = 0.75
    ) -> CalibrationTable:
        """The shipped table with the user's file (if any) overriding it entry by entry.

        A user file that is not a calibration table is moved aside (``<name>.corrupt-<time>``) with
        a one-line warning, and the shipped table is used; an unreadable shipped table (a broken
        install) is logged and leaves only the prior.
        """
        problems: list[str] = []
        prior: Prior | None = None
        entries: dict[tuple[str, str], CalibrationEntry] = {}
        origins: dict[tuple[str, str], str] = {}
        try:
            prior, shipped = cls.read(default_path)
        except CalibrationError as exc:
            problems.append(f"the shipped calibration is not usable ({exc}); reinstall caelum-mcp")
            log.error("%s", problems[-1])
        else:
            for entry in shipped:
                entries[entry.key], origins[entry.key] = entry, "default"
        if user_path is not None and user_path.exists():
            try:
                user_prior, mine = cls.read(user_path)
            except CalibrationError as exc:
                problems.append(_move_aside(user_path, str(exc)))
                log.warning("%s", problems[-1])
            else:
                prior = user_prior or prior
                for entry in mine:
                    entries[entry.key], origins[entry.key] = entry, "user"
        return cls(entries.values(), prior=prior, threshold=threshold, origins=origins, problems=problems)

    @staticmethod
    def read(path: Path) -> tuple[Prior | None, list[CalibrationEntry]]:
        """The prior and entries in ``path``; CalibrationError says why it cannot be used."""
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise CalibrationError(f"cannot read {path}: {exc}") from exc
        try:
            data = _TableFile.model_validate_json(text)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = "/".join(str(p) for p in first["loc"]) or "(top)"
            raise CalibrationError(f"{path} is not a calibration table: {where}: {first['msg']}") from None
        if data.version != FILE_VERSION:
            raise CalibrationError(f"{path} is version {data.version}; this caelum-mcp reads version {FILE_VERSION}")
        return data.prior, data.entries

    def save(self, path: Path) -> None:
        """Write every entry and the prior to ``path`` atomically (a reader never sees half a file)."""
        data = _TableFile(
            version=FILE_VERSION,
            prior=self.prior,
            entries=sorted(self.entries.values(), key=lambda e: e.key),
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                out.write(json.dumps(data.model_dump(mode="json"), indent=1) + "\n")
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    # lookup --------------------------------------------------------------------------------------

    def lookup(self, model: str, kind: str) -> tuple[CalibrationEntry, str]:
        """The entry that calibrates ``model``'s answers on ``kind`` tasks, and a label saying
        where it came from (the lookup order and caps are in the module docstring)."""
        kind = str(kind)
        exact = self.entries.get((model, kind))
        if exact is not None:
            return exact, f"measured {model}/{kind} (n={exact.n}, {self.origins.get(exact.key, 'given')} table)"
        for fallback in ((ANY, kind), (ANY, ANY)):
            entry = self.entries.get(fallback)
            if entry is None:
                continue
            cap = entry.fallback_cap
            capped = entry.model_copy(
                update={
                    "base": entry.base.capped(cap),
                    "with_agreement": entry.with_agreement.capped(cap) if entry.with_agreement else None,
                }
            )
            where = "family" if fallback[1] != ANY else "all models and kinds"
            return capped, (
                f"{where} {fallback[0]}/{fallback[1]} for unmeasured {model}/{kind}, capped at {cap:.2f} "
                f"(n={entry.n}, {self.origins.get(entry.key, 'given')} table)"
            )
        prior = self.prior.calibrator(self.threshold)
        entry = CalibrationEntry(model=model, kind=kind, base=prior, threshold=self.threshold, source="prior")
        return entry, (
            f"prior for unmeasured {model}/{kind}: raw score capped at {prior.cap:.2f} unless grounding "
            f"verified the answer (>= {prior.verified_grounding:g})"
        )


def _move_aside(path: Path, reason: str) -> str:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    aside = path.with_name(f"{path.name}.corrupt-{stamp}")
    try:
        path.replace(aside)
    except OSError as exc:
        return (
            f"calibration file {path} is not usable ({reason}) and could not be moved aside ({exc}); "
            "using the shipped calibration"
        )
    return (
        f"calibration file {path} is not usable ({reason}); moved it to {aside.name} and using the shipped "
        "calibration (run `caelum-mcp calibrate` to write a new one)"
    )


def now_iso() -> str:
    """The time to stamp a fitted entry with (UTC, seconds)."""
    return datetime.fromtimestamp(time.time(), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
