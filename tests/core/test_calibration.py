"""The calibration module: token signals, the fitted calibrators, metrics, the table and its priors."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import pytest

from caelum_mcp.core.confidence import raw_score
from caelum_mcp.core.types import TokenLogprob
from caelum_mcp.engine.calibration import (
    FEATURES,
    FEATURES_WITH_AGREEMENT,
    MIN_KIND_ROWS,
    MIN_ROWS,
    CalibrationEntry,
    CalibrationError,
    CalibrationTable,
    Calibrator,
    Prior,
    Signals,
    feature_vector,
    fit,
    metrics,
    shift_to_kind,
    token_signals,
)


def lp(*probs: float, top: tuple[float, ...] = ()) -> list[TokenLogprob]:
    return [TokenLogprob(token=f"t{i}", logprob=math.log(p), top=top) for i, p in enumerate(probs)]


def test_token_signals_by_hand() -> None:
    # 20 tokens: the two least likely (10 %) are 0.1 and 0.3
    probs = [0.9] * 18 + [0.1, 0.3]
    got = token_signals(lp(*probs))
    assert got["token_mean"] == pytest.approx((18 * 0.9 + 0.4) / 20)
    assert got["token_min"] == pytest.approx(0.1)
    assert got["token_tail"] == pytest.approx(0.2)
    assert got["entropy"] is None  # no top-k lists from this host


def test_the_tail_is_at_least_one_token_and_rounds_up() -> None:
    assert token_signals(lp(0.5, 0.8, 0.9))["token_tail"] == pytest.approx(0.5)
    eleven = token_signals(lp(*([0.9] * 9 + [0.2, 0.4])))  # 10 % of 11 rounds up to two tokens
    assert eleven["token_tail"] == pytest.approx(0.3)


def test_entropy_is_normalised_over_the_top_candidates() -> None:
    even = token_signals(lp(0.5, top=(math.log(0.5), math.log(0.5))))
    assert even["entropy"] == pytest.approx(1.0)
    sure = token_signals(lp(0.999, top=(math.log(0.999), math.log(1e-9), math.log(1e-9))))
    assert sure["entropy"] is not None and sure["entropy"] < 0.01
    # two of four equally likely candidates listed, renormalised: ln 2 / ln 4 = 0.5 over four
    mixed = token_signals(lp(0.25, top=(math.log(0.25),) * 2 + (math.log(1e-12),) * 2))
    assert mixed["entropy"] == pytest.approx(0.5, abs=1e-6)
    # tokens whose list has fewer than two candidates do not count towards the mean
    tokens = [*lp(0.5, top=(math.log(0.5), math.log(0.5))), TokenLogprob(token="x", logprob=-0.1, top=(-0.1,))]
    assert token_signals(tokens)["entropy"] == pytest.approx(1.0)


def test_no_usable_tokens_gives_no_signals() -> None:
    empty = {"token_mean": None, "token_min": None, "token_tail": None, "entropy": None}
    assert token_signals(None) == empty
    assert token_signals([]) == empty
    assert token_signals([TokenLogprob(token="x", logprob=float("nan"))]) == empty
    # a positive logprob (a server's rounding) counts as certainty, never above 1
    assert token_signals([TokenLogprob(token="x", logprob=0.01)])["token_mean"] == 1.0


# features and fitting -----------------------------------------------------------------------------


def sig(**kw: object) -> Signals:
    return Signals(**{"valid": True, **kw})  # type: ignore[arg-type]


def test_feature_vector_order_and_missing_indicators() -> None:
    bare = feature_vector(sig(), with_agreement=True)
    assert len(bare) == len(FEATURES_WITH_AGREEMENT)
    named = dict(zip(FEATURES_WITH_AGREEMENT, bare, strict=True))
    for missing in ("self_reported_missing", "tokens_missing", "entropy_missing", "grounding_missing"):
        assert named[missing] == 1.0
    assert named["agreement_missing"] == 1.0 and named["agreement"] == 0.0
    assert named["grounding_full"] == 0.0  # no check ran: nothing passed in full
    # one failed check of four is its own feature, not a quarter off a slope
    partly = dict(zip(FEATURES, feature_vector(sig(grounding=0.75), with_agreement=False), strict=True))
    assert (partly["grounding"], partly["grounding_full"], partly["grounding_missing"]) == (0.75, 0.0, 0.0)
    full = sig(
        repaired=True,
        self_reported=0.8,
        token_mean=0.99,
        token_min=0.2,
        token_tail=0.3,
        entropy=0.4,
        grounding=1.0,
        agreement=0.5,
        samples=2,
        output_tokens=1024,
    )
    named = dict(zip(FEATURES_WITH_AGREEMENT, feature_vector(full, with_agreement=True), strict=True))
    assert named["repaired"] == 1.0 and named["self_reported"] == 0.8 and named["self_reported_missing"] == 0.0
    assert named["token_mean_nines"] == pytest.approx(0.5)  # two nines of four
    assert (named["token_min"], named["token_tail"], named["entropy"], named["grounding"]) == (0.2, 0.3, 0.4, 1.0)
    assert named["grounding_full"] == 1.0
    assert named["output_tokens_log"] == pytest.approx(1.0)
    assert named["agreement"] == 0.5 and named["agreement_missing"] == 0.0
    assert len(feature_vector(full, with_agreement=False)) == len(FEATURES)


def synthetic(n: int, seed: int) -> tuple[list[Signals], list[bool], list[float]]:
    """Answers whose true P(correct) is a known logistic function of the weakest token and grounding."""
    rng = np.random.default_rng(seed)
    signals, labels, truth = [], [], []
    for _ in range(n):
        token_min = float(rng.uniform(0.05, 1.0))
        grounding = float(rng.choice([0.0, 0.5, 1.0]))
        p = 1 / (1 + math.exp(-(-4.0 + 5.0 * token_min + 2.5 * grounding)))
        signals.append(sig(token_min=token_min, token_mean=0.9, token_tail=0.9, grounding=grounding))
        labels.append(bool(rng.random() < p))
        truth.append(p)
    return signals, labels, truth


def test_logistic_fit_recovers_a_known_relationship() -> None:
    signals, labels, _ = synthetic(4000, seed=1)
    calibrator = fit(signals, labels, with_agreement=False)
    named = dict(zip(FEATURES, calibrator.weights, strict=True))
    assert named["token_min"] == pytest.approx(5.0, abs=0.6)
    assert named["grounding"] == pytest.approx(2.5, abs=0.4)
    held_out, held_labels, truth = synthetic(2000, seed=2)
    predicted = [calibrator.probability(s) for s in held_out]
    assert float(np.mean(np.abs(np.array(predicted) - np.array(truth)))) < 0.03
    measured = metrics(predicted, held_labels, 0.75)
    assert measured["ece"] is not None and measured["ece"] < 0.04
    # the same data gives the same calibrator, to the last digit
    assert fit(signals, labels, with_agreement=False) == calibrator


def test_isotonic_fit_is_monotone_and_recovers_a_calibrated_score() -> None:
    rng = np.random.default_rng(3)
    signals, labels = [], []
    for _ in range(3000):
        g = float(rng.uniform(0, 1))
        signals.append(sig(grounding=g))  # raw score = grounding alone
        labels.append(bool(rng.random() < g))
    calibrator = fit(signals, labels, with_agreement=False, method="isotonic")
    assert list(calibrator.ys) == sorted(calibrator.ys)
    for g in (0.2, 0.5, 0.8):
        assert calibrator.probability(sig(grounding=g)) == pytest.approx(g, abs=0.08)
    with pytest.raises(CalibrationError, match="agreement"):
        fit(signals, labels, with_agreement=True, method="isotonic")


def test_fit_needs_enough_valid_answers() -> None:
    rows = [sig(token_mean=0.9)] * (MIN_ROWS - 1) + [Signals(valid=False)] * 30
    with pytest.raises(CalibrationError, match=f"only {MIN_ROWS - 1} labelled valid answers"):
        fit(rows, [True] * len(rows), with_agreement=False)
    with pytest.raises(CalibrationError, match="labels"):
        fit(rows, [True], with_agreement=False)


def test_an_invalid_answer_is_worth_nothing_under_every_calibrator() -> None:
    signals, labels, _ = synthetic(100, seed=4)
    invalid = Signals(valid=False, self_reported=1.0, grounding=1.0)
    assert fit(signals, labels, with_agreement=False).probability(invalid) == 0.0
    assert Prior().calibrator(0.75).probability(invalid) == 0.0


def test_agreement_moves_the_with_agreement_calibrator() -> None:
    rng = np.random.default_rng(5)
    signals, labels = [], []
    for _ in range(600):
        agreement = float(rng.choice([0.0, 0.5, 1.0]))
        signals.append(sig(token_mean=0.95, agreement=agreement, samples=2))
        labels.append(bool(rng.random() < 0.2 + 0.7 * agreement))
    calibrator = fit(signals, labels, with_agreement=True)
    agree = calibrator.probability(sig(token_mean=0.95, agreement=1.0, samples=2))
    disagree = calibrator.probability(sig(token_mean=0.95, agreement=0.0, samples=2))
    assert agree == pytest.approx(0.9, abs=0.06) and disagree == pytest.approx(0.2, abs=0.06)


# metrics ------------------------------------------------------------------------------------------


def test_metrics_match_hand_computed_values() -> None:
    probs = [0.9, 0.8, 0.3, 0.2, 0.75]
    labels = [True, False, True, False, True]
    got = metrics(probs, labels, 0.75)
    assert got["n"] == 5 and got["accuracy"] == pytest.approx(0.6)
    # right answers {0.9, 0.3, 0.75} above wrong ones {0.8, 0.2}: 4 of 6 pairs
    assert got["auroc"] == pytest.approx(4 / 6)
    # every answer alone in its bin: (0.1 + 0.8 + 0.7 + 0.2 + 0.25) / 5
    assert got["ece"] == pytest.approx(0.41)
    assert got["brier"] == pytest.approx((0.01 + 0.64 + 0.49 + 0.04 + 0.0625) / 5)
    assert got["clear_share"] == pytest.approx(0.6) and got["clear_accuracy"] == pytest.approx(2 / 3)


def test_metrics_bins_ties_and_edges() -> None:
    # two answers share the [0.6, 0.7) bin: |0.65 - 0.5|
    assert metrics([0.61, 0.69], [True, False], 0.75)["ece"] == pytest.approx(0.15)
    assert metrics([1.0], [True], 0.75)["ece"] == pytest.approx(0.0)  # 1.0 falls in the last bin
    assert metrics([0.5, 0.5], [True, False], 0.75)["auroc"] == pytest.approx(0.5)  # a tie counts half
    one_class = metrics([0.2, 0.4], [True, True], 0.75)
    assert one_class["auroc"] is None and one_class["clear_accuracy"] is None and one_class["clear_share"] == 0.0
    assert metrics([], [], 0.75)["n"] == 0


# the table ----------------------------------------------------------------------------------------


def logistic(bias: float, **weights: float) -> Calibrator:
    return Calibrator(
        kind="logistic", features=FEATURES, weights=tuple(weights.get(f, 0.0) for f in FEATURES), bias=bias
    )


def entry(model: str, kind: str, base: Calibrator, **kw: object) -> CalibrationEntry:
    return CalibrationEntry(model=model, kind=kind, base=base, **{"n": 100, "accuracy": 0.7, **kw})  # type: ignore[arg-type]


def test_save_then_load_round_trips_and_the_user_file_overrides_entry_by_entry(tmp_path: Path) -> None:
    shipped = tmp_path / "default.json"
    CalibrationTable([entry("m", "qa", logistic(1.0)), entry("m", "sql", logistic(2.0))], prior=Prior(margin=0.1)).save(
        shipped
    )
    user = tmp_path / "data" / "calibration.json"
    CalibrationTable([entry("m", "qa", logistic(-1.0)), entry("n", "qa", logistic(0.5))]).save(user)
    assert not list(user.parent.glob(".*tmp"))  # the atomic write leaves no temporary file
    table = CalibrationTable.load(user, default_path=shipped, threshold=0.75)
    assert table.problems == []
    assert table.entries[("m", "qa")].base.bias == -1.0 and table.origins[("m", "qa")] == "user"
    assert table.entries[("m", "sql")].base.bias == 2.0 and table.origins[("m", "sql")] == "default"
    assert table.entries[("n", "qa")].base.bias == 0.5
    found, label = table.lookup("m", "sql")
    assert found == table.entries[("m", "sql")] and label.startswith("measured m/sql") and "default" in label
    # the user's file wrote a prior of its own (the default one), which wins over the shipped one
    assert table.prior == Prior()
    again = tmp_path / "again.json"
    table.save(again)
    reloaded = CalibrationTable.load(None, default_path=again)
    assert reloaded.entries == table.entries


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("{not json", "not a calibration table"),
        ('{"version": 9, "entries": []}', "version 9"),
        (
            '{"version": 1, "entries": [{"model": "m", "kind": "qa", "base": {"kind": "logistic", '
            '"features": ["old"], "weights": [1.0]}}]}',
            "refit it",
        ),
    ],
)
def test_a_corrupt_user_file_is_moved_aside_with_one_line_and_defaults_are_used(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, text: str, why: str
) -> None:
    shipped = tmp_path / "default.json"
    CalibrationTable([entry("m", "qa", logistic(1.0))]).save(shipped)
    user = tmp_path / "calibration.json"
    user.write_text(text)
    with caplog.at_level(logging.WARNING, logger="caelum_mcp.engine.calibration"):
        table = CalibrationTable.load(user, default_path=shipped)
    assert not user.exists()
    aside = list(tmp_path.glob("calibration.json.corrupt-*"))
    assert len(aside) == 1 and aside[0].read_text() == text
    assert len(table.problems) == 1 and "\n" not in table.problems[0]
    assert (
        why in table.problems[0] and aside[0].name in table.problems[0] and "caelum-mcp calibrate" in table.problems[0]
    )
    assert [r.getMessage() for r in caplog.records] == table.problems
    assert table.entries[("m", "qa")].base.bias == 1.0  # the shipped table still holds


def test_the_shipped_default_holds_the_pinned_models_entries_and_documents_its_prior() -> None:
    """The shipped table: entries fitted from the committed recordings of the pinned model only, so
    every other model (unmeasured) gets the documented prior, never the 1.5B model's figures."""
    table = CalibrationTable.load(None, threshold=0.75)
    assert table.problems == []
    assert table.entries and {model for model, _ in table.entries} == {"qwen2.5-coder:1.5b"}
    assert "threshold - margin" in table.prior.note and table.prior.margin > 0
    found, label = table.lookup("qwen2.5-coder:1.5b", "extraction")
    assert found.base.kind == "logistic" and label.startswith("measured qwen2.5-coder:1.5b/extraction")
    found, label = table.lookup("llama3.1:8b", "extraction")
    assert found.base.kind == "prior" and label.startswith("prior for unmeasured llama3.1:8b/extraction")


def test_with_nothing_measured_the_prior_keeps_the_raw_score_below_the_threshold_unless_verified() -> None:
    table = CalibrationTable(threshold=0.75)
    prior, _ = table.lookup("m", "qa")
    sure = sig(self_reported=1.0, token_mean=0.999)
    assert raw_score(sure) > 0.9
    assert prior.base.probability(sure) == pytest.approx(0.70)  # capped below 0.75
    weak = sig(self_reported=0.3, token_mean=0.4)
    assert prior.base.probability(weak) == pytest.approx(raw_score(weak))  # below the cap: unchanged
    verified = sig(self_reported=1.0, token_mean=0.999, grounding=1.0)
    assert prior.base.probability(verified) == pytest.approx(raw_score(verified)) and raw_score(verified) > 0.75
    assert CalibrationTable(threshold=0.5).lookup("m", "qa")[0].base.cap == pytest.approx(0.45)


def random_signals(n: int, seed: int) -> list[Signals]:
    rng = np.random.default_rng(seed)
    return [
        sig(
            self_reported=float(rng.uniform()),
            token_mean=float(rng.uniform(0.5, 1)),
            token_min=float(rng.uniform()),
            token_tail=float(rng.uniform()),
            grounding=None if rng.random() < 0.5 else float(rng.uniform()),
            output_tokens=int(rng.integers(1, 200)),
        )
        for _ in range(n)
    ]


def test_an_unmeasured_pair_never_reads_higher_than_the_family_it_falls_back_to() -> None:
    family = entry("*", "extraction", logistic(3.0, token_min=2.0), clear_accuracy=0.86)
    pooled = entry("*", "*", logistic(2.0, grounding=1.0), clear_accuracy=None, accuracy=0.6)
    measured = entry("qwen2.5-coder:1.5b", "extraction", logistic(4.0))
    table = CalibrationTable([family, pooled, measured])
    own, label = table.lookup("qwen2.5-coder:1.5b", "extraction")
    assert own == measured and label.startswith("measured")
    fallback, label = table.lookup("llama3.2:3b", "extraction")
    assert label.startswith("family */extraction for unmeasured llama3.2:3b/extraction, capped at 0.86")
    pooled_fallback, label = table.lookup("llama3.2:3b", "sql")
    assert label.startswith("all models and kinds */* for unmeasured llama3.2:3b/sql, capped at 0.60")
    for s in random_signals(500, seed=6):
        assert fallback.base.probability(s) <= min(family.base.probability(s), 0.86)
        assert pooled_fallback.base.probability(s) <= min(pooled.base.probability(s), 0.6)
    assert max(fallback.base.probability(s) for s in random_signals(500, seed=6)) == pytest.approx(0.86)


def test_entries_refuse_inconsistent_calibrators() -> None:
    with_agreement = Calibrator(
        kind="logistic", features=FEATURES_WITH_AGREEMENT, weights=(0.0,) * len(FEATURES_WITH_AGREEMENT)
    )
    with pytest.raises(ValueError, match="base must not use agreement"):
        entry("m", "qa", with_agreement)
    with pytest.raises(ValueError, match="with_agreement must be"):
        entry("m", "qa", logistic(0.0), with_agreement=logistic(0.0))
    with pytest.raises(ValueError, match="band"):
        entry("m", "qa", logistic(0.0), band=(0.8, 0.4))
    with pytest.raises(ValueError, match="non-decreasing"):
        Calibrator(kind="isotonic", xs=(0.0, 1.0), ys=(0.9, 0.1))


def test_a_kind_shift_moves_the_level_to_the_kind_and_keeps_the_ranking() -> None:
    """A pooled fit over kinds of different accuracy, shifted to the weaker kind with few rows of its
    own: the weights stay, the level drops to that kind's accuracy (the pooled one overstates it)."""
    signals, labels, _ = synthetic(3000, seed=7)
    pooled = fit(signals, labels, with_agreement=False)
    rng = np.random.default_rng(8)
    weak, weak_labels = [], []
    for _ in range(40):  # a kind the model gets right far less often at the same signals
        token_min = float(rng.uniform(0.05, 1.0))
        weak.append(sig(token_min=token_min, token_mean=0.9, token_tail=0.9, grounding=1.0))
        weak_labels.append(bool(rng.random() < 1 / (1 + math.exp(-(-7.0 + 5.0 * token_min + 2.5)))))
    shifted = shift_to_kind(pooled, weak, weak_labels)
    assert shifted.weights == pooled.weights and shifted.bias < pooled.bias - 1.0
    mean_pooled = float(np.mean([pooled.probability(s) for s in weak]))
    mean_shifted = float(np.mean([shifted.probability(s) for s in weak]))
    assert abs(mean_shifted - float(np.mean(weak_labels))) < abs(mean_pooled - float(np.mean(weak_labels)))
    assert abs(mean_shifted - float(np.mean(weak_labels))) < 0.1
    with pytest.raises(CalibrationError, match=f"at least {MIN_KIND_ROWS}"):
        shift_to_kind(pooled, weak[: MIN_KIND_ROWS - 1], weak_labels[: MIN_KIND_ROWS - 1])
    with pytest.raises(CalibrationError, match="logistic"):
        shift_to_kind(fit(signals, labels, with_agreement=False, method="isotonic"), weak, weak_labels)


def _rows_where_a_failed_check_looks_right() -> tuple[list[Signals], list[bool]]:
    """What `qa`'s dev rows looked like: nearly every answer passed its check; the one that failed
    it was right, the few that half passed were mostly wrong."""
    signals: list[Signals] = []
    labels: list[bool] = []
    rng = np.random.default_rng(7)
    for i in range(40):
        token = float(rng.uniform(0.2, 0.6))
        grounding = 0.0 if i < 2 else 0.5 if i < 8 else 1.0
        signals.append(Signals(valid=True, self_reported=0.9, token_mean=0.9, token_min=token, grounding=grounding))
        labels.append(True if grounding == 0.0 else (i == 3) if grounding == 0.5 else (i % 4 != 0))
    return signals, labels


def test_a_failed_grounding_check_never_raises_the_probability() -> None:
    """Everything else equal, an answer whose check failed reads no higher than one whose check half
    passed, and that one no higher than one that passed: the fit holds the grounding weights at 0 or
    above (before, two right answers with failed checks gave `grounding` a negative weight, and an
    answer whose every citation was dropped read higher than one half grounded)."""
    signals, labels = _rows_where_a_failed_check_looks_right()
    calibrator = fit(signals, labels, with_agreement=False)
    named = dict(zip(FEATURES, calibrator.weights, strict=True))
    assert named["grounding"] >= 0 and named["grounding_full"] >= 0, named
    probe = {"valid": True, "self_reported": 0.9, "token_mean": 0.9, "token_min": 0.4}
    failed, half, passed = (calibrator.probability(Signals(**probe, grounding=g)) for g in (0.0, 0.5, 1.0))
    assert failed <= half <= passed, (failed, half, passed)
    # the held weight sits at its bound and the rest is the best fit given it: freeing it again
    # would lower the loss only by turning the weight negative
    assert named["grounding"] == 0.0
    with_agreement = fit(
        [s.model_copy(update={"agreement": 0.5}) for s in signals], labels, with_agreement=True
    )  # the same rule with agreement's two extra features
    weights = dict(zip(FEATURES_WITH_AGREEMENT, with_agreement.weights, strict=True))
    assert weights["grounding"] >= 0 and weights["grounding_full"] >= 0


def test_the_bound_changes_nothing_where_the_data_already_agree_with_it() -> None:
    """Where every grounding weight comes out positive anyway, the bounded fit is the plain one."""
    from caelum_mcp.engine.calibration import fitting

    signals, labels, _ = synthetic(1500, seed=4)  # grounding's true weight is +2.5
    calibrator = fit(signals, labels, with_agreement=False)
    named = dict(zip(FEATURES, calibrator.weights, strict=True))
    assert named["grounding"] > 0 and named["grounding_full"] > 0
    x = np.array([feature_vector(s, with_agreement=False) for s in signals])
    design = np.hstack([x, np.ones((len(signals), 1))])
    penalty = np.full(len(FEATURES) + 1, fitting.L2)
    penalty[-1] = 0.0
    targets = fitting._platt_targets(np.array([1.0 if y else 0.0 for y in labels]))
    plain = fitting._newton(design, targets, penalty)
    assert np.allclose(plain[:-1], calibrator.weights, atol=1e-6) and plain[-1] == pytest.approx(calibrator.bias)


def test_every_shipped_entry_reads_a_passed_check_at_least_as_high_as_a_failed_one() -> None:
    table = CalibrationTable.load(None)
    probes = [
        {"valid": True, "self_reported": s, "token_mean": m, "token_min": t, "output_tokens": n}
        for s in (0.5, 0.95)
        for m, t in ((0.8, 0.1), (0.99, 0.6))
        for n in (10, 200)
    ]
    for (model, kind), entry in table.entries.items():
        for calibrator in (entry.base, entry.with_agreement):
            if calibrator is None:
                continue
            for probe in probes:
                extra = {"agreement": 0.5} if calibrator.uses_agreement else {}
                got = [calibrator.probability(Signals(**probe, **extra, grounding=g)) for g in (0.0, 0.5, 0.99, 1.0)]
                assert got == sorted(got), (model, kind, probe, got)


def test_an_answer_whose_check_kept_nothing_reads_at_most_the_measured_cap() -> None:
    signals, labels, _ = synthetic(1500, seed=5)
    capped = fit(signals, labels, with_agreement=False).model_copy(update={"failed_check_cap": 0.06})
    sure = {"valid": True, "self_reported": 0.95, "token_mean": 0.999, "token_min": 0.99, "token_tail": 0.99}
    assert capped.probability(Signals(**sure, grounding=0.0)) == 0.06  # the fit alone reads it higher
    assert capped.model_copy(update={"failed_check_cap": None}).probability(Signals(**sure, grounding=0.0)) > 0.06
    # a check that kept something, or no check at all, is left to the fit
    assert capped.probability(Signals(**sure, grounding=0.5)) > 0.06
    assert capped.probability(Signals(**sure)) > 0.06
    # it survives a fallback's cap and the file
    assert capped.capped(0.5).failed_check_cap == 0.06
    assert Calibrator.model_validate_json(capped.model_dump_json()) == capped


def test_every_shipped_entry_keeps_an_answer_whose_check_kept_nothing_below_the_threshold() -> None:
    table = CalibrationTable.load(None)
    for (model, kind), entry in table.entries.items():
        if entry.base.kind != "logistic":
            continue
        assert entry.base.failed_check_cap is not None and entry.base.failed_check_cap < 0.75, (model, kind)
