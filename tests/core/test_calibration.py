"""The calibration module: token signals, the fitted calibrators, metrics, the table and its priors."""

from __future__ import annotations

import math

import pytest

from caelum_mcp.calibration import token_signals
from caelum_mcp.types import TokenLogprob


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
