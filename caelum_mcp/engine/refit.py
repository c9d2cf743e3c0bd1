"""``caelum-mcp calibrate``: refit the calibration table from labelled answers.

Labelled answers come from the ledger's ``calibration_labels`` (:mod:`caelum_mcp.engine.audit`: Claude's
audits of local answers and every escalation) and, optionally, from benchmark recordings
(``bench/data/gate/recordings/<model>.jsonl``: one answer a line with ``model``, ``kind``,
``signals`` and ``correct``; a ``<model>.agreement.jsonl`` beside it adds its agreement samples).

Every (model, kind) with at least :data:`~caelum_mcp.engine.calibration.MIN_ROWS` labelled answers gets a
new entry, and so does each kind pooled over every model (``*``, the family an unmeasured model
falls back to) and everything pooled (``*``/``*``). The figures printed and stored with an entry
(accuracy, ECE, AUROC, the share that would clear the threshold and its accuracy) are measured on
answers the calibrator was not fitted on: k-fold cross-validation (5 folds, or one answer left out
at a time when 5 would leave a fold too few to fit), so they say how it will do on the next answer.
The entry itself is fitted on every answer.

The fit's L2 penalty is chosen per entry among :data:`~caelum_mcp.engine.calibration.PENALTIES` by
the same cross-validation (lowest log loss; a tie goes to the larger penalty): the shipped table's
penalty was chosen on hundreds of answers, and twenty labels fitted as sharply would read their
noise as signal. The held-out figures choose the penalty inside each fold as well (nested), so the
choice is not measured on the answers it was made on.

The user's table (``<data dir>/calibration.json``) keeps the entries it had for pairs not refitted;
it is written atomically, and overrides the shipped table entry by entry.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import ValidationError

from caelum_mcp.core.errors import CaelumError
from caelum_mcp.engine.calibration import (
    ANY,
    L2,
    MIN_KIND_ROWS,
    MIN_ROWS,
    PENALTIES,
    CalibrationEntry,
    CalibrationError,
    CalibrationTable,
    Calibrator,
    Prior,
    Signals,
    failed_check_cap,
    feature_vector,
    fit,
    logistic_probabilities,
    metrics,
    now_iso,
)
from caelum_mcp.engine.ledger import Ledger

FOLDS = 5
# Where sample agreement is drawn when an entry has no band of its own yet: the answers a base
# calibrator is unsure about (the benchmark's default band, bench/gate.py).
DEFAULT_BAND = (0.4, 0.9)
_MAX_LINE_CHARS = 1_000_000


@dataclass(frozen=True)
class Labelled:
    """One labelled answer: whose, of what kind, its signals, whether it was right, from where."""

    model: str
    kind: str
    signals: Signals
    correct: bool
    origin: str  # "ledger" or the recordings file's name


@dataclass
class Refit:
    """The outcome for one (model, kind): the new entry and its held-out figures, or why not."""

    model: str
    kind: str
    labels: int
    entry: CalibrationEntry | None = None
    figures: dict[str, Any] = field(default_factory=dict)
    held_out: str = ""  # how the figures were measured
    problem: str | None = None
    penalty: float | None = None  # the L2 penalty the entry was fitted with


def ledger_labels(ledger: Ledger) -> list[Labelled]:
    """Every labelled answer in the ledger (answers whose reference could not be read are left out)."""
    found = []
    for counts in ledger.label_counts():
        for row in ledger.labels(counts.model, counts.kind):
            assert row.label is not None
            found.append(Labelled(row.model, row.kind, Signals.model_validate(row.signals), row.label, "ledger"))
    return found


def recorded_labels(path: Path) -> list[Labelled]:
    """The labelled answers of a recordings file, with the agreement samples recorded beside it
    (``<stem>.agreement.jsonl``) merged in. A clear :class:`CaelumError` for a file that is not one."""
    rows = _read_jsonl(path)
    agreement_path = path.with_name(path.name.removesuffix(".jsonl") + ".agreement.jsonl")
    samples = {str(r.get("id")): r for _, r in _read_jsonl(agreement_path)} if agreement_path.is_file() else {}
    found = []
    for number, row in rows:
        missing = [k for k in ("model", "kind", "signals", "correct") if k not in row]
        if missing:
            raise CaelumError(
                f"{path} line {number}: not a recording (no {', '.join(missing)}); give a file written by "
                "bench/gate.py --record (bench/data/gate/recordings/<model>.jsonl)"
            )
        data = dict(row["signals"]) if isinstance(row["signals"], Mapping) else row["signals"]
        extra = samples.get(str(row.get("id")))
        if extra is not None and isinstance(data, dict):
            data["agreement"], data["samples"] = extra.get("agreement"), extra.get("samples", 0)
        try:
            signals = Signals.model_validate(data)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "signals"
            raise CaelumError(f"{path} line {number}: signals.{where}: {first['msg']}") from None
        if not isinstance(row["correct"], bool):
            raise CaelumError(f"{path} line {number}: 'correct' must be true or false, not {row['correct']!r}")
        found.append(Labelled(str(row["model"]), str(row["kind"]), signals, row["correct"], path.name))
    return found


def _read_jsonl(path: Path) -> list[tuple[int, dict[str, Any]]]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CaelumError(f"{path}: no such file; give the path of a recordings file (.jsonl)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise CaelumError(f"cannot read {path}: {exc}") from None
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        if len(line) > _MAX_LINE_CHARS:
            raise CaelumError(f"{path} line {number}: longer than {_MAX_LINE_CHARS} characters; not a recording")
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise CaelumError(f"{path} line {number}: not JSON ({exc.msg}); one JSON object a line expected") from None
        if not isinstance(row, dict):
            raise CaelumError(f"{path} line {number}: not a JSON object; one JSON object a line expected")
        rows.append((number, row))
    return rows


def refit_all(
    labelled: Sequence[Labelled], *, threshold: float, existing: Mapping[tuple[str, str], CalibrationEntry]
) -> list[Refit]:
    """A refit for each (model, kind), each kind pooled over models, and everything pooled; pairs
    with fewer than :data:`MIN_ROWS` labels are reported with the reason and get no entry."""
    cap = pooled_failed_check_cap(labelled, existing)
    groups: dict[tuple[str, str], list[Labelled]] = defaultdict(list)
    for row in labelled:
        groups[(row.model, row.kind)].append(row)
        groups[(ANY, row.kind)].append(row)
        groups[(ANY, ANY)].append(row)
    results = []
    for (model, kind), rows in sorted(groups.items(), key=lambda item: (item[0][0] == ANY, item[0])):
        old = existing.get((model, kind))
        results.append(_refit_one(model, kind, rows, threshold, old, cap))
    return results


def pooled_failed_check_cap(
    labelled: Sequence[Labelled], existing: Mapping[tuple[str, str], CalibrationEntry]
) -> float | None:
    """The cap on an answer whose grounding check kept nothing, for every entry refitted: measured
    over all the user's labels, every model and kind pooled (:func:`failed_check_cap`), where at
    least :data:`MIN_KIND_ROWS` such answers were labelled; else the cap the existing tables measured
    (the shipped one: over every kind of the benchmark's dev answers); else None."""
    own = failed_check_cap(((r.signals, r.correct) for r in labelled), min_answers=MIN_KIND_ROWS)
    if own is not None:
        return own
    return next((e.base.failed_check_cap for e in existing.values() if e.base.failed_check_cap is not None), None)


def _refit_one(
    model: str,
    kind: str,
    rows: Sequence[Labelled],
    threshold: float,
    old: CalibrationEntry | None,
    failed_cap: float | None = None,
) -> Refit:
    result = Refit(model, kind, labels=len(rows))
    valid = sum(r.signals.valid for r in rows)
    if valid < MIN_ROWS:
        result.problem = f"{valid} labelled valid answers, {MIN_ROWS} needed"
        return result
    signals = [r.signals for r in rows]
    correct = [r.correct for r in rows]
    result.penalty, _ = choose_penalty(signals, correct)
    try:
        base = fit(signals, correct, with_agreement=False, l2=result.penalty)
    except CalibrationError as exc:
        result.problem = str(exc)
        return result
    probs, result.held_out = _held_out(signals, correct)
    figures = metrics(probs, correct, threshold)
    sampled = [(s, y) for s, y in zip(signals, correct, strict=True) if s.agreement is not None]
    with_agreement: Calibrator | None = None
    if sum(s.valid for s, _ in sampled) >= MIN_ROWS:
        sampled_signals, sampled_correct = [s for s, _ in sampled], [y for _, y in sampled]
        penalty, _ = choose_penalty(sampled_signals, sampled_correct, with_agreement=True)
        with_agreement = fit(sampled_signals, sampled_correct, with_agreement=True, l2=penalty)
    elif old is not None:
        with_agreement = old.with_agreement  # nothing new to say about agreement: keep what was measured
    band = (old.band if old is not None else None) or DEFAULT_BAND
    if failed_cap is not None:  # measured over every kind's answers (failed_check_cap)
        cap = {"failed_check_cap": failed_cap}
        base = base.model_copy(update=cap)
        with_agreement = None if with_agreement is None else with_agreement.model_copy(update=cap)
    origins = sorted({r.origin for r in rows})
    result.figures = dict(figures)
    result.entry = CalibrationEntry(
        model=model,
        kind=kind,
        base=base,
        with_agreement=with_agreement,
        band=band if with_agreement is not None else None,
        n=len(rows),
        accuracy=_unit(figures["accuracy"]),
        clear_accuracy=_unit(figures["clear_accuracy"]),
        ece=_unit(figures["ece"]),
        auroc=_unit(figures["auroc"]),
        threshold=threshold,
        fitted_at=now_iso(),
        source=f"caelum-mcp calibrate: {len(rows)} labelled answers from {', '.join(origins)}, "
        f"L2 {result.penalty:g} ({result.held_out})",
    )
    return result


def _folds(n: int) -> int:
    """k-fold's k for ``n`` answers: :data:`FOLDS`, or ``n`` (one left out at a time) when a fold
    of ``n / FOLDS`` would leave too few answers to fit."""
    return n if n - math.ceil(n / FOLDS) < MIN_ROWS else FOLDS


def _arrays(
    signals: Sequence[Signals], correct: Sequence[bool], *, with_agreement: bool
) -> tuple[np.ndarray, np.ndarray]:
    """The valid answers' feature vectors and labels (an invalid answer is worth 0 under every fit,
    so it neither trains nor tells one penalty from another)."""
    rows = [(s, y) for s, y in zip(signals, correct, strict=True) if s.valid]
    x = np.array([feature_vector(s, with_agreement=with_agreement) for s, _ in rows]).reshape(len(rows), -1)
    return x, np.array([1.0 if y else 0.0 for _, y in rows])


def _cross_validated(x: np.ndarray, y: np.ndarray, l2: float) -> np.ndarray | None:
    """Each row's probability from a fit at penalty ``l2`` without its fold (:data:`FOLDS` folds:
    this only compares penalties, so its fits may be smaller than an entry's); None for fewer
    than :data:`FOLDS` rows."""
    n = len(y)
    folds = FOLDS
    if n < folds:
        return None
    probs = np.zeros(n)
    index = np.arange(n)
    for fold in range(folds):
        test = index % folds == fold
        probs[test] = logistic_probabilities(x[~test], y[~test], x[test], l2)
    return probs


def _penalty(x: np.ndarray, y: np.ndarray) -> tuple[float, dict[float, float]]:
    losses = {}
    for penalty in PENALTIES:
        probs = _cross_validated(x, y, penalty)
        if probs is not None:
            p = np.clip(probs, 1e-3, 1 - 1e-3)
            losses[penalty] = float(-np.mean(np.where(y > 0.5, np.log(p), np.log(1 - p))))
    if not losses:
        return L2, losses
    return min(losses, key=lambda p: (round(losses[p], 4), -p)), losses


def choose_penalty(
    signals: Sequence[Signals], correct: Sequence[bool], *, with_agreement: bool = False
) -> tuple[float, dict[float, float]]:
    """The penalty of :data:`PENALTIES` with the lowest cross-validated log loss on these answers'
    valid ones (a tie to four places goes to the larger penalty, the smoother fit), and each one's
    loss; :data:`L2` when too few answers to cross-validate."""
    return _penalty(*_arrays(signals, correct, with_agreement=with_agreement))


def _held_out(signals: Sequence[Signals], correct: Sequence[bool]) -> tuple[list[float], str]:
    """Each answer's probability from a calibrator fitted without it (k-fold, the penalty chosen on
    the fold's training answers alone), and how. An invalid answer reads 0, as it does live."""
    x, y = _arrays(signals, correct, with_agreement=False)
    n = len(y)
    folds = _folds(n)
    if n - math.ceil(n / folds) < MIN_ROWS:  # too few valid answers left to fit: measure on what was fitted
        penalty, _ = _penalty(x, y)
        fitted = fit(signals, correct, with_agreement=False, l2=penalty)
        return [fitted.probability(s) for s in signals], "measured on the answers it was fitted on"
    held = np.zeros(n)
    index = np.arange(n)
    for fold in range(folds):
        test = index % folds == fold
        penalty, _ = _penalty(x[~test], y[~test])
        held[test] = logistic_probabilities(x[~test], y[~test], x[test], penalty)
    values = iter(held.tolist())
    probs = [next(values) if s.valid else 0.0 for s in signals]
    how = f"{folds}-fold cross-validation" if folds < n else "each answer left out in turn"
    return probs, f"{how}, the penalty chosen inside each fold"


def _unit(value: Any) -> float | None:
    return None if value is None else min(1.0, max(0.0, float(value)))


def updated_table(
    current: Iterable[CalibrationEntry], prior: Prior | None, refits: Iterable[Refit], threshold: float
) -> CalibrationTable:
    """The user's table with the refitted entries replacing theirs (the others kept)."""
    entries = {e.key: e for e in current}
    for refit in refits:
        if refit.entry is not None:
            entries[refit.entry.key] = refit.entry
    return CalibrationTable(entries.values(), prior=prior, threshold=threshold)


def format_table(refits: Sequence[Refit], threshold: float) -> str:
    """The refits as a plain-text table (one line each), with the pairs that were not refitted."""
    header = (
        f"{'model':<28} {'kind':<15} {'n':>5} {'accuracy':>8} {'ECE':>6} {'AUROC':>6} {'threshold':>9} "
        f"{'clears':>7} {'right':>6} {'L2':>5}"
    )
    lines = [header, "-" * len(header)]
    skipped = []
    for r in refits:
        if r.entry is None:
            if r.model != ANY:  # a pooled group is made of the pairs listed; it would say the same again
                skipped.append(f"  {r.model}/{r.kind}: {r.labels} labels, not refitted: {r.problem}")
            continue
        f = r.figures
        lines.append(
            f"{r.model[:28]:<28} {r.kind[:15]:<15} {r.labels:>5} {_pct(f['accuracy']):>8} {_num(f['ece']):>6} "
            f"{_num(f['auroc']):>6} {threshold:>9.2f} {_pct(f['clear_share']):>7} {_pct(f['clear_accuracy']):>6} "
            f"{'-' if r.penalty is None else format(r.penalty, 'g'):>5}"
        )
    if len(lines) == 2:
        lines.append("(no pair has enough labels to refit)")
    lines.append(
        "figures are held out (cross-validated); 'clears' is the share that would reach the threshold, 'right' "
        "the accuracy of those; L2 the fit's penalty, chosen by the same cross-validation"
    )
    if skipped:
        lines += ["not refitted:", *skipped]
    return "\n".join(lines)


def _pct(value: Any) -> str:
    return "-" if value is None else f"{100 * float(value):.0f}%"


def _num(value: Any) -> str:
    return "-" if value is None else f"{float(value):.3f}"
