"""Find hard-coded secrets in text files, reporting them redacted.

Two kinds of evidence, both the rules of the one redactor (:mod:`caelum_mcp.core.redaction`):

- token formats that are unmistakable on their own (:data:`~caelum_mcp.core.redaction.TOKEN_RULES`:
  Anthropic, OpenAI and AWS keys, GitHub, GitLab, Slack, Stripe, Google, Hugging Face and npm
  tokens, JWTs, bearer tokens; PEM private key blocks);
- a quoted literal assigned to a secret-looking name (``password = "..."``, ``"api_key": "..."``,
  ``SECRET_KEY=...`` in env files). Placeholders (``"${TOKEN}"``, ``"<your key>"``, ``"xxxx"``),
  prose, values that merely repeat a keyword and references (``self.allow_credentials =
  allow_credentials``: a bare identifier is not a secret) are ignored. Passwords are
  ``hardcoded-password``; other random-looking values (16+ characters, 3.5+ bits of Shannon entropy
  per character) ``high-entropy-secret``; the rest ``hardcoded-secret``. Randomness raises the
  confidence, not the severity.

The secret itself never leaves this module: messages carry :func:`redact`'s short prefix only.
:func:`redact_secrets` and :func:`redact_all` (re-exported from :mod:`caelum_mcp.core.redaction`) redact
any text: the server runs them over every tool result, log line, model prompt and store.
"""

from __future__ import annotations

import re

from caelum_mcp.core.redaction import (
    ENV_ASSIGNMENT,
    QUOTED_ASSIGNMENT,
    TOKEN_RULES,
    TokenRule,
    assignment_is_secret,
    looks_like_placeholder,
    may_hold_secrets,
    redact,
    redact_all,
    redact_secrets,
    shannon_entropy,
)

from .models import Finding

__all__ = [
    "MAX_SECRET_SCAN_BYTES",
    "TOOL",
    "looks_binary",
    "may_hold_secrets",
    "redact",
    "redact_all",
    "redact_secrets",
    "scan_text",
    "shannon_entropy",
]

TOOL = "secrets"
MAX_SECRET_SCAN_BYTES = 1_000_000

_PRIVATE_KEY_RULE = TokenRule(
    "private-key",
    "private key block",
    "critical",
    re.compile(r"-----BEGIN (?:RSA |EC |DSA |OPENSSH |PGP |ENCRYPTED )?PRIVATE KEY(?: BLOCK)?-----"),
    ("private key",),
)
_SCAN_RULES = (*TOKEN_RULES, _PRIVATE_KEY_RULE)
_PASSWORD_WORDS = ("password", "passwd", "passphrase", "pwd")


def _position(text: str, offset: int) -> tuple[int, int]:
    line = text.count("\n", 0, offset) + 1
    column = offset - (text.rfind("\n", 0, offset) + 1) + 1
    return line, column


def _assignment_finding(path: str, text: str, match: re.Match[str]) -> Finding | None:
    name, value = match.group("name"), match.group("value")
    if looks_like_placeholder(value):
        return None
    if match.re is ENV_ASSIGNMENT and not assignment_is_secret(match):
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
    lowered = text.lower()
    for token_rule in _SCAN_RULES:
        if token_rule.hints and not any(hint in lowered for hint in token_rule.hints):
            continue
        for match in token_rule.pattern.finditer(text):
            secret = match.group(token_rule.group)
            if token_rule.accept is not None and not token_rule.accept(secret):
                continue
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
    for pattern in (QUOTED_ASSIGNMENT, ENV_ASSIGNMENT):
        for match in pattern.finditer(text):
            finding = _assignment_finding(path, text, match)
            # A line already reported for a recognised token format needs no generic duplicate.
            if finding is not None and finding.line not in token_lines:
                findings.setdefault((finding.line, "assignment"), finding)
    return list(findings.values())


def looks_binary(head: bytes) -> bool:
    """NUL bytes in the first block: not a text file worth scanning or counting."""
    return b"\0" in head
