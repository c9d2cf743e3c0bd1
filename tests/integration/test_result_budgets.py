"""Results over a real MCP session are counted by the one token estimate, which holds for numeric
JSON; a wide profile says which columns it left out and ``columns`` fetches them; results carry no
optional null fields and no float noise (issue 20 item 11)."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path
from typing import Any

from caelum_mcp.engine.budget import estimate_tokens

from .test_platform import session

WIDTH = 40
BUDGET = 4000  # [server] result_tokens' default: the session's config does not change it
# Compact numeric JSON: 1.9 to 2.1 characters a token by the published Claude tokenizer (the
# anthropic SDK's up to 0.34; the issue measured 2.3 to 2.9 on later ones).
NUMERIC_CHARS_PER_TOKEN = 2.0


def wide_csv(path: Path, rows: int = 300) -> list[str]:
    """A CSV of ``WIDTH`` numeric columns (floats with many decimals, integers); its column names."""
    rng = random.Random(20)
    names = [f"m{i:02}" for i in range(WIDTH)]
    lines = [",".join(names)]
    for _ in range(rows):
        cells = [repr(rng.uniform(-1e4, 1e4)) if i % 3 else str(rng.randint(0, 10**7)) for i in range(WIDTH)]
        lines.append(",".join(cells))
    path.write_text("\n".join(lines) + "\n")
    return names


async def call(client: Any, tool: str, args: dict[str, Any]) -> tuple[dict[str, Any], str]:
    res = await client.call_tool(tool, args)
    assert not res.is_error, res.content
    assert res.structured_content is not None
    return res.structured_content, res.content[0].text


def float_noise(text: str) -> list[str]:
    """Floats written with more significant digits than a double carries (15, ``FLOAT_DIGITS``):
    ``0.30000000000000004``-style binary noise that costs tokens and says nothing."""
    return [m for m in re.findall(r"-?\d+\.\d+(?:e-?\d+)?", text) if len(re.sub(r"\D|e.*", "", m).lstrip("0")) > 15]


async def test_a_40_column_numeric_select_star_stays_within_its_token_budget(tmp_path: Path) -> None:
    root = tmp_path / "work"
    root.mkdir()
    wide_csv(root / "wide.csv")
    async with session(tmp_path, []) as (client, _):
        out, text = await call(client, "query_data", {"sources": ["wide.csv"], "sql": "SELECT * FROM wide"})
        shown = len(out["rows"])
        (hint,) = [n for n in out["notes"] if "OFFSET" in n]  # what was left out can be fetched
        assert f"OFFSET {shown}" in hint
        page, _ = await call(
            client,
            "query_data",
            {"sources": ["wide.csv"], "sql": f"SELECT * FROM wide LIMIT 5 OFFSET {shown}", "max_rows": 5},
        )
        next_line = (root / "wide.csv").read_text().splitlines()[1 + shown]
        assert page["rows"][0][0] == int(next_line.split(",")[0])  # the first row not shown before
    assert json.loads(text) == out  # the text the model reads is the structured result
    assert len(out["columns"]) == WIDTH and out["rows"] and out["row_count"] == 300
    assert out["rows_omitted"] == 300 - len(out["rows"])  # what did not fit is counted
    assert estimate_tokens(text) <= BUDGET
    # at numeric JSON's rate the text is within the budget too (3.5 or 3 characters a token was not)
    assert len(text) / NUMERIC_CHARS_PER_TOKEN <= BUDGET, len(text)
    assert not float_noise(text)


async def test_profile_data_on_40_columns_says_which_it_left_out_and_columns_gets_them(tmp_path: Path) -> None:
    root = tmp_path / "work"
    root.mkdir()
    names = wide_csv(root / "wide.csv")
    async with session(tmp_path, []) as (client, _):
        out, text = await call(client, "profile_data", {"source": "wide.csv", "summary": False})
        shown = [c["name"] for c in out["profile"]["columns"]]
        assert out["column_names"] == names and 0 < len(shown) < WIDTH
        assert out["omitted"]["profile.columns"] == WIDTH - len(shown) and "`columns`" in out["more"]
        assert estimate_tokens(text) <= BUDGET
        # no optional null field in a column (a number column has no `parses_as`, `date_range`), no float noise
        assert '":null' not in json.dumps(out["profile"]) and not float_noise(text)
        assert all("parses_as" not in c and "date_range" not in c for c in out["profile"]["columns"])

        left_out = [n for n in names if n not in shown]
        asked = [n.upper() for n in left_out[:8]]  # names match as DuckDB's do, case aside
        more, _ = await call(client, "profile_data", {"source": "wide.csv", "summary": False, "columns": asked})
        got = {c["name"]: c for c in more["profile"]["columns"]}
        assert list(got) == left_out[:8] and "omitted" not in more
        assert all(c["distinct"] > 1 and "mean" in c for c in got.values())

        bad = await client.call_tool("profile_data", {"source": "wide.csv", "columns": ["m01", "nope"]})
        assert bad.is_error and "no column 'nope'" in bad.content[0].text and "m39" in bad.content[0].text
