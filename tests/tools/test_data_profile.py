"""profile_table on planted problems: nulls, mixed types, outliers, duplicates, keys, dates."""

from __future__ import annotations

from pathlib import Path

from caelum_mcp.tools.data.profile import profile_table
from caelum_mcp.tools.data.session import DataSession, SessionLimits
from caelum_mcp.tools.data.sources import resolve_sources


def planted_csv(path: Path, rows: int = 200) -> Path:
    """``id`` unique; ``amount`` with two far outliers; ``code`` text that is numbers except 'n/a';
    ``day`` text dates; ``note`` mostly empty; ``country`` constant; the last row repeated once."""
    lines = ["id,amount,code,day,note,country,region"]
    for i in range(rows):
        amount = 10_000 if i in (7, 150) else 100 + (i % 10)
        code = "n/a" if i % 50 == 0 else str(1000 + i)
        note = "late" if i % 20 == 0 else ""
        lines.append(f"{i},{amount},{code},2024-01-{1 + i % 28:02d},{note},NL,{['a', 'b', 'c'][i % 3]}")
    lines.append(lines[-1])
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def profile_of(path: Path) -> object:
    session = DataSession(
        resolve_sources([path.name], [path.parent]), path.parent / "work", SessionLimits(), materialize=True
    )
    try:
        return profile_table(session, next(iter(session.tables)))
    finally:
        session.close()


def test_the_profile_finds_what_was_planted(tmp_path: Path) -> None:
    profile = profile_of(planted_csv(tmp_path / "orders.csv"))
    assert profile.rows == 201 and profile.duplicate_rows == 1  # type: ignore[attr-defined]
    assert profile.candidate_keys == []  # type: ignore[attr-defined]  # a repeated row: nothing is unique
    cols = {c.name: c for c in profile.columns}  # type: ignore[attr-defined]
    amount = cols["amount"]
    assert amount.outliers == 2 and amount.max == 10_000 and amount.min == 100
    assert amount.q25 is not None and amount.median is not None and amount.mean is not None
    assert any("2 IQR outlier" in issue for issue in amount.issues)
    code = cols["code"]
    assert (code.type, code.parses_as, code.unparseable, code.unparseable_examples) == ("VARCHAR", "BIGINT", 4, ["n/a"])
    assert any("mixed types" in issue and "'n/a'" in issue for issue in code.issues)
    assert cols["day"].date_range == ["2024-01-01", "2024-01-28"]
    assert cols["note"].null_pct > 90 and any("NULL" in issue for issue in cols["note"].issues)
    assert cols["country"].distinct == 1 and any("constant" in issue for issue in cols["country"].issues)
    region = cols["region"]
    assert region.distinct == 3 and [t.count for t in region.top_values] == [68, 67, 66]
    assert cols["id"].distinct == 200 and cols["id"].issues == []


def test_candidate_keys_are_single_columns_first_then_pairs(tmp_path: Path) -> None:
    single = tmp_path / "single.csv"
    single.write_text("id,name\n1,a\n2,a\n3,b\n")
    pairs = tmp_path / "pairs.csv"
    pairs.write_text("year,month,sales\n2024,1,5\n2024,2,5\n2025,1,5\n2025,2,6\n")
    assert profile_of(single).candidate_keys == [["id"]]  # type: ignore[attr-defined]
    assert profile_of(pairs).candidate_keys == [["year", "month"]]  # type: ignore[attr-defined]


def test_an_empty_table_profiles_without_dividing_by_zero(tmp_path: Path) -> None:
    empty = tmp_path / "empty.csv"
    empty.write_text("a,b\n")
    profile = profile_of(empty)
    assert profile.rows == 0 and profile.candidate_keys == []  # type: ignore[attr-defined]
    assert all(c.null_pct == 0 and c.distinct == 0 for c in profile.columns)  # type: ignore[attr-defined]
