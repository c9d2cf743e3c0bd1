"""Calibrated confidence: the raw signals of an answer mapped to P(correct) per (model, task kind).

The router's raw score (:mod:`caelum_mcp.core.confidence`) ranks answers but its level means nothing: with
a real 1.5B model every answer cleared 0.75 while a third were wrong (issue 21). This module turns
every raw signal of an answer (:class:`Signals`) into the probability that it is right, fitted from
labelled outcomes, so the threshold means "this share of what clears is right".

- :func:`token_signals`: the token signals a host's logprobs give (mean, minimum, tail, top-k entropy).
- :func:`feature_vector` / :func:`fit`: an L2-regularised logistic regression over the signals
  (Newton's method in numpy, deterministic, Platt's smoothed targets so a small set cannot claim
  certainty; the grounding weights held at 0 or above, so a failed check never raises the
  probability), or isotonic regression over the raw score (pool-adjacent-violators, smoothed blocks).
  An entry's calibrators carry ``failed_check_cap``: an answer whose grounding check kept nothing
  (grounding 0) reads at most what such answers were worth over every kind's labels.
- :func:`metrics`: AUROC, ECE (10 equal-width bins), Brier score, and the share that clears a
  threshold with its accuracy.
- :class:`CalibrationTable`: the entries per (model, kind) in JSON, looked up with conservative
  fallbacks (below).

The table file (``caelum_mcp/engine/calibration/calibration_default.json`` ships with the package; the user's
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

from caelum_mcp.core.confidence import Signals
from caelum_mcp.engine.calibration.fitting import (
    FEATURES,
    FEATURES_WITH_AGREEMENT,
    L2,
    MIN_KIND_ROWS,
    MIN_ROWS,
    PENALTIES,
    TAIL_SHARE,
    CalibrationError,
    Calibrator,
    failed_check_cap,
    failed_check_counts,
    feature_vector,
    fit,
    logistic_probabilities,
    metrics,
    shift_to_kind,
    token_signals,
)
from caelum_mcp.engine.calibration.table import (
    ANY,
    DEFAULT_PATH,
    FILE_VERSION,
    USER_FILE,
    CalibrationEntry,
    CalibrationTable,
    Prior,
    now_iso,
)

__all__ = [
    "ANY",
    "DEFAULT_PATH",
    "FEATURES",
    "FEATURES_WITH_AGREEMENT",
    "FILE_VERSION",
    "L2",
    "MIN_KIND_ROWS",
    "MIN_ROWS",
    "PENALTIES",
    "TAIL_SHARE",
    "USER_FILE",
    "CalibrationEntry",
    "CalibrationError",
    "CalibrationTable",
    "Calibrator",
    "Prior",
    "Signals",
    "failed_check_cap",
    "failed_check_counts",
    "feature_vector",
    "fit",
    "logistic_probabilities",
    "metrics",
    "now_iso",
    "shift_to_kind",
    "token_signals",
]
