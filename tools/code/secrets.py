"""Find hard-coded secrets in text files, reporting them redacted.

Two kinds of evidence:

- token formats that are unmistakable on their own (AWS access key ids, GitHub and Slack tokens,
  Stripe live keys, Google API keys, PEM private key blocks);
- a quoted literal assigned to a secret-looking name (``password = "..."``, ``"api_key": "..."``,
  ``SECRET_KEY=...`` in env files). Placeholders (``"${TOKEN}"``, ``"<your key>"``, ``"xxxx"``),
  prose (values with spaces) and values that merely repeat a keyword are ignored. Passwords are
  ``hardcoded-password``; other random-looking values (16+ characters, 3.5+ bits of Shannon entropy
  per character) ``high-entropy-secret``; the rest ``hardcoded-secret``. Randomness raises the
  confidence, not the severity.

The secret itself never leaves this module: messages carry :func:`redact`'s short prefix only.
:func:`redact_secrets` applies the same rules to any text (a patch's context lines, a test's
failure output, a model's comment): the server runs it over every string of every tool result.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pydantic_core

from .models import Finding, Severity

TOOL = "secrets"
MAX_SECRET_SCAN_BYTES = 1_000_000


@dataclass(frozen=True)
class _TokenRule:
    rule: str
    label: str
    severity: Severity
    pattern: re.Pattern[str]


_TOKEN_RULES = (
    _TokenRule(
        "aws-access-key-id", "AWS access key id", "critical", re.compile(r"\b(?:AKIA|ASIA|ABIA|ACCA)[0-9A-Z]{16}\b")
    ),
    _TokenRule(
        "aws-secret-access-key",
        "AWS secret access key",
        "critical",
        re.compile(r"(?i)aws_?secret_?access_?key[\"']?\s*[:=]\s*[\"']?([A-Za-z0-9/+=]{40})(?![A-Za-z0-9/+=])"),
    ),
    _TokenRule(
        "github-token",
        "GitHub token",
        "critical",
        re.compile(r"\b(?:gh[pousr]_[A-Za-z0-9]{36,255}|github_pat_[A-Za-z0-9_]{22,255})\b"),
    ),
    _TokenRule("slack-token", "Slack token", "high", re.compile(r"\bxox[abposr]-[A-Za-z0-9-]{10,}")),
    _TokenRule(
        "slack-webhook",
        "Slack webhook URL",
        "high",
        re.compile(r"https://hooks\.slack\.com/services/T[A-Za-z0-9_]+/B[A-Za-z0-9_]+/[A-Za-z0-9_]+"),
    ),
    _TokenRule("stripe-live-key", "Stripe live secret key", "critical", re.compile(r"\b[sr]k_live_[0-9a-zA-Z]{16,}\b")),
    _TokenRule("google-api-key", "Google API key", "high", re.compile(r"\bAIza[0-9A-Za-z_\-]{35}\b")),
    _TokenRule(
        "private-key",
        "private key block",
        "critical",
        re.compile(r"-----BEGIN (?:RSA |EC |DSA |OPENSSH |PGP |ENCRYPTED )?PRIVATE KEY(?: BLOCK)?-----"),
    ),
)

_SENSITIVE_NAME = (
    r"(?P<name>(?:[A-Za-z_][A-Za-z0-9_.\-]*?)?"
    r"(?:password|passwd|passphrase|pwd|secret|secret_?key|api_?key|apikey|access_?key|access_?token"
    r"|auth_?token|token|private_?key|client_?secret|credentials?))"
)
# name, an optional closing quote (dict / JSON keys), an optional Python annotation, then the operator
# and a quoted literal on the same line.
_QUOTED_ASSIGNMENT = re.compile(
    r"(?i)(?<![A-Za-z0-9_])" + _SENSITIVE_NAME + r"[\"']?\s*(?::\s*[A-Za-z_][\w\[\]., |]*?\s*)?"
    r"(?:=|:=|:|=>)\s*[rbuRBU]?(?P<quote>[\"'])(?P<value>[^\"'\r\n]{4,300})(?P=quote)"
)
# KEY=value lines of .env files and shell scripts (unquoted values).
_ENV_ASSIGNMENT = re.compile(
    r"(?im)^[ \t]*(?:export[ \t]+)?" + _SENSITIVE_NAME + r"[ \t]*=[ \t]*(?P<value>[^\s\"'#$]{8,300})[ \t]*$"
)
_PLACEHOLDER_WORDS = ("example", "placeholder", "changeme_", "your_", "your-", "redacted", "dummy", "xxxx", "****")
_KEYWORDS = {"password", "passwd", "secret", "token", "api_key", "apikey", "none", "null", "true", "false"}
_PASSWORD_WORDS = ("password", "passwd", "passphrase", "pwd")


def redact(value: str) -> str:
    """A short prefix of ``value`` and its length; never enough to use the secret."""
    shown = min(4, len(value) // 4)
    return f"{value[:shown]}…({len(value)} chars)"


def shannon_entropy(value: str) -> float:
    """Bits per character of ``value``."""
    if not value:
        return 0.0
    counts = Counter(value)
    return -sum(n / len(value) * math.log2(n / len(value)) for n in counts.values())


def _looks_like_placeholder(value: str) -> bool:
    lowered = value.lower()
    if any(ch.isspace() for ch in value) or lowered in _KEYWORDS:
        return True
    if value.startswith(("$", "<", "{{", "%(", "%s", "os.", "env:")) or "{{" in value or "${" in value:
        return True
    if len(set(value)) <= 2 or not any(ch.isalnum() for ch in value):
        return True
    return any(word in lowered for word in _PLACEHOLDER_WORDS)


def _position(text: str, offset: int) -> tuple[int, int]:
    line = text.count("\n", 0, offset) + 1
    column = offset - (text.rfind("\n", 0, offset) + 1) + 1
    return line, column


def _assignment_finding(path: str, text: str, match: re.Match[str]) -> Finding | None:
    name, value = match.group("name"), match.group("value")
    if _looks_like_placeholder(value):
        return None
    line, column = _position(text, match.start("name"))
    entropy = shannon_entropy(value)
    random_looking = len(value) >= 16 and entropy >= 3.5
    confidence = "high" if random_looking else ("medium" if len(value) >= 8 else "low")
    if any(word in name.lower() for word in _PASSWORD_WORDS):
        rule, what = "hardcoded-password", f"hard-coded password assigned to {name!r}"
    elif random_looking:
        rule, what = "high-entropy-secret", f"high-entropy string ({entropy:.1f} bits/char) hard-coded in {name!r}"
    else:
        rule, what = "hardcoded-secret", f"hard-coded secret assigned to {name!r}"
    return Finding(
        tool=TOOL,
        rule=rule,
        severity="high",
        file=path,
        line=line,
        column=column,
        message=f"{what}: {redact(value)}; load it from the environment or a secret store",
        confidence=confidence,
    )


def scan_text(path: str, text: str) -> list[Finding]:
    """Secrets in one file's text; ``path`` is the project-relative name to report."""
    findings: dict[tuple[int, str], Finding] = {}
    for token_rule in _TOKEN_RULES:
        for match in token_rule.pattern.finditer(text):
            secret = match.group(match.lastindex or 0)
            line, column = _position(text, match.start())
            shown = "" if token_rule.rule == "private-key" else f": {redact(secret)}"
            findings.setdefault(
                (line, token_rule.rule),
                Finding(
                    tool=TOOL,
                    rule=token_rule.rule,
                    severity=token_rule.severity,
                    file=path,
                    line=line,
                    column=column,
                    message=f"{token_rule.label} in source{shown}; revoke it and load it from a secret store",
                    confidence="high",
                ),
            )
    token_lines = {line for line, _ in findings}
    for pattern in (_QUOTED_ASSIGNMENT, _ENV_ASSIGNMENT):
        for match in pattern.finditer(text):
            finding = _assignment_finding(path, text, match)
            # A line already reported for a recognised token format needs no generic duplicate.
            if finding is not None and finding.line not in token_lines:
                findings.setdefault((finding.line, "assignment"), finding)
    return list(findings.values())


def looks_binary(head: bytes) -> bool:
    """NUL bytes in the first block: not a text file worth scanning or counting."""
    return b"\0" in head


_PRIVATE_KEY_BLOCK = re.compile(
    r"-----BEGIN (?P<kind>(?:RSA |EC |DSA |OPENSSH |PGP |ENCRYPTED )?PRIVATE KEY(?: BLOCK)?)-----"
    r"(?:.*?-----END (?P=kind)-----|.*)",
    re.DOTALL,
)
# A string that cannot hold any secret the rules know has none of their telltale parts (lower case;
# plain substring tests, several times faster than one case-insensitive pattern).
_HINTS = (
    "akia", "asia", "abia", "acca", "ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_", "xox", "hooks.slack",
    "_live_", "aiza",
    "private key", "secret", "pass", "pwd", "key", "token", "credential",
)  # fmt: skip
# _ENV_ASSIGNMENT, also inside a diff (a line may start with "+", "-" or " ").
_ENV_ASSIGNMENT_IN_DIFF = re.compile(
    r"(?im)^[+\- ]?[ \t]*(?:export[ \t]+)?" + _SENSITIVE_NAME + r"[ \t]*=[ \t]*(?P<value>[^\s\"'#$]{8,300})[ \t]*$"
)


def may_hold_secrets(text: str) -> bool:
    """False when ``text`` has none of the parts a known secret needs (then nothing to redact)."""
    lowered = text.lower()
    return any(hint in lowered for hint in _HINTS)


def redact_secrets(text: str) -> str:
    """``text`` with every secret the scanner recognises replaced by :func:`redact`'s short form
    (a private key block by a marker). Placeholders and prose are left alone, as the scanner does."""
    if len(text) < 8 or not may_hold_secrets(text):
        return text
    text = _PRIVATE_KEY_BLOCK.sub("[private key redacted]", text)
    for token_rule in _TOKEN_RULES:
        if token_rule.rule != "private-key":
            text = token_rule.pattern.sub(lambda m: _redact_group(m, m.lastindex or 0), text)
    for pattern in (_QUOTED_ASSIGNMENT, _ENV_ASSIGNMENT_IN_DIFF):
        text = pattern.sub(_redact_assignment, text)
    return text


def redact_all(value: Any) -> Any:
    """``value`` (JSON data) with every string, keys included, through :func:`redact_secrets`.

    One look at the whole document first: most values hold nothing a secret needs, and skip the
    walk (5,000 findings: ~5 ms instead of ~140).
    """
    if not may_hold_secrets(pydantic_core.to_json(value, fallback=str).decode()):
        return value
    return _redact_walk(value)


def _redact_walk(value: Any) -> Any:
    if isinstance(value, str):
        return redact_secrets(value)
    if isinstance(value, Mapping):
        return {redact_secrets(str(k)): _redact_walk(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_redact_walk(item) for item in value]
    return value


def _redact_group(match: re.Match[str], group: int | str) -> str:
    whole, start, end = match.group(0), match.start(group) - match.start(), match.end(group) - match.start()
    return whole[:start] + redact(match.group(group)) + whole[end:]


def _redact_assignment(match: re.Match[str]) -> str:
    value = match.group("value")
    if _looks_like_placeholder(value) or "…(" in value:
        return match.group(0)
    return _redact_group(match, "value")
