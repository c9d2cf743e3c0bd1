"""Keeping every path an internal tool touches inside the project root.

Paths are resolved (following symlinks) before the check, so ``..`` segments and links that point
outside the root are both refused with :class:`~caelum_mcp.core.errors.PathNotAllowedError`.

The errors are written for a caller who may be probing: a path outside the roots gets "outside
the allowed roots" and nothing more — not whether it exists, not where a link points — and any
echoed input is cut to :data:`ECHO_CHARS` characters. A path that cannot be a path (a NUL byte)
is refused the same way, never as a raw ``ValueError``.
"""

from __future__ import annotations

from pathlib import Path

from caelum_mcp.core.errors import PathNotAllowedError

ECHO_CHARS = 200


def shown(value: str | Path) -> str:
    """``value`` as an error message may echo it: quoted, and cut to :data:`ECHO_CHARS` characters."""
    text = str(value)
    return repr(text) if len(text) <= ECHO_CHARS else repr(text[:ECHO_CHARS]) + f" (+{len(text) - ECHO_CHARS} chars)"


def _path(value: str | Path, what: str) -> Path:
    text = str(value)
    if "\0" in text:
        raise PathNotAllowedError(f"{what} {shown(text.replace(chr(0), ''))} contains a NUL byte; remove it")
    return Path(text).expanduser()


def resolves_inside(candidate: Path, root: Path) -> bool | None:
    """Whether ``candidate`` (absolute) is under ``root`` once every link that exists is followed;
    None when it cannot be resolved (a link loop). Works for paths that do not exist, so a path
    outside gets the same answer whether or not it is there."""
    try:
        resolved = candidate.resolve()
    except (OSError, RuntimeError):
        return None
    return resolved == root or resolved.is_relative_to(root)


def _resolve(candidate: Path) -> Path | None:
    try:
        return candidate.resolve(strict=True)
    except (OSError, RuntimeError, ValueError):
        return None


def resolve_root(root: str | Path) -> Path:
    """The absolute, resolved project root; it must be an existing directory."""
    resolved = _resolve(_path(root, "project root"))
    if resolved is None:
        raise PathNotAllowedError(f"project root {shown(root)} does not exist or cannot be read")
    if not resolved.is_dir():
        raise PathNotAllowedError(f"project root {shown(root)} is not a directory")
    return resolved


def resolve_within(root: Path, path: str | Path, *, must_exist: bool = True) -> Path:
    """Resolve ``path`` (relative paths are taken from ``root``) and require it to stay inside ``root``.

    ``root`` must already be resolved (see :func:`resolve_root`).
    """
    candidate = _path(path, "path")
    if not candidate.is_absolute():
        candidate = root / candidate
    inside = resolves_inside(candidate, root)
    if inside is None:
        raise PathNotAllowedError(f"path {shown(path)} cannot be resolved (a link loop?)")
    if not inside:
        raise PathNotAllowedError(f"path {shown(path)} is outside the project root; give a path inside it")
    resolved = _resolve(candidate) if must_exist else candidate.resolve()
    if resolved is None:
        raise PathNotAllowedError(f"path {shown(path)} does not exist inside the project")
    return resolved


def relative_posix(root: Path, path: str | Path) -> str:
    """``path`` relative to ``root`` in POSIX form; paths that are not under ``root`` are returned as is.

    Analysers report paths relative to their working directory or absolute; this normalises both
    without resolving symlinks (the analysers saw the unresolved names).
    """
    candidate = Path(path)
    if not candidate.is_absolute():
        return candidate.as_posix().removeprefix("./")
    try:
        return candidate.relative_to(root).as_posix()
    except ValueError:
        return candidate.as_posix()


OUTSIDE_ROOTS = (
    "is outside the allowed roots; add its folder to allowed_roots in the caelum config (or offer it "
    "as an MCP root from the client) to work on it"
)


NO_ROOTS = (
    "no allowed roots: set allowed_roots in your caelum config, or start the server with --root FOLDER "
    "(`caelum-mcp setup claude-desktop --root FOLDER` writes that); the working directory is the default root, "
    "but never when it is / or the home folder (Claude Desktop starts servers in /)"
)


def resolve_project(project: str | Path, allowed_roots: tuple[Path, ...] | list[Path]) -> Path:
    """The project folder, resolved, which must lie inside one of ``allowed_roots`` (also resolved).

    Relative paths are taken from the first allowed root (the server's working directory by
    default), so ``project="."`` means that root. A path outside the roots — by its name, or by a
    link inside them — gets the same message, whether or not it exists.
    """
    if not allowed_roots:
        raise PathNotAllowedError(NO_ROOTS)
    candidate = _path(project, "project")
    if not candidate.is_absolute():
        candidate = allowed_roots[0] / candidate
    if not any(resolves_inside(candidate, root) for root in allowed_roots):
        raise PathNotAllowedError(f"project {shown(project)} {OUTSIDE_ROOTS}")
    resolved = _resolve(candidate)
    if resolved is None:
        raise PathNotAllowedError(f"project {shown(project)} does not exist")
    if not resolved.is_dir():
        raise PathNotAllowedError(f"project {shown(project)} is a file, not a folder; pass the project's folder")
    return resolved
