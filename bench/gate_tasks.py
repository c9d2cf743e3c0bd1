"""The gate's labelled task set: loading, grading and the verifiers (issue 21, deliverable 2).

``bench/data/gate/tasks/<source>.jsonl`` holds one task a line (format: SOURCES.md beside it and the
gate design note): a short prompt as a user of the product would write it for its kind, a small JSON
schema of the answer (the router adds its own ``confidence`` field), the gold answer from the public
source, the grader that compares a model's parsed JSON answer with the gold, and a verifier that
checks the answer against what the prompt shows (nothing else), used as the grounding signal.

- :func:`load_tasks` reads and validates every task (a malformed row raises :class:`TaskError`
  naming the file, line and what to fix);
- :func:`grade` says whether an answer is right: strings compared after case, whitespace and
  punctuation are normalised, numbers with a tolerance, SQL by executing it on a read-only copy
  of the task's database and comparing result sets (as multisets unless the question asks for
  an order);
- :func:`grounding_check` returns a :data:`caelum_mcp.core.llm.GroundingCheck` for the task, or None
  where the prompt holds nothing to check an answer against;
- :func:`gold_output` is an answer built from the gold (what a perfect model would return).
"""

from __future__ import annotations

import json
import math
import re
import sqlite3
import string
import threading
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import jsonschema

from caelum_mcp.core.llm import GroundingCheck, GroundingResult, TaskKind
from caelum_mcp.engine.grounding import restatement_problem
from caelum_mcp.tools.data.models import QueryResult
from caelum_mcp.tools.data.sql_checks import judge
from caelum_mcp.tools.logs.formats import LEVELS, canonical_level, detect_format

DATA = Path(__file__).resolve().parent / "data" / "gate"
TASKS_DIR = DATA / "tasks"
PROMPT_CHARS = 900  # system + prompt; the pinned CPU model reads ~22 tokens/s
MAX_TOKENS = 96  # short answers; digits are one token each on Qwen, so a timestamp alone is ~12
MAX_TOKENS_CODE = 200  # code edits, and SQL with its one-sentence explanation (query_data's answer shape)
SPLITS = ("dev", "test")
SQL_TIMEOUT_S = 5.0
SQL_ROW_CAP = 10_000
FIELDS = (
    "id",
    "source",
    "group",
    "split",
    "kind",
    "system",
    "prompt",
    "schema",
    "gold",
    "grader",
    "verifier",
    "max_tokens",
)


class TaskError(ValueError):
    """A task file or row that does not follow the format; the message says where and what to fix."""


@dataclass(frozen=True)
class GateTask:
    """One labelled task. ``gold`` is in the grader's terms (see :data:`GRADERS`)."""

    id: str
    source: str
    group: str
    split: str
    kind: TaskKind
    system: str | None
    prompt: str
    schema: dict[str, Any]
    gold: dict[str, Any]
    grader: str
    verifier: dict[str, Any] | None
    max_tokens: int

    @property
    def verifier_spec(self) -> dict[str, Any]:
        """The verifier's parameters (empty for a task without a verifier)."""
        return self.verifier or {}


# --- normalisation ------------------------------------------------------------------------------

_PUNCT = str.maketrans(dict.fromkeys(string.punctuation + "\u2018\u2019\u201c\u201d\u2013\u2014", " "))
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")


def norm_text(value: Any) -> str:
    """Casefolded, accents and punctuation removed, whitespace collapsed: how strings are compared."""
    text = unicodedata.normalize("NFKD", str(value))
    text = "".join(ch for ch in text if not unicodedata.combining(ch))
    return " ".join(text.casefold().translate(_PUNCT).split())


def norm_answer(value: Any) -> str:
    """SQuAD's answer normalisation: :func:`norm_text` without the articles a, an, the."""
    return " ".join(_ARTICLES.sub(" ", norm_text(value)).split())


def as_number(value: Any) -> float | None:
    """A number from a JSON number or from a string holding one ("$1,200" -> 1200); else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, str):
        found = _NUMBER.findall(value)
        if len(found) == 1:
            return float(found[0].replace(",", ""))
    return None


def numbers_equal(got: Any, want: float) -> bool:
    """Equal to within rounding to 2 decimals (0.005) or one part in a million, whichever is larger:
    an answer of 33.33 for 100/3 is right, 18.5 or 276001 for 18 or 276000 is not."""
    number = as_number(got)
    return number is not None and math.isclose(number, want, rel_tol=1e-6, abs_tol=0.005)


def as_int(value: Any) -> int | None:
    number = as_number(value)
    return int(number) if number is not None and number == int(number) else None


def component_names(name: Any) -> set[str]:
    """The class names a logger name stands for: ``org.apache.x.RMContainerAllocator`` gives
    ``{"rmcontainerallocator"}``, ``dfs.DataNode$DataXceiver`` gives ``{"datanode", "dataxceiver"}``
    and ``3888:QuorumCnxManager$Listener`` ``{"quorumcnxmanager", "listener"}`` (package and host dropped)."""
    text = str(name).strip().strip("[]():")
    parts = [part for part in re.split(r"[.:/\\\s]+", text) if part]
    return {piece.casefold() for piece in parts[-1].split("$") if piece} if parts else set()


def same_component(answer: Any, gold: Any) -> bool:
    """Whether ``answer`` names the gold logger: its class names are all among the gold's (the
    outer class, the inner class or both, with or without the package)."""
    names = component_names(answer)
    return bool(names) and names <= component_names(gold)


def token_f1(prediction: str, gold: str) -> float:
    got, want = norm_answer(prediction).split(), norm_answer(gold).split()
    common = sum((Counter(got) & Counter(want)).values())
    if not got or not want or not common:
        return float(got == want)
    precision, recall = common / len(got), common / len(want)
    return 2 * precision * recall / (precision + recall)


# --- SQL ----------------------------------------------------------------------------------------


def database_path(name: str) -> Path:
    path = (DATA / "db" / name).resolve()
    if path.parent != (DATA / "db").resolve() or not path.is_file():
        raise TaskError(f"database {name!r} is not a file in {DATA / 'db'}: rebuild it with build_tasks.py")
    return path


def run_sql(database: str, sql: str) -> list[tuple[Any, ...]]:
    """Run one statement on a read-only connection to the task's database, under a time limit.

    Raises :class:`sqlite3.Error` when the statement fails, writes, or takes over SQL_TIMEOUT_S."""
    uri = f"file:{database_path(database)}?mode=ro&immutable=1"
    connection = sqlite3.connect(uri, uri=True, check_same_thread=False)
    timer = threading.Timer(SQL_TIMEOUT_S, connection.interrupt)
    try:
        connection.execute("PRAGMA query_only = ON")
        timer.start()
        cursor = connection.execute(sql)
        rows = cursor.fetchmany(SQL_ROW_CAP + 1)
        if len(rows) > SQL_ROW_CAP:
            raise sqlite3.OperationalError(f"more than {SQL_ROW_CAP} rows")
        return [tuple(row) for row in rows]
    finally:
        timer.cancel()
        connection.close()


def _cell(value: Any) -> Any:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int | float):
        return round(float(value), 2)
    if value is None:
        return None
    return norm_text(value)


def result_sets_equal(got: Sequence[Sequence[Any]], want: Sequence[Sequence[Any]], *, ordered: bool) -> bool:
    """Rows equal after rounding numbers to 2 decimals and normalising strings; as multisets unless
    ``ordered``. Extra columns in ``got`` are allowed when every gold column is among them in order."""
    if len(got) != len(want):
        return False
    got_rows = [tuple(_cell(v) for v in row) for row in got]
    want_rows = [tuple(_cell(v) for v in row) for row in want]
    if got_rows and want_rows and len(got_rows[0]) != len(want_rows[0]):
        projected = _project(got_rows, want_rows)
        if projected is None:
            return False
        got_rows = projected
    if ordered:
        return got_rows == want_rows
    return Counter(got_rows) == Counter(want_rows)


def _project(got: list[tuple[Any, ...]], want: list[tuple[Any, ...]]) -> list[tuple[Any, ...]] | None:
    """``got`` cut to the columns that match ``want``'s, in order, chosen by the first rows; None if none do."""
    width = len(want[0])
    columns: list[int] = []
    start = 0
    first_want = sorted(want, key=repr)
    for w in range(width):
        column_want = sorted(repr(row[w]) for row in first_want)
        for g in range(start, len(got[0])):
            if sorted(repr(row[g]) for row in got) == column_want:
                columns.append(g)
                start = g + 1
                break
        else:
            return None
    return [tuple(row[c] for c in columns) for row in got]


# --- graders ------------------------------------------------------------------------------------


def _grade_number(task: GateTask, output: Mapping[str, Any]) -> bool:
    return all(numbers_equal(output.get(key), float(value)) for key, value in task.gold.items())


def _grade_line(task: GateTask, output: Mapping[str, Any]) -> bool:
    return as_int(output.get("line")) == int(task.gold["line"])


def _grade_triage(task: GateTask, output: Mapping[str, Any]) -> bool:
    return as_int(output.get("line")) == task.gold["line"] and same_component(
        output.get("component", ""), task.gold["component"]
    )


def compact(value: Any) -> str:
    """:func:`norm_text` without any spaces: ``081109`` answers ``08-11-09`` and ``18:01:53,885`` ``18:01:53.885``."""
    return norm_text(value).replace(" ", "")


def _grade_fields(task: GateTask, output: Mapping[str, Any]) -> bool:
    return all(key in output and compact(output[key]) == compact(value) for key, value in task.gold.items())


def _grade_label(task: GateTask, output: Mapping[str, Any]) -> bool:
    return norm_text(output.get("label", "")) == norm_text(task.gold["label"])


def _grade_span(task: GateTask, output: Mapping[str, Any]) -> bool:
    """SQuAD style: exact match after normalisation with any gold answer, or token F1 >= 0.8."""
    answer = output.get("answer")
    if not isinstance(answer, str | int | float) or isinstance(answer, bool):
        return False
    answers = task.gold["answers"]
    return any(norm_answer(answer) == norm_answer(g) or token_f1(str(answer), g) >= 0.8 for g in answers)


_FENCE = re.compile(r"^\s*```(?:sql|sqlite)?\s*|\s*```\s*$", re.IGNORECASE)


def answer_sql(output: Mapping[str, Any]) -> str | None:
    """The answer's SQL without a Markdown code fence around it; None when there is none."""
    sql = output.get("sql")
    if not isinstance(sql, str):
        return None
    sql = _FENCE.sub("", sql).strip()
    return sql or None


def _grade_sql(task: GateTask, output: Mapping[str, Any]) -> bool:
    sql = answer_sql(output)
    if sql is None:
        return False
    try:
        rows = run_sql(task.gold["database"], sql)
    except (sqlite3.Error, sqlite3.Warning):
        return False
    return result_sets_equal(rows, task.gold["rows"], ordered=bool(task.gold.get("ordered")))


GRADERS: dict[str, Callable[[GateTask, Mapping[str, Any]], bool]] = {
    "number": _grade_number,  # gold: {field: number}
    "line": _grade_line,  # gold: {"line": int}
    "triage_line_component": _grade_triage,  # gold: {"line": int, "component": str}
    "fields": _grade_fields,  # gold: {field: str}; every field equal after normalisation
    "label": _grade_label,  # gold: {"label": str}
    "span": _grade_span,  # gold: {"answers": [str, ...]}
    "sql": _grade_sql,  # gold: {"database": file, "sql": gold query, "rows": [[...]], "ordered": bool}
}


def grade(task: GateTask, output: Mapping[str, Any] | None) -> bool:
    """Whether ``output`` (the parsed JSON answer; None = no valid answer) is right for ``task``."""
    if not isinstance(output, Mapping):
        return False
    return GRADERS[task.grader](task, output)


def gold_output(task: GateTask) -> dict[str, Any]:
    """The answer a perfect model would give, in the task's schema (tests grade it as right)."""
    if task.grader == "span":
        return {"answer": task.gold["answers"][0]}
    if task.grader == "sql":
        return {"sql": task.gold["sql"], "explanation": "the gold query"}
    if task.grader == "line":
        return {"line": task.gold["line"], "fix": ""}
    return dict(task.gold)


# --- verifiers (grounding): only what the prompt shows --------------------------------------------


def _excerpt_lines(prompt: str) -> dict[int, str]:
    """``N: text`` or ``NN text`` numbered lines of the prompt, by number."""
    lines: dict[int, str] = {}
    for line in prompt.splitlines():
        match = re.match(r"\s*(\d{1,3})[:\s](.*)$", line)
        if match:
            lines.setdefault(int(match.group(1)), match.group(2))
    return lines


def _verify_line_in_listing(task: GateTask, output: Mapping[str, Any]) -> GroundingResult:
    line = as_int(output.get("line"))
    listing = _excerpt_lines(task.prompt)
    if line is None or not 1 <= line <= int(task.verifier_spec["lines"]):
        return GroundingResult(score=0.0, problems=(f"line {output.get('line')!r} is not in the listing",))
    if not listing.get(line, "").strip():
        return GroundingResult(score=0.0, problems=(f"line {line} is blank",))
    return GroundingResult(score=1.0)


# a level word standing alone (not inside a dotted name such as ``log.error`` or ``ERROR_CODE``)
_LEVEL_WORD = re.compile(
    r"(?<![\w.])(TRACE|DEBUG|INFO|NOTICE|WARN|WARNING|ERROR|ERR|SEVERE|CRIT|CRITICAL|FATAL)(?![\w.])"
)


def line_severity(line: str) -> int:
    """How severe a log line is by its first level word: 0 for critical (FATAL), 1 error, 2 warning,
    3 info, 4 debug, 5 when it has none (the log reader's :data:`caelum_mcp.tools.logs.formats.LEVELS` order)."""
    match = _LEVEL_WORD.search(line)
    level = canonical_level(match.group(1)) if match else None
    return LEVELS.index(level) if level in LEVELS else len(LEVELS)


_FORMAT_REFERENCE = datetime(2026, 1, 1)  # the year a timestamp without one is read in; unused here


def logged_by(excerpt: Mapping[int, str], line: int) -> str | None:
    """The logger of ``excerpt[line]`` as the log reader parses it, the format read from the excerpt's
    own lines (``org.apache...RMContainerAllocator`` of a Hadoop line, not the ``[RMCommunicator
    Allocator]`` thread beside it); None where the reader finds no component on that line."""
    fmt = detect_format([excerpt[number] for number in sorted(excerpt)], _FORMAT_REFERENCE)
    parsed = fmt.parse(excerpt[line])
    return parsed.source if parsed is not None and parsed.source else None


def _names_on_line(names: set[str], line: str) -> bool:
    """Every class name stands whole on the line: ``NIOServerCnxn`` in ``[...:NIOServerCnxn@1001]``,
    not ``Allocator`` inside ``RMContainerAllocator``."""
    return bool(names) and all(
        re.search(rf"(?<![a-z0-9_]){re.escape(name)}(?![a-z0-9_])", line.casefold()) for name in names
    )


def _verify_triage(task: GateTask, output: Mapping[str, Any]) -> GroundingResult:
    """Half for naming the blamed line's logger, half for blaming a line at the excerpt's worst
    severity (a failure is not an INFO line beside an ERROR one). The logger is what the log reader
    parses from the line (since 2026-12-08; before, any class name found inside the line passed, so the
    thread ``RMCommunicator Allocator`` passed for ``RMContainerAllocator``), else a class name standing
    whole on the line."""
    line = as_int(output.get("line"))
    excerpt = _excerpt_lines(task.prompt)
    if line is None or line not in excerpt or line > int(task.verifier_spec["lines"]):
        return GroundingResult(score=0.0, problems=(f"line {output.get('line')!r} is not in the excerpt",))
    problems: list[str] = []
    shown = {number: text for number, text in excerpt.items() if number <= int(task.verifier_spec["lines"])}
    logger = logged_by(shown, line)
    if logger is not None:
        if not same_component(output.get("component", ""), logger):
            problems.append(f"component {output.get('component')!r} is not {logger!r}, the logger of line {line}")
    elif not _names_on_line(component_names(output.get("component", "")), excerpt[line]):
        problems.append(f"component {output.get('component')!r} is not on line {line}")
    worst = min(line_severity(text) for number, text in excerpt.items() if number <= int(task.verifier_spec["lines"]))
    if line_severity(excerpt[line]) > worst:
        problems.append(f"line {line} is less severe than the excerpt's worst line")
    return GroundingResult(score=1.0 - 0.5 * len(problems), problems=tuple(problems))


# a value that stops here, or starts here, is part of a longer token: ``18:04:01`` of
# ``18:04:01,721``, ``sshd`` of ``sshd(pam_unix)``, ``LeaseRenewer`` of ``org.apache.hadoop.hdfs.LeaseRenewer``
_JOINERS = ",.(_$-"
_CONTINUES = re.compile(rf"\w|[{re.escape(_JOINERS)}]\w")


def _continued(before: str) -> bool:
    """Whether the (up to) two characters ``before`` a value carry a token on into it."""
    if not before:
        return False
    last = before[-1]
    return (
        last.isalnum()
        or last == "_"
        or (len(before) == 2 and last in _JOINERS and (before[0].isalnum() or before[0] == "_"))
    )


def cut_from_a_token(value: str, text: str) -> bool:
    """True when ``value`` occurs in ``text`` (ignoring case) only as a piece of a longer token: the
    answer was asked to copy a value exactly as written and copied part of it. False when it occurs
    whole somewhere, or not at all as written (a value matched only after normalising punctuation,
    ``18:01:53.885`` for ``18:01:53,885``, is judged by the containment check alone)."""
    needle, haystack = value.casefold().strip(), text.casefold()
    if not needle:
        return False
    found = False
    start = haystack.find(needle)
    while start >= 0:
        found = True
        end = start + len(needle)
        if not _CONTINUES.match(haystack[end : end + 2]) and not _continued(haystack[max(0, start - 2) : start]):
            return False
        start = haystack.find(needle, start + 1)
    return found


def _verify_values_in_prompt(task: GateTask, output: Mapping[str, Any]) -> GroundingResult:
    """Every field's value occurs in the prompt (after normalising case, punctuation and spaces),
    and is not a piece cut from a longer token of it."""
    body = compact(task.prompt)
    fields = list(task.schema["properties"])
    problems: list[str] = []
    for field in fields:
        value = output.get(field, "")
        if not compact(value) or compact(value) not in body:
            problems.append(f"{field}: {value!r} is not in the text")
        elif cut_from_a_token(str(value), task.prompt):
            problems.append(f"{field}: {value!r} is only part of a longer value in the text")
    return GroundingResult(score=(len(fields) - len(problems)) / len(fields), problems=tuple(problems))


_QUESTION = re.compile(r"^Question:\s*(.+)$", re.MULTILINE)


def _verify_span_in_passage(task: GateTask, output: Mapping[str, Any]) -> GroundingResult:
    """The answer is a span of the passage (else 0), and says something the question does not
    (:func:`caelum_mcp.engine.grounding.restatement_problem`, 0.5 when it only says it back)."""
    answer = norm_text(output.get("answer", ""))
    passage = norm_text(task.verifier_spec.get("passage") or task.prompt)
    if not answer or answer not in passage:
        return GroundingResult(score=0.0, problems=("the answer is not a span of the passage",))
    question = _QUESTION.search(task.prompt)
    problem = None if question is None else restatement_problem(str(output.get("answer", "")), question.group(1))
    if problem is not None:
        return GroundingResult(score=0.5, problems=(f"the answer {problem}",))
    return GroundingResult(score=1.0)


def _verify_label_allowed(task: GateTask, output: Mapping[str, Any]) -> GroundingResult:
    allowed = {norm_text(label) for label in task.verifier_spec["labels"]}
    if norm_text(output.get("label", "")) in allowed:
        return GroundingResult(score=1.0)
    return GroundingResult(score=0.0, problems=(f"label {output.get('label')!r} is not one of the choices",))


QUESTION_MARK = "Write one SQL query that answers: "


def tables_read(database: str, sql: str) -> frozenset[str]:
    """The tables ``sql`` reads, as SQLite's authorizer sees them when it prepares the statement
    (DuckDB's binder tells ``query_data`` the same). Raises :class:`sqlite3.Error` as :func:`run_sql`."""
    uri = f"file:{database_path(database)}?mode=ro&immutable=1"
    connection = sqlite3.connect(uri, uri=True, check_same_thread=False)
    read: set[str] = set()

    def authorizer(action: int, table: str | None, *_: Any) -> int:
        if action == sqlite3.SQLITE_READ and table and not table.startswith("sqlite_"):
            read.add(table)
        return sqlite3.SQLITE_OK

    try:
        connection.set_authorizer(authorizer)
        connection.execute(f"EXPLAIN {sql}").fetchall()  # compiled on a read-only copy, not run
    finally:
        connection.close()
    return frozenset(read)


def _verify_sql_runs(task: GateTask, output: Mapping[str, Any]) -> GroundingResult:
    """``query_data``'s grounding of its own SQL (``tools/data/sql_checks.judge``): the query must
    run, read a table, return rows and fit the shape the question implies ("the top five" at most
    five rows, "how many" one), with the same scores, so the calibrator learns the signal the
    product gives (before 2026-12-07 evening: 1.0 for any rows, 0.5 for none)."""
    sql = answer_sql(output)
    if sql is None:
        return GroundingResult(score=0.0, problems=("no SQL",))
    database = task.verifier_spec["database"]
    try:
        rows = run_sql(database, sql)
        read = tables_read(database, sql)
    except (sqlite3.Error, sqlite3.Warning) as exc:
        return GroundingResult(score=0.0, problems=(f"the SQL fails: {exc}",))
    question = task.prompt.rsplit(QUESTION_MARK, 1)[-1].strip()
    result = QueryResult(sql=sql, columns=[], rows=[list(r) for r in rows[:1]], row_count=len(rows))
    return judge(question, result, read)


VERIFIERS: dict[str, Callable[[GateTask, Mapping[str, Any]], GroundingResult]] = {
    "line_in_listing": _verify_line_in_listing,  # {"lines": n}: a non-blank line of the numbered listing
    "triage_line_component": _verify_triage,  # {"lines": n}: the line exists and names the component
    "values_in_prompt": _verify_values_in_prompt,  # every field's value occurs in the prompt
    "span_in_passage": _verify_span_in_passage,  # {"passage": str}: the answer is a span of the passage
    "label_allowed": _verify_label_allowed,  # {"labels": [...]}: the label is one of the choices shown
    "sql_runs": _verify_sql_runs,  # {"database": file}: query_data's check (runs, reads a table, rows, shape)
}


def grounding_check(task: GateTask) -> GroundingCheck | None:
    """The task's verifier as a router grounding check, or None where the task has none.

    The check takes the parsed answer and returns a :class:`GroundingResult` (1.0 = checks out); it
    never raises on a malformed answer (that scores 0)."""
    if task.verifier is None:
        return None
    verify = VERIFIERS[task.verifier["type"]]

    def check(output: dict[str, Any]) -> GroundingResult:
        if not isinstance(output, Mapping):
            return GroundingResult(score=0.0, problems=("the answer is not an object",))
        return verify(task, output)

    return check


# --- loading ------------------------------------------------------------------------------------

_KINDS = {kind.value for kind in TaskKind}


def _check_schema(where: str, schema: Any) -> None:
    if not isinstance(schema, dict) or schema.get("type") != "object":
        raise TaskError(f"{where}: schema must be a JSON schema of an object")
    properties = schema.get("properties")
    if not isinstance(properties, dict) or not properties:
        raise TaskError(f"{where}: schema needs a non-empty 'properties'")
    if "confidence" in properties:
        raise TaskError(f"{where}: schema must not have 'confidence' (the router adds it)")
    if not set(schema.get("required", [])) <= set(properties):
        raise TaskError(f"{where}: schema 'required' names a field that is not in 'properties'")
    try:
        jsonschema.Draft202012Validator.check_schema(schema)
    except jsonschema.SchemaError as exc:
        raise TaskError(f"{where}: schema is not a valid JSON schema: {exc.message}") from exc


def parse_task(row: Any, where: str) -> GateTask:
    """One row as a :class:`GateTask`; raises :class:`TaskError` saying what is wrong with it."""
    if not isinstance(row, dict):
        raise TaskError(f"{where}: a task must be a JSON object")
    missing = [name for name in FIELDS if name not in row]
    extra = sorted(set(row) - set(FIELDS))
    if missing or extra:
        raise TaskError(f"{where}: fields missing {missing}, unknown {extra}; the format is in SOURCES.md")
    if row["kind"] not in _KINDS:
        raise TaskError(f"{where}: kind {row['kind']!r} is not one of {sorted(_KINDS)}")
    if row["split"] not in SPLITS:
        raise TaskError(f"{where}: split must be dev or test")
    if not re.fullmatch(rf"{re.escape(str(row['source']))}/\d+", str(row["id"])):
        raise TaskError(f"{where}: id {row['id']!r} must be '<source>/<n>'")
    if row["grader"] not in GRADERS:
        raise TaskError(f"{where}: grader {row['grader']!r} is not one of {sorted(GRADERS)}")
    verifier = row["verifier"]
    if verifier is not None and (not isinstance(verifier, dict) or verifier.get("type") not in VERIFIERS):
        raise TaskError(f"{where}: verifier must be null or an object whose type is one of {sorted(VERIFIERS)}")
    if not isinstance(row["prompt"], str) or not row["prompt"].strip():
        raise TaskError(f"{where}: prompt must be a non-empty string")
    if row["system"] is not None and not isinstance(row["system"], str):
        raise TaskError(f"{where}: system must be a string or null")
    size = len(row["prompt"]) + len(row["system"] or "")
    if size > PROMPT_CHARS:
        raise TaskError(f"{where}: system + prompt is {size} characters; keep it under {PROMPT_CHARS}")
    cap = MAX_TOKENS_CODE if row["kind"] in (TaskKind.CODE_EDIT, TaskKind.SQL) else MAX_TOKENS
    if not isinstance(row["max_tokens"], int) or not 16 <= row["max_tokens"] <= cap:
        raise TaskError(f"{where}: max_tokens must be an integer in 16..{cap}")
    if not isinstance(row["gold"], dict) or not row["gold"]:
        raise TaskError(f"{where}: gold must be a non-empty object")
    _check_schema(where, row["schema"])
    return GateTask(**{**row, "kind": TaskKind(row["kind"])})


def load_tasks(directory: Path = TASKS_DIR, *, split: str | None = None) -> list[GateTask]:
    """Every task of every ``*.jsonl`` file in ``directory`` (in file-name then line order).

    ``split`` keeps one split only. Raises :class:`TaskError` on a malformed row, a repeated id, or a
    group that appears in both splits."""
    if split is not None and split not in SPLITS:
        raise TaskError(f"split must be one of {SPLITS}, not {split!r}")
    tasks: list[GateTask] = []
    for path in sorted(directory.glob("*.jsonl")):
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            where = f"{path.name}:{number}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise TaskError(f"{where}: not JSON ({exc.msg})") from exc
            tasks.append(parse_task(row, where))
    _check_unique(tasks)
    return [task for task in tasks if split is None or task.split == split]


def _check_unique(tasks: Iterable[GateTask]) -> None:
    seen: set[str] = set()
    split_of_group: dict[str, str] = {}
    for task in tasks:
        if task.id in seen:
            raise TaskError(f"task id {task.id!r} appears twice")
        seen.add(task.id)
        if split_of_group.setdefault(task.group, task.split) != task.split:
            raise TaskError(f"group {task.group!r} is in both splits (task {task.id})")
