"""Masking and template mining: the masks, the statistical miner, grouping accuracy, Drain3 for
comparison, and GA on the shared Loghub samples (one configuration for all systems)."""

from __future__ import annotations

import csv
import os
import random
from pathlib import Path

import pytest

from caelum_mcp.tools.logs import masking
from caelum_mcp.tools.logs.diagnosis import collect_logs, mine
from caelum_mcp.tools.logs.masking import mask_message, mask_whole_message
from caelum_mcp.tools.logs.mining import Drain3Miner, grouping_accuracy, mine_templates
from caelum_mcp.tools.logs.refine import Decision, apply_decisions, candidates

# the shared samples beside the checkout, or wherever LOGHUB_2K_DIR says (a clone elsewhere)
LOGHUB = Path(os.environ.get("LOGHUB_2K_DIR") or Path(__file__).resolve().parents[3] / "shared" / "data" / "loghub-2k")


@pytest.mark.parametrize(
    ("message", "masked"),
    [
        ("Received block blk_-16089 of size 91178 from /127.0.0.6", "Received block <*> of size <*> from <*>"),
        ("connection from 222.33.90.199 () at Sun Jul 10 03:55:12 2005", "connection from <*> (<*>) at <*>"),
        ("user=root rhost=c-24-16-98-100.hsd1.pa.comcast.net", "user=root rhost=<*>"),
        ("uid=0 euid=0 tty=NODEVssh", "uid=<*> euid=<*> tty=NODEVssh"),
        ("a.cuhk.edu.hk:5070 close, 1190 bytes (1.16 KB) sent, lifetime <1 sec>", "<*> close, <*> sent, lifetime <*>"),
        ("GET https://example.org/a?b=1 took 35 ms", "GET <*> took <*>"),
        ("session 0x14ed93111f20027 for a5c1e2b0-6c7d-4e1f-9a8b-0c1d2e3f4a5b", "session <*> for <*>"),
        ("open /var/lib/app/data.db failed", "open <*> failed"),
        ("jk2_init() Found child 6725 in scoreboard slot 10", "jk2_init() Found child <*> in scoreboard slot <*>"),
        ("Starting worker pool", "Starting worker pool"),
    ],
)  # fmt: skip
def test_masks(message: str, masked: str) -> None:
    assert mask_message(message) == masked


# words and separators where masking word by word could part from masking the whole message:
# dates, sizes and durations written over a space, lookarounds at a word's edge, other white space
_TRICKY_WORDS = (
    "Jan", "Jul", "Dec", "July", "10", "3", "03:55:12", "03:55", "2005", "Sun", "Mon,", "Monday", "2015-10-18",
    "18:01:47,978", "18:01:47", "18:01:47.5Z", "1190", "bytes", "(1.16", "KB)", "KB", "KiB", "B", "MB", "ms", "s",
    "sec", "secs", "min", "h", "hrs", "<1", "sec>", "35", "12.5", "µs", "us", "ns", "(2", "GB)", "12bytes", "(1.5KB)",
    "3KB", "7ms", "http://a.b/c", "/var/log", "./x", "~/y", "C:\\x", "host.com:80", "a.b.com", "x.org", "()", "[]",
    "{}", "f()", "jk2_init", "blk_-123", "ssh2", "user=root", "127.0.0.1", "x", "size", "-", "12-", "-10", "T", "Z",
    "+01:00", "5.8", "1.5MB", "GiB", "a1b2", "0x1f", ":", ".", "<*>", "<", ">", "(", ")", "'", '"', "|", "08-11",
    "09", "20:10:40", "2015-10-1", "8-10-18",
)  # fmt: skip
_SEPARATORS = (" ", " ", " ", " ", "  ", "\t", " \t", "\xa0", "\n", "", "\x1c", "\u2003")


@pytest.mark.parametrize(
    "message",
    [
        "size 5.8 KB, from x",  # a size over a space
        "close, 1190 bytes (1.16 KB) sent",
        "got 12bytes (1.5KB) back",  # only the bracket is over a space
        "took 35 ms",
        "at 2015-10-18 18:01:47,978 done",  # a date and time apart
        "connection at Sun Jul 10 03:55:12 2005 x",
        "on Jul  9 10:01 done",  # a month and day two spaces apart
    ],
)
def test_a_message_a_mask_matches_over_a_space_is_masked_whole(message: str) -> None:
    assert mask_message(message) == mask_whole_message(message)
    assert mask_message(message) != " ".join(mask_whole_message(word) for word in message.split(" "))


@pytest.mark.slow  # 30,000 messages masked both ways
def test_masking_word_by_word_gives_what_masking_the_whole_message_gives() -> None:
    rnd = random.Random(20261207)
    for _ in range(30_000):
        parts = []
        for _ in range(rnd.randint(1, 8)):
            parts += [rnd.choice(_TRICKY_WORDS), rnd.choice(_SEPARATORS)]
        message = "".join(parts)
        assert mask_message(message) == mask_whole_message(message), repr(message)


def test_the_words_remembered_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(masking, "_WORDS", {})
    monkeypatch.setattr(masking, "_WORDS_KEPT", 3)
    assert mask_message("a b c d e f 7") == "a b c d e f <*>"
    assert 0 < len(masking._WORDS) <= 3
    assert mask_message("x" * 300 + " 7") == "x" * 300 + " <*>"
    assert "x" * 300 not in masking._WORDS  # a long word is masked each time


def test_the_miner_groups_one_event_and_splits_by_few_valued_words() -> None:
    messages = [
        *[f"Accepted password for {u} from 127.0.0.{i} port {1000 + i} ssh2" for i, u in enumerate("abcdefgh")],
        *["cupsd startup succeeded", "cupsd shutdown succeeded"] * 3,
        *[f"Failed password for user{i} from 127.0.0.{i} port 22 ssh2" for i in range(4)],
    ]
    mined = mine_templates(messages)
    assert mined.templates[mined.labels[0]] == "Accepted password for <*> from <*> port <*> <*>"  # ssh2: a digit
    assert len({mined.labels[i] for i in range(8)}) == 1
    assert mined.labels[8] != mined.labels[9]  # startup / shutdown: two events
    assert mined.templates[mined.labels[8]] == "cupsd startup succeeded"
    assert sum(mined.counts) == len(messages)


def test_grouping_accuracy_counts_a_line_only_when_its_group_is_exact() -> None:
    assert grouping_accuracy(["a", "a", "b"], [1, 1, 2]) == 1.0
    assert grouping_accuracy(["a", "a", "b"], [1, 1, 1]) == 0.0
    assert grouping_accuracy(["a", "a", "b", "c"], [1, 2, 3, 4]) == 0.5
    with pytest.raises(ValueError, match="3 true labels"):
        grouping_accuracy(["a", "b", "c"], [1])


def test_drain3_runs_over_the_same_masked_messages() -> None:
    messages = [f"worker {i} finished job {i * 7} in {i} ms" for i in range(20)] + ["disk full"] * 3
    mined = Drain3Miner().mine(messages)
    assert len(set(mined.labels)) == 2 and sum(mined.counts) == 23


def test_decisions_split_and_merge_clusters() -> None:
    masked = ["cupsd startup succeeded", "sdpd startup succeeded", "klogd startup succeeded", "hcid startup succeeded",
              "session opened for <*>", "session opened by <*>"]  # fmt: skip
    mined = mine_templates(masked, masked=True)
    uniques = list(dict.fromkeys(masked))
    mt = [mined.labels[masked.index(u)] for u in uniques]
    assert mined.templates[mt[0]] == "<*> startup succeeded"
    found = candidates(uniques, mt, mined.templates, [1] * len(uniques))
    startup = next(c for c in found if c.template == "<*> startup succeeded")
    assert startup.slot_values == {0: ["cupsd", "hcid", "klogd", "sdpd"]}
    decisions = [Decision(template="<*> startup succeeded", split_slots=[0])]
    labels, templates, splits, merges = apply_decisions(decisions, uniques, mt, mined.templates)
    assert (splits, merges) == (3, 0) and len({labels[i] for i in range(4)}) == 4
    assert "cupsd startup succeeded" in templates
    a, b = mt[4], mt[5]
    if a != b:  # merged back into one event when the model says so
        merge = [Decision(template=mined.templates[a], same_as=mined.templates[b])]
        labels, _, _, merges = apply_decisions(merge, uniques, mt, mined.templates)
        assert merges == 1 and labels[4] == labels[5]
    # decisions about templates that are not there, or slots that are not <*>, change nothing
    labels, _, splits, merges = apply_decisions(
        [Decision(template="ghost", split_slots=[0]), Decision(template="<*> startup succeeded", split_slots=[1])],
        uniques,
        mt,
        mined.templates,
    )
    assert (splits, merges) == (0, 0)


@pytest.mark.skipif(not LOGHUB.is_dir(), reason="the shared Loghub samples are not here (set LOGHUB_2K_DIR)")
def test_grouping_accuracy_on_the_loghub_samples_with_one_configuration() -> None:
    """The product's grouping (raw lines read, parsed, masked, mined) against the ground truth."""
    results = {}
    for folder in sorted(p for p in LOGHUB.iterdir() if p.is_dir()):
        log = folder / f"{folder.name}_2k.log"
        with (folder / f"{folder.name}_2k.log_structured.csv").open(encoding="utf-8", newline="") as f:
            truth = [row["EventId"] for row in csv.DictReader(f)]
        collected = collect_logs([(log, log.name)])
        mt, _ = mine(collected)
        by_line: list[object] = [None] * len(truth)
        starts = [*collected.entry_line, len(truth) + 1]
        for k, (uid, level) in enumerate(zip(collected.entry_message, collected.entry_level, strict=True)):
            for line in range(starts[k], starts[k + 1]):
                by_line[line - 1] = (mt[uid], level)
        results[folder.name] = grouping_accuracy(truth, by_line)
    average = sum(results.values()) / len(results)
    assert average >= 0.85, results
    assert min(results.values()) >= 0.8, results
