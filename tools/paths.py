"""Keeping every path an internal tool touches inside the project root.

Paths are resolved (following symlinks) before the check, so ``..`` segments and links that point
outside the root are both refused with :class:`~caelum_mcp.errors.PathNotAllowedError`.
"""

from __future__ import annotations

from pathlib import Path

from caelum_mcp.errors import PathNotAllowedError


def resolve_root(root: str | Path) -> Path:
    """The absolute, resolved project root; it must be an existing directory."""
    try:
        resolved = Path(root).expanduser().resolve(strict=True)
    except (OSError, RuntimeError) as exc:
        raise PathNotAllowedError(f"project root {str(root)!r} does not exist or cannot be read") from exc
    if not resolved.is_dir():
        raise PathNotAllowedError(f"project root {str(root)!r} is not a directory")
    return resolved


def resolve_within(root: Path, path: str | Path, *, must_exist: bool = True) -> Path:
    """Resolve ``path`` (relative paths are taken from ``root``) and require it to stay inside ``root``.

    ``root`` must already be resolved (see :func:`resolve_root`).
    """
    candidate = Path(path).expanduser()
    if not candidate.is_absolute():
        candidate = root / candidate
    try:
        resolved = candidate.resolve(strict=must_exist)
    except (OSError, RuntimeError) as exc:
        raise PathNotAllowedError(f"path {str(path)!r} does not exist inside the project {str(root)!r}") from exc
    if resolved != root and not resolved.is_relative_to(root):
        raise PathNotAllowedError(
            f"path {str(path)!r} resolves to {str(resolved)!r}, outside the project root {str(root)!r}; "
            "only files inside the project can be analysed"
        )
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


def resolve_project(project: str | Path, allowed_roots: tuple[Path, ...] | list[Path]) -> Path:
    """The project folder, resolved, which must lie inside one of ``allowed_roots`` (also resolved).

    Relative paths are taken from the first allowed root (the server's working directory by
    default), so ``project="."`` means that root.
    """
    if not allowed_roots:
        raise PathNotAllowedError("no allowed roots are configured; set allowed_roots in the config")
    candidate = Path(project).expanduser()
    if not candidate.is_absolute():
        candidate = allowed_roots[0] / candidate
    try:
        resolved = candidate.resolve(strict=True)
    except (OSError, RuntimeError) as exc:
        raise PathNotAllowedError(f"project {str(project)!r} does not exist ({candidate})") from exc
    if not any(resolved == root or resolved.is_relative_to(root) for root in allowed_roots):
        shown = ", ".join(str(r) for r in allowed_roots)
        raise PathNotAllowedError(
            f"project {str(project)!r} resolves to {resolved}, outside the allowed roots ({shown}); "
            "add its folder to allowed_roots in the caelum config to analyse it"
        )
    if not resolved.is_dir():
        raise PathNotAllowedError(f"project {str(project)!r} is a file, not a folder; pass the project's folder")
    return resolved
