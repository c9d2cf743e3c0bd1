"""Which files of a project are indexed, and their text as the index may keep it.

The project's files come from :func:`~caelum_mcp.tools.code.files.list_project_files` (git's view
or a walk honouring ``.gitignore``; environments and caches never). Of those, the index skips:

- files that hold credentials by their nature: ``.env`` files (not ``.env.example``), private keys
  and certificates, keystores, ``.netrc``, ``.pgpass``, ``.npmrc``, ``.pypirc``;
- lock files, minified bundles and source maps (large and useless to read);
- files larger than ``max_bytes``, and binaries (a NUL byte in the first 8 KiB, or not UTF-8).

What is kept passes the secrets redaction (:mod:`caelum_mcp.core.redaction`, the one every output and
store uses) before it is chunked, so a key written into a source file, a CSV cell or a log line is
never stored in the index, shown in a snippet or sent to a model.
"""

from __future__ import annotations

import hashlib
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from caelum_mcp.core.redaction import PRIVATE_KEY_MARKER, redact_secrets
from caelum_mcp.core.types import Frozen

from ..code.files import list_project_files
from ..code.secrets import looks_binary

DEFAULT_MAX_BYTES = 512 * 1024
DEFAULT_MAX_FILES = 20_000
_SNIFF_BYTES = 8192

_SECRET_NAMES = frozenset({".netrc", ".pgpass", ".npmrc", ".pypirc", ".htpasswd", "credentials", ".git-credentials"})
_SECRET_SUFFIXES = (".pem", ".key", ".p12", ".pfx", ".jks", ".keystore", ".crt", ".cer", ".der", ".kdbx", ".gpg")
_SECRET_PREFIXES = ("id_rsa", "id_dsa", "id_ecdsa", "id_ed25519")
_ENV_TEMPLATES = (".example", ".sample", ".template", ".dist")
_NOISE_NAMES = frozenset(
    {"package-lock.json", "yarn.lock", "pnpm-lock.yaml", "poetry.lock", "uv.lock", "cargo.lock", "go.sum",
     "composer.lock", "gemfile.lock", "pipfile.lock"}
)  # fmt: skip
_NOISE_SUFFIXES = (".min.js", ".min.css", ".map", ".lock", ".svg", ".ipynb")


class SourceListing(Frozen):
    """The files to index (POSIX, relative to the root) and how many were skipped, by reason."""

    files: tuple[str, ...]
    skipped: dict[str, int]
    truncated: bool = False


@dataclass(frozen=True)
class SourceText:
    """A file's text as the index keeps it (secrets redacted), with the hash of its raw bytes."""

    path: str
    text: str
    hash: str


def skip_reason(rel: str) -> str | None:
    """Why ``rel`` is never indexed by its name, or None."""
    name = PurePosixPath(rel).name.lower()
    if name == ".env" or (name.startswith(".env.") and not name.endswith(_ENV_TEMPLATES)) or name.endswith(".env"):
        return "environment file (.env)"
    if name in _SECRET_NAMES or name.endswith(_SECRET_SUFFIXES) or name.startswith(_SECRET_PREFIXES):
        return "key or credentials file"
    if name in _NOISE_NAMES or name.endswith(_NOISE_SUFFIXES):
        return "lock file, bundle or map"
    return None


async def list_sources(
    root: Path, *, max_bytes: int = DEFAULT_MAX_BYTES, max_files: int = DEFAULT_MAX_FILES
) -> SourceListing:
    """The project files under ``root`` (resolved) that the index reads; see the module docstring."""
    listing = await list_project_files(root)
    skipped: Counter[str] = Counter()
    files: list[str] = []
    for rel in listing.files:
        reason = skip_reason(rel)
        if reason is None:
            try:
                size = os.stat(root / rel).st_size
            except OSError:
                reason = "unreadable"
            else:
                reason = f"larger than {max_bytes // 1024} KiB" if size > max_bytes else None
        if reason:
            skipped[reason] += 1
        else:
            files.append(rel)
    truncated = listing.truncated or len(files) > max_files
    if len(files) > max_files:
        skipped[f"over the {max_files}-file limit"] += len(files) - max_files
        files = files[:max_files]
    return SourceListing(files=tuple(files), skipped=dict(skipped), truncated=truncated)


def file_digest(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def read_source(root: Path, rel: str, data: bytes | None = None) -> SourceText | None:
    """The text of ``rel`` with secrets redacted, or None for a binary or non-UTF-8 file."""
    if data is None:
        data = (root / rel).read_bytes()
    if looks_binary(data[:_SNIFF_BYTES]):
        return None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return SourceText(path=rel, text=redact_keeping_lines(text), hash=file_digest(data))


def redact_keeping_lines(text: str) -> str:
    """``text`` through :func:`redact_secrets`, with its line numbering unchanged: a private key block
    (which the scanner replaces by one marker) becomes one marker line per line it had."""
    redacted = redact_secrets(text)
    if redacted.count("\n") == text.count("\n"):
        return redacted
    out: list[str] = []
    inside = False
    for line in text.split("\n"):
        if "-----BEGIN" in line and "PRIVATE KEY" in line:
            inside = True
        if inside:
            out.append(PRIVATE_KEY_MARKER)
            inside = "-----END" not in line
            continue
        out.append(redact_secrets(line))
    return "\n".join(out)
