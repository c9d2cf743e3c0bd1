"""The git runner never runs a program a repository configures, and hands git none of our secrets.

Each hostile setting is planted in two fresh copies of a small repository: the runner runs the
setting's trigger in one and no program may run; plain git runs it in the other and the program
must run and see the canary secret (the control: a fixture that stopped being hostile would make the
first half pass for nothing).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from fakes.hostile_git import (
    BASE_FILES,
    CANARY,
    CANARY_VAR,
    OUTSIDE_POINTERS,
    OUTSIDE_SECRET,
    SETTINGS,
    HostileSetting,
    OutsidePointer,
    append_config,
    committed_repo,
    install_programs,
    plain_git,
    plant,
    setup_git,
    untracked_link_repo,
)

from caelum_mcp.tools.code.git import git_changes
from caelum_mcp.tools.code.git_runner import (
    GitError,
    GitRunner,
    RepositoryOutsideRootsError,
    driver_overrides,
    git_env,
    run_git,
)

IDENTITY = {
    "GIT_AUTHOR_NAME": "Test",
    "GIT_AUTHOR_EMAIL": "test@example.invalid",
    "GIT_COMMITTER_NAME": "Test",
    "GIT_COMMITTER_EMAIL": "test@example.invalid",
}


@pytest.fixture(autouse=True)
def _canary(monkeypatch: pytest.MonkeyPatch) -> None:
    """A secret in our environment, as the server holds API keys."""
    monkeypatch.setenv(CANARY_VAR, CANARY)


def _fired(programs_fired: dict[str, str], marker: str) -> dict[str, str]:
    return {name: text for name, text in programs_fired.items() if name.startswith(marker)}


@pytest.mark.parametrize("setting", SETTINGS, ids=lambda s: s.name)
async def test_the_runner_never_runs_what_the_repository_configures(setting: HostileSetting, tmp_path: Path) -> None:
    root, programs = plant(setting, tmp_path / "runner")
    git = await GitRunner.open(root, extra_env=IDENTITY)
    result = await git.run(*setting.trigger)
    assert programs.fired() == {}, (setting.name, sorted(programs.fired()), result.stderr[-500:])
    if setting.trigger[0] == "commit" and "-m" in setting.trigger:
        assert result.returncode == 0, result.stderr  # the commit went through: its hooks had their chance

    control_root, control_programs = plant(setting, tmp_path / "control")
    plain_git(control_root, *setting.trigger)
    fired = _fired(control_programs.fired(), setting.marker)
    assert fired, f"the fixture for {setting.name} is not hostile: plain git ran nothing"
    assert any(CANARY in text for text in fired.values()), "plain git hands its environment on"


async def test_pagers_and_editors_resolve_to_none(tmp_path: Path) -> None:
    """git starts a pager only on a terminal, so ask git which one it would start."""
    programs = install_programs(tmp_path / "programs")
    root = committed_repo(tmp_path / "repo", BASE_FILES)
    append_config(
        root,
        f"[core]\n\tpager = {programs.command('core-pager')}\n\teditor = {programs.command('editor')}\n"
        f"[pager]\n\tdiff = {programs.command('pager-diff')}\n",
    )
    assert "core-pager" in plain_git(root, "var", "GIT_PAGER").stdout  # the control
    git = await GitRunner.open(root)
    assert (await git.run("var", "GIT_PAGER")).stdout.strip() == "cat"  # git's word for "no pager"
    assert (await git.run("var", "GIT_EDITOR")).stdout.strip() == ":"  # and for "no editor"
    assert (await git.run("config", "--get", "pager.diff")).stdout.strip() == "false"
    assert programs.fired() == {}


@pytest.fixture
def unauthorized_url() -> Iterator[str]:
    """An HTTP server that asks for credentials: plain git then runs credential helpers and askpass."""

    class AskForCredentials(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="test"')
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), AskForCredentials)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/repo.git"
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("who", ["runner", "plain git"])
async def test_credential_helpers_and_askpass_never_run(who: str, tmp_path: Path, unauthorized_url: str) -> None:
    programs = install_programs(tmp_path / "programs")
    root = committed_repo(tmp_path / "repo", BASE_FILES)
    append_config(
        root,
        f"[credential]\n\thelper = !{programs.command('credential-helper')}\n"
        f'[credential "{unauthorized_url}"]\n\thelper = !{programs.command("url-credential-helper")}\n'
        f"[core]\n\taskPass = {programs.executable('askpass')}\n"
        '[protocol "http"]\n\tallow = always\n'
        f'[remote "origin"]\n\turl = {unauthorized_url}\n',
    )
    if who == "plain git":
        plain_git(root, "ls-remote", "origin")
        assert {"credential-helper", "url-credential-helper", "askpass"} <= set(programs.fired())
    else:
        result = await run_git(root, "ls-remote", "origin")
        assert result.returncode != 0 and "not allowed" in result.stderr
        assert programs.fired() == {}


def test_the_environment_is_an_allowlist(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {
        "ANTHROPIC_API_KEY": "sk-ant-test",
        "GIT_DIR": "/elsewhere/.git",
        "GIT_SSH_COMMAND": "evil",
        "GIT_EXTERNAL_DIFF": "evil",
        "GIT_PAGER": "evil",
        "PAGER": "evil",
        "GIT_ASKPASS": "evil",
        "GIT_CONFIG_PARAMETERS": "'core.fsmonitor'='evil'",
        "LC_CTYPE": "C.UTF-8",
    }.items():
        monkeypatch.setenv(name, value)
    env = git_env()
    assert CANARY not in env.values() and "ANTHROPIC_API_KEY" not in env
    assert not {"GIT_DIR", "GIT_SSH_COMMAND", "GIT_EXTERNAL_DIFF", "GIT_PAGER", "PAGER", "GIT_ASKPASS"} & set(env)
    assert "GIT_CONFIG_PARAMETERS" not in env
    assert env["PATH"] == os.environ["PATH"] and env["LC_CTYPE"] == "C.UTF-8"
    assert env["HOME"] == os.devnull and env["GIT_CONFIG_GLOBAL"] == os.devnull
    assert env["GIT_CONFIG_NOSYSTEM"] == "1" and env["GIT_TERMINAL_PROMPT"] == "0"
    assert env["GIT_OPTIONAL_LOCKS"] == "0" and env["GIT_ALLOW_PROTOCOL"] == ""
    settings = {env[f"GIT_CONFIG_KEY_{i}"]: env[f"GIT_CONFIG_VALUE_{i}"] for i in range(int(env["GIT_CONFIG_COUNT"]))}
    assert settings["core.fsmonitor"] == "false" and settings["core.hooksPath"] == os.devnull
    assert settings["credential.helper"] == "" and settings["protocol.allow"] == "never"
    with pytest.raises(ValueError, match="GIT_CONFIG_COUNT"):
        git_env({"GIT_CONFIG_COUNT": "1"})
    with pytest.raises(ValueError, match="HOME"):
        git_env({"HOME": "/home/someone"})


def test_driver_names_keep_their_case_dots_and_equals_signs() -> None:
    listing = "\0".join(
        [
            "filter.Odd=Name.v2.clean\nsh evil",
            "diff.conv.textconv\nsh evil",
            "diff.external\nsh evil",  # no driver name: covered by the fixed settings
            "merge.m.driver\nsh evil",
            "credential.https://example.invalid.helper\n!evil",
            "protocol.ssh.allow\nalways",
            "pager.diff\nevil",
            "filter.flag.required",  # a value-less key
            "",
        ]
    )
    overrides = dict(driver_overrides(listing))
    assert overrides["filter.Odd=Name.v2.clean"] == "" and overrides["filter.Odd=Name.v2.process"] == ""
    assert overrides["filter.Odd=Name.v2.required"] == "false" and "filter.flag.smudge" in overrides
    assert overrides["diff.conv.textconv"] == "" and overrides["diff.conv.command"] == ""
    assert overrides["merge.m.driver"] == "" and overrides["credential.https://example.invalid.helper"] == ""
    assert overrides["protocol.ssh.allow"] == "never" and overrides["pager.diff"] == "false"
    assert not any(key.startswith("diff.external") for key in overrides)


def test_a_config_naming_too_many_drivers_is_refused() -> None:
    listing = "\0".join(f"filter.f{i}.clean\nx" for i in range(1001))
    with pytest.raises(GitError, match="1001 drivers"):
        driver_overrides(listing)


async def test_an_unreadable_config_fails_closed(tmp_path: Path) -> None:
    root = committed_repo(tmp_path / "repo", BASE_FILES)
    append_config(root, "[core\n\tbroken = \n")
    with pytest.raises(GitError, match="cannot read the git config"):
        await GitRunner.open(root)


async def test_bad_arguments_are_refused_before_git_starts(tmp_path: Path) -> None:
    git = await GitRunner.open(tmp_path)
    with pytest.raises(GitError, match="NUL byte"):
        await git.run("rev-parse", "HEAD\0")
    with pytest.raises(ValueError, match="subcommand"):
        await git.run("-c", "core.fsmonitor=evil")


async def test_the_runner_outside_a_repository_still_runs_git(tmp_path: Path) -> None:
    result = await run_git(tmp_path, "rev-parse", "--show-toplevel")
    assert result.returncode != 0 and "not a git repository" in result.stderr


@pytest.mark.parametrize("build", OUTSIDE_POINTERS, ids=lambda b: b.__name__.strip("_"))
async def test_a_repository_that_points_outside_the_roots_is_refused(
    build: Callable[[Path], OutsidePointer], tmp_path: Path
) -> None:
    case = build(tmp_path)
    # The control: unchecked, git reads what lies outside (the names, or the lines, of its files).
    leaked = await git_changes(case.project, head=case.head)
    assert "private_notes.txt" in {Path(f.path).name for f in leaked.files}, (case.name, leaked.files)

    with pytest.raises(RepositoryOutsideRootsError, match="outside the allowed roots") as info:
        await git_changes(case.project, head=case.head, roots=[case.roots])
    assert str(case.outside) not in str(info.value)  # never says where it points
    with pytest.raises(RepositoryOutsideRootsError):
        await GitRunner.open(case.project, within=[case.roots])
    # the same repository is fine once its outside folder is an allowed root too
    await GitRunner.open(case.project, within=[case.roots, case.outside.parent])


async def test_repositories_inside_the_roots_pass_the_check(tmp_path: Path) -> None:
    roots = tmp_path / "roots"
    repo = committed_repo(roots / "repo", BASE_FILES)
    sub = await git_changes(repo / "pkg", roots=[roots])  # a project inside a repository
    assert sub.repo_root == str(repo)
    setup_git(repo, "worktree", "add", "-q", str(roots / "linked"), "-b", "side")  # a .git file, pointing inside
    assert (roots / "linked" / ".git").is_file()
    linked = await git_changes(roots / "linked", roots=[roots])
    assert linked.files == ()
    plain = roots / "plain"
    plain.mkdir()
    with pytest.raises(GitError, match="not inside a git work tree"):
        await git_changes(plain, roots=[plain])  # no repository at all: as before
    with pytest.raises(RepositoryOutsideRootsError):
        await git_changes(repo / "pkg", roots=[repo / "pkg"])  # the repository's .git is above the root


@pytest.mark.parametrize("with_roots", [True, False], ids=["roots", "no roots"])
async def test_an_untracked_link_to_a_file_outside_is_listed_never_read(with_roots: bool, tmp_path: Path) -> None:
    project, roots = untracked_link_repo(tmp_path)
    changes = await git_changes(project, roots=[roots] if with_roots else None)
    files = {f.path: f for f in changes.files}
    link = files["notes.txt"]
    assert link.status == "untracked" and (link.additions, link.hunks, link.added_lines) == (0, (), ())
    assert files["fresh.py"].additions == 1  # a regular untracked file is still read
    assert OUTSIDE_SECRET not in changes.model_dump_json()
