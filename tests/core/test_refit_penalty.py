"""``caelum-mcp calibrate`` chooses each entry's L2 penalty by cross-validation on the user's labels."""

from __future__ import annotations

import random

from caelum_mcp.engine.calibration import PENALTIES, Signals, fit
from caelum_mcp.engine.refit import Labelled, choose_penalty, format_table, refit_all


def noise(n: int, seed: int = 3) -> list[Labelled]:
    """Answers whose signals say nothing about whether they were right (a coin at 60 %)."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        mean = rng.uniform(0.85, 0.999)
        signals = Signals(
            valid=True,
            self_reported=rng.choice([0.5, 0.7, 0.9]),
            token_mean=mean,
            token_min=mean - rng.uniform(0.1, 0.5),
            token_tail=mean - rng.uniform(0.0, 0.3),
            grounding=rng.choice([0.0, 0.5, 1.0]),
            output_tokens=rng.randint(5, 200),
        )
        rows.append(Labelled("m", "qa", signals, rng.random() < 0.6, "ledger"))
    return rows


def separable(n: int, seed: int = 4) -> list[Labelled]:
    """Answers whose grounding and token probability say whether they were right (90 % of the time)."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        correct = rng.random() < 0.5
        sure = correct if rng.random() < 0.9 else not correct
        mean = rng.uniform(0.99, 0.999) if sure else rng.uniform(0.8, 0.95)
        signals = Signals(
            valid=True,
            self_reported=0.9,
            token_mean=mean,
            token_min=mean - 0.2,
            token_tail=mean - 0.1,
            grounding=1.0 if sure else 0.0,
            output_tokens=rng.randint(5, 60),
        )
        rows.append(Labelled("m", "sql", signals, correct, "ledger"))
    return rows


def spread(rows: list[Labelled], calibrator: object) -> float:
    probs = [calibrator.probability(r.signals) for r in rows]  # type: ignore[attr-defined]
    return max(probs) - min(probs)


def test_labels_the_signals_do_not_explain_get_a_smooth_fit_not_a_sharp_one() -> None:
    rows = noise(30)
    signals, correct = [r.signals for r in rows], [r.correct for r in rows]
    penalty, losses = choose_penalty(signals, correct)
    assert set(losses) == set(PENALTIES)
    assert penalty >= 0.3, losses
    [refit] = [r for r in refit_all(rows, threshold=0.75, existing={}) if r.model == "m"]
    assert refit.entry is not None and refit.penalty == penalty
    sharp = fit(signals, correct, with_agreement=False, l2=min(PENALTIES))
    # the sharp fit reads noise as signal: answers it would pass or refuse on nothing
    assert spread(rows, refit.entry.base) < spread(rows, sharp) / 2
    assert f"L2 {penalty:g}" in refit.entry.source


def test_signals_that_do_explain_the_labels_keep_a_sharp_fit() -> None:
    rows = separable(200)
    penalty, _ = choose_penalty([r.signals for r in rows], [r.correct for r in rows])
    assert penalty <= 1.0
    [refit] = [r for r in refit_all(rows, threshold=0.75, existing={}) if r.model == "m"]
    assert refit.entry is not None
    sure = Signals(valid=True, self_reported=0.9, token_mean=0.995, token_min=0.795, token_tail=0.895, grounding=1.0)
    unsure = Signals(valid=True, self_reported=0.9, token_mean=0.9, token_min=0.7, token_tail=0.8, grounding=0.0)
    assert refit.entry.base.probability(sure) > 0.75 > 0.25 > refit.entry.base.probability(unsure)
    assert refit.figures["auroc"] > 0.85  # held out, the penalty chosen inside each fold
    assert "penalty chosen inside each fold" in refit.held_out
    table = format_table(refit_all(rows, threshold=0.75, existing={}), 0.75)
    assert table.splitlines()[0].split()[-1] == "L2"
    assert table.splitlines()[2].split()[-1] == f"{penalty:g}"


def test_too_few_answers_to_compare_penalties_falls_back_to_the_default() -> None:
    rows = noise(4)
    penalty, losses = choose_penalty([r.signals for r in rows], [r.correct for r in rows])
    assert losses == {} and penalty == min(PENALTIES)


def test_a_refit_caps_an_answer_whose_check_kept_nothing_from_every_kinds_labels() -> None:
    """The cap is measured over every model and kind's labels pooled: from the user's own where
    they hold enough answers whose check kept nothing, else the cap the shipped table measured over
    the benchmark's every kind, so a model the shipped table never saw gets it too."""
    from caelum_mcp.engine.calibration import MIN_KIND_ROWS, CalibrationEntry

    rows = separable(200)
    signals, correct = [r.signals for r in rows], [r.correct for r in rows]
    shipped_base = fit(signals, correct, with_agreement=False).model_copy(update={"failed_check_cap": 0.06})
    shipped = CalibrationEntry(model="other", kind="qa", base=shipped_base, threshold=0.75, source="shipped")
    failed = Signals(valid=True, self_reported=0.9, token_mean=0.999, token_min=0.9, token_tail=0.95, grounding=0.0)

    # separable() holds ~100 answers whose check kept nothing, ~10 % of them right: the user's own
    own = [r for r in rows if r.signals.grounding == 0.0]
    assert len(own) >= MIN_KIND_ROWS
    expected = round((sum(r.correct for r in own) + 1) / (len(own) + 2), 4)
    [refit] = [r for r in refit_all(rows, threshold=0.75, existing={("other", "qa"): shipped}) if r.model == "m"]
    assert refit.entry is not None and refit.entry.base.failed_check_cap == expected
    assert refit.entry.base.probability(failed) <= expected < 0.2

    # too few of the user's own: the shipped table's cap, for a model it never measured ("m")
    few = [r for r in rows if r.signals.grounding != 0.0] + own[: MIN_KIND_ROWS - 1]
    [refit] = [r for r in refit_all(few, threshold=0.75, existing={("other", "qa"): shipped}) if r.model == "m"]
    assert refit.entry is not None and refit.entry.base.failed_check_cap == 0.06
    # and none at all: nothing measured, no cap
    [fresh] = [r for r in refit_all(few, threshold=0.75, existing={}) if r.model == "m"]
    assert fresh.entry is not None and fresh.entry.base.failed_check_cap is None
