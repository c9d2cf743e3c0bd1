"""Per-file reuse of analyser output: only the files whose content changed are analysed again.

Bandit and radon judge one file at a time, so their output splits by file. Each file's share (a
*part*) is stored under a key made of the tool, a *salt* (the tool's version and the configuration
files it reads) and the file's path and SHA-256; a run analyses only the files without a stored
part and stores theirs, empty parts included. A run in which the tool itself failed (timeout,
crash, unreadable output) stores nothing, and neither does output that names files it was not
asked about, so a stored part is always one complete, clean answer for one file's content.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Protocol, TypeVar

import anyio
from pydantic import BaseModel, ValidationError

from caelum_mcp.engine.cache import file_digest

from ..safe_read import read_head
from .models import AnalyzerError

log = logging.getLogger(__name__)

P = TypeVar("P", bound=BaseModel)
MAX_CONFIG_BYTES = 1 << 20


class PartStore(Protocol):
    """Where parts live (``caelum_mcp.engine.cache.ResultCache``); values are JSON text."""

    def get_parts(self, tool: str, keys: Sequence[str]) -> dict[str, str]: ...

    def put_parts(self, tool: str, parts: Mapping[str, str]) -> None: ...


Analyse = Callable[[list[str]], Awaitable[tuple[dict[str, P], list[AnalyzerError]]]]


def salt_for(distribution: str, root: Path, config_files: Sequence[str]) -> str:
    """The tool's version plus the content of each configuration file present under ``root``."""
    try:
        version = metadata.version(distribution)
    except metadata.PackageNotFoundError:
        version = "unknown"
    h = hashlib.sha256(f"{distribution}=={version}".encode())
    for name in config_files:
        try:
            # a config file that is a FIFO would block here, on the event loop: only regular files
            head = read_head(root / name, MAX_CONFIG_BYTES)
            h.update(name.encode() + b"\0" + head.data + (b"\0cut" if head.truncated else b""))
        except OSError:
            h.update(name.encode() + b"\0absent")
    return h.hexdigest()


def _keys(tool: str, salt: str, root: Path, files: Sequence[str]) -> dict[str, str]:
    """Each readable file's key; an unreadable one gets none (it is analysed, never stored)."""
    keys: dict[str, str] = {}
    for rel in files:
        try:
            digest = file_digest(root / rel)
        except OSError:
            continue
        keys[rel] = hashlib.sha256(f"{tool}\0{salt}\0{rel}\0{digest}".encode("utf-8", "surrogateescape")).hexdigest()
    return keys


async def per_file(
    store: PartStore | None,
    tool: str,
    salt: str,
    root: Path,
    files: Sequence[str],
    part_model: type[P],
    analyse: Analyse[P],
) -> tuple[dict[str, P], list[AnalyzerError]]:
    """Every file's part (an empty ``part_model()`` for a file with nothing to say) and the tool's
    own failures, running ``analyse`` only on the files without a stored part.

    ``analyse(files)`` returns the parts of the files it has something to say about and the
    failures that concern no single file.
    """
    if store is None or not files:
        fresh, failures = await analyse(list(files))
        return _complete(fresh, files, part_model), failures
    keys = await anyio.to_thread.run_sync(_keys, tool, salt, root, list(files))
    stored = await anyio.to_thread.run_sync(store.get_parts, tool, list(keys.values()))
    parts: dict[str, P] = {}
    missing: list[str] = []
    for rel in files:
        part = _load(part_model, stored.get(keys.get(rel, "")))
        if part is None:
            missing.append(rel)
        else:
            parts[rel] = part
    if not missing:
        return parts, []
    fresh, failures = await analyse(missing)
    strays = set(fresh) - set(missing)
    if strays:  # kept in the answer, but what belongs to which file is unclear: store nothing
        log.warning("%s reported files it was not given (%s); its output is not reused", tool, sorted(strays)[:3])
    elif not failures:
        new = {keys[rel]: fresh.get(rel, part_model()).model_dump_json() for rel in missing if rel in keys}
        await anyio.to_thread.run_sync(store.put_parts, tool, new)
    return {**parts, **_complete(fresh, missing, part_model)}, failures


def _complete(fresh: dict[str, P], files: Sequence[str], part_model: type[P]) -> dict[str, P]:
    """A part for every file asked about, plus any the tool reported beyond them."""
    return {**{rel: fresh.get(rel) or part_model() for rel in files}, **fresh}


def _load(model: type[P], raw: str | None) -> P | None:
    if raw is None:
        return None
    try:
        return model.model_validate_json(raw)
    except ValidationError:  # stored by an older version of the part: analyse again
        return None
