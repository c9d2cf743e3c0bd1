"""Routing by measured competence: a task kind starts on the smallest local model measured good at it.

The static ``min_tier`` of a task kind (:data:`~caelum_mcp.core.llm.DEFAULT_NEEDS`, ``[router.tasks.<kind>]``)
is a guess about model sizes. Once a (model, kind) is measured (an entry of its own in the
calibration table, :mod:`caelum_mcp.engine.calibration`, fitted on at least :data:`MIN_MEASURED` labelled
answers), the measurement decides instead:

- a measured model is **competent** for the kind when the accuracy it measured among the answers
  that cleared the threshold (``clear_accuracy``) reaches ``[router] competence_target`` (default
  0.9): it may start the kind's tasks whatever its size, below ``min_tier`` too;
- a measured model below the target is **skipped** for the kind, whatever its size: the task goes
  up to the next model, or to Claude. Where nothing else could take it (no other local model, and
  Claude not available), the static rule stands instead: the model answers as it did before it
  was measured, and its calibrated confidence says how far to trust that (below the threshold the
  answer comes back marked ``local_low_confidence``), rather than no answer at all;
- an unmeasured model keeps the static rule: eligible from ``min_tier`` up (the prior).

A measurement counts only at the threshold it was taken at or a stricter one: an entry measured at
0.75 says nothing about what clears 0.6. When no model of the pool is measured for the kind, or
calibration is off (``[router] calibration = false``), nothing changes: the router's static plan
runs as before. The local models are tried smallest first (size tier, then parameters; a code
model first among equals when the kind prefers one), each model once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from caelum_mcp.core.llm import LLMTask, TaskNeeds, size_rank
from caelum_mcp.core.types import Frozen
from caelum_mcp.engine.calibration import MIN_ROWS, CalibrationTable
from caelum_mcp.engine.config import RouterConfig
from caelum_mcp.engine.pool import Eligible, Pool

# Labelled answers an entry needs before it overrides the static rule: as many as a fit needs.
MIN_MEASURED = MIN_ROWS
# A threshold this close to the one measured at counts as the same (thresholds are set by hand).
_THRESHOLD_SLACK = 0.005


class Competence(Frozen):
    """What the calibration table says of one model on one task kind."""

    model: str
    kind: str
    measured: bool
    competent: bool | None = None  # None: not measured
    clear_accuracy: float | None = None
    n: int = 0
    reason: str


def assess(table: CalibrationTable, model: str, kind: str, *, target: float, threshold: float) -> Competence:
    """Whether ``model`` is measured on ``kind``, and if so whether it reaches ``target``."""
    entry = table.entries.get((model, kind))
    if entry is None:
        return Competence(model=model, kind=kind, measured=False, reason=f"{model} is not measured on {kind}")
    if entry.n < MIN_MEASURED:
        return Competence(
            model=model,
            kind=kind,
            measured=False,
            n=entry.n,
            reason=f"{model} is measured on {kind} with {entry.n} answers, fewer than {MIN_MEASURED}",
        )
    if entry.threshold > threshold + _THRESHOLD_SLACK:
        return Competence(
            model=model,
            kind=kind,
            measured=False,
            n=entry.n,
            reason=f"{model} was measured on {kind} at threshold {entry.threshold:.2f}, above the configured "
            f"{threshold:.2f}",
        )
    accuracy = entry.clear_accuracy
    competent = accuracy is not None and accuracy >= target
    shown = "none of its answers cleared" if accuracy is None else f"{accuracy:.0%} right"
    return Competence(
        model=model,
        kind=kind,
        measured=True,
        competent=competent,
        clear_accuracy=accuracy,
        n=entry.n,
        reason=f"{model} measured on {kind}: {shown} at threshold {entry.threshold:.2f} (n={entry.n}), "
        f"{'meets' if competent else 'below'} the competence target {target:.0%}",
    )


@dataclass(frozen=True)
class CompetencePlan:
    """The local models a kind's task may use, in the order to try them, and the measured ones
    skipped (with why)."""

    models: tuple[Eligible, ...]
    skipped: tuple[Competence, ...]

    @property
    def model_order(self) -> list[str]:
        """Each model once, in order (a model served by two hosts is one step; the pool picks the host)."""
        return list(dict.fromkeys(e.model for e in self.models))


def competence_plan(
    pool: Pool,
    table: CalibrationTable | None,
    task: LLMTask,
    needs: TaskNeeds,
    router: RouterConfig,
    *,
    claude_available: Callable[[], bool],
) -> CompetencePlan | None:
    """The local models for ``task`` by measured competence on its kind; None when the static
    ``min_tier`` rule stands: nothing in the pool is measured on the kind, calibration is off, the
    task names its own model or the tier to start on (the caller's choice is kept), or every
    model left is one measured below the target and ``claude_available()`` says Claude cannot
    take the task either (asked only then: it reads the day's budget)."""
    if table is None or not router.calibration or task.model or task.tier is not None or task.claude_only:
        return None
    kind = task.kind.value
    available = pool.eligible_models()
    verdicts = {
        model: assess(table, model, kind, target=router.competence_target, threshold=router.confidence_threshold)
        for model in {e.model for e in available}
    }
    if not any(v.measured for v in verdicts.values()):
        return None
    floor = size_rank(needs.min_tier)
    chosen = [
        e
        for e in available
        if verdicts[e.model].competent or (not verdicts[e.model].measured and size_rank(e.size) >= floor)
    ]
    chosen.sort(key=lambda e: (size_rank(e.size), _parameters(pool, e), not (needs.prefer_code and e.code), e.model))
    skipped = tuple(sorted((v for v in verdicts.values() if v.measured and not v.competent), key=lambda v: v.model))
    if not chosen and skipped and not claude_available():
        return None  # nothing else could answer: the measured model answers, scored for what it is
    return CompetencePlan(models=tuple(chosen), skipped=skipped)


def competent_models(plan: CompetencePlan | None, pool: Pool, needs: TaskNeeds) -> list[Eligible]:
    """The local models that may run the task now: ``plan``'s (:func:`competence_plan`), or every
    model from ``min_tier`` up when there is none."""
    return pool.eligible_models(min_tier=needs.min_tier) if plan is None else list(plan.models)


def _parameters(pool: Pool, e: Eligible) -> float:
    host = pool.hosts.get(e.host)
    info = host.models.get(e.model) if host is not None else None
    size = info.parameters_b if info is not None else None
    return size if size is not None else float("inf")
