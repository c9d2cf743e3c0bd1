"""Build the gate's labelled task files (``tasks/<source>.jsonl``) from public sources.

Run once per source when it is added; the output is committed and never rebuilt over committed rows
(recordings are keyed by task id). Every selection rule here is applied to the whole source before
the split, so nothing is chosen by looking at the test split, and every gold label comes from the
source itself (or from executing a gold query over the source's own database).

    .venv/bin/python bench/data/gate/build_tasks.py gsm8k quixbugs_py quixbugs_java loghub_triage \\
        loghub_fields banking77 clinc150 squad chinook

Sources are read from local copies: the public GitHub snapshots that the session's ``fetch`` tool
brought to ``/work/.mirror/<owner>+<name>/repo`` (a bare git directory; read with ``git show``) and
the Loghub 2k sample at ``../shared/data/loghub-2k``. SOURCES.md records URL, commit and licence.
"""

from __future__ import annotations

import argparse
import csv
import difflib
import hashlib
import json
import re
import sqlite3
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
TASKS = HERE / "tasks"
MIRROR = Path("/work/.mirror")
LOGHUB = HERE.parents[2].parent / "shared" / "data" / "loghub-2k"
PROMPT_CHARS = 900  # system + prompt: ~250 tokens on the pinned model's ~22 prompt tokens/s


def split_of(group: str) -> str:
    """dev or test from a hash of the group (used only until :func:`balance_splits` runs)."""
    return "dev" if hashlib.sha256(group.encode()).digest()[0] % 2 == 0 else "test"


def balance_splits(rows: list[dict[str, Any]]) -> None:
    """Give whole groups to dev or test, in the order of their hashes, each to the split with fewer tasks.

    A source with few large groups (a log system's segments) splits near 50/50 this way, where a
    plain hash parity can give 30/70; the order depends only on the group names, never on answers.
    Rows whose builder fixed the split (a kind split by source) are left alone."""
    sizes: dict[str, int] = {}
    for row in rows:
        if row.get("_hash_split"):
            sizes[row["group"]] = sizes.get(row["group"], 0) + 1
    counts = {"dev": 0, "test": 0}
    chosen: dict[str, str] = {}
    for group in sorted(sizes, key=lambda g: hashlib.sha256(g.encode()).hexdigest()):
        split = "dev" if counts["dev"] <= counts["test"] else "test"
        chosen[group] = split
        counts[split] += sizes[group]
    for row in rows:
        if row.pop("_hash_split", False):
            row["split"] = chosen[row["group"]]


def git_show(repo: str, commit: str, path: str) -> str:
    git_dir = MIRROR / repo / "repo"
    return subprocess.run(
        ["git", "-C", str(git_dir), "show", f"{commit}:{path}"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout


def obj(properties: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "properties": properties, "required": list(properties)}


def task(
    source: str,
    n: int,
    *,
    group: str,
    kind: str,
    prompt: str,
    schema: dict[str, Any],
    gold: dict[str, Any],
    grader: str,
    verifier: dict[str, Any] | None,
    max_tokens: int,
    system: str | None = None,
    split: str | None = None,
) -> dict[str, Any]:
    size = len(prompt) + len(system or "")
    if size > PROMPT_CHARS:
        raise ValueError(f"{source}/{n}: system + prompt is {size} characters (limit {PROMPT_CHARS})")
    return {
        "id": f"{source}/{n}",
        "source": source,
        "group": group,
        "split": split or split_of(group),
        "_hash_split": split is None,
        "kind": kind,
        "system": system,
        "prompt": prompt,
        "schema": schema,
        "gold": gold,
        "grader": grader,
        "verifier": verifier,
        "max_tokens": max_tokens,
    }


# --- general: GSM8K test (openai/grade-school-math, MIT) --------------------------------------

GSM8K_COMMIT = "3101c7d5072418e28b9008a6636bde82a006892c"


def build_gsm8k() -> Iterator[dict[str, Any]]:
    """Every 10th test problem of at most 320 characters, the first 60 of them; gold = the ``####`` number."""
    text = git_show("openai+grade-school-math", GSM8K_COMMIT, "grade_school_math/data/test.jsonl")
    rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    n = 0
    for index, row in enumerate(rows):
        if index % 10 or len(row["question"]) > 320:
            continue
        answer = row["answer"].rsplit("####", 1)[1].strip().replace(",", "")
        prompt = f"{row['question']}\n\nWork it out and put only the final number in `answer`."
        yield task(
            "gsm8k",
            n,
            group=f"gsm8k:test:{index}",
            kind="general",
            prompt=prompt,
            schema=obj({"answer": {"type": "number", "description": "the final number, no units"}}),
            gold={"answer": float(answer)},
            grader="number",
            verifier=None,
            max_tokens=64,
        )
        n += 1
        if n == 60:
            return


# --- general: BIG-Bench Hard (suzgunmirac/BIG-Bench-Hard, MIT) ----------------------------------

BBH_COMMIT = "9ee07bd481feebf959a6b59d61ea57bdcf30964d"
# Subtasks whose inputs fit the prompt budget and whose answers a grader can check exactly (a label,
# a number, a word list); causal_judgement and formal_fallacies are left out for length, dyck_languages
# because its answer is punctuation. (subtask, answer shape): "choice" = one of the (X) options,
# "number", "words" = a space-separated word list; any other value is the fixed answer set.
BBH_SUBTASKS: dict[str, str | tuple[str, ...]] = {
    "boolean_expressions": ("True", "False"),
    "date_understanding": "choice",
    "logical_deduction_three_objects": "choice",
    "multistep_arithmetic_two": "number",
    "navigate": ("Yes", "No"),
    "object_counting": "number",
    "sports_understanding": ("yes", "no"),
    "tracking_shuffled_objects_three_objects": "choice",
    "web_of_lies": ("Yes", "No"),
    "word_sorting": "words",
}
BBH_PER_SUBTASK = 6
BBH_STEP = 40  # examples 20, 60, 100, ... of each subtask's 250


def build_bbh() -> Iterator[dict[str, Any]]:
    """Six examples of each of ten subtasks, evenly spaced; a subtask is one group (dev or test whole),
    so calibration is judged on kinds of question it never saw. Gold = the subtask's target."""
    n = 0
    for subtask, shape in BBH_SUBTASKS.items():
        examples = json.loads(git_show("suzgunmirac+BIG-Bench-Hard", BBH_COMMIT, f"bbh/{subtask}.json"))["examples"]
        for index in range(BBH_STEP // 2, BBH_STEP // 2 + BBH_STEP * BBH_PER_SUBTASK, BBH_STEP):
            question, target = examples[index]["input"].strip(), examples[index]["target"].strip()
            if shape == "number":
                schema = obj({"answer": {"type": "number"}})
                gold: dict[str, Any] = {"answer": float(target)}
                grader, how, max_tokens = "number", "Put only the final number in `answer`.", 64
            elif shape == "words":
                schema = obj({"answer": {"type": "string", "description": "the words, space-separated"}})
                gold, grader, max_tokens = {"answer": target}, "fields", 96
                how = "Put only the sorted words, separated by single spaces, in `answer`."
            else:
                options = re.findall(r"^(\([A-Z]\))", question, re.MULTILINE) if shape == "choice" else list(shape)
                if target not in options:
                    raise ValueError(f"bbh/{subtask}/{index}: target {target!r} not among {options}")
                schema = obj({"answer": {"type": "string", "enum": options}})
                gold, grader, max_tokens = {"answer": target}, "fields", 32
                how = "Put only your answer, one of " + ", ".join(options) + ", in `answer`."
            yield task(
                "bbh",
                n,
                group=f"bbh:{subtask}",
                kind="general",
                prompt=f"{question}\n\n{how}",
                schema=schema,
                gold=gold,
                grader=grader,
                verifier=None,
                max_tokens=max_tokens,
            )
            n += 1


# --- review: QuixBugs (jkoppel/QuixBugs, MIT) -------------------------------------------------

QUIXBUGS_COMMIT = "4257f44b0ff1181dedaedee6a447e133219fcebf"


def _code_part(source: str) -> list[str]:
    """The program's lines before its trailing docstring, blank lines at either end removed."""
    code = source.split('\n"""', 1)[0].split("\n'''", 1)[0]
    lines = code.splitlines()
    while lines and not lines[0].strip():
        lines.pop(0)
    while lines and not lines[-1].strip():
        lines.pop()
    return lines


def _purpose(source: str) -> str:
    """The docstring's first non-empty line (the program's title) and its Output section, one line."""
    if '"""' not in source:
        return ""
    doc = source.split('"""', 2)[1]
    lines = [line.strip() for line in doc.splitlines()]
    title = next((line for line in lines if line), "")
    output = ""
    if "Output:" in lines:
        after = lines[lines.index("Output:") + 1 :]
        taken = []
        for line in after:
            if not line or line.endswith(":"):
                break
            taken.append(line)
        output = " ".join(taken)
    return f"{title}. Output: {output}" if output else title


def _one_line_fix(buggy: list[str], fixed: list[str], comment: tuple[str, ...] = ("#",)) -> int | None:
    """1-based line of the buggy program that the fix replaces, when the fix replaces exactly one line.

    Comment-only and blank lines of the corrected program are ignored (QuixBugs' corrections keep
    commented-out alternatives)."""
    fixed_code = [line for line in fixed if line.strip() and not line.strip().startswith(comment)]
    kept = [(i, line) for i, line in enumerate(buggy) if line.strip() and not line.strip().startswith(comment)]
    matcher = difflib.SequenceMatcher(a=[line for _, line in kept], b=fixed_code, autojunk=False)
    changes = [op for op in matcher.get_opcodes() if op[0] != "equal"]
    if len(changes) != 1:
        return None
    tag, a0, a1, b0, b1 = changes[0]
    if tag != "replace" or a1 - a0 != 1 or b1 - b0 != 1:
        return None
    return kept[a0][0] + 1


def build_quixbugs_py() -> Iterator[dict[str, Any]]:
    """Python programs whose fix replaces one line; gold = that line's number in the numbered listing."""
    names = subprocess.run(
        [
            "git",
            "-C",
            str(MIRROR / "jkoppel+QuixBugs" / "repo"),
            "ls-tree",
            "--name-only",
            QUIXBUGS_COMMIT,
            "python_programs/",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout.split()
    n = 0
    for path in sorted(names):
        name = Path(path).name
        if name.endswith("_test.py") or name == "node.py" or not name.endswith(".py"):
            continue
        buggy_source = git_show("jkoppel+QuixBugs", QUIXBUGS_COMMIT, path)
        try:
            fixed_source = git_show("jkoppel+QuixBugs", QUIXBUGS_COMMIT, f"correct_python_programs/{name}")
        except subprocess.CalledProcessError:
            continue
        buggy = _code_part(buggy_source)
        line = _one_line_fix(buggy, _code_part(fixed_source))
        if line is None:
            continue
        purpose = _purpose(buggy_source)
        numbered = "\n".join(f"{i + 1:>2} {text}" for i, text in enumerate(buggy))
        prompt = (
            f"Code review: this Python function has exactly one buggy line. Intended behaviour: {purpose}\n\n"
            f"{numbered}\n\nWhich line number is wrong? Give it in `line` and the corrected line in `fix`."
        )
        if len(prompt) > PROMPT_CHARS:
            continue
        yield task(
            "quixbugs_py",
            n,
            group=f"quixbugs:{name.removesuffix('.py')}",
            kind="review",
            prompt=prompt,
            schema=obj(
                {
                    "line": {"type": "integer", "description": "the buggy line's number"},
                    "fix": {"type": "string", "description": "the corrected line"},
                }
            ),
            gold={"line": line},
            grader="line",
            verifier={"type": "line_in_listing", "lines": len(buggy)},
            max_tokens=96,
        )
        n += 1


JAVA_COMMENT = ("//", "/*", "*", "*/")


def _java_code(source: str) -> list[str]:
    """The class from its declaration on (package, imports and the template comment dropped)."""
    lines = source.splitlines()
    start = next(i for i, line in enumerate(lines) if re.match(r"\s*(public\s+)?(abstract\s+)?class\s", line))
    body = lines[start:]
    while body and not body[-1].strip():
        body.pop()
    return body


def build_quixbugs_java() -> Iterator[dict[str, Any]]:
    """The Java versions, as the Python ones: a one-line correction, the Python docstring's purpose.

    A program already in ``quixbugs_py.jsonl`` keeps its split there (the group is the program)."""
    committed = TASKS / "quixbugs_py.jsonl"
    split_of_group = {
        row["group"]: row["split"]
        for row in (json.loads(line) for line in committed.read_text(encoding="utf-8").splitlines() if line)
    }
    repo = MIRROR / "jkoppel+QuixBugs" / "repo"
    names = subprocess.run(
        ["git", "-C", str(repo), "ls-tree", "--name-only", QUIXBUGS_COMMIT, "java_programs/"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout.split()
    n = 0
    for path in sorted(names):
        name = Path(path).name
        if not name.endswith(".java"):
            continue
        program = name.removesuffix(".java").lower()
        try:
            fixed_source = git_show("jkoppel+QuixBugs", QUIXBUGS_COMMIT, f"correct_java_programs/{name}")
            python_source = git_show("jkoppel+QuixBugs", QUIXBUGS_COMMIT, f"python_programs/{program}.py")
        except subprocess.CalledProcessError:
            continue
        try:
            buggy = _java_code(git_show("jkoppel+QuixBugs", QUIXBUGS_COMMIT, path))
            fixed = _java_code(fixed_source)
        except StopIteration:
            continue
        line = _one_line_fix(buggy, fixed, JAVA_COMMENT)
        if line is None:
            continue
        numbered = "\n".join(f"{i + 1:>2} {text}" for i, text in enumerate(buggy))
        prompt = (
            "Code review: this Java method has exactly one buggy line. Intended behaviour: "
            f"{_purpose(python_source)}\n\n{numbered}\n\n"
            "Which line number is wrong? Give it in `line` and the corrected line in `fix`."
        )
        if len(prompt) > PROMPT_CHARS:
            continue
        group = f"quixbugs:{program}"
        yield task(
            "quixbugs_java",
            n,
            group=group,
            kind="review",
            prompt=prompt,
            schema=obj(
                {
                    "line": {"type": "integer", "description": "the buggy line's number"},
                    "fix": {"type": "string", "description": "the corrected line"},
                }
            ),
            gold={"line": line},
            grader="line",
            verifier={"type": "line_in_listing", "lines": len(buggy)},
            max_tokens=96,
            split=split_of_group.get(group),
        )
        n += 1


# --- triage and extraction: Loghub 2k samples (logpai/loghub) ---------------------------------

SEGMENT = 250  # lines per group: a window never spans two groups, and a group is in one split only
TRIAGE_WINDOW = 6
LINE_CHARS = 112
TRIAGE_SYSTEMS: dict[str, tuple[set[str], set[str]]] = {
    # system: (severities that mark the failing line, severities the other lines may have)
    "Hadoop": ({"ERROR", "FATAL"}, {"INFO", "WARN"}),
    "Zookeeper": ({"ERROR"}, {"INFO", "WARN"}),
    "HDFS": ({"WARN"}, {"INFO"}),
}


# Private-range IPv4 addresses in the logs (HDFS and Hadoop hosts): the project's files hold none,
# so each is written as a loopback address, the same one for the same host within a system's log.
_PRIVATE_IP = re.compile(r"(?<![\d.])(?:10\.\d{1,3}|172\.(?:1[6-9]|2\d|3[01])|192\.168)\.\d{1,3}\.\d{1,3}(?![\d.])")


def _loopback_hosts(lines: list[str]) -> list[str]:
    seen: dict[str, str] = {}

    def loopback(found: re.Match[str]) -> str:
        n = seen.setdefault(found.group(0), str(len(seen) + 1))
        return f"127.0.{int(n) // 250}.{int(n) % 250 + 1}"

    return [_PRIVATE_IP.sub(loopback, line) for line in lines]


def _loghub(system: str) -> tuple[list[str], list[dict[str, str]]]:
    text = (LOGHUB / system / f"{system}_2k.log").read_text(encoding="utf-8", errors="replace")
    raw = _loopback_hosts(text.splitlines())
    with (LOGHUB / system / f"{system}_2k.log_structured.csv").open(encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    if len(raw) != len(rows):
        raise ValueError(f"{system}: {len(raw)} raw lines against {len(rows)} structured rows")
    return raw, rows


def _clip(line: str, component: str) -> str:
    """The line cut to LINE_CHARS, but never inside its component (the answer must be readable)."""
    end = line.find(component)
    keep = max(LINE_CHARS, end + len(component) + 8) if end >= 0 else LINE_CHARS
    return line[:keep]


def build_loghub_triage() -> Iterator[dict[str, Any]]:
    """Windows of 6 consecutive lines with exactly one line at the failing severity.

    Gold (from Loghub's structured CSV): that line's number in the excerpt and its component."""
    n = 0
    for system, (failing, others) in TRIAGE_SYSTEMS.items():
        raw, rows = _loghub(system)
        taken_until = -1
        windows = 0
        for hit in range(len(rows)):
            if rows[hit]["Level"] not in failing:
                continue
            # The failing line's place in the window varies with its line number, so "line 3" is no rule.
            offsets = [(hit * 5 + k) % TRIAGE_WINDOW for k in range(TRIAGE_WINDOW)]
            found = None
            for offset in offsets:
                start = hit - offset
                if start <= taken_until or start < 0 or start + TRIAGE_WINDOW > len(rows):
                    continue
                if start // SEGMENT != (start + TRIAGE_WINDOW - 1) // SEGMENT:
                    continue
                levels = [row["Level"] for row in rows[start : start + TRIAGE_WINDOW]]
                if sum(level in failing for level in levels) == 1 and all(lv in failing | others for lv in levels):
                    found = start
                    break
            if found is None:
                continue
            start = found
            window = rows[start : start + TRIAGE_WINDOW]
            hits = [hit - start]
            taken_until = start + TRIAGE_WINDOW - 1
            excerpt = "\n".join(
                f"{i + 1}: {_clip(line, row['Component'])}"
                for i, (line, row) in enumerate(zip(raw[start : start + TRIAGE_WINDOW], window, strict=True))
            )
            prompt = (
                f"Our {system} service misbehaved. Log excerpt:\n{excerpt}\n\n"
                "Which line (1-6) reports the failure, and which component logged it?"
            )
            if len(prompt) > PROMPT_CHARS:
                continue
            windows += 1
            if system == "Hadoop" and windows % 3:
                continue  # its ERROR lines come in runs: every third window keeps it from crowding out the rest
            yield task(
                "loghub_triage",
                n,
                group=f"loghub_triage:{system}:{start // SEGMENT}",
                kind="triage",
                prompt=prompt,
                schema=obj(
                    {
                        "line": {"type": "integer", "description": "the line number in the excerpt (1-6)"},
                        "component": {"type": "string", "description": "the logger/class that wrote it"},
                    }
                ),
                gold={"line": hits[0] + 1, "component": window[hits[0]]["Component"]},
                grader="triage_line_component",
                verifier={"type": "triage_line_component", "lines": TRIAGE_WINDOW},
                max_tokens=64,
            )
            n += 1


FIELD_SYSTEMS: dict[str, dict[str, str]] = {
    # system: {answer field: structured CSV column}
    "Hadoop": {"date": "Date", "time": "Time", "level": "Level", "component": "Component"},
    "HDFS": {"date": "Date", "time": "Time", "pid": "Pid", "level": "Level", "component": "Component"},
    "Spark": {"date": "Date", "time": "Time", "level": "Level", "component": "Component"},
    "Linux": {"month": "Month", "day": "Date", "time": "Time", "component": "Component", "pid": "PID"},
    "OpenSSH": {"month": "Date", "day": "Day", "time": "Time", "pid": "Pid"},
}
FIELDS_PER_SYSTEM = 12


def build_loghub_fields() -> Iterator[dict[str, Any]]:
    """One raw line per 160 lines of each system (12 a system); gold = Loghub's parsed fields."""
    n = 0
    for system, fields in FIELD_SYSTEMS.items():
        raw, rows = _loghub(system)
        step = len(rows) // FIELDS_PER_SYSTEM
        for index in range(step // 2, len(rows), step)[:FIELDS_PER_SYSTEM]:
            row = rows[index]
            gold = {field: row[column] for field, column in fields.items()}
            if not all(value.strip() for value in gold.values()):
                continue
            line = raw[index][:300]
            names = ", ".join(fields)
            prompt = (
                f"Parse this {system} log line into fields ({names}); copy each value exactly as written.\n\n{line}"
            )
            yield task(
                "loghub_fields",
                n,
                group=f"loghub_fields:{system}:{index // SEGMENT}",
                kind="extraction",
                prompt=prompt,
                schema=obj({field: {"type": "string"} for field in fields}),
                gold=gold,
                grader="fields",
                verifier={"type": "values_in_prompt"},
                max_tokens=96,
            )
            n += 1


# --- classification: banking77 (dev) and CLINC150 (test), split by source ---------------------

BANKING77_COMMIT = "57ec275d8078af65b7731c2a98be812d844a6d6b"
CLINC_COMMIT = "828f8093932c8fe6ca7936c3d2e52903b1c523de"
CHOICES = 6
PER_INTENT_SOURCE = 32


def _choices(gold: str, labels: list[str], key: str) -> list[str]:
    """The gold label and CHOICES - 1 others, picked and ordered by a hash of the utterance."""

    def rank(label: str) -> str:
        return hashlib.sha256(f"{key}|{label}".encode()).hexdigest()

    others = sorted((label for label in labels if label != gold), key=rank)[: CHOICES - 1]
    return sorted([gold, *others], key=rank)


def _intent_tasks(source: str, rows: list[tuple[str, str]], split: str, what: str) -> Iterator[dict[str, Any]]:
    labels = sorted({label for _, label in rows})
    step = len(rows) // PER_INTENT_SOURCE
    for n, index in enumerate(range(step // 2, len(rows), step)):
        if n == PER_INTENT_SOURCE:
            return
        text, gold = rows[index]
        choices = _choices(gold, labels, text)
        prompt = (
            f'{what}: "{text.strip()}"\n\nWhich intent is this? Answer with exactly one label from: '
            + ", ".join(choices)
            + "."
        )
        yield task(
            source,
            n,
            group=f"{source}:{gold}",
            kind="classification",
            prompt=prompt,
            schema=obj({"label": {"type": "string", "enum": choices}}),
            gold={"label": gold},
            grader="label",
            verifier={"type": "label_allowed", "labels": choices},
            max_tokens=32,
            split=split,
        )


def build_banking77() -> Iterator[dict[str, Any]]:
    """32 test utterances evenly spaced over the file (it is sorted by intent); dev by source."""
    text = git_show("PolyAI-LDN+task-specific-datasets", BANKING77_COMMIT, "banking_data/test.csv")
    rows = [(row["text"], row["category"]) for row in csv.DictReader(text.splitlines())]
    yield from _intent_tasks("banking77", rows, "dev", "A customer wrote to our bank's support")


def build_clinc150() -> Iterator[dict[str, Any]]:
    """32 in-scope test utterances evenly spaced over the file (sorted by intent); test by source."""
    data = json.loads(git_show("clinc+oos-eval", CLINC_COMMIT, "data/data_full.json"))
    rows = [(text, label) for text, label in data["test"]]
    yield from _intent_tasks("clinc150", rows, "test", "A user said to our voice assistant")


# --- qa: SQuAD 2.0 dev sample (via deepset-ai/haystack's test data) ---------------------------

HAYSTACK_COMMIT = "3ffdb0a9a3a11d581401415e58bf04b29d888ecd"
PASSAGE_CHARS = 600
QUESTIONS_PER_PASSAGE = 2


def build_squad() -> Iterator[dict[str, Any]]:
    """Answerable questions (the first two) of every passage of at most 600 characters.

    Gold = every crowd answer of the question; group = the passage (the sample has two articles)."""
    data = json.loads(git_show("deepset-ai+haystack", HAYSTACK_COMMIT, "test/samples/squad/small.json"))
    n = 0
    for article in data["data"]:
        for number, paragraph in enumerate(article["paragraphs"]):
            context = paragraph["context"]
            if len(context) > PASSAGE_CHARS:
                continue
            answerable = [qa for qa in paragraph["qas"] if not qa.get("is_impossible") and qa["answers"]]
            for qa in answerable[:QUESTIONS_PER_PASSAGE]:
                answers = list(dict.fromkeys(answer["text"] for answer in qa["answers"]))
                prompt = (
                    f"Passage:\n{context}\n\nQuestion: {qa['question'].strip()}\n"
                    "Answer with the shortest span copied from the passage."
                )
                yield task(
                    "squad",
                    n,
                    group=f"squad:{article['title']}:{number}",
                    kind="qa",
                    prompt=prompt,
                    schema=obj({"answer": {"type": "string", "description": "a span of the passage"}}),
                    gold={"answers": answers},
                    grader="span",
                    verifier={"type": "span_in_passage", "passage": context},
                    max_tokens=48,
                )
                n += 1


# --- sql: Chinook (lerocha/chinook-database), a trimmed SQLite copy -----------------------------

CHINOOK_COMMIT = "7f67772503d71ba90f19283c38e93923addb43fa"
CHINOOK_DB = "chinook.sqlite"
CHINOOK_TABLES = {
    # table: columns kept (addresses, phone and fax numbers and the playlists are dropped to keep the
    # schema in the prompt short)
    "Artist": ["ArtistId", "Name"],
    "Album": ["AlbumId", "Title", "ArtistId"],
    "Genre": ["GenreId", "Name"],
    "MediaType": ["MediaTypeId", "Name"],
    "Track": ["TrackId", "Name", "AlbumId", "MediaTypeId", "GenreId", "Composer", "Milliseconds", "UnitPrice"],
    "Customer": ["CustomerId", "FirstName", "LastName", "Company", "City", "Country", "Email", "SupportRepId"],
    "Employee": ["EmployeeId", "FirstName", "LastName", "Title", "ReportsTo", "HireDate", "City"],
    "Invoice": ["InvoiceId", "CustomerId", "InvoiceDate", "BillingCity", "BillingCountry", "Total"],
    "InvoiceLine": ["InvoiceLineId", "InvoiceId", "TrackId", "UnitPrice", "Quantity"],
}
# (question, gold query, ordered): the questions are this project's, the answers are the rows the
# gold query returns on the public Chinook data. "ordered" where the question asks for an order.
CHINOOK_QUESTIONS: list[tuple[str, str, bool]] = [
    ("How many tracks are there?", "SELECT COUNT(*) FROM Track", False),
    ("How many customers live in Brazil?", "SELECT COUNT(*) FROM Customer WHERE Country = 'Brazil'", False),
    ("List the names of all media types.", "SELECT Name FROM MediaType", False),
    ("What is the title of album 1?", "SELECT Title FROM Album WHERE AlbumId = 1", False),
    (
        "How many albums does the artist 'Iron Maiden' have?",
        "SELECT COUNT(*) FROM Album a JOIN Artist r ON r.ArtistId = a.ArtistId WHERE r.Name = 'Iron Maiden'",
        False,
    ),
    ("Which countries do our customers come from? Each country once.", "SELECT DISTINCT Country FROM Customer", False),
    ("What is the total of all invoices?", "SELECT SUM(Total) FROM Invoice", False),
    ("What is the average invoice total?", "SELECT AVG(Total) FROM Invoice", False),
    (
        "How many tracks belong to the genre 'Jazz'?",
        "SELECT COUNT(*) FROM Track t JOIN Genre g ON g.GenreId = t.GenreId WHERE g.Name = 'Jazz'",
        False,
    ),
    (
        "Give the first and last names of employees whose title is 'Sales Support Agent'.",
        "SELECT FirstName, LastName FROM Employee WHERE Title = 'Sales Support Agent'",
        False,
    ),
    ("What is the longest track's name?", "SELECT Name FROM Track ORDER BY Milliseconds DESC LIMIT 1", False),
    (
        "Which 2 countries have the most customers? Country and count, most first.",
        "SELECT Country, COUNT(*) AS n FROM Customer GROUP BY Country ORDER BY n DESC LIMIT 2",
        True,
    ),
    (
        "How many invoices were billed to the city 'Paris'?",
        "SELECT COUNT(*) FROM Invoice WHERE BillingCity = 'Paris'",
        False,
    ),
    (
        "List the album titles by the artist 'AC/DC'.",
        "SELECT a.Title FROM Album a JOIN Artist r ON r.ArtistId = a.ArtistId WHERE r.Name = 'AC/DC'",
        False,
    ),
    ("How many tracks cost more than 0.99?", "SELECT COUNT(*) FROM Track WHERE UnitPrice > 0.99", False),
    (
        "What is the total invoiced per billing country? Country and total.",
        "SELECT BillingCountry, SUM(Total) FROM Invoice GROUP BY BillingCountry",
        False,
    ),
    (
        "Which customer (first and last name) spent the most in total?",
        "SELECT c.FirstName, c.LastName FROM Customer c JOIN Invoice i ON i.CustomerId = c.CustomerId "
        "GROUP BY c.CustomerId ORDER BY SUM(i.Total) DESC LIMIT 1",
        False,
    ),
    ("How many employees report to employee 2?", "SELECT COUNT(*) FROM Employee WHERE ReportsTo = 2", False),
    (
        "What are the names of the 5 genres with the most tracks, most first?",
        "SELECT g.Name FROM Genre g JOIN Track t ON t.GenreId = g.GenreId GROUP BY g.GenreId "
        "ORDER BY COUNT(*) DESC LIMIT 5",
        True,
    ),
    ("How many customers have no company?", "SELECT COUNT(*) FROM Customer WHERE Company IS NULL", False),
    ("What is the average track length in minutes?", "SELECT AVG(Milliseconds) / 60000.0 FROM Track", False),
    ("List the emails of customers in Canada.", "SELECT Email FROM Customer WHERE Country = 'Canada'", False),
    ("How many invoice lines does invoice 10 have?", "SELECT COUNT(*) FROM InvoiceLine WHERE InvoiceId = 10", False),
    (
        "Which artist has the most albums? Just the name.",
        "SELECT r.Name FROM Artist r JOIN Album a ON a.ArtistId = r.ArtistId GROUP BY r.ArtistId "
        "ORDER BY COUNT(*) DESC LIMIT 1",
        False,
    ),
    ("How many tracks have no composer?", "SELECT COUNT(*) FROM Track WHERE Composer IS NULL", False),
    ("What is the largest single invoice total?", "SELECT MAX(Total) FROM Invoice", False),
    ("How many invoices were issued in 2023?", "SELECT COUNT(*) FROM Invoice WHERE InvoiceDate LIKE '2023%'", False),
    (
        "Total sales per year, as year and total, oldest year first.",
        "SELECT strftime('%Y', InvoiceDate) AS y, SUM(Total) FROM Invoice GROUP BY y ORDER BY y",
        True,
    ),
    (
        "How many customers does each support rep look after? Rep's first name and count.",
        "SELECT e.FirstName, COUNT(*) FROM Employee e JOIN Customer c ON c.SupportRepId = e.EmployeeId "
        "GROUP BY e.EmployeeId",
        False,
    ),
    (
        "Which tracks are on the album 'Big Ones'? Track names.",
        "SELECT t.Name FROM Track t JOIN Album a ON a.AlbumId = t.AlbumId WHERE a.Title = 'Big Ones'",
        False,
    ),
    ("How many distinct artists have at least one album?", "SELECT COUNT(DISTINCT ArtistId) FROM Album", False),
    (
        "How many tracks use the media type 'Protected AAC audio file'?",
        "SELECT COUNT(*) FROM Track t JOIN MediaType m ON m.MediaTypeId = t.MediaTypeId "
        "WHERE m.Name = 'Protected AAC audio file'",
        False,
    ),
    (
        "What is the number of units sold of track 1 across all invoices?",
        "SELECT SUM(Quantity) FROM InvoiceLine WHERE TrackId = 1",
        False,
    ),
    (
        "Which cities in the USA do customers live in? Each once.",
        "SELECT DISTINCT City FROM Customer WHERE Country = 'USA'",
        False,
    ),
    (
        "List the 3 shortest tracks' names, shortest first.",
        "SELECT Name FROM Track ORDER BY Milliseconds ASC LIMIT 3",
        True,
    ),
    (
        "What is the total revenue from tracks of the genre 'Rock'? Use unit price times quantity.",
        "SELECT SUM(il.UnitPrice * il.Quantity) FROM InvoiceLine il JOIN Track t ON t.TrackId = il.TrackId "
        "JOIN Genre g ON g.GenreId = t.GenreId WHERE g.Name = 'Rock'",
        False,
    ),
    (
        "How many albums have more than 20 tracks?",
        "SELECT COUNT(*) FROM (SELECT AlbumId FROM Track GROUP BY AlbumId HAVING COUNT(*) > 20)",
        False,
    ),
    (
        "Who is employee 2's manager? First and last name.",
        "SELECT m.FirstName, m.LastName FROM Employee e JOIN Employee m ON m.EmployeeId = e.ReportsTo "
        "WHERE e.EmployeeId = 2",
        False,
    ),
    (
        "How many customers have never been invoiced?",
        "SELECT COUNT(*) FROM Customer WHERE CustomerId NOT IN (SELECT CustomerId FROM Invoice)",
        False,
    ),
    (
        "What is the average number of tracks per album?",
        "SELECT COUNT(*) * 1.0 / COUNT(DISTINCT AlbumId) FROM Track",
        False,
    ),
    (
        "Which employees were hired in 2002? First and last names.",
        "SELECT FirstName, LastName FROM Employee WHERE HireDate LIKE '2002%'",
        False,
    ),
    (
        "Which billing country had the highest invoice total sum? Just the country.",
        "SELECT BillingCountry FROM Invoice GROUP BY BillingCountry ORDER BY SUM(Total) DESC LIMIT 1",
        False,
    ),
    (
        "How many tracks did the composer 'Jimi Hendrix' write (composer exactly that)?",
        "SELECT COUNT(*) FROM Track WHERE Composer = 'Jimi Hendrix'",
        False,
    ),
    (
        "List the names of genres that have fewer than 20 tracks.",
        "SELECT g.Name FROM Genre g JOIN Track t ON t.GenreId = g.GenreId GROUP BY g.GenreId HAVING COUNT(*) < 20",
        False,
    ),
]


def build_chinook_db(path: Path) -> None:
    """The trimmed Chinook database at ``path``: CHINOOK_TABLES' columns copied from the public file."""
    full = subprocess.run(
        [
            "git",
            "-C",
            str(MIRROR / "lerocha+chinook-database" / "repo"),
            "show",
            f"{CHINOOK_COMMIT}:ChinookDatabase/DataSources/Chinook_Sqlite.sqlite",
        ],
        capture_output=True,
        check=True,
        timeout=60,
    ).stdout
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "full.sqlite"
        source.write_bytes(full)
        target = sqlite3.connect(path)
        target.execute("ATTACH DATABASE ? AS src", (str(source),))
        for table, columns in CHINOOK_TABLES.items():
            names = ", ".join(columns)
            target.execute(f"CREATE TABLE {table} AS SELECT {names} FROM src.{table} ORDER BY {columns[0]}")
        target.commit()
        target.execute("DETACH DATABASE src")
        target.execute("VACUUM")
        target.close()


def chinook_schema_text() -> str:
    return "\n".join(f"{table}({', '.join(columns)})" for table, columns in CHINOOK_TABLES.items())


def build_chinook() -> Iterator[dict[str, Any]]:
    """One task per question: the schema, the question; gold = the gold query's rows on the trimmed DB."""
    db = HERE / "db" / CHINOOK_DB
    if not db.exists():
        build_chinook_db(db)
    connection = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    schema = chinook_schema_text()
    for n, (question, gold_sql, ordered) in enumerate(CHINOOK_QUESTIONS):
        rows = [list(row) for row in connection.execute(gold_sql).fetchall()]
        if "LIMIT" in gold_sql:
            _check_no_tie(connection, gold_sql)
        prompt = f"SQLite database, tables:\n{schema}\n\nWrite one SQL query that answers: {question}"
        yield task(
            "chinook",
            n,
            group=f"chinook:q{n}",
            kind="sql",
            prompt=prompt,
            # the answer's shape is query_data's (supervisors/data/sql_step.py): the SQL and one
            # sentence saying what it computes, so the length a calibrator learns here is the
            # length the product's answers have
            schema=obj(
                {
                    "sql": {"type": "string", "description": "one SQLite SELECT statement"},
                    "explanation": {"type": "string", "description": "one sentence: what the query computes"},
                }
            ),
            gold={"database": CHINOOK_DB, "sql": gold_sql, "rows": rows, "ordered": ordered},
            grader="sql",
            verifier={"type": "sql_runs", "database": CHINOOK_DB},
            max_tokens=192,
        )
    connection.close()


def _check_no_tie(connection: sqlite3.Connection, gold_sql: str) -> None:
    """A top-k question is ambiguous when the k-th and the next row tie on the ordering: refuse it.

    TIE_KEYS gives, for each gold query with a LIMIT, a query of its ordering key's first k + 1 values."""
    k = int(gold_sql.rsplit("LIMIT", 1)[1])
    keys = [row[0] for row in connection.execute(TIE_KEYS[gold_sql]).fetchall()]
    if len(keys) != k + 1 or keys[k - 1] == keys[k]:
        raise ValueError(f"ties at the limit (keys {keys}): {gold_sql}")


def _tie_keys() -> dict[str, str]:
    by_question = {
        "What is the longest track's name?": "SELECT Milliseconds FROM Track ORDER BY 1 DESC LIMIT 2",
        "Which 2 countries have the most customers? Country and count, most first.": (
            "SELECT COUNT(*) FROM Customer GROUP BY Country ORDER BY 1 DESC LIMIT 3"
        ),
        "Which customer (first and last name) spent the most in total?": (
            "SELECT SUM(Total) FROM Invoice GROUP BY CustomerId ORDER BY 1 DESC LIMIT 2"
        ),
        "What are the names of the 5 genres with the most tracks, most first?": (
            "SELECT COUNT(*) FROM Track GROUP BY GenreId ORDER BY 1 DESC LIMIT 6"
        ),
        "Which artist has the most albums? Just the name.": (
            "SELECT COUNT(*) FROM Album GROUP BY ArtistId ORDER BY 1 DESC LIMIT 2"
        ),
        "List the 3 shortest tracks' names, shortest first.": "SELECT Milliseconds FROM Track ORDER BY 1 LIMIT 4",
        "Which billing country had the highest invoice total sum? Just the country.": (
            "SELECT SUM(Total) FROM Invoice GROUP BY BillingCountry ORDER BY 1 DESC LIMIT 2"
        ),
    }
    gold_of = {question: gold for question, gold, _ in CHINOOK_QUESTIONS}
    return {gold_of[question]: key for question, key in by_question.items()}


TIE_KEYS = _tie_keys()


BUILDERS: dict[str, Callable[[], Iterator[dict[str, Any]]]] = {
    "gsm8k": build_gsm8k,
    "bbh": build_bbh,
    "quixbugs_py": build_quixbugs_py,
    "quixbugs_java": build_quixbugs_java,
    "loghub_triage": build_loghub_triage,
    "loghub_fields": build_loghub_fields,
    "banking77": build_banking77,
    "clinc150": build_clinc150,
    "squad": build_squad,
    "chinook": build_chinook,
}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sources", nargs="+", choices=sorted(BUILDERS))
    parser.add_argument(
        "--force", action="store_true", help="overwrite a source file that exists (never once committed)"
    )
    args = parser.parse_args(argv)
    TASKS.mkdir(parents=True, exist_ok=True)
    for source in args.sources:
        path = TASKS / f"{source}.jsonl"
        if path.exists() and not args.force:
            print(f"{path} exists: committed tasks are never rebuilt (--force only before the first commit)")
            continue
        rows = list(BUILDERS[source]())
        balance_splits(rows)
        path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
        splits = {s: sum(row["split"] == s for row in rows) for s in ("dev", "test")}
        print(f"{source}: {len(rows)} tasks {splits}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
