"""Budget: results cut to a token budget, biggest pieces first, with a record of what was left out."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from caelum_mcp.engine.budget import estimate_tokens, fit_to_budget, result_size, round_floats

SEVERITIES = ("critical", "high", "medium", "low")


def finding(i: int) -> dict[str, Any]:
    return {
        "tool": ("ruff", "bandit", "radon", "vulture")[i % 4],
        "rule": f"E{500 + i % 37}",
        "severity": SEVERITIES[i % 4],
        "file": f"caelum_mcp/module_{i % 53}/part_{i % 7}.py",
        "line": i % 977 + 1,
        "message": f"Line too long ({121 + i % 80} > 120 characters) in the call to render_{i}; wrap the arguments",
    }


def analysis(n: int = 5000) -> dict[str, Any]:
    return {
        "project": "caelum",
        "summary": "5000 findings, most of them style",
        "findings": [finding(i) for i in range(n)],
        "findings_total": n,
        "counts": {"low": n // 4, "medium": n // 4},
        "errors": [],
        "llm_note": None,
    }


def checked(data: dict[str, Any], budget: int, **kwargs: Any) -> Any:
    """``fit_to_budget`` with the checks every result must pass: within budget, exact size, input intact."""
    before = copy.deepcopy(data)
    fitted = fit_to_budget(data, budget, **kwargs)
    assert fitted.tokens == result_size(fitted.data)
    assert fitted.tokens <= budget
    assert data == before
    return fitted


def test_estimate_is_three_letters_a_token_and_more_for_digits_punctuation_and_other_scripts() -> None:
    assert estimate_tokens("") == 0
    assert estimate_tokens("abc" * 1000) == 1000
    assert estimate_tokens("ab") == 1  # rounded up
    assert estimate_tokens("日本語" * 100) > 300  # CJK: more than a token a character
    assert estimate_tokens("é" * 300) > estimate_tokens("e" * 300)
    assert estimate_tokens("the cat sat " * 100) < estimate_tokens("0123456789" * 100)


def test_numeric_json_is_counted_at_two_characters_a_token_or_more() -> None:
    # The published Claude tokenizer (the anthropic SDK's, up to 0.34) reads compact numeric JSON at
    # 1.9-2.1 characters a token; counted at 3 a token, a 40-column SELECT * went over its budget.
    rows = [[round(i * 7.31 + j * 0.0173, 4) if j % 3 else i * 100_003 + j for j in range(40)] for i in range(30)]
    for data in ({"rows": rows}, [-1.5, 2.25, 1e-7, 3], {"n": 1234567, "share": 0.4167}):
        text = json.dumps(data, separators=(",", ":"))
        assert estimate_tokens(text) >= len(text) / 2, text[:80]


def test_the_estimate_adds_up_across_pieces() -> None:
    # fit_to_budget's arithmetic relies on it: a list weighs its items, brackets and commas
    items = [{"a": 1.5, "b": "x y"}, "日本", 42, [None, True]]
    whole = json.dumps(items, separators=(",", ":"), ensure_ascii=False)
    assert fit_to_budget({"items": items}, 10_000).tokens == result_size({"items": items})
    assert estimate_tokens(whole) <= sum(estimate_tokens(json.dumps(i, ensure_ascii=False)) for i in items) + 3


def test_floats_lose_their_binary_noise_and_no_digit_of_data() -> None:
    data = {"mean": 33.333333333333336, "sum": 0.1 + 0.2, "rows": [[1, 2.0, None, "0.30000000000000004"]], "n": 7}
    assert round_floats(data) == {
        "mean": 33.3333333333333,
        "sum": 0.3,
        "rows": [[1, 2.0, None, "0.30000000000000004"]],
        "n": 7,
    }
    assert round_floats({"inf": float("inf"), "big": 1.2345678901234e20}) == {
        "inf": float("inf"),
        "big": 1.2345678901234e20,
    }
    # data a query returns keeps every digit it had: a SUM of DECIMAL(15, 2) money, a 15-digit total
    money = [1035681023.49, 9999999999999.99, 123456789012.345, -0.01, 1e-9]
    assert round_floats(money) == money


def test_a_result_that_fits_is_returned_unchanged() -> None:
    data = analysis(10)
    fitted = fit_to_budget(data, 4000)
    assert fitted.data is data
    assert fitted.omitted == {}
    assert fitted.tokens == result_size(data) == estimate_tokens(json.dumps(data, separators=(",", ":")))


@pytest.mark.parametrize("budget", [4000, 20000])
def test_thousands_of_findings_keep_the_leading_ones(budget: int) -> None:
    data = analysis(5000)
    fitted = checked(data, budget)
    kept = fitted.data["findings"]
    assert fitted.omitted == {"findings": 5000 - len(kept)}
    assert kept == data["findings"][: len(kept)]
    assert fitted.tokens > budget * 0.95  # cut only as far as needed
    assert {k: v for k, v in fitted.data.items() if k != "findings"} == {
        k: v for k, v in data.items() if k != "findings"
    }


def test_the_biggest_list_is_cut_first() -> None:
    data = {"tests": [finding(i) for i in range(300)], "failures": [finding(i) for i in range(100)]}
    fitted = checked(data, result_size(data) - 2000)
    assert fitted.data["failures"] == data["failures"]
    assert list(fitted.omitted) == ["tests"]


def test_two_oversized_lists_are_both_kept_in_part() -> None:
    data = {"tests": [finding(i) for i in range(3000)], "failures": [finding(i) for i in range(1000)]}
    fitted = checked(data, 4000)
    tests, failures = fitted.data["tests"], fitted.data["failures"]
    assert tests and failures
    sizes = sorted([result_size(tests), result_size(failures)])
    assert sizes[0] > 0.75 * sizes[1]  # cut towards the same size, not one wiped out for the other
    assert fitted.omitted == {"tests": 3000 - len(tests), "failures": 1000 - len(failures)}


def test_a_list_making_up_most_of_an_item_is_cut_inside_it() -> None:
    hosts = [{"name": f"h{i}", "models": [f"model-{i}-{j}" for j in range(4)]} for i in range(3)]
    hosts[2]["models"] = [f"model-2-{j}" for j in range(5000)]
    data = {"hosts": hosts, "tiers": ["micro", "small"]}
    fitted = checked(data, 1000)
    assert [h["name"] for h in fitted.data["hosts"]] == ["h0", "h1", "h2"]
    kept = fitted.data["hosts"][2]["models"]
    assert fitted.omitted == {"hosts[2].models": 5000 - len(kept)}
    assert kept == hosts[2]["models"][: len(kept)]


def test_protected_fields_are_cut_last() -> None:
    data = {"failures": [finding(i) for i in range(400)], "tests": [finding(i) for i in range(100)]}
    fitted = checked(data, result_size(data["failures"]) + 100, protect=("failures",))
    assert fitted.data["failures"] == data["failures"]
    assert list(fitted.omitted) == ["tests"]

    fitted = checked(data, 2000, protect=("failures",))
    assert fitted.data["tests"] == []
    assert fitted.omitted["tests"] == 100
    assert 0 < len(fitted.data["failures"]) < 400


def test_a_long_string_is_shortened_keeping_its_start() -> None:
    tail = "".join(f"line {i}: collected item test_{i}\n" for i in range(60000))
    assert len(tail) > 2_000_000
    data = {"passed": False, "failures": [finding(i) for i in range(3)], "output_tail": tail}
    fitted = checked(data, 4000)
    assert fitted.data["failures"] == data["failures"]
    short = fitted.data["output_tail"]
    kept, marker = short.split(" … [")
    assert tail.startswith(kept) and len(kept) > 5000
    assert fitted.omitted == {"output_tail (characters)": len(tail) - len(kept)}
    assert marker == f"{len(tail) - len(kept)} characters cut]"


def test_a_string_making_up_most_of_an_item_is_shortened_inside_it() -> None:
    failures = [{"node_id": f"test_{i}", "detail": "x"} for i in range(5)]
    failures[0]["detail"] = "Traceback (most recent call last):\n" * 50000
    fitted = checked({"failures": failures}, 2000)
    assert [f["node_id"] for f in fitted.data["failures"]] == [f"test_{i}" for i in range(5)]
    assert list(fitted.omitted) == ["failures[0].detail (characters)"]


def test_cuts_inside_items_dropped_later_are_not_reported() -> None:
    items = [{"detail": "y" * 20000, "n": i} for i in range(3)]
    fitted = checked({"items": items}, 10)
    assert fitted.data["items"] == []
    assert fitted.omitted == {"items": 3}


ODD: list[dict[str, Any]] = [
    {},
    {"a": [], "b": {}, "c": None, "d": [[], [[]], {}], "e": 0, "f": -1.5e300, "g": True},
    {"π": "ünïcödé " * 500, "emoji": ["🙂" * 300] * 20, "cjk": {"x": "漢字" * 2000}},
    {"deep": {"a": [{"b": [{"c": [{"d": list(range(500))}]}]}]}},
    {"nest": [[[[[["z" * 300] * 5] * 5] * 5] * 3]]},
    {"tuple": (1, 2, (3, "w" * 1000)), "ints": {1: "one", 2: ["two"] * 400}},
    {"lone": "\ud800" * 400, "ctl": "\x00\x01\t" * 2000, "quotes": '"\\' * 3000},
]


@pytest.mark.parametrize("data", ODD)
@pytest.mark.parametrize("budget", [0, 1, 10, 100, 1000])
def test_odd_structures_never_raise(data: dict[str, Any], budget: int) -> None:
    before = copy.deepcopy(data)
    fitted = fit_to_budget(data, budget)
    assert data == before
    assert fitted.tokens == result_size(fitted.data)
    if budget >= 100:
        assert fitted.tokens <= budget


def test_a_budget_below_the_skeleton_returns_the_smallest_result() -> None:
    data = {"project": "caelum", "findings": [finding(i) for i in range(50)], "note": "n" * 5000}
    fitted = fit_to_budget(data, 5)
    assert fitted.tokens > 5
    assert fitted.data["findings"] == []
    assert fitted.data["project"] == "caelum"
    assert fitted.data["note"] == "… [5000 characters cut]"
    assert fitted.omitted == {"findings": 50, "note (characters)": 5000}
