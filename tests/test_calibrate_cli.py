"""``caelum-mcp calibrate``: refit per (model, kind) from the ledger's labels and recordings, write
``<data dir>/calibration.json`` (or only print with --dry-run), and say clearly what is missing."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest
from fakes import postgres

from caelum_mcp.engine.calibration import USER_FILE, CalibrationEntry, CalibrationTable, Calibrator, Signals
from caelum_mcp.engine.ledger import CalibrationLabel, Ledger
from caelum_mcp.serving.cli import main

# Fixtures: the session's PostgreSQL server, and a database of its own for each test.
postgres_server = postgres.postgres_server
postgres_url = postgres.postgres_url


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "home"
    home.mkdir()
    for name in ("CAELUM_CONFIG", "XDG_CONFIG_HOME", "XDG_DATA_HOME", "ANTHROPIC_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("CAELUM_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("CAELUM_IMPLICIT_OLLAMA", "false")
    (tmp_path / "data").mkdir()
    return tmp_path / "data"


def calibrate(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exited:
        main(["calibrate", *args])
    out, err = capsys.readouterr()
    return int(exited.value.code or 0), out, err


def answer(rng: random.Random, *, agreement: bool = False) -> tuple[dict[str, Any], bool]:
    """Signals of one answer and whether it was right: a sure answer (high token probability, self
    report and grounding) is usually right, an unsure one usually wrong."""
    sure = rng.random() < 0.6
    correct = rng.random() < (0.92 if sure else 0.2)
    mean = rng.uniform(0.985, 0.999) if sure else rng.uniform(0.85, 0.95)
    signals = Signals(
        valid=True,
        self_reported=0.9 if sure else 0.6,
        token_mean=mean,
        token_min=mean - 0.3,
        token_tail=mean - 0.2,
        grounding=1.0 if correct or rng.random() < 0.3 else 0.0,
        output_tokens=rng.randint(5, 60),
        agreement=(1.0 if correct else rng.choice([0.0, 0.5])) if agreement else None,
        samples=2 if agreement else 0,
    )
    return signals.model_dump(), correct


def fill_ledger(data_dir: Path, n: int, *, model: str = "qwen3:4b", kind: str = "qa", seed: int = 1) -> None:
    rng = random.Random(seed)
    with Ledger(data_dir / "ledger.sqlite3") as ledger:
        for i in range(n):
            signals, correct = answer(rng)
            ledger.add_label(
                CalibrationLabel(
                    ts=1_700_000_000.0 + i,
                    model=model,
                    kind=kind,
                    signals=signals,
                    label=correct,
                    source="audit",
                    claude_model="claude-sonnet-5-5",
                )
            )
        # a reply Claude could not read: seen, but no label to fit on
        ledger.add_label(
            CalibrationLabel(ts=1.0, model=model, kind=kind, signals={"valid": True}, label=None, source="audit")
        )


def write_recordings(path: Path, n: int, *, model: str = "qwen2.5-coder:1.5b", kind: str = "sql") -> Path:
    rng = random.Random(2)
    rows, samples = [], []
    for i in range(n):
        signals, correct = answer(rng, agreement=True)
        agreement, count = signals.pop("agreement"), signals.pop("samples")
        rows.append(
            {"id": f"t/{i}", "split": "dev", "kind": kind, "model": model, "correct": correct, "signals": signals}
        )
        samples.append({"id": f"t/{i}", "model": model, "agreement": agreement, "samples": count})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    path.with_name(path.stem + ".agreement.jsonl").write_text("".join(json.dumps(r) + "\n" for r in samples))
    return path


def test_refits_from_the_ledger_and_recordings_and_writes_the_users_table(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fill_ledger(data_dir, 80)
    recordings = write_recordings(tmp_path / "qwen2.5-coder-1.5b.jsonl", 40)
    kept = CalibrationEntry(
        model="qwen3:8b", kind="review", base=Calibrator(kind="isotonic", xs=(0.0, 1.0), ys=(0.2, 0.8)), n=33
    )
    CalibrationTable([kept]).save(data_dir / USER_FILE)  # an earlier refit of a pair with no new labels

    code, out, err = calibrate(capsys, "--recordings", str(recordings))
    assert code == 0, err
    lines = {tuple(line.split()[:3]): line for line in out.splitlines() if line.split()}
    assert ("qwen3:4b", "qa", "80") in lines and ("qwen2.5-coder:1.5b", "sql", "40") in lines
    assert ("*", "qa", "80") in lines and ("*", "*", "120") in lines  # the families unmeasured models fall back to
    assert "0.75" in lines[("qwen3:4b", "qa", "80")]  # the threshold it was measured at
    assert "labelled answers: 80 from the ledger, 40 from recordings" in out
    assert f"wrote {data_dir / USER_FILE}" in out

    table = CalibrationTable.load(data_dir / USER_FILE)
    entry, label = table.lookup("qwen3:4b", "qa")
    assert "measured qwen3:4b/qa (n=80, user table)" in label
    assert entry.n == 80 and entry.threshold == 0.75 and "cross-validation" in entry.source
    assert entry.auroc is not None and entry.auroc > 0.75  # the signals separate right from wrong, held out
    assert entry.ece is not None and entry.accuracy is not None and 0.4 < entry.accuracy < 0.8
    sure = Signals(valid=True, self_reported=0.9, token_mean=0.995, token_min=0.7, token_tail=0.8, grounding=1.0)
    unsure = Signals(valid=True, self_reported=0.6, token_mean=0.9, token_min=0.6, token_tail=0.7, grounding=0.0)
    assert entry.base.probability(sure) > 0.75 > entry.base.probability(unsure)
    recorded, _ = table.lookup("qwen2.5-coder:1.5b", "sql")
    assert recorded.with_agreement is not None and recorded.band == (0.4, 0.9)  # the agreement file was read
    assert table.entries[("qwen3:8b", "review")] == kept  # not refitted, not lost
    assert table.origins[("qwen3:8b", "review")] == "user"


def test_dry_run_prints_the_refit_and_writes_nothing(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fill_ledger(data_dir, 30)
    code, out, err = calibrate(capsys, "--dry-run")
    assert code == 0, err
    assert any(line.split()[:3] == ["qwen3:4b", "qa", "30"] for line in out.splitlines())
    assert f"dry run: {data_dir / USER_FILE} not written" in out
    assert not (data_dir / USER_FILE).exists()


def test_no_labels_is_one_clear_line(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = calibrate(capsys)
    assert code == 2 and out == ""
    (line,) = err.strip().splitlines()
    assert "no labelled answers to calibrate from" in line and "audit_rate" in line and "--recordings" in line


@pytest.mark.slow
def test_no_labels_in_a_postgresql_ledger_names_that_ledger_without_its_password(
    data_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, postgres_url: str
) -> None:
    url = postgres_url.replace("://caelum_test@", "://caelum_test:s3cret-pw@")  # trust auth ignores it
    assert "s3cret-pw" in url
    monkeypatch.setenv("CAELUM_LEDGER__URL", url)
    code, out, err = calibrate(capsys)
    assert code == 2 and out == ""
    (line,) = err.strip().splitlines()
    assert "no labelled answers to calibrate from: the ledger postgresql://caelum_test:***@" in line, line
    assert "s3cret-pw" not in line and "ledger.sqlite3" not in line


def test_too_few_labels_says_which_pairs_and_writes_nothing(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fill_ledger(data_dir, 12)
    code, out, err = calibrate(capsys)
    assert code == 2
    assert "qwen3:4b/qa: 12 labels, not refitted: 12 labelled valid answers, 20 needed" in out
    assert "nothing refitted" in err and len(err.strip().splitlines()) == 1
    assert not (data_dir / USER_FILE).exists()


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (None, "no such file"),
        ('{"model": "m", "kind": "qa", "signals": {"valid": true}, "correct": true}\n{oops\n', "line 2: not JSON"),
        ('{"model": "m", "kind": "qa", "correct": true}\n', "line 1: not a recording (no signals)"),
        (
            '{"model": "m", "kind": "qa", "signals": {"valid": true, "token_mean": 7}, "correct": true}\n',
            "line 1: signals.token_mean",
        ),
        (
            '{"model": "m", "kind": "qa", "signals": {"valid": true}, "correct": "yes"}\n',
            "'correct' must be true or false",
        ),
        ("[1, 2]\n", "line 1: not a JSON object"),
    ],
)
def test_a_bad_recordings_file_is_one_clear_line(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str | None, expected: str
) -> None:
    path = tmp_path / "rec.jsonl"
    if content is not None:
        path.write_text(content)
    code, out, err = calibrate(capsys, "--recordings", str(path))
    assert code == 2 and out == ""
    (line,) = err.strip().splitlines()
    assert expected in line and str(path) in line
