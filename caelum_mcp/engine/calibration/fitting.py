"""Fitting: an answer's signals as features, the logistic and isotonic calibrators, and their metrics.

See the package docstring (:mod:`caelum_mcp.engine.calibration`) for what the probabilities mean.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Literal

from pydantic import Field, model_validator

from caelum_mcp.core.confidence import Signals, raw_score
from caelum_mcp.core.lazy_imports import lazy_module
from caelum_mcp.core.types import Frozen, TokenLogprob

if TYPE_CHECKING:
    import numpy as np
else:
    np = lazy_module("numpy")  # fitting and isotonic lookups only; the server starts without it


log = logging.getLogger(__name__)

# The tail is this share of the generated tokens with the lowest probability (at least one): a
# wrong answer often hangs on a few unsure tokens that the mean over a long reply hides.
TAIL_SHARE = 0.10
# Fewer labelled answers than this cannot tell a calibrator's slope from noise.
MIN_ROWS = 20
# A kind's own level (one number: :func:`shift_to_kind`) over a pooled fit needs this many.
MIN_KIND_ROWS = 8

# The logistic fit's penalty on its weights (L2/2 · |w|²; the bias is free). Chosen on the gate's
# dev split by cross-validated log loss (`bench/gate.py --replay` prints the sweep): 1.0 held every
# signal to a slope too shallow to move an answer across the threshold.
L2 = 0.01
# The penalties ``caelum-mcp calibrate`` chooses among for each entry by cross-validated log loss on
# the user's labels: a few dozen labels cannot carry the sharp fit the benchmark's hundreds can, and
# labels the signals do not explain want the weights near 0 (at 100 the fit is the level alone).
PENALTIES: tuple[float, ...] = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 100.0)

# Grounding at or above this is an answer whose every check passed (``grounding_full``): one failed
# check out of four (a value cut from a longer token, a line less severe than the excerpt's worst)
# reads 0.75, close to 1.0 on a linear scale yet as wrong as any, so the fit gets it as its own
# feature instead of a slope it cannot afford under the L2 penalty.
FULLY_GROUNDED = 0.99

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
    "grounding_full",
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
        float(s.grounding is not None and s.grounding >= FULLY_GROUNDED),
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
    ``isotonic``: the raw score (:func:`caelum_mcp.core.confidence.raw_score`) through the monotone
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
    # The most an answer whose grounding check kept nothing (grounding 0) may read: measured over
    # every kind's labelled answers, since one kind rarely has enough of them (see
    # ``bench/gate.py``'s ``failed_check_cap``); None where nothing was measured.
    failed_check_cap: float | None = Field(default=None, ge=0, le=1)

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
        if self.failed_check_cap is not None and check_kept_nothing(s):
            p = min(p, self.failed_check_cap)
        return p if self.cap is None else min(p, self.cap)

    def capped(self, cap: float) -> Calibrator:
        """This calibrator, never reading above ``cap``."""
        return self.model_copy(update={"cap": cap if self.cap is None else min(self.cap, cap)})


def check_kept_nothing(s: Signals) -> bool:
    """A valid answer whose grounding check ran and kept nothing (grounding 0)."""
    return s.valid and s.grounding is not None and s.grounding <= 0.0


def failed_check_counts(answers: Iterable[tuple[Signals, bool]]) -> tuple[int, int]:
    """(right, n) over the labelled answers whose check kept nothing."""
    labels = [bool(right) for s, right in answers if check_kept_nothing(s)]
    return sum(labels), len(labels)


def failed_check_cap(answers: Iterable[tuple[Signals, bool]], *, min_answers: int = 1) -> float | None:
    """The most an answer whose check kept nothing may read: the share of such labelled answers that
    were right, smoothed as Platt's targets are ((right + 1) / (n + 2)); None with fewer than
    ``min_answers`` of them. Meant over every kind pooled: one kind rarely holds enough."""
    right, n = failed_check_counts(answers)
    return round((right + 1) / (n + 2), 4) if n >= max(1, min_answers) else None


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
    l2: float = L2,
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


def logistic_probabilities(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, l2: float) -> np.ndarray:
    """P(correct) of the rows ``x_test`` (feature vectors) from a logistic fit on ``x_train`` and its
    labels ``y_train`` (1.0 right, 0.0 wrong) made as :func:`fit` makes it: the array form that
    cross-validation calls many times, without building a :class:`Calibrator` each time."""
    weights, bias = _fit_logistic(x_train, _platt_targets(y_train), l2)
    probs: np.ndarray = 1.0 / (1.0 + np.exp(-np.clip(x_test @ weights + bias, -40.0, 40.0)))
    return probs


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


# Features whose weight may not be negative: a grounding check that fails can never make an answer
# more likely right than one that passes, everything else equal. Without it a kind whose labelled
# answers almost all passed their check learns the slope from a handful: `qa`'s fit (46 dev rows, one
# failing its check, and that one right) read an answer whose every citation was dropped at 0.85,
# above one that passed half its checks (0.60), and served it.
NON_NEGATIVE: tuple[str, ...] = ("grounding", "grounding_full")


def _fit_logistic(x: np.ndarray, targets: np.ndarray, l2: float) -> tuple[np.ndarray, float]:
    """Penalised logistic regression by Newton's method, with the weights of :data:`NON_NEGATIVE`
    (where ``x`` has this version's features) held at 0 or above: an active set, a held weight freed
    again when the fit would raise it (the log loss is convex, so this ends at the constrained
    optimum)."""
    n, d = x.shape
    bounded = (
        [FEATURES.index(name) for name in NON_NEGATIVE] if d in (len(FEATURES), len(FEATURES_WITH_AGREEMENT)) else []
    )
    design = np.hstack([x, np.ones((n, 1))])
    penalty = np.full(d + 1, l2)
    penalty[-1] = 0.0
    held: set[int] = set()
    theta = np.zeros(d + 1)
    for _ in range(4 * len(bounded) + 2):
        free = np.array([i for i in range(d + 1) if i not in held])
        theta = np.zeros(d + 1)
        theta[free] = _newton(design[:, free], targets, penalty[free])
        below = [i for i in bounded if i not in held and theta[i] < 0]
        if below:
            held.add(min(below, key=lambda i: theta[i]))  # the most negative first, then fit again
            continue
        z = np.clip(design @ theta, -40.0, 40.0)
        gradient = design.T @ (1.0 / (1.0 + np.exp(-z)) - targets) + penalty * theta
        freed = [i for i in held if gradient[i] < -1e-9]  # the loss falls if this weight rises
        if not freed:
            break
        held.discard(min(freed, key=lambda i: gradient[i]))
    theta[bounded] = np.maximum(theta[bounded], 0.0)  # the bound holds even if the set never settled
    return theta[:-1], float(theta[-1])


def _newton(design: np.ndarray, targets: np.ndarray, penalty: np.ndarray) -> np.ndarray:
    d = design.shape[1]
    theta = np.zeros(d)
    for _ in range(100):
        z = np.clip(design @ theta, -40.0, 40.0)
        p = 1.0 / (1.0 + np.exp(-z))
        gradient = design.T @ (p - targets) + penalty * theta
        hessian = (design * (p * (1 - p))[:, None]).T @ design + np.diag(penalty) + 1e-9 * np.eye(d)
        step = np.linalg.solve(hessian, gradient)
        theta = theta - step
        if float(np.max(np.abs(step))) < 1e-10:
            break
    return theta


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
