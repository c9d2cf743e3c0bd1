"""Repositories whose git config runs programs, for the tests that git never runs them for us.

Every program a hostile setting names is one shell script, :attr:`Programs.script`, called with the
setting's name. It writes a marker file named after that setting holding its arguments and its whole
environment, so a test can say which settings fired and what the program could read (a canary
secret planted in the server's environment must never be there). The script prints nothing and
exits 0, so git carries on and later programs get their chance too.

:data:`SETTINGS` lists one hostile setting each, planted by :func:`plant` in a small repository of its
own (the unit tests drive each against the runner and, as a control, against plain git);
:func:`build_hostile_repo` builds one repository with all of them at once (for the tests through the
MCP server).
"""

from __future__ import annotations

import os
import shlex
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

CANARY_VAR = "CAELUM_TEST_CANARY_TOKEN"
CANARY = "canary-7f3a9c1e-not-a-real-secret"

# Every hook git knows: none may run, whichever command we give git.
HOOK_NAMES = (
    "applypatch-msg",
    "pre-applypatch",
    "post-applypatch",
    "pre-commit",
    "pre-merge-commit",
    "prepare-commit-msg",
    "commit-msg",
    "post-commit",
    "pre-rebase",
    "post-checkout",
    "post-merge",
    "pre-push",
    "pre-receive",
    "update",
    "proc-receive",
    "post-receive",
    "post-update",
    "reference-transaction",
    "push-to-checkout",
    "pre-auto-gc",
    "post-rewrite",
    "sendemail-validate",
    "fsmonitor-watchman",
    "post-index-change",
)

_IDENTITY = {
    "GIT_AUTHOR_NAME": "Test",
    "GIT_AUTHOR_EMAIL": "test@example.invalid",
    "GIT_COMMITTER_NAME": "Test",
    "GIT_COMMITTER_EMAIL": "test@example.invalid",
}


@dataclass(frozen=True)
class Programs:
    """The marker script and the folder its markers go to."""

    script: Path
    markers: Path

    def command(self, setting: str) -> str:
        """The shell command a hostile config names for ``setting``."""
        return f"sh {shlex.quote(str(self.script))} {setting}"

    def executable(self, setting: str) -> Path:
        """An executable for settings git runs without a shell (``gpg.program``)."""
        path = self.script.parent / "bin" / setting
        path.parent.mkdir(exist_ok=True)
        path.write_text(f"#!/bin/sh\nexec {self.command(setting)}\n")
        path.chmod(0o755)
        return path

    def fired(self) -> dict[str, str]:
        """``{setting: what its program wrote}`` for every program that ran (one entry per setting)."""
        out: dict[str, str] = {}
        for path in sorted(self.markers.iterdir()):
            out.setdefault(path.name.rsplit(".", 1)[0], path.read_text(errors="replace"))
        return out

    def clear(self) -> None:
        for path in self.markers.iterdir():
            path.unlink()


def install_programs(base: Path) -> Programs:
    """The marker script under ``base`` (outside any project the tests analyse)."""
    base.mkdir(parents=True, exist_ok=True)
    markers = base / "markers"
    markers.mkdir(exist_ok=True)
    script = base / "ran.sh"
    script.write_text(
        "#!/bin/sh\n"
        "# A program a repository configured has run: record which setting, its arguments, its environment.\n"
        f'out={shlex.quote(str(markers))}/"$1.$$"\n'
        '{ echo "argv: $*"; env; } > "$out"\n'
        "exit 0\n"
    )
    script.chmod(0o755)
    return Programs(script=script, markers=markers)


def setup_git(root: Path, *args: str) -> str:
    """git for building fixtures: fixed identity, no user or system config, never a hostile program
    (the hostile config is written after the commits it would fire on)."""
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(root.parent),
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_GLOBAL": os.devnull,
        **_IDENTITY,
    }
    done = subprocess.run(["git", *args], cwd=root, env=env, capture_output=True, text=True, timeout=30, check=True)
    return done.stdout


def plain_git(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """git as a careless caller runs it: the whole environment (the canary too), the repository's config."""
    env = {**os.environ, **_IDENTITY, "GIT_TERMINAL_PROMPT": "0", "GIT_CONFIG_NOSYSTEM": "1"}
    env["GIT_CONFIG_GLOBAL"] = os.devnull
    return subprocess.run(
        ["git", *args], cwd=root, env=env, capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL
    )


def write_files(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def append_config(root: Path, text: str) -> None:
    with (root / ".git" / "config").open("a") as handle:
        handle.write(text)


def write_hooks(folder: Path, programs: Programs, prefix: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in HOOK_NAMES:
        hook = folder / name
        hook.write_text(f"#!/bin/sh\nexec {programs.command(f'{prefix}-{name}')}\n")
        hook.chmod(0o755)


def committed_repo(root: Path, files: dict[str, str]) -> Path:
    """A repository at ``root`` with ``files`` committed (on branch ``main``)."""
    root.mkdir(parents=True, exist_ok=True)
    write_files(root, files)
    setup_git(root, "init", "-q", "-b", "main")
    setup_git(root, "add", "-A")
    setup_git(root, "commit", "-q", "-m", "first")
    return root


def touch_dirty(root: Path, rel: str) -> None:
    """Turn ``v1`` into ``v2`` in ``rel``: a change of the same size, so that git must read the file
    (through its clean filter) to see it."""
    path = root / rel
    data = path.read_bytes()
    assert b"v1" in data, rel
    path.write_bytes(data.replace(b"v1", b"v2", 1))


# ---------------------------------------------------------------------------------------------
# One repository per hostile setting.


@dataclass(frozen=True)
class HostileSetting:
    """One setting: how to plant it, the git command that fires it in plain git, and its marker."""

    name: str
    plant: Callable[[Path, Programs], None]
    trigger: tuple[str, ...]
    marker: str


def _plant_fsmonitor(root: Path, p: Programs) -> None:
    append_config(root, f"[core]\n\tfsmonitor = {p.command('fsmonitor')}\n")


def _plant_clean(root: Path, p: Programs) -> None:
    append_config(root, f'[filter "evil"]\n\tclean = {p.command("filter-clean")}\n\trequired = true\n')
    touch_dirty(root, "data.txt")


def _plant_smudge(root: Path, p: Programs) -> None:
    append_config(root, f'[filter "evil"]\n\tsmudge = {p.command("filter-smudge")}\n\trequired = true\n')
    (root / "data.txt").unlink()


def _plant_process(root: Path, p: Programs) -> None:
    append_config(root, f'[filter "evil"]\n\tprocess = {p.command("filter-process")}\n')
    touch_dirty(root, "data.txt")


def _plant_nested_attributes(root: Path, p: Programs) -> None:
    append_config(root, f'[filter "nested"]\n\tclean = {p.command("nested-attributes-clean")}\n')
    touch_dirty(root, "pkg/deep.dat")


def _plant_info_attributes(root: Path, p: Programs) -> None:
    (root / ".git" / "info").mkdir(exist_ok=True)
    (root / ".git" / "info" / "attributes").write_text("*.py filter=infoattr\n")
    append_config(root, f'[filter "infoattr"]\n\tclean = {p.command("info-attributes-clean")}\n')
    touch_dirty(root, "app.py")


def _plant_odd_name(root: Path, p: Programs) -> None:
    # "=" would split a ``-c`` override in the wrong place; "." and case must survive too.
    (root / ".gitattributes").write_text("*.txt filter=Odd=Name.v2\n")
    append_config(root, f'[filter "Odd=Name.v2"]\n\tclean = {p.command("odd-name-clean")}\n')
    touch_dirty(root, "data.txt")


def _plant_external(root: Path, p: Programs) -> None:
    append_config(root, f"[diff]\n\texternal = {p.command('diff-external')}\n")
    touch_dirty(root, "data.txt")


def _plant_textconv(root: Path, p: Programs) -> None:
    append_config(root, f'[diff "conv"]\n\ttextconv = {p.command("textconv")}\n')
    touch_dirty(root, "data.txt")


def _plant_diff_command(root: Path, p: Programs) -> None:
    append_config(root, f'[diff "conv"]\n\tcommand = {p.command("diff-command")}\n')
    touch_dirty(root, "data.txt")


def _plant_include(root: Path, p: Programs) -> None:
    # A file in the work tree, included from .git/config ("../" is relative to .git).
    (root / "more.gitconfig").write_text(f'[filter "evil"]\n\tclean = {p.command("include-path-clean")}\n')
    append_config(root, "[include]\n\tpath = ../more.gitconfig\n")
    touch_dirty(root, "data.txt")


def _plant_include_if(root: Path, p: Programs) -> None:
    extra = root.parent / f"{root.name}-conditional.gitconfig"
    extra.write_text(
        f"[core]\n\tfsmonitor = {p.command('include-if-fsmonitor')}\n"
        f'[filter "evil"]\n\tclean = {p.command("include-if-clean")}\n'
    )
    append_config(root, f'[includeIf "gitdir:**/"]\n\tpath = {extra}\n')
    touch_dirty(root, "data.txt")


def _plant_hooks_path(root: Path, p: Programs) -> None:
    write_hooks(root.parent / f"{root.name}-hooks", p, "hooks-path")
    append_config(root, f"[core]\n\thooksPath = {root.parent / f'{root.name}-hooks'}\n")


def _plant_dot_git_hooks(root: Path, p: Programs) -> None:
    write_hooks(root / ".git" / "hooks", p, "git-hooks")


def _plant_gpg(root: Path, p: Programs) -> None:
    append_config(root, f"[commit]\n\tgpgSign = true\n[gpg]\n\tprogram = {p.executable('gpg')}\n")


def _plant_editor(root: Path, p: Programs) -> None:
    append_config(root, f"[core]\n\teditor = {p.command('editor')}\n")


def _plant_ssh(root: Path, p: Programs) -> None:
    append_config(
        root,
        f"[core]\n\tsshCommand = {p.command('ssh-command')}\n"
        '[protocol "ssh"]\n\tallow = always\n'
        '[remote "origin"]\n\turl = ssh://example.invalid/repo.git\n',
    )


def _plant_submodule(root: Path, p: Programs) -> None:
    # A nested repository (a gitlink) whose own config has a clean filter our overrides do not know.
    sub = committed_repo(root / "vendor", {"lib.txt": "vendored v1\n", ".gitattributes": "*.txt filter=subevil\n"})
    setup_git(root, "add", "vendor")
    setup_git(root, "commit", "-q", "-m", "vendor")
    append_config(sub, f'[filter "subevil"]\n\tclean = {p.command("submodule-clean")}\n')
    # The repository asks for its submodule to be looked into, which outranks diff.ignoreSubmodules.
    (root / ".gitmodules").write_text('[submodule "vendor"]\n\tpath = vendor\n\turl = ./vendor\n\tignore = none\n')
    append_config(root, '[submodule "vendor"]\n\tignore = none\n')
    touch_dirty(sub, "lib.txt")


BASE_FILES = {
    "app.py": "def f():\n    return 1  # v1\n",
    "data.txt": "some text v1\n",
    "pkg/deep.dat": "deep data v1\n",
    "pkg/.gitattributes": "*.dat filter=nested\n",
    ".gitattributes": "*.txt filter=evil diff=conv\n",
}

SETTINGS = (
    HostileSetting("core.fsmonitor", _plant_fsmonitor, ("ls-files",), "fsmonitor"),
    HostileSetting("filter clean", _plant_clean, ("diff", "HEAD"), "filter-clean"),
    HostileSetting("filter smudge", _plant_smudge, ("checkout", "--", "data.txt"), "filter-smudge"),
    HostileSetting("filter process", _plant_process, ("diff", "HEAD"), "filter-process"),
    HostileSetting("nested .gitattributes", _plant_nested_attributes, ("diff", "HEAD"), "nested-attributes-clean"),
    HostileSetting("driver named Odd=Name.v2", _plant_odd_name, ("diff", "HEAD"), "odd-name-clean"),
    HostileSetting(".git/info/attributes", _plant_info_attributes, ("diff", "HEAD"), "info-attributes-clean"),
    # --ext-diff / --textconv countermand the options the runner forces: its config must hold on its own.
    HostileSetting("diff.external", _plant_external, ("diff", "--ext-diff", "HEAD"), "diff-external"),
    HostileSetting("textconv driver", _plant_textconv, ("diff", "--textconv", "HEAD"), "textconv"),
    HostileSetting("diff driver command", _plant_diff_command, ("diff", "--ext-diff", "HEAD"), "diff-command"),
    HostileSetting("include.path", _plant_include, ("diff", "HEAD"), "include-path-clean"),
    HostileSetting("includeIf", _plant_include_if, ("diff", "HEAD"), "include-if-clean"),
    HostileSetting("core.hooksPath", _plant_hooks_path, ("commit", "-q", "--allow-empty", "-m", "x"), "hooks-path-"),
    HostileSetting(".git/hooks", _plant_dot_git_hooks, ("commit", "-q", "--allow-empty", "-m", "x"), "git-hooks-"),
    HostileSetting("gpg.program", _plant_gpg, ("commit", "-q", "--allow-empty", "-m", "x"), "gpg"),
    HostileSetting("core.editor", _plant_editor, ("commit", "-q", "--allow-empty"), "editor"),
    HostileSetting("core.sshCommand", _plant_ssh, ("ls-remote", "origin"), "ssh-command"),
    HostileSetting("submodule's own filter", _plant_submodule, ("diff", "HEAD"), "submodule-clean"),
)


def plant(setting: HostileSetting, base: Path) -> tuple[Path, Programs]:
    """A fresh repository under ``base`` with ``setting`` planted, and the programs it would run."""
    programs = install_programs(base / "programs")
    root = committed_repo(base / "repo", BASE_FILES)
    setting.plant(root, programs)
    return root, programs


# ---------------------------------------------------------------------------------------------
# One repository with everything, for the tools through the MCP server.

FULL_FILES = {
    "app.py": "import os\n\n\ndef f():\n    return 1  # v1\n",  # the unused import: `improve` checks a patch
    "notes.txt": "some notes v1\n",
    "settings.cfg": "a = 1  # v1\n",
    "data.inc": "included v1\n",
    "extra.cond": "conditional v1\n",
    "pkg/__init__.py": "",
    "pkg/deep.dat": "deep data v1\n",
    "pkg/.gitattributes": "*.dat filter=nested diff=nesteddiff\n",
    "tests/test_app.py": "from app import f\n\n\ndef test_f():\n    assert f() == 1\n",
    ".gitattributes": (
        "*.py filter=evil diff=conv\n"
        "*.txt filter=evil diff=conv\n"
        "*.cfg filter=proc diff=cmd\n"
        "*.inc filter=inc diff=incdiff\n"
    ),
    # Inert until .git/config includes it (the path is relative to .git).
    "hostile.gitconfig": "",
}


TRACKED_BUT_IGNORED = "import subprocess\n\nsubprocess.call('ls -l', shell=True)\n"


@dataclass(frozen=True)
class HostileRepo:
    root: Path
    programs: Programs
    first: str  # the first commit
    second: str  # HEAD: a commit changing every filtered file


def build_hostile_repo(root: Path, programs: Programs) -> HostileRepo:
    """A repository carrying every hostile setting at once, with a dirty work tree and two commits."""
    committed_repo(root, FULL_FILES)
    # Tracked but ignored: only git's listing has it (a directory walk honours .gitignore), so a
    # finding in it shows that the tools listed the project through git, not around it.
    write_files(root, {".gitignore": "legacy/\n", "legacy/kept.py": TRACKED_BUT_IGNORED})
    setup_git(root, "add", "-f", ".gitignore", "legacy/kept.py")
    setup_git(root, "commit", "-q", "-m", "legacy")
    first = setup_git(root, "rev-parse", "HEAD").strip()
    write_files(
        root,
        {
            "notes.txt": "more notes v1\nline two\n",
            "settings.cfg": "a = 2  # v1\nb = 3\n",
            "pkg/deep.dat": "deeper data v1\n",
            "data.inc": "included twice v1\n",
        },
    )
    setup_git(root, "add", "-A")
    setup_git(root, "commit", "-q", "-m", "second")
    _plant_submodule(root, programs)
    second = setup_git(root, "rev-parse", "HEAD").strip()

    c = programs.command
    (root / "hostile.gitconfig").write_text(
        f'[filter "inc"]\n\tclean = {c("include-path-clean")}\n\tsmudge = {c("include-path-smudge")}\n'
        f'[diff "incdiff"]\n\ttextconv = {c("include-path-textconv")}\n'
    )
    conditional = root.parent / f"{root.name}-conditional.gitconfig"
    conditional.write_text(
        f'[filter "cond"]\n\tclean = {c("include-if-clean")}\n'
        f'[filter "nested"]\n\tclean = {c("nested-attributes-clean")}\n'
        f'[diff "nesteddiff"]\n\ttextconv = {c("nested-attributes-textconv")}\n'
    )
    (root / ".git" / "info").mkdir(exist_ok=True)
    (root / ".git" / "info" / "attributes").write_text("*.cond filter=cond\n")
    hooks = root.parent / f"{root.name}-hooks"
    write_hooks(hooks, programs, "hooks-path")
    write_hooks(root / ".git" / "hooks", programs, "git-hooks")
    append_config(
        root,
        f"[core]\n\tfsmonitor = {c('fsmonitor')}\n\tpager = {c('core-pager')}\n\thooksPath = {hooks}\n"
        f"\tsshCommand = {c('ssh-command')}\n\taskPass = {programs.executable('askpass')}\n\teditor = {c('editor')}\n"
        f"[pager]\n\tdiff = {c('pager-diff')}\n"
        f'[filter "evil"]\n\tclean = {c("filter-clean")}\n\tsmudge = {c("filter-smudge")}\n\trequired = true\n'
        f'[filter "proc"]\n\tprocess = {c("filter-process")}\n\trequired = true\n'
        f"[diff]\n\texternal = {c('diff-external')}\n"
        f'[diff "conv"]\n\ttextconv = {c("textconv")}\n'
        f'[diff "cmd"]\n\tcommand = {c("diff-command")}\n'
        f"[credential]\n\thelper = !{c('credential-helper')}\n"
        f'[protocol "ssh"]\n\tallow = always\n[protocol "ext"]\n\tallow = always\n'
        '[remote "origin"]\n\turl = ssh://example.invalid/repo.git\n'
        f"[commit]\n\tgpgSign = true\n[log]\n\tshowSignature = true\n[gpg]\n\tprogram = {programs.executable('gpg')}\n"
        "[include]\n\tpath = ../hostile.gitconfig\n"
        f'[includeIf "gitdir:**/"]\n\tpath = {conditional}\n',
    )
    # The work tree differs from HEAD in every filtered file, each kept at its size so that git has to
    # read it (through its clean filter) to tell; plus an untracked file.
    for rel in ("app.py", "notes.txt", "settings.cfg", "data.inc", "extra.cond", "pkg/deep.dat"):
        touch_dirty(root, rel)
    (root / "new_module.py").write_text("def g():\n    return eval(input())\n")
    return HostileRepo(root=root, programs=programs, first=first, second=second)


# ---------------------------------------------------------------------------------------------
# Repositories that point git at files outside the allowed roots.

OUTSIDE_SECRET = "outside-secret-3b9d1f-not-a-real-secret"
OUTSIDE_FILES = {"private_notes.txt": f"{OUTSIDE_SECRET}\nsecond line\nthird line\n"}


@dataclass(frozen=True)
class OutsidePointer:
    """A repository inside ``roots`` whose git data, work tree or objects come from ``outside``.

    ``project`` is what a tool is pointed at; ``roots`` the allowed root holding it; ``outside`` a
    sibling of ``roots`` holding :data:`OUTSIDE_FILES` (the secret a careless reader would show);
    ``head`` is set when the outside content is only reachable through a commit (alternates).
    """

    name: str
    project: Path
    roots: Path
    outside: Path
    head: str | None = None


def _outside_repo(base: Path) -> Path:
    return committed_repo(base / "outside" / "repo", OUTSIDE_FILES)


def _gitdir_file(base: Path) -> OutsidePointer:
    """A ``.git`` file naming a repository elsewhere: git reads that repository's index and objects."""
    outside = _outside_repo(base)
    project = base / "roots" / "project"
    write_files(project, {"app.py": "x = 1\n", ".git": f"gitdir: {outside / '.git'}\n"})
    return OutsidePointer("a .git file (gitdir: elsewhere)", project, base / "roots", outside)


def _dot_git_link(base: Path) -> OutsidePointer:
    """A ``.git`` folder that is a link to a repository elsewhere."""
    outside = _outside_repo(base)
    project = base / "roots" / "project"
    write_files(project, {"app.py": "x = 1\n"})
    (project / ".git").symlink_to(outside / ".git")
    return OutsidePointer("a .git link", project, base / "roots", outside)


def _core_worktree(base: Path) -> OutsidePointer:
    """``core.worktree`` naming a folder elsewhere: its files become the repository's untracked ones."""
    outside = base / "outside" / "home"
    write_files(outside, OUTSIDE_FILES)
    project = committed_repo(base / "roots" / "project", {"app.py": "x = 1\n"})
    append_config(project, f"[core]\n\tworktree = {outside}\n")
    return OutsidePointer("core.worktree", project, base / "roots", outside)


def _alternates(base: Path) -> OutsidePointer:
    """``objects/info/alternates`` naming another repository's objects: its commits read as ours."""
    outside = _outside_repo(base)
    project = committed_repo(base / "roots" / "project", {"app.py": "x = 1\n"})
    (project / ".git" / "objects" / "info" / "alternates").write_text(f"{outside / '.git' / 'objects'}\n")
    head = setup_git(outside, "rev-parse", "HEAD").strip()
    return OutsidePointer("objects/info/alternates", project, base / "roots", outside, head=head)


OUTSIDE_POINTERS: tuple[Callable[[Path], OutsidePointer], ...] = (
    _gitdir_file,
    _dot_git_link,
    _core_worktree,
    _alternates,
)


def untracked_link_repo(base: Path) -> tuple[Path, Path]:
    """A repository inside ``base/roots`` with an untracked link to a file outside; returns
    (project, roots). The link's target has three lines holding :data:`OUTSIDE_SECRET`."""
    outside = base / "outside"
    write_files(outside, OUTSIDE_FILES)
    project = committed_repo(base / "roots" / "project", {"app.py": "x = 1\n"})
    (project / "notes.txt").symlink_to(outside / "private_notes.txt")
    (project / "fresh.py").write_text("y = 2\n")
    return project, base / "roots"
