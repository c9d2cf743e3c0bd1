"""The one secrets redactor: everything the server shows, logs, keeps or sends to a model passes it.

Tool results (:meth:`~caelum_mcp.serving.runtime.ToolRuntime.fit`), error messages, log lines, every model
prompt (:meth:`~caelum_mcp.engine.router.Router` redacts each request where it is sent, local or Claude,
and each text it embeds), the knowledge index and the workflow store all call :func:`redact_secrets`
or :func:`redact_all`. A secret becomes :func:`redact`'s short form (``AKIA…(20 chars)``), never
enough to use it; a private key block becomes a marker.

What counts as a secret, in the order it is looked for:

1. private key blocks (PEM, OpenSSH, PGP);
2. token formats that are unmistakable on their own (:data:`TOKEN_RULES`: Anthropic and OpenAI keys,
   AWS key ids, GitHub, Slack, Stripe, Google, Hugging Face and npm tokens, JWTs, bearer tokens),
   then the regex plugins of `detect-secrets <https://github.com/Yelp/detect-secrets>`_ listed in
   :data:`DETECT_SECRETS_PLUGINS` (their patterns, kept up to date by that project);
3. a value assigned to a secret-looking name: a quoted literal anywhere (``password = "…"``,
   ``"api_key": "…"``), an ``.env`` line, and ``name=value`` in the middle of a line (a log line's
   ``password=…``, a URL's ``?token=…``). Placeholders (``${TOKEN}``, ``<your key>``, ``xxxx``),
   prose and references are left alone: a value that is the name again, a dotted name, a call or
   an index (``password = os.environ["X"]``), or a bare identifier across a spaced ``=`` (code:
   ``self.allow_credentials = allow_credentials``);
4. entropy: a bare run of 24+ base64 characters with upper case, lower case and digits, near the
   Shannon entropy of random text of its length and not made of words as identifiers are (an AWS
   secret access key in a CSV cell; :func:`looks_random`). Hex (hashes, ids) and paths are never
   taken for a secret this way; over the 71 MB of Python in this repository and its environment,
   the only runs it takes are test fixtures' fake keys and random ids.

Speed: every pattern scans in linear time (a token starts only where a run of its characters
starts, repeats are bounded or possessive, no nested ones; detect-secrets' patterns that backtrack
are left out), and a rule runs only when the text holds one of its telltale substrings. Measured on
one core: about 100 ms per MB of CSV or log lines, 165 ms per MB of source code; 400 KB runs of any
rule's prefix (``eyJeyJ…``) take under 0.4 s (``tests/tools/test_redaction_families.py``).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from functools import cache
from typing import Any, Literal

Severity = Literal["info", "low", "medium", "high", "critical"]

PRIVATE_KEY_MARKER = "[private key redacted]"
# A run longer than this is data (an image, an archive in base64), not a credential.
_MAX_TOKEN_RUN = 1024
_MIN_RANDOM_RUN = 24
# Below this length one look for any telltale part first is cheaper than running the rules.
_SHORT_TEXT = 4096


@dataclass(frozen=True)
class TokenRule:
    """One token format: the text's ``group`` (0: the whole match) is the secret.

    ``hints`` are lower-case substrings one of which any match contains; the rule is not run over
    a text that holds none of them (empty: always run).
    """

    rule: str
    label: str
    severity: Severity
    pattern: re.Pattern[str]
    hints: tuple[str, ...]
    group: int | str = 0
    accept: Callable[[str], bool] | None = None  # a further check of the secret itself
    gate: re.Pattern[str] | None = None  # when set, run only over a text this finds something in


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


def looks_random(token: str) -> bool:
    """Whether ``token`` (base64 or url-safe characters) reads as random: 24+ characters with upper
    case, lower case and digits, not hex, and an entropy near that of random text of its length.

    Random base62 text of n characters has about log2(n) bits a character (it cannot have more); a
    word, an identifier or a path written in camel case repeats its letters and stays well below.
    """
    core = token.rstrip("=")
    if not _MIN_RANDOM_RUN <= len(core) <= _MAX_TOKEN_RUN:
        return False
    upper = lower = digit = 0
    for ch in core:
        if ch.isupper():
            upper += 1
        elif ch.islower():
            lower += 1
        elif ch.isdigit():
            digit += 1
    if not (upper and lower and digit):
        return False
    if all(ch in _HEX for ch in core.replace("-", "")):
        return False
    if "/" in core and any(len(part) >= 3 and part.isalpha() and part.islower() for part in core.split("/")):
        return False  # a path or a URL's (``org/wiki/ISO_3166-1_alpha-2``)
    # Random text of n characters has about log2(n) bits a character (it cannot have more).
    if shannon_entropy(core) < 0.8 * math.log2(min(len(core), 62)):
        return False
    # Identifiers are words: long segments (``Pytest|Removed|In|10|Warning``: 4.8 characters on
    # average, random base62 text 1.9, and 3.0 or less in 99 runs of 100) that cover most of them.
    segments = _SEGMENT.findall(core)
    letters = sum(len(s) for s in segments)
    in_words = sum(len(s) for s in segments if len(s) >= 4 and not s[0].isdigit())
    return letters <= 3.0 * len(segments) and in_words <= 0.6 * letters


_SEGMENT = re.compile(r"[A-Z][a-z]+|[a-z]+|[A-Z]+|[0-9]+")
_HEX = frozenset("0123456789abcdefABCDEF")


def _has_digit_and_letter(value: str) -> bool:
    return any(ch.isdigit() for ch in value) and any(ch.isalpha() for ch in value)


TOKEN_RULES: tuple[TokenRule, ...] = (
    TokenRule(
        "anthropic-api-key",
        "Anthropic API key",
        "critical",
        re.compile(r"sk-ant-(?<![A-Za-z0-9_\-]sk-ant-)[A-Za-z0-9_\-]{20,500}+"),
        ("sk-ant-",),
    ),
    TokenRule(
        "openai-api-key",
        "OpenAI API key",
        "critical",
        re.compile(
            r"sk-(?<![A-Za-z0-9_\-]sk-)(?:(?:proj|svcacct|admin|None)-[A-Za-z0-9_\-]{20,500}+|[A-Za-z0-9]{40,200}+(?![\w-]))"
        ),
        ("sk-",),
    ),
    TokenRule(
        "aws-access-key-id",
        "AWS access key id",
        "critical",
        re.compile(r"(?:AKIA|ASIA|ABIA|ACCA|A3T[A-Z0-9])(?<![A-Za-z0-9_].{4})[0-9A-Z]{16}\b"),
        ("akia", "asia", "abia", "acca", "a3t"),
    ),
    TokenRule(
        "aws-secret-access-key",
        "AWS secret access key",
        "critical",
        re.compile(
            r"(?i)aws_?secret_?access_?key[\"']?\s{0,20}[:=]\s{0,20}[\"']?([A-Za-z0-9/+=]{40})(?![A-Za-z0-9/+=])"
        ),
        ("secret",),
        group=1,
    ),
    TokenRule(
        "github-token",
        "GitHub token",
        "critical",
        re.compile(
            r"(?:gh[pousr]_(?<![A-Za-z0-9_]gh._)[A-Za-z0-9]{36,255}+|github_pat_(?<![A-Za-z0-9_]github_pat_)[A-Za-z0-9_]{22,255}+)"
        ),
        ("ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_"),
    ),
    TokenRule(
        "gitlab-token",
        "GitLab token",
        "critical",
        re.compile(r"gl(?<![A-Za-z0-9_\-]gl)(?:pat|dt|ft|soat|rt|cbt|imt|ptt|agent|oas)-[A-Za-z0-9_\-]{20,1024}+"),
        ("glpat-", "gldt-", "glft-", "glsoat-", "glrt-", "glcbt-", "glimt-", "glptt-", "glagent-", "gloas-"),
    ),
    TokenRule(
        "slack-token",
        "Slack token",
        "high",
        re.compile(r"xox(?<![A-Za-z0-9_\-]xox)[abposr]-[A-Za-z0-9-]{10,500}+"),
        ("xox",),
    ),
    TokenRule(
        "slack-webhook",
        "Slack webhook URL",
        "high",
        re.compile(r"https://hooks\.slack\.com/services/T[A-Za-z0-9_]{1,64}/B[A-Za-z0-9_]{1,64}/[A-Za-z0-9_]{1,128}"),
        ("hooks.slack",),
    ),
    TokenRule(
        "stripe-live-key",
        "Stripe live secret key",
        "critical",
        re.compile(r"[sr]k_live_(?<![A-Za-z0-9_][sr]k_live_)[0-9a-zA-Z]{16,255}+"),
        ("_live_",),
    ),
    TokenRule(
        "google-api-key",
        "Google API key",
        "high",
        re.compile(r"AIza(?<![A-Za-z0-9_\-]AIza)[0-9A-Za-z_\-]{35}\b"),
        ("aiza",),
    ),
    TokenRule(
        "huggingface-token",
        "Hugging Face token",
        "high",
        re.compile(r"hf_(?<![A-Za-z0-9_]hf_)[A-Za-z0-9]{34,64}+\b"),
        ("hf_",),
    ),
    TokenRule("npm-token", "npm token", "high", re.compile(r"npm_(?<![A-Za-z0-9_]npm_)[A-Za-z0-9]{36}\b"), ("npm_",)),
    TokenRule(
        "jwt",
        "JSON Web Token",
        "high",
        re.compile(
            r"eyJ(?<![A-Za-z0-9_\-]eyJ)[A-Za-z0-9_\-]{8,4096}+\.eyJ[A-Za-z0-9_\-]{4,8192}+\.[A-Za-z0-9_\-+/=]{0,4096}+"
        ),
        ("eyj",),
    ),
    TokenRule(
        "bearer-token",
        "bearer token",
        "high",
        re.compile(r"(?i)bearer[ \t]{1,20}(?P<value>[A-Za-z0-9_\-.~+/]{16,4096}+=*)"),
        ("bearer",),
        group="value",
        accept=_has_digit_and_letter,
    ),
)

# The regex plugins of detect-secrets taken as they are, with the telltale substrings that gate
# each (lower case; empty: none, always run). Names, so that a plugin a newer version adds is a
# decision (test_every_detect_secrets_plugin_is_adopted_or_left_out_for_a_reason), never silent.
DETECT_SECRETS_PLUGINS: dict[str, tuple[str, ...]] = {
    "AWSKeyDetector": ("akia", "asia", "abia", "acca", "a3t", "aws"),
    "AzureStorageKeyDetector": ("accountkey=",),
    "BasicAuthDetector": ("://",),
    "DiscordBotTokenDetector": (),
    "GitHubTokenDetector": ("ghp_", "gho_", "ghu_", "ghs_", "ghr_"),
    "GitLabTokenDetector": ("gl", "gr1348941"),
    "MailchimpDetector": ("-us",),
    "PypiTokenDetector": ("pypi-",),
    "SendGridDetector": ("sg.",),
    "SlackDetector": ("xox", "hooks.slack"),
    "SquareOAuthDetector": ("sq0csp-",),
    "StripeDetector": ("_live_",),
    "TelegramBotTokenDetector": ("bot", "telegram"),
    "TwilioKeyDetector": (),
}
# Patterns with no literal part scan every position; a cheaper pattern says first whether to run them.
_DETECT_SECRETS_GATES: dict[str, re.Pattern[str]] = {
    "MailchimpDetector": re.compile(r"-us[0-9]"),
}
_BACKTRACKS = "its pattern backtracks, quadratic over a long run of its prefix (minutes on 360 KB)"
DETECT_SECRETS_LEFT_OUT: dict[str, str] = {
    "ArtifactoryDetector": "its password pattern (AP, a hex digit, 8+ letters) matches upper-case words",
    "CloudantDetector": "a key/password name then its value: the assignment rules redact those, for less",
    "IbmCloudIamDetector": "a key/password name then its value: the assignment rules redact those, for less",
    "IbmCosHmacDetector": "a key/password name then its value: the assignment rules redact those, for less",
    "SoftlayerDetector": "a key/password name then its value: the assignment rules redact those, for less",
    "IPPublicDetector": "a public IP address is not a secret",
    "KeywordDetector": "the assignment rules here do this, and leave references (identifiers, calls) alone",
    "JwtTokenDetector": _BACKTRACKS + "; the jwt rule here finds JWTs",
    "NpmDetector": _BACKTRACKS + "; the npm-token rule and the assignment rules find npm tokens",
    "OpenAIDetector": _BACKTRACKS + "; the openai-api-key rule here finds OpenAI keys",
    "PrivateKeyDetector": "the private key block rule removes the whole block, not only its first line",
    "Base64HighEntropyString": "quoted strings only; the entropy rule here also takes bare ones (a CSV cell)",
    "HexHighEntropyString": "hex is hashes and ids far more often than secrets",
}


@cache
def detect_secrets_rules() -> tuple[TokenRule, ...]:
    """:data:`DETECT_SECRETS_PLUGINS`' patterns as token rules (loaded on first use: importing
    detect-secrets takes ~0.2 s, which a server that never redacts anything need not pay)."""
    from detect_secrets.core.plugins.util import get_mapping_from_secret_type_to_class

    rules: list[TokenRule] = []
    plugins: dict[str, Any] = get_mapping_from_secret_type_to_class()
    for secret_type, plugin in plugins.items():
        hints = DETECT_SECRETS_PLUGINS.get(plugin.__name__)
        if hints is None:
            continue
        detector: Any = plugin()  # a RegexBasedDetector: its denylist is a sequence of compiled patterns
        for pattern in detector.denylist:
            rules.append(
                TokenRule(
                    f"detect-secrets:{plugin.__name__}",
                    secret_type,
                    "high",
                    pattern,
                    hints,
                    group=-1,
                    gate=_DETECT_SECRETS_GATES.get(plugin.__name__),
                )
            )
    return tuple(rules)


def detect_secrets_plugin_names() -> set[str]:
    """Every plugin the installed detect-secrets has."""
    from detect_secrets.core.plugins.util import get_mapping_from_secret_type_to_class

    plugins: dict[str, Any] = get_mapping_from_secret_type_to_class()
    return {plugin.__name__ for plugin in plugins.values()}


# Assignments ---------------------------------------------------------------------------------------

# A name is a run of identifier characters (possessive: never given back) that ends in a keyword,
# checked by lookbehinds: one pass per run, where a lazy prefix tried before every keyword at every
# dot of a run cost ~1,000 steps a word.
_KEYWORDS_AT_END = (
    "password", "passwd", "passphrase", "pwd", "secret", "secretkey", "secret_key", "secret-key", "apikey",
    "api_key", "api-key", "accesskey", "access_key", "access-key", "token", "privatekey", "private_key",
    "private-key", "credential", "credentials",
)  # fmt: skip
SENSITIVE_NAME = (
    r"(?P<name>[A-Za-z_][A-Za-z0-9_.\-]{0,80}+)(?:" + "|".join(f"(?<={re.escape(k)})" for k in _KEYWORDS_AT_END) + ")"
)
_NAME_START = r"(?<![A-Za-z0-9_.\-])"
# name, an optional closing quote (dict / JSON keys), an optional Python annotation, then the operator
# and a quoted literal on the same line.
QUOTED_ASSIGNMENT = re.compile(
    r"(?i)" + _NAME_START + SENSITIVE_NAME + r"[\"']?[ \t]{0,20}(?::[ \t]{0,20}[A-Za-z_][\w\[\]., |]{0,80}?[ \t]*)?"
    r"(?:=|:=|:|=>)[ \t]{0,20}[rbuRBU]?(?P<quote>[\"'])(?P<value>[^\"'\r\n]{4,4096})(?P=quote)"
)
# KEY=value lines of .env files and shell scripts (unquoted values), also inside a diff (a line may
# start with "+", "-" or " ").
ENV_ASSIGNMENT = re.compile(
    r"(?im)^(?P<lead>[+\- ]?[ \t]*)(?:export[ \t]+)?" + SENSITIVE_NAME
    + r"(?P<before>[ \t]*)=(?P<after>[ \t]*)(?P<value>[^\s\"'#$]{6,4096})[ \t]*$"
)  # fmt: skip
_PLACEHOLDER_WORDS = ("example", "placeholder", "changeme_", "your_", "your-", "redacted", "dummy", "xxxx", "****")
_KEYWORDS = {"password", "passwd", "secret", "token", "api_key", "apikey", "none", "null", "true", "false"}
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_DOTTED = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)+")
_ASSIGNMENT_HINTS = ("pass", "pwd", "secret", "key", "token", "credential")


def looks_like_placeholder(value: str) -> bool:
    """Prose, templates, environment lookups, keywords and masked values: not a secret."""
    lowered = value.lower()
    if any(ch.isspace() for ch in value) or lowered in _KEYWORDS or "…(" in value:
        return True
    if value.startswith(("$", "<", "{{", "%(", "%s", "os.", "env:")) or "{{" in value or "${" in value:
        return True
    if len(set(value)) <= 2 or not any(ch.isalnum() for ch in value):
        return True
    return any(word in lowered for word in _PLACEHOLDER_WORDS)


def looks_like_reference(name: str, value: str, *, spaced: bool, operator: str = "=", called: bool = False) -> bool:
    """An unquoted ``value`` that names something rather than being the secret: the name again
    (``password=password``), a dotted name (``settings.SECRET_KEY``), a call or an index
    (``os.environ["X"]``), a bare identifier without digits across a spaced ``=`` (code: a literal
    would be quoted) or a plain word after ``:`` (prose: ``X-CSRF-Token: reload``, an annotation)."""
    value = value.rstrip(",;)")
    head = re.split(r"[(\[]", value, maxsplit=1)[0]
    if head != value:
        value, called = head, True
    bare_name = name.rsplit(".", 1)[-1].lstrip("_").lower()
    lowered = value.lower()
    if lowered.lstrip("_") == bare_name or lowered.endswith("." + bare_name):
        return True
    if not (_IDENTIFIER.fullmatch(value) or _DOTTED.fullmatch(value)):
        return False
    if called or "." in value:
        return True
    if operator == ":":
        return value.isalpha()
    return spaced and not any(ch.isdigit() for ch in value)


def assignment_is_secret(match: re.Match[str]) -> bool:
    """Whether a match of :data:`ENV_ASSIGNMENT` (the scanner's) holds a secret."""
    groups = match.groupdict()
    return unquoted_is_secret(
        match.group("name"),
        match.group("value"),
        spaced=bool(groups.get("before") or groups.get("after")),
        operator=groups.get("op") or "=",
        called=bool(groups.get("next")),
    )


def unquoted_is_secret(name: str, value: str, *, spaced: bool, operator: str = "=", called: bool = False) -> bool:
    """Whether an unquoted ``value`` assigned to ``name`` is a secret (not a placeholder, not the
    shell's working directory, not a reference: :func:`looks_like_reference`)."""
    if looks_like_placeholder(value):
        return False
    if name.lower() in ("pwd", "oldpwd") and value.startswith(("/", "~")):
        return False
    return not looks_like_reference(name, value, spaced=spaced, operator=operator, called=called)


# Where a keyword ends a name: the name is the identifier run before it (found by looking back
# from the keyword, at most _MAX_NAME characters), and what follows the name is matched from there.
_MAX_NAME = 80
_NAME_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-")
# Found in the lower-cased text (ten times faster than a case-insensitive search); a "key" must be
# one of _KEY_NAMES.
_KEYWORD_AT_NAME_END = re.compile(r"(?:pass(?:word|wd|phrase)|pwd|secret|key|token|credentials?)(?![a-z0-9_.\-])")
_KEY_NAMES = ("apikey", "api_key", "api-key", "accesskey", "access_key", "access-key", "privatekey", "private_key",
              "private-key", "secretkey", "secret_key", "secret-key")  # fmt: skip
_LINE_LEAD = re.compile(r"[+\- ]?[ \t]*(?:export[ \t]+)?")
_ENV_TAIL = re.compile(r"(?P<before>[ \t]*)=(?P<after>[ \t]*)(?P<value>[^\s\"'#$]{6,4096})[ \t]*(?=\r?\n|\Z)")
_ASSIGNMENT_TAIL = re.compile(
    r"[\"']?(?P<before>[ \t]{0,20})(?::[ \t]{0,20}[A-Za-z_][\w\[\]., |]{0,80}?[ \t]*(?==))?"
    r"(?P<op>:=|=>|=|:)(?P<after>[ \t]{0,20})"
    r"(?:[rbuRBU]?(?P<quote>[\"'])(?P<quoted>[^\"'\r\n]{4,4096})(?P=quote)"
    r"|(?P<value>[^\s\"'`,;&|<>(){}\[\]$]{6,4096}+)(?P<next>[(\[]?))"
)


def _name_start(text: str, keyword_start: int) -> int | None:
    """Where the name ending in the keyword at ``keyword_start`` starts; None when its run is longer
    than a name may be."""
    start = keyword_start
    limit = max(0, keyword_start - _MAX_NAME)
    while start > limit and text[start - 1] in _NAME_CHARS:
        start -= 1
    if start > 0 and text[start - 1] in _NAME_CHARS:
        return None
    while start < keyword_start and not (text[start].isalpha() or text[start] == "_"):
        start += 1  # a diff's "-", a leading dot
    return start


def _redact_assignments(text: str, lowered: str) -> str:
    """The assignment rules, anchored at the keywords: a name ending in one, then an operator and
    a value (an ``.env`` line's value is the rest of its line). ``lowered`` is ``text.lower()``."""
    if len(lowered) != len(text):  # a character whose lower case is longer: offsets would differ
        lowered = "".join(ch if len(ch.lower()) != 1 else ch.lower() for ch in text)
    pieces: list[str] = []
    done = 0
    skip_to = 0
    for keyword in _KEYWORD_AT_NAME_END.finditer(lowered):
        if keyword.start() < max(done, skip_to):
            continue
        start = _name_start(text, keyword.start())
        if start is None:
            continue
        name = text[start : keyword.end()]
        if keyword.group(0) == "key" and not name.lower().endswith(_KEY_NAMES):
            continue
        span, looked_to = _secret_span(text, start, name, keyword.end())
        if span is not None:
            pieces += [text[done : span[0]], redact(text[span[0] : span[1]])]
            done = span[1]
        # A keyword inside a value already looked at is not a name: skipping it keeps this linear.
        skip_to = max(skip_to, looked_to)
    if not pieces:
        return text
    pieces.append(text[done:])
    return "".join(pieces)


def _secret_span(text: str, name_start: int, name: str, name_end: int) -> tuple[tuple[int, int] | None, int]:
    """Where the secret assigned to ``name`` is (None when there is none), and how far its value
    reaches."""
    line_start = text.rfind("\n", 0, name_start) + 1
    lead = _LINE_LEAD.match(text, line_start)
    if lead is not None and lead.end() == name_start:
        env = _ENV_TAIL.match(text, name_end)
        if env is not None:
            value = env.group("value")
            spaced = bool(env.group("before") or env.group("after"))
            return (env.span("value") if unquoted_is_secret(name, value, spaced=spaced) else None), env.end()
    tail = _ASSIGNMENT_TAIL.match(text, name_end)
    if tail is None:
        return None, name_end
    if tail.group("quoted") is not None:
        return (None if looks_like_placeholder(tail.group("quoted")) else tail.span("quoted")), tail.end()
    secret = unquoted_is_secret(
        name,
        tail.group("value"),
        spaced=bool(tail.group("before") or tail.group("after")),
        operator=tail.group("op"),
        called=bool(tail.group("next")),
    )
    return (tail.span("value") if secret else None), tail.end()


# Entropy -------------------------------------------------------------------------------------------

# A maximal run of base64 / url-safe characters (the lookbehind starts it only where a run starts;
# the possessive repeat never gives characters back).
_TOKEN_RUN = re.compile(r"(?<![A-Za-z0-9+/_\-])[A-Za-z0-9+/_\-]{24,}+=*")

# Private keys --------------------------------------------------------------------------------------

PRIVATE_KEY_BLOCK = re.compile(
    r"-----BEGIN (?P<kind>(?:RSA |EC |DSA |OPENSSH |PGP |ENCRYPTED |SSH2 ENCRYPTED )?PRIVATE KEY(?: BLOCK)?)-----"
    r"(?:.*?-----END (?P=kind)-----|.*)",
    re.DOTALL,
)
_PRIVATE_KEY_HINTS = ("private key",)

# A string that cannot hold a secret has none of the rules' telltale parts and no long token run.
_ALL_HINTS = tuple(
    sorted(
        {h for r in TOKEN_RULES for h in r.hints}
        | {h for hints in DETECT_SECRETS_PLUGINS.values() for h in hints if len(h) > 2}
        | set(_ASSIGNMENT_HINTS)
        | set(_PRIVATE_KEY_HINTS)
    )
)
_ALWAYS_RUN = any(not hints for hints in DETECT_SECRETS_PLUGINS.values())


def may_hold_secrets(text: str) -> bool:
    """False when ``text`` has none of the parts a known secret needs (then nothing to redact)."""
    lowered = text.lower()
    if any(hint in lowered for hint in _ALL_HINTS):
        return True
    return any(looks_random(m.group(0)) for m in _TOKEN_RUN.finditer(text)) or (
        _ALWAYS_RUN and any(ch.isdigit() for ch in text) and _any_hintless_match(text)
    )


def _any_hintless_match(text: str) -> bool:
    return any(rule.pattern.search(text) for rule in detect_secrets_rules() if not rule.hints)


def redact_secrets(text: str) -> str:
    """``text`` with every secret found replaced by :func:`redact`'s short form (a private key block
    by a marker); see the module docstring for what is found. Idempotent: what it returns has
    nothing left to redact."""
    if len(text) < 8 or (len(text) < _SHORT_TEXT and not may_hold_secrets(text)):
        return text
    lowered = text.lower()
    if "private key" in lowered:
        text = PRIVATE_KEY_BLOCK.sub(PRIVATE_KEY_MARKER, text)
    changed = False
    for rule in (*TOKEN_RULES, *detect_secrets_rules()):
        if rule.hints and not any(hint in lowered for hint in rule.hints):
            continue
        if rule.gate is not None and rule.gate.search(text) is None:
            continue
        redacted = rule.pattern.sub(lambda m, r=rule: _redact_token(m, r), text)  # type: ignore[misc]
        changed = changed or redacted != text
        text = redacted
    if any(hint in lowered for hint in _ASSIGNMENT_HINTS):
        text = _redact_assignments(text, text.lower() if changed else lowered)
    return _TOKEN_RUN.sub(_redact_random, text)


def redact_all(value: Any) -> Any:
    """``value`` (JSON data) with every string, keys included, through :func:`redact_secrets`.

    One pass over all its strings first, each on its own line (no rule matches across a line, so
    this finds whatever one string at a time would): when nothing is found, and that is most
    results, the value comes back as it is, without the walk (5,000 findings: ~110 ms against
    ~250).
    """
    strings = list(_strings(value))
    if not strings:
        return value
    joined = _STRING_SEPARATOR.join(strings)
    if redact_secrets(joined) == joined:
        return value
    return _redact_walk(value)


# Between two strings of one value in redact_all's single pass: ends a line, and is no part of a secret.
_STRING_SEPARATOR = "\n\0\n"


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, Mapping):
        for key, item in value.items():
            yield str(key)
            yield from _strings(item)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _strings(item)


def _redact_walk(value: Any) -> Any:
    if isinstance(value, str):
        return redact_secrets(value)
    if isinstance(value, Mapping):
        return {redact_secrets(str(k)): _redact_walk(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_redact_walk(item) for item in value]
    return value


def _replace_group(match: re.Match[str], group: int | str) -> str:
    whole, start, end = match.group(0), match.start(group) - match.start(), match.end(group) - match.start()
    return whole[:start] + redact(match.group(group)) + whole[end:]


def _secret_group(match: re.Match[str], rule: TokenRule) -> int | str:
    """The group holding the secret. A detect-secrets pattern (group -1) says so by its longest
    group, when that is 6+ characters or ends the match but for a delimiter (``aws…key =
    "(secret)"``, ``://user:(password)@``); else it is the whole match (such groups are parts of
    the token: GitHub's ``(ghp|gho|…)``)."""
    if rule.group != -1:
        return rule.group
    best, length = 0, 0
    for index in range(1, (match.re.groups or 0) + 1):
        found = match.group(index)
        if found is not None and len(found) > length:
            best, length = index, len(found)
    if best and match.start(best) > match.start() and (length >= 6 or match.end() - match.end(best) <= 1):
        return best
    return 0


def _redact_token(match: re.Match[str], rule: TokenRule) -> str:
    group = _secret_group(match, rule)
    secret = match.group(group)
    if "…(" in secret or (rule.accept is not None and not rule.accept(secret)):
        return match.group(0)
    if rule.rule.startswith("detect-secrets:") and group != 0 and looks_like_placeholder(secret):
        return match.group(0)
    return _replace_group(match, group)


def _redact_random(match: re.Match[str]) -> str:
    token = match.group(0)
    return redact(token) if looks_random(token) else token
