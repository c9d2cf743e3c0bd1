"""Grounding checks of the LLM code tasks: cited files, lines and rules must exist."""

from __future__ import annotations

from pathlib import Path

from caelum_mcp.tools.code import review
from caelum_mcp.tools.code.models import Finding


def _project(tmp_path: Path) -> review.SourceIndex:
    (tmp_path / "app.py").write_text("import os\n\ndef f(x):\n    return eval(x)\n")
    (tmp_path / "util.py").write_text("X = 1\n")
    return review.SourceIndex(tmp_path, ["app.py", "util.py"])


FINDINGS = [
    Finding(tool="bandit", rule="B307", severity="high", file="app.py", line=4, message="Use of eval"),
    Finding(tool="ruff", rule="F401", severity="low", file="app.py", line=1, message="`os` imported but unused"),
]


def test_recommendations_grounded_only_when_file_line_and_rule_exist(tmp_path: Path) -> None:
    index = _project(tmp_path)
    output = {
        "summary": "s",
        "recommendations": [
            {"title": "no eval", "priority": 1, "file": "app.py", "line": 4, "rule": "B307", "rationale": "r"},
            {"title": "ghost file", "priority": 2, "file": "nope.py", "line": 1, "rule": "B307", "rationale": "r"},
            {"title": "ghost line", "priority": 2, "file": "app.py", "line": 99, "rule": "B307", "rationale": "r"},
            {"title": "ghost rule", "priority": 3, "file": "util.py", "line": 1, "rule": "B999", "rationale": "r"},
        ],
    }
    g = review.ground_recommendations(output, FINDINGS, index)
    assert g.valid == (0,)
    assert g.score == 0.25
    assert any("nope.py" in p for p in g.problems)
    assert any("no line 99" in p for p in g.problems)
    assert any("B999" in p for p in g.problems)


def test_no_recommendations_with_findings_is_half_grounded(tmp_path: Path) -> None:
    index = _project(tmp_path)
    assert review.ground_recommendations({"recommendations": []}, FINDINGS, index).score == 0.5
    assert review.ground_recommendations({"recommendations": []}, [], index).score == 1.0


def test_comments_must_anchor_to_changed_lines() -> None:
    changed = {"app.py": {3, 4}}
    output = {
        "comments": [
            {"file": "app.py", "line": 4, "severity": "high", "comment": "eval of input"},
            {"file": "app.py", "line": 1, "severity": "low", "comment": "unchanged line"},
            {"file": "other.py", "line": 1, "severity": "low", "comment": "not in diff"},
        ]
    }
    g = review.ground_comments(output, changed)
    assert g.valid == (0,) and abs(g.score - 1 / 3) < 1e-9


def test_triage_must_name_failing_tests_and_real_places(tmp_path: Path) -> None:
    index = _project(tmp_path)
    failures = {"tests/test_a.py::test_x": "app.py:4: NameError: name 'y' is not defined"}
    output = {
        "triage": [
            {"test": "tests/test_a.py::test_x", "likely_cause": "typo", "file": "app.py", "line": 4},
            {"test": "tests/test_a.py::test_y", "likely_cause": "?", "file": "app.py", "line": 4},
            {"test": "tests/test_a.py::test_x", "likely_cause": "?", "file": "zzz.py", "line": 7},
        ]
    }
    g = review.ground_triage(output, failures, index)
    assert g.valid == (0,)
    assert len(g.problems) == 2


def test_prompts_cite_findings_and_code(tmp_path: Path) -> None:
    index = _project(tmp_path)
    system, user = review.review_task(FINDINGS, index, {"files": 2}, "security")
    assert "never invent" in system
    assert "app.py:4 [B307]" in user and "return eval(x)" in user
    _, edits = review.edits_task(FINDINGS[:1], index)
    assert "    4 |     return eval(x)" in edits
