"""Moving a damaged SQLite store out of the way, so a server starts on a fresh one and loses nothing.

The workflow runs and the batch store each keep one SQLite file in WAL mode; when one cannot be
opened or fails its integrity check, it is renamed (with its ``-wal`` and ``-shm`` files, which
belong to it) instead of deleted, so a user can still look at it.
"""

from __future__ import annotations

import time
from pathlib import Path

__all__ = ["move_sqlite_aside"]


def move_sqlite_aside(path: Path) -> Path:
    """Rename the store ``path`` (and its WAL and shared-memory files) to
    ``<name>.corrupt-<UTC time>`` (``-2``, ``-3``… when that exists); returns the store file's new path."""
    suffix = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    target = path.with_name(f"{path.name}.corrupt-{suffix}")
    n = 1
    while target.exists():
        n += 1
        target = path.with_name(f"{path.name}.corrupt-{suffix}-{n}")
    for extra in ("-wal", "-shm"):
        side = path.with_name(path.name + extra)
        if side.exists():
            side.replace(target.with_name(target.name + extra))
    path.replace(target)
    return target
