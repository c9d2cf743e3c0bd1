"""security_scan(): each classic flaw found at its file and line with a sensible severity, secrets
redacted, a clean project without high findings, and analyser failures recorded instead of raised."""

from __future__ import annotations

from pathlib import Path

from caelum_mcp.tools.code.models import Finding
from caelum_mcp.tools.code.secrets import redact, scan_text
from caelum_mcp.tools.code.security import security_scan

from .conftest import WriteProject, line_of

# Token-shaped test values are assembled at run time so that this file never holds one verbatim.
FAKE_PASSWORD = "Tr0ub4dor-" + "horse-77"
FAKE_API_KEY = "q8Zr2LmX" + "c4VbN7pK1sTyW9eD"
FAKE_GITHUB = "ghp_" + "Ab3dE6gH9jK2mN5pQ8sT1vW4yZ7bC0eF3hJ6"
FAKE_AWS = "AKIA" + "QX7TLMZ4RW2NB5KD"

VULNERABLE: dict[str, str | bytes] = {
    "app/__init__.py": "",
    "app/db.py": """
        import sqlite3


        def find_user(conn: sqlite3.Connection, name: str):
            query = "SELECT * FROM users WHERE name = '%s'" % name
            return conn.execute(query).fetchall()
        """,
    "app/settings.py": f"""
        DEBUG = False
        PASSWORD = "{FAKE_PASSWORD}"
        API_KEY = "{FAKE_API_KEY}"
        """,
    "app/loaders.py": """
        import pickle

        import yaml


        def load_config(text):
            return yaml.load(text)


        def restore(blob):
            return pickle.loads(blob)
        """,
    "app/shell.py": """
        import subprocess


        def run(cmd):
            return subprocess.run(cmd, shell=True)
        """,
    "app/auth.py": """
        import hashlib


        def hash_password(password):
            return hashlib.md5(password.encode()).hexdigest()
        """,
    "app/calc.py": """
        def calculate():
            return eval(input("expression: "))
        """,
    "app/client.py": """
        import requests


        def fetch(url):
            return requests.get(url)
        """,
    "app/web.py": """
        from flask import Flask
        from jinja2 import Environment

        app = Flask(__name__)


        def render(template):
            env = Environment(autoescape=False)
            return env.from_string(template).render()


        if __name__ == "__main__":
            app.run(debug=True)
        """,
    "deploy/.env": f"GITHUB_TOKEN={FAKE_GITHUB}\n",
    "deploy/aws.yaml": f"aws:\n  access_key_id: {FAKE_AWS}\n",
    "deploy/id_rsa": "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA0\n-----END RSA PRIVATE KEY-----\n",
    "app/broken.py": "def broken(:\n    pass\n",
}

CLEAN: dict[str, str | bytes] = {
    "app/__init__.py": "",
    "app/safe.py": """
        import ast
        import hashlib
        import os
        import sqlite3
        import subprocess

        import requests
        import yaml
        from flask import Flask
        from jinja2 import Environment

        app = Flask(__name__)
        PASSWORD = os.environ["APP_PASSWORD"]


        def find_user(conn: sqlite3.Connection, name: str):
            return conn.execute("SELECT * FROM users WHERE name = ?", (name,)).fetchall()


        def load_config(text):
            return yaml.safe_load(text)


        def list_dir(path):
            return subprocess.run(["ls", "--", path], check=True, capture_output=True)


        def digest(data: bytes) -> str:
            return hashlib.sha256(data).hexdigest()


        def parse(text):
            return ast.literal_eval(text)


        def fetch(url):
            return requests.get(url, timeout=10)


        def render(template):
            return Environment(autoescape=True).from_string(template).render()


        if __name__ == "__main__":
            app.run()
        """,
    "README.md": "Set APP_PASSWORD in the environment.\n",
}


def _one(findings: tuple[Finding, ...], rule: str, file: str) -> Finding:
    matches = [f for f in findings if f.rule == rule and f.file == file]
    assert matches, f"{rule} not reported in {file}: {[(f.rule, f.file, f.line) for f in findings]}"
    return matches[0]


async def test_finds_each_flaw_at_its_file_and_line(write_project: WriteProject) -> None:
    root = write_project(VULNERABLE)
    result = await security_scan(root)
    f = result.findings

    expected = [
        # (rule, file, text on the reported line, acceptable severities)
        ("B608", "app/db.py", "SELECT * FROM users", {"high"}),
        ("B506", "app/loaders.py", "yaml.load(text)", {"high"}),
        ("B301", "app/loaders.py", "pickle.loads(blob)", {"medium", "high"}),
        ("B602", "app/shell.py", "shell=True", {"high"}),
        ("B324", "app/auth.py", "hashlib.md5", {"high"}),
        ("B307", "app/calc.py", "eval(input(", {"high"}),
        ("B113", "app/client.py", "requests.get(url)", {"medium"}),
        ("B701", "app/web.py", "autoescape=False", {"high"}),
        ("B201", "app/web.py", "debug=True", {"high"}),
        ("hardcoded-password", "app/settings.py", "PASSWORD =", {"high"}),
        ("high-entropy-secret", "app/settings.py", "API_KEY =", {"high"}),
        ("github-token", "deploy/.env", "GITHUB_TOKEN=", {"critical"}),
        ("aws-access-key-id", "deploy/aws.yaml", "access_key_id", {"critical"}),
        ("private-key", "deploy/id_rsa", "BEGIN RSA PRIVATE KEY", {"critical"}),
    ]
    for rule, file, needle, severities in expected:
        finding = _one(f, rule, file)
        assert finding.line == line_of(root, file, needle), (rule, finding)
        assert finding.severity in severities, (rule, finding.severity)
    assert _one(f, "B608", "app/db.py").tool == "bandit"
    assert _one(f, "github-token", "deploy/.env").tool == "secrets"
    assert f[0].severity == "critical"  # most severe first
    assert result.counts["critical"] == 3


async def test_secrets_never_appear_in_the_result(write_project: WriteProject) -> None:
    root = write_project(VULNERABLE)
    result = await security_scan(root)
    dumped = result.model_dump_json()
    for secret in (FAKE_PASSWORD, FAKE_API_KEY, FAKE_GITHUB, FAKE_AWS, "MIIEowIBAAKCAQEA0"):
        assert secret not in dumped
    # bandit quotes hard-coded passwords verbatim; ours shows a short prefix only
    bandit_password = _one(result.findings, "B105", "app/settings.py")
    assert redact(FAKE_PASSWORD) in bandit_password.message


async def test_unparseable_file_is_an_error_entry_and_the_rest_is_scanned(write_project: WriteProject) -> None:
    root = write_project(VULNERABLE)
    result = await security_scan(root)
    assert [(e.tool, e.file) for e in result.errors] == [("bandit", "app/broken.py")]
    assert result.python_files_scanned == 10


async def test_clean_project_has_no_high_findings(write_project: WriteProject) -> None:
    root = write_project(CLEAN)
    result = await security_scan(root)
    assert result.errors == ()
    serious = [(f.rule, f.file, f.line) for f in result.findings if f.severity in ("high", "critical")]
    assert serious == []
    assert result.counts["high"] == 0 and result.counts["critical"] == 0


async def test_files_argument_and_non_python_projects(write_project: WriteProject) -> None:
    root = write_project(VULNERABLE)
    only_shell = await security_scan(root, ["app/shell.py"])
    assert {f.file for f in only_shell.findings} == {"app/shell.py"}
    deploy = await security_scan(root, ["deploy"])
    assert deploy.python_files_scanned == 0
    assert {f.rule for f in deploy.findings} == {"github-token", "aws-access-key-id", "private-key"}


async def test_empty_project(tmp_path: Path) -> None:
    result = await security_scan(tmp_path)
    assert result.findings == () and result.errors == () and result.text_files_scanned == 0


def test_secret_heuristics_skip_placeholders_and_prose() -> None:
    text = "\n".join(
        [
            'password = os.environ["PASSWORD"]',
            'api_key = "${API_KEY}"',
            'token = "<your token here>"',
            'password_label = "Enter your password"',
            'PASSWORD = "xxxxxxxx"',
            'if password == "letmein12":',
            'db_password: str = "s3cr3t-Pa55"',
            'connect(password="hunter2hunter2")',
        ]
    )
    found = {(f.line, f.rule) for f in scan_text("x.py", text)}
    assert found == {(7, "hardcoded-password"), (8, "hardcoded-password")}


def test_redact_keeps_only_a_short_prefix() -> None:
    assert redact("abcdefghijklmnopqrst") == "abcd…(20 chars)"
    assert redact("abc") == "…(3 chars)"


async def test_project_bandit_config_is_respected(write_project: WriteProject) -> None:
    root = write_project(VULNERABLE | {"pyproject.toml": '[tool.bandit]\nskips = ["B602", "B404"]\n'})
    result = await security_scan(root, ["app/shell.py"])
    assert not any(f.tool == "bandit" for f in result.findings)
    assert result.errors == ()


async def test_a_project_module_named_like_the_stdlib_does_not_break_bandit(write_project: WriteProject) -> None:
    """The analysers run with the project as working directory; its ``logging.py`` must not shadow theirs."""
    root = write_project(
        {
            "logging.py": "raise ImportError('this is the project, not the standard library')\n",
            "a.py": "def f(s):\n    return eval(s)\n",
        }
    )
    result = await security_scan(root)
    assert not result.errors, result.errors
    assert any(f.rule == "B307" and f.file == "a.py" and f.line == 2 for f in result.findings)


def test_redact_secrets_covers_the_scanners_rules_in_any_text() -> None:
    from caelum_mcp.tools.code.secrets import redact_secrets

    text = (
        f' aws = "{FAKE_AWS}"\n'
        '-password = "hunter2hunter2"\n'
        "+API_KEY=sk9f8s7d6f5g4h3j\n"
        f"token {FAKE_GITHUB} in prose\n"
        "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA0\n-----END RSA PRIVATE KEY-----\n"
        'label = "Enter your password"\npassword = os.environ["PASSWORD"]\nkey = "${API_KEY}"\n'
    )
    out = redact_secrets(text)
    for secret in (FAKE_AWS, "hunter2hunter2", "sk9f8s7d6f5g4h3j", FAKE_GITHUB, "MIIEowIBAAKCAQEA0"):
        assert secret not in out
    assert redact(FAKE_AWS) in out and "[private key redacted]" in out
    # placeholders, prose and environment lookups are left as they are
    assert 'label = "Enter your password"' in out and 'os.environ["PASSWORD"]' in out and "${API_KEY}" in out
    assert redact_secrets(out) == out  # idempotent: a redacted value is never redacted again
    assert redact_secrets("F401 at a.py:1: `os` imported but unused") == "F401 at a.py:1: `os` imported but unused"
