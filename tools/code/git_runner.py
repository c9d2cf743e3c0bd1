"""The one way caelum-mcp runs git: a repository's own configuration never makes git run its programs.

Users point these tools at repositories they did not write, and a repository's ``.git/config`` (and
any file it includes) can name programs that git runs even on read-only commands: ``core.fsmonitor``
on anything that looks at the working tree, the ``filter.<name>.clean``/``.process`` command of
every file that ``.gitattributes`` routes through that filter, ``diff.external`` and ``textconv``
drivers, pagers, hooks, ``core.sshCommand``, credential helpers. Such a program would run as the
server, with the server's environment (API keys included). So every git call goes through
:class:`GitRunner`:

- the environment is built from an allowlist (``PATH``, ``LANG``, ``LC_*``) with ``HOME`` pointing
  nowhere, no system or global config or attributes, no prompts, no optional locks and no transport
  allowed (``GIT_ALLOW_PROTOCOL`` empty outranks every ``protocol.*.allow``);
- the fixed settings of :data:`HARDENING` are passed as command-line config, which outranks every
  config file. They travel in ``GIT_CONFIG_COUNT``/``GIT_CONFIG_KEY_n``/``GIT_CONFIG_VALUE_n``
  rather than ``-c``: a driver name may contain ``=``, which ``-c`` would split on, and git passes
  them on to the git processes it starts itself;
- for every filter, diff and merge driver, credential URL, protocol and pager that the repository's
  config defines, an override empties its command. The names come from ``git config
  --get-regexp``, which only reads config (following includes) and runs nothing. A driver that no
  config defines has no command to run, so the ``.gitattributes`` files (nested ones,
  ``.git/info/attributes``) need not be read at all.

Two things are also forced on the command line: ``diff``, ``log`` and ``show`` always get
``--no-ext-diff --no-textconv`` (the overrides leave ``diff.external`` and ``textconv`` as empty
commands, which git refuses rather than runs, so without the options such a diff would fail), and
``--ignore-submodules=all``, because otherwise git runs ``status`` inside each dirty submodule,
whose own config the overrides do not cover (a repository's ``submodule.<name>.ignore`` outranks
``diff.ignoreSubmodules``, but not the option).

What it costs: filters never run, so a file stored through one (git-lfs) may read as changed in the
working tree; and the user's own git config is not read either (its ``safe.directory``, its global
excludes file).

A repository can also point git at files elsewhere: a ``.git`` *file* (``gitdir: /elsewhere``),
``core.worktree``, ``objects/info/alternates`` (or a ``.git`` folder, or its ``objects``, that is a
link). Given the allowed roots (``within``), :meth:`GitRunner.open` refuses a repository whose git
folder, common folder, objects, work tree or alternates resolve outside them
(:class:`RepositoryOutsideRootsError`), before any command that reads the repository's content.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from caelum_mcp.core.errors import CaelumError

from ..paths import resolves_inside
from ..process import DEFAULT_MAX_OUTPUT_BYTES, CommandResult, run_command
from ..safe_read import off_loop, read_head

GIT_TIMEOUT_S = 60.0
MAX_DRIVER_NAMES = 1000
_CONFIG_LISTING_BYTES = 1024 * 1024
_ALTERNATES_BYTES = 64 * 1024
_ALTERNATES_DEPTH = 5  # git itself follows alternates of alternates this deep

# Inherited from the server's environment; nothing else is (no API keys, no GIT_* variables).
_INHERITED = ("PATH", "LANG", "LANGUAGE", "SYSTEMROOT")
_INHERITED_PREFIXES = ("LC_",)

_FIXED_ENV = {
    "HOME": os.devnull,  # no ~/.gitconfig, ~/.config/git/attributes, or ~ in include paths
    "LC_ALL": "C",  # git's messages in English: callers report its stderr
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_CONFIG_GLOBAL": os.devnull,
    "GIT_ATTR_NOSYSTEM": "1",
    "GIT_TERMINAL_PROMPT": "0",
    "GIT_OPTIONAL_LOCKS": "0",  # read-only calls never take the index lock to refresh it
    "GIT_ALLOW_PROTOCOL": "",  # an empty allowlist: no fetch, no lazy fetch of a partial clone, no ssh
    "GIT_NO_LAZY_FETCH": "1",
}

_NO_TRANSPORT = tuple((f"protocol.{name}.allow", "never") for name in ("file", "git", "ssh", "http", "https", "ext"))

HARDENING: tuple[tuple[str, str], ...] = (
    ("core.fsmonitor", "false"),
    ("core.hooksPath", os.devnull),  # a path under which no hook can exist
    ("core.pager", "cat"),  # "cat" is git's own word for "no pager": nothing is started
    ("diff.external", ""),  # an empty command is refused, never run
    ("core.sshCommand", ""),
    ("core.askPass", ""),
    ("core.editor", ":"),  # ":" is git's own word for "no editor"
    ("sequence.editor", ":"),
    ("credential.helper", ""),  # an empty value clears every helper configured before it
    ("protocol.allow", "never"),
    *_NO_TRANSPORT,
    ("log.showSignature", "false"),  # would run gpg.program
    ("commit.gpgSign", "false"),
    ("tag.gpgSign", "false"),
    ("gc.auto", "0"),
    ("maintenance.auto", "false"),
    ("submodule.recurse", "false"),
    ("diff.ignoreSubmodules", "all"),
    ("safe.bareRepository", "explicit"),  # a bare repository planted inside a project is not entered
    # The output our parsers read, whatever the repository prefers.
    ("core.quotepath", "off"),
    ("diff.noprefix", "false"),
    ("diff.mnemonicPrefix", "false"),
    ("color.ui", "false"),
)

# Per named driver (``<section>.<name>.<key>``): the keys that hold a command, and what empties them.
_DRIVER_OVERRIDES: dict[str, tuple[tuple[str, str], ...]] = {
    "filter": (("clean", ""), ("smudge", ""), ("process", ""), ("required", "false")),
    "diff": (("textconv", ""), ("command", ""), ("cachetextconv", "false")),
    "merge": (("driver", ""),),
    "credential": (("helper", ""),),
    "protocol": (("allow", "never"),),
}
_LISTED_SECTIONS = (*_DRIVER_OVERRIDES, "pager")

# Options no configuration can undo, added right after the subcommand.
_FORCED_OPTIONS: dict[str, tuple[str, ...]] = {
    "diff": ("--no-ext-diff", "--no-textconv", "--ignore-submodules=all"),
    "log": ("--no-ext-diff", "--no-textconv", "--ignore-submodules=all"),
    "show": ("--no-ext-diff", "--no-textconv", "--ignore-submodules=all"),
    "status": ("--ignore-submodules=all",),
}


class GitError(CaelumError):
    """A git operation failed: not a repository, unknown revision, unreadable config, or git missing."""


class RepositoryOutsideRootsError(GitError):
    """The repository's git folder, work tree or alternates lie outside the allowed roots: git is not
    run there. The message never says where they point (a caller may be probing)."""


def git_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of every git call: the allowlist, then ``extra``, then the fixed settings.

    ``extra`` is for variables a caller needs (``GIT_CEILING_DIRECTORIES``, a commit identity in
    tests); it may not set config (``GIT_CONFIG*``) nor any variable the runner fixes.
    """
    env = {k: v for k, v in os.environ.items() if k in _INHERITED or k.startswith(_INHERITED_PREFIXES)}
    for key, value in (extra or {}).items():
        if key.startswith("GIT_CONFIG") or key in _FIXED_ENV:
            raise ValueError(f"git_env: {key} is set by the runner and may not be overridden")
        env[key] = value
    env.update(_FIXED_ENV)
    return _with_config(env, HARDENING)


def _with_config(env: Mapping[str, str], settings: Iterable[tuple[str, str]]) -> dict[str, str]:
    """``env`` plus ``settings`` appended as command-line config (later entries win)."""
    out = dict(env)
    count = int(out.get("GIT_CONFIG_COUNT", "0"))
    for key, value in settings:
        out[f"GIT_CONFIG_KEY_{count}"] = key
        out[f"GIT_CONFIG_VALUE_{count}"] = value
        count += 1
    out["GIT_CONFIG_COUNT"] = str(count)
    return out


def driver_overrides(listing: str) -> list[tuple[str, str]]:
    """Overrides emptying the command of every driver in ``git config -z --get-regexp`` output.

    Each entry is ``key\\nvalue`` (or just ``key``); in a key the section and the variable are
    lower case, and the name between them (which may hold dots) keeps its case.
    """
    names: dict[tuple[str, str], None] = {}
    for entry in listing.split("\0"):
        key = entry.split("\n", 1)[0]
        section, _, rest = key.partition(".")
        name, dot, _variable = rest.rpartition(".")
        if section == "pager" and rest and not dot:
            names[("pager", rest)] = None
        elif section in _DRIVER_OVERRIDES and dot and name:
            names[(section, name)] = None
    if len(names) > MAX_DRIVER_NAMES:
        raise GitError(f"the repository's git config names {len(names)} drivers; refusing to run git there")
    overrides: list[tuple[str, str]] = []
    for section, name in names:
        if section == "pager":
            overrides.append((f"pager.{name}", "false"))
        else:
            overrides += [(f"{section}.{name}.{key}", value) for key, value in _DRIVER_OVERRIDES[section]]
    return overrides


@dataclass(frozen=True, slots=True)
class GitRunner:
    """git in one folder, with the programs that folder's repository configures switched off.

    Get one with :meth:`open` (which reads the repository's driver names once); ``run`` as often as
    needed. ``env`` is the whole environment git gets.
    """

    cwd: Path
    env: Mapping[str, str]
    timeout_s: float = GIT_TIMEOUT_S

    @classmethod
    async def open(
        cls,
        cwd: str | Path,
        *,
        timeout_s: float = GIT_TIMEOUT_S,
        extra_env: Mapping[str, str] | None = None,
        within: Sequence[Path] | None = None,
    ) -> GitRunner:
        """A runner for ``cwd``. Raises :class:`GitError` when git cannot be started or the
        repository's config cannot be read (then no git command would be safe to run there).

        ``within`` (resolved folders, the allowed roots): the repository's git folder, objects, work
        tree and alternates must resolve inside one of them, else :class:`RepositoryOutsideRootsError`.
        A folder in no repository passes (git itself then says so). None checks nothing.
        """
        base = cls(Path(cwd), git_env(extra_env), timeout_s)
        pattern = "^(" + "|".join(_LISTED_SECTIONS) + r")\."
        listing = await base.run(
            "config", "-z", "--includes", "--get-regexp", pattern, max_output_bytes=_CONFIG_LISTING_BYTES
        )
        if listing.timed_out or listing.truncated or listing.returncode not in (0, 1):  # 1: nothing matched
            raise GitError(f"cannot read the git config in {cwd}: {_failure(listing)}")
        runner = cls(base.cwd, _with_config(base.env, driver_overrides(listing.stdout)), timeout_s)
        if within is not None:
            await runner._check_places(tuple(within))
        return runner

    async def _check_places(self, roots: tuple[Path, ...]) -> None:
        """Raise :class:`RepositoryOutsideRootsError` when a place the repository reads from lies
        outside ``roots`` (rev-parse only reads the ``.git`` file and the config; it runs nothing)."""
        dirs = await self.run(
            "rev-parse", "--path-format=absolute", "--git-dir", "--git-common-dir", max_output_bytes=64 * 1024
        )
        if dirs.timed_out or dirs.truncated:
            raise GitError(f"cannot find the git folder of {self.cwd}: {_failure(dirs)}")
        if dirs.returncode != 0:
            return  # not in a repository: nothing of one to read
        folders = [Path(line) for line in dirs.stdout.splitlines() if line]
        top = await self.run("rev-parse", "--show-toplevel", max_output_bytes=64 * 1024)
        work_tree = [Path(top.stdout.strip())] if top.returncode == 0 and top.stdout.strip() else []

        def outside(_: object) -> str | None:
            resolved = tuple(root.resolve() for root in roots)
            objects = folders[-1] / "objects"
            places = {
                "git folder": folders,
                "objects": [objects],
                "work tree (core.worktree)": work_tree,
                "alternates": _alternates(objects),
            }
            return next(
                (what for what, paths in places.items() if not all(_inside_any(p, resolved) for p in paths)), None
            )

        what = await off_loop(outside, timeout_s=self.timeout_s, what="checking where the repository's files are")
        if what is not None:
            raise RepositoryOutsideRootsError(
                f"the git repository of {self.cwd} keeps its {what} outside the allowed roots (through a .git "
                "file, core.worktree, objects/info/alternates or a link), so git is not run there; review it "
                "from a clone inside the roots, or add that folder to allowed_roots"
            )

    async def run(
        self,
        subcommand: str,
        *args: str,
        max_output_bytes: int = DEFAULT_MAX_OUTPUT_BYTES,
        timeout_s: float | None = None,
    ) -> CommandResult:
        """``git <subcommand> <args>`` in ``cwd`` (never through a shell), with the timeout and output
        cap of :func:`~caelum_mcp.tools.process.run_command`. Raises :class:`GitError` when git cannot
        be started or an argument holds a NUL byte."""
        if not subcommand or subcommand.startswith("-"):
            raise ValueError(f"GitRunner.run needs a git subcommand first, got {subcommand!r}")
        argv = ["git", "--no-pager", subcommand, *_FORCED_OPTIONS.get(subcommand, ()), *args]
        if any("\0" in arg for arg in argv):
            raise GitError(f"git {subcommand}: an argument contains a NUL byte")
        try:
            return await run_command(
                argv,
                cwd=self.cwd,
                timeout_s=self.timeout_s if timeout_s is None else timeout_s,
                max_output_bytes=max_output_bytes,
                env=self.env,
            )
        except OSError as exc:
            raise GitError(f"git could not be started: {exc.strerror or exc}") from exc


def _inside_any(path: Path, roots: tuple[Path, ...]) -> bool:
    return any(resolves_inside(path if path.is_absolute() else Path.cwd() / path, root) for root in roots)


def _alternates(objects: Path) -> list[Path]:
    """The object folders ``objects/info/alternates`` names, and theirs in turn (as deep as git
    follows them). A line is a path, absolute or relative to ``objects``, possibly C-quoted."""
    found: list[Path] = []
    pending = [(objects, 0)]
    while pending:
        folder, depth = pending.pop()
        try:
            text = read_head(folder / "info" / "alternates", _ALTERNATES_BYTES).data.decode("utf-8", "replace")
        except OSError:
            continue  # none (the usual case), or not a regular file: git cannot read it either
        for line in text.splitlines():
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            if len(line) >= 2 and line[0] == line[-1] == '"':
                line = line[1:-1].encode("utf-8").decode("unicode_escape").encode("latin-1").decode("utf-8", "replace")
            path = Path(line) if Path(line).is_absolute() else folder / line
            if path not in found:
                found.append(path)
                if depth + 1 < _ALTERNATES_DEPTH:
                    pending.append((path, depth + 1))
    return found


def _failure(run: CommandResult) -> str:
    if run.timed_out:
        return "git did not answer in time"
    if run.truncated:
        return "more config than any repository needs"
    lines = run.stderr.strip().splitlines()
    return lines[-1][:200] if lines else f"exit status {run.returncode}"


async def run_git(
    cwd: str | Path,
    subcommand: str,
    *args: str,
    timeout_s: float = GIT_TIMEOUT_S,
    max_output_bytes: int = DEFAULT_MAX_OUTPUT_BYTES,
    extra_env: Mapping[str, str] | None = None,
    within: Sequence[Path] | None = None,
) -> CommandResult:
    """One git command through a fresh :class:`GitRunner` (two processes: the config read, then it;
    two more when ``within`` asks for the repository's places to be checked)."""
    runner = await GitRunner.open(cwd, timeout_s=timeout_s, extra_env=extra_env, within=within)
    return await runner.run(subcommand, *args, max_output_bytes=max_output_bytes)
