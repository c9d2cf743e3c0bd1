"""The one redactor (caelum_mcp/core/redaction.py), family by family: each secret format comes back as its
short redacted form wherever it sits (a CSV cell, the middle of a log line, an ``.env`` line, prose),
and what is not a secret (identifiers, hashes, paths, placeholders, references) comes back as it was.

The fixture secrets are random-looking but made up, written in pieces so that no scanner takes this
file for a leak.
"""

from __future__ import annotations

import pytest

from caelum_mcp.core.redaction import (
    DETECT_SECRETS_LEFT_OUT,
    DETECT_SECRETS_PLUGINS,
    detect_secrets_plugin_names,
    looks_random,
    redact,
    redact_all,
    redact_secrets,
)
from caelum_mcp.tools.code.secrets import scan_text

ANTHROPIC = (
    "sk-ant-api03-" + "q7Zr2LmXc4VbN7pK1sTyW9eDh3Jf6Gk8Ls0Qw5Er2Ty7Ui4Op1As3Df6Gh9Jk2Lz5Xc8Vb1Nm4Qa7Ws0Ed" + "AA"
)
OPENAI_PROJECT = "sk-proj-" + "Zx9Cv8Bn7Mq6Wl5Ek4Rj3Th2Yg1Uf0Id9Os8Pa7Sd6Fg5Hj4Kl3Zx2Cv1Bn0Mq"
OPENAI_LEGACY = "sk-" + "Ab12Cd34Ef56Gh78Ij90" + "T3BlbkFJ" + "Kl12Mn34Op56Qr78St90"
JWT = (
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9"
    + ".eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4gRG9lIiwiaWF0IjoxNTE2MjM5MDIyfQ"
    + ".SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c"
)
OPAQUE_BEARER = "Zq3" + "Xw9Lm2Nb7Vc5Kj8Hg4Fd"
AWS_KEY_ID = "AKIA" + "QX7TLMZ4RW2NB5KD"
AWS_SECRET = "Tz8" + "kP2xQ7vR4mZ1sL6wB9cJ3nY5hG0fD2aE8uI4oK7q"
GITHUB_CLASSIC = "ghp_" + "Ab3dE6gH9jK2mN5pQ8sT1vW4yZ7bC0eF3hJ6"
GITHUB_FINE = (
    "github_pat_" + "11ABCDEFG0" + "x1Y2z3A4b5C6d7E8f9G0h1_" + "J2k3L4m5N6o7P8q9R0s1T2u3V4w5X6y7Z8a9B0c1D2e3F4g5H6"
)
GITLAB = "glpat-" + "Xy7Zq3Wm9Kp2Lr5Nt8Vb"
SLACK = "xoxb-" + "123456789012-1234567890123-" + "AbCdEfGhIjKlMnOpQrStUvWx"
STRIPE = "sk_" + "live_" + "51Hq8Zr2LmXc4VbN7pK1sTyW9"
GOOGLE = "AIza" + "SyD8x7Qz2Lm4Nb6Vc9Kj3Hg5Fd1Sa0Pq7We"
HUGGING_FACE = "hf_" + "Qz8Xw3Lm9Nb2Vc7Kj4Hg6Fd1Sa5Pq0We3Rt"
NPM = "npm_" + "Qz8Xw3Lm9Nb2Vc7Kj4Hg6Fd1Sa5Pq0We3Rt7Y"
SENDGRID = "SG." + "Qz8Xw3Lm9Nb2Vc7Kj4Hg6F" + "." + "d1Sa5Pq0We3Rt7YuI9oP2aS4dF6gH8jK1lZ3xC5vB7n"
URL_PASSWORD = "Sup3r" + "S3cret"
LOG_PASSWORD = "Hunter2" + "Hunter2"
ENV_TOKEN = "Pw4" + "nm8Qz1"


def hidden(text: str, *secrets: str) -> str:
    """``text`` redacted, checked to hold none of ``secrets`` and each one's short form."""
    out = redact_secrets(text)
    for secret in secrets:
        assert secret not in out, f"{secret[:6]}… leaked: {out!r}"
        assert redact(secret) in out, f"{secret[:6]}… not shown as {redact(secret)!r}: {out!r}"
    assert redact_secrets(out) == out  # idempotent: nothing left to redact
    return out


@pytest.mark.parametrize(
    ("family", "text", "secret"),
    [
        ("anthropic", f"ANTHROPIC_API_KEY is {ANTHROPIC} for now", ANTHROPIC),
        ("openai-project", f'client = OpenAI(api_key="{OPENAI_PROJECT}")', OPENAI_PROJECT),
        ("openai-legacy", f"the key {OPENAI_LEGACY} was rotated", OPENAI_LEGACY),
        ("jwt", f"cookie session={JWT}; Path=/", JWT),
        ("jwt-bearer", f"Authorization: Bearer {JWT}", JWT),
        ("bearer-opaque", f"curl -H 'Authorization: Bearer {OPAQUE_BEARER}' https://api.test/v1", OPAQUE_BEARER),
        ("aws-key-id", f"aws_access_key_id = {AWS_KEY_ID}", AWS_KEY_ID),
        ("aws-secret-csv", f"user,key_id,secret,created\nalice,{AWS_KEY_ID},{AWS_SECRET},2024-01-02\n", AWS_SECRET),
        ("aws-secret-assigned", f"aws_secret_access_key={AWS_SECRET}", AWS_SECRET),
        ("github-classic", f"pushed with {GITHUB_CLASSIC}", GITHUB_CLASSIC),
        ("github-fine-grained", f"GH_TOKEN: {GITHUB_FINE}", GITHUB_FINE),
        ("gitlab", f"git clone https://oauth2:{GITLAB}@gitlab.test/x.git", GITLAB),
        ("slack", f"SLACK_BOT_TOKEN={SLACK}", SLACK),
        ("stripe", f"stripe.api_key = {STRIPE!r}", STRIPE),
        ("google", f"maps?key={GOOGLE}&q=x", GOOGLE),
        ("hugging-face", f"login({HUGGING_FACE})", HUGGING_FACE),
        ("npm", f"//registry.npmjs.org/:_authToken={NPM}", NPM),
        ("sendgrid", f"mail via {SENDGRID}", SENDGRID),
        ("url-credentials", f"DATABASE_URL=postgres://app:{URL_PASSWORD}@db.test:5432/app", URL_PASSWORD),
        (
            "password-mid-log-line",
            f"2024-05-01 12:00:01 INFO auth: login user=bob password={LOG_PASSWORD} from 127.0.0.1 ok",
            LOG_PASSWORD,
        ),
        ("token-in-query", f"GET /cb?state=1&access_token={ENV_TOKEN}xy&x=2 HTTP/1.1", ENV_TOKEN + "xy"),
        ("env-line", f"export DB_PASSWORD={ENV_TOKEN}\n", ENV_TOKEN),
        ("diff-env-line", f"+API_SECRET={ENV_TOKEN},{ENV_TOKEN}\n", f"{ENV_TOKEN},{ENV_TOKEN}"),
        ("yaml", f"db:\n  password: {ENV_TOKEN}\n", ENV_TOKEN),
        ("quoted-json", f'{{"client_secret": "{ENV_TOKEN}"}}', ENV_TOKEN),
    ],
)
def test_every_family_is_redacted_where_it_sits(family: str, text: str, secret: str) -> None:
    hidden(text, secret)


def test_a_private_key_block_becomes_a_marker() -> None:
    body = "MIIEowIBAAKCAQEA" + "0Zq3Xw9Lm2Nb7Vc5Kj8Hg4Fd"
    out = redact_secrets(f"key:\n-----BEGIN OPENSSH PRIVATE KEY-----\n{body}\n-----END OPENSSH PRIVATE KEY-----\nok")
    assert body not in out and "[private key redacted]" in out and out.endswith("ok")


def test_a_project_with_every_family_in_one_file_keeps_none() -> None:
    config = "\n".join(
        [
            f"ANTHROPIC_API_KEY={ANTHROPIC}",
            f"OPENAI_API_KEY={OPENAI_PROJECT}",
            f"AWS_ACCESS_KEY_ID={AWS_KEY_ID}",
            f"AWS_SECRET_ACCESS_KEY={AWS_SECRET}",
            f"GITHUB_TOKEN={GITHUB_CLASSIC}",
            f'settings = {{"jwt": "{JWT}"}}',
        ]
    )
    hidden(config, ANTHROPIC, OPENAI_PROJECT, AWS_KEY_ID, AWS_SECRET, GITHUB_CLASSIC, JWT)


@pytest.mark.parametrize(
    "text",
    [
        "        self.allow_credentials = allow_credentials\n",  # issue 20 item 14: a reference, not a value
        "        self._password = password\n",
        "    token = self.peek()\n",
        "f(password=password, api_key=settings.API_KEY, token=get_token())\n",
        'password = os.environ["PASSWORD"]\n',
        "    api_key: Optional[str] = None\n    token: SecretStr\n",
        "missing or wrong X-CSRF-Token: reload the dashboard and try again",
        "max_tokens=800 input_tokens: 1234 token_count=55",
        "commit 3f786850e387550fdab836ed7e6dc881de23001b, blake2b 9a0364b9e99bb480dd25e1f0284c8555",
        "id 123e4567-e89b-12d3-a456-426614174000 and sha256:" + "ab12" * 16,
        "class PytestRemovedIn10Warning(WebFetchTool20250910Param, nvmlDeviceGetBAR1MemoryInfo): ...",
        "see https://en.wikipedia.org/wiki/ISO_3166-1_alpha-2 and src/Foo2Bar/Baz3Qux/Module9Thing.py",
        'api_key = "${API_KEY}"\ntoken = "<your token here>"\nPASSWORD = "xxxxxxxx"\n',
        "Enter the password: it must have 12 characters",
        "PWD=/home/user/project OLDPWD=/tmp",
        "the bearer of this letter is welcome",
    ],
)
def test_what_is_not_a_secret_is_left_as_it_was(text: str) -> None:
    assert redact_secrets(text) == text


def test_the_scanner_reports_no_secret_for_a_reference() -> None:
    """Issue 20 item 14: ``self.allow_credentials = allow_credentials`` was reported as a secret."""
    code = "class C:\n    def __init__(self, allow_credentials):\n        self.allow_credentials = allow_credentials\n"
    assert scan_text("cors.py", code) == []
    assert [f.rule for f in scan_text("a.env", f"DB_PASSWORD={ENV_TOKEN}x\n")] == ["hardcoded-password"]


def test_the_scanner_knows_the_new_token_families() -> None:
    text = f"A = '{ANTHROPIC}'\nB = {JWT!r}\nC = '{OPENAI_PROJECT}'\n"
    rules = {(f.line, f.rule) for f in scan_text("keys.py", text)}
    assert {(1, "anthropic-api-key"), (2, "jwt"), (3, "openai-api-key")} <= rules
    assert all(ANTHROPIC not in f.message and JWT not in f.message for f in scan_text("keys.py", text))


def test_random_looking_runs_are_told_from_identifiers_hashes_and_paths() -> None:
    assert looks_random(AWS_SECRET) and looks_random("Ab3dE6gH9jK2mN5pQ8sT1vW4")
    for not_random in (
        "PBKDF2HMACWithSHA256AndAES128",
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789",
        "c_nvmlGpuFabricInfo_v3_t_with_more",
        "3f786850e387550fdab836ed7e6dc881de23001b",
        "tests/integration/test_redaction_v2",
        "a" * 40,
    ):
        assert not looks_random(not_random), not_random


def test_redact_all_walks_keys_and_values_of_json_data() -> None:
    data = {"rows": [["alice", AWS_KEY_ID, AWS_SECRET]], f"token={ENV_TOKEN}": {"note": f"Bearer {JWT}"}, "n": 3}
    out = redact_all(data)
    text = repr(out)
    for secret in (AWS_KEY_ID, AWS_SECRET, ENV_TOKEN, JWT):
        assert secret not in text
    assert out["n"] == 3 and out["rows"][0][0] == "alice"
    plain = {"rows": [["alice", 1, 2.5]], "path": "src/app.py"}
    assert redact_all(plain) is plain  # nothing to redact: the same object, no walk


def test_every_detect_secrets_plugin_is_adopted_or_left_out_for_a_reason() -> None:
    """A detect-secrets upgrade that adds a plugin makes someone decide whether the redactor uses it."""
    installed = detect_secrets_plugin_names()
    decided = set(DETECT_SECRETS_PLUGINS) | set(DETECT_SECRETS_LEFT_OUT)
    assert installed <= decided, f"undecided detect-secrets plugins: {sorted(installed - decided)}"
    assert set(DETECT_SECRETS_PLUGINS) <= installed  # an adopted plugin that no longer exists


@pytest.mark.parametrize(
    "hostile",
    [
        "a-" * 200_000,
        "password." * 40_000,
        "password=example" * 25_000,
        "eyJ" * 120_000,
        "sk-ant-" * 50_000,
        "sk-" * 120_000,
        "ghp_" * 100_000,
        "aws" * 120_000,
        "token=" * 60_000,
        "aB3" * 120_000,
        "://" * 120_000,
        "//_authToken=" * 30_000,
    ],
)
def test_hostile_input_is_redacted_without_blowing_up(hostile: str) -> None:
    """Long runs of the rules' own telltale parts (a regex that backtracks over them would take
    minutes on these 400-800 KB strings; the redactor stays linear)."""
    out = redact_secrets(hostile)
    assert redact_secrets(out) == out


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_log_lines_are_redacted_in_either_format(log_format: str, capsys: pytest.CaptureFixture[str]) -> None:
    """The text format used to pass its messages through unredacted (only JSON was)."""
    import logging

    from caelum_mcp.core.logs import setup_logging

    setup_logging("info", log_format)  # type: ignore[arg-type]
    try:
        logging.getLogger("caelum_mcp.test").error(
            "upstream refused key %s for user=bob password=%s", ANTHROPIC, "x9" * 5
        )
    finally:
        logging.getLogger().handlers.clear()
    err = capsys.readouterr().err
    assert "upstream refused key" in err and ANTHROPIC not in err and "Hunter2Hunter2" not in err
