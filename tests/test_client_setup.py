"""``caelum-mcp setup claude-code | claude-desktop``: the files it writes, merges and backs up, and
the real Claude Code CLI (npm ``@anthropic-ai/claude-code``) connecting to what it wrote.

Every test points HOME (and the client's config folders) at a temporary folder: nothing of the
machine's own client configuration is read or written.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from integration.dashboard_server import serving

from caelum_mcp.core.errors import CaelumError
from caelum_mcp.engine.config import Config, load_config
from caelum_mcp.serving.client_setup import apply_plan, install_command, plan_setup

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def config(tmp_path: Path) -> Config:
    path = tmp_path / "caelum.toml"
    path.write_text(f'embedded = "off"\nimplicit_ollama = false\ndata_dir = "{tmp_path / "data"}"\n')
    return load_config(path, environ={})


def run_setup(home: Path, cwd: Path, *args: str, config: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config")}
    head = [sys.executable, "-m", "caelum_mcp"] + (["--config", str(config)] if config else [])
    return subprocess.run(
        [*head, "setup", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=60, check=False
    )


def test_claude_code_user_scope_gets_this_install_by_absolute_path(tmp_path: Path, config: Config) -> None:
    home = tmp_path / "home"
    plan = plan_setup("claude-code", config, home=home, cwd=tmp_path, environ={})
    assert plan.path == home / ".claude.json" and plan.before is None
    assert apply_plan(plan) is None  # no file before: nothing to back up
    entry = json.loads(plan.path.read_text())["mcpServers"]["caelum"]
    command = install_command()
    assert entry["type"] == "stdio" and entry["command"] == command[0] and Path(entry["command"]).is_absolute()
    assert Path(entry["command"]).exists()
    assert entry["args"] == [*command[1:], "--config", str(tmp_path / "caelum.toml"), "serve", "--transport", "stdio"]
    assert stat.S_IMODE(plan.path.stat().st_mode) == 0o600  # a client config may hold credentials


@pytest.mark.slow  # over a second: kept out of make test-fast
def test_merging_keeps_everything_else_backs_up_first_and_is_idempotent(tmp_path: Path, config: Config) -> None:
    home = tmp_path / "home"
    home.mkdir()
    existing = {
        "userID": "abc",
        "mcpServers": {"other": {"type": "stdio", "command": "/bin/other", "args": []}},
        "projects": {"/x": {"allowedTools": []}},
    }
    original = json.dumps(existing)
    (home / ".claude.json").write_text(original)
    os.chmod(home / ".claude.json", 0o640)

    first = run_setup(home, tmp_path, "claude-code", "--dashboard-port", "8799", config=tmp_path / "caelum.toml")
    assert first.returncode == 0, first.stderr
    assert "added to" in first.stdout and "backup:" in first.stdout
    data = json.loads((home / ".claude.json").read_text())
    assert data["userID"] == "abc" and data["projects"] == existing["projects"]
    assert set(data["mcpServers"]) == {"other", "caelum"}
    assert data["mcpServers"]["caelum"]["args"][-2:] == ["--dashboard-port", "8799"]
    (backup,) = home.glob(".claude.json.bak-*")
    assert backup.read_text() == original
    assert stat.S_IMODE((home / ".claude.json").stat().st_mode) == 0o640  # permissions kept

    again = run_setup(home, tmp_path, "claude-code", "--dashboard-port", "8799", config=tmp_path / "caelum.toml")
    assert again.returncode == 0 and "already set up" in again.stdout
    assert len(list(home.glob(".claude.json.bak-*"))) == 1  # nothing written, nothing backed up


def test_dry_run_shows_the_diff_and_writes_nothing(tmp_path: Path, config: Config) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / ".claude.json").write_text('{"userID": "abc"}')
    shown = run_setup(home, tmp_path, "claude-code", "--dry-run", config=tmp_path / "caelum.toml")
    assert shown.returncode == 0, shown.stderr
    assert f"--- {home / '.claude.json'} (now)" in shown.stdout
    assert '+  "mcpServers": {' in shown.stdout and '+      "type": "stdio",' in shown.stdout
    assert ' "userID": "abc"' in shown.stdout and "(dry run:" in shown.stdout
    assert (home / ".claude.json").read_text() == '{"userID": "abc"}'
    assert not list(home.glob("*.bak-*"))


def test_local_and_project_scopes(tmp_path: Path, config: Config) -> None:
    home, project = tmp_path / "home", tmp_path / "proj"
    project.mkdir()
    local = plan_setup("claude-code", config, scope="local", home=home, cwd=project, environ={})
    apply_plan(local)
    data = json.loads((home / ".claude.json").read_text())
    assert data["projects"][str(project)]["mcpServers"]["caelum"]["type"] == "stdio"

    shared = plan_setup("claude-code", config, scope="project", name="caelum-team", home=home, cwd=project, environ={})
    apply_plan(shared)
    assert shared.path == project / ".mcp.json"
    assert list(json.loads(shared.path.read_text())["mcpServers"]) == ["caelum-team"]
    assert any("approve" in note for note in shared.notes)

    elsewhere = plan_setup(
        "claude-code", config, home=home, cwd=project, environ={"CLAUDE_CONFIG_DIR": str(tmp_path / "cc")}
    )
    assert elsewhere.path == tmp_path / "cc" / ".claude.json"


def test_http_entries_name_the_token_variable_never_the_token(tmp_path: Path) -> None:
    config = load_config(
        None,
        environ={"SETUP_TOKEN": "s3cr3t-value"},
        overrides={"server.bearer_token_env": "SETUP_TOKEN", "server.port": 9911, "implicit_ollama": False},
    )
    plan = plan_setup("claude-code", config, transport="http", home=tmp_path, cwd=tmp_path, environ={})
    assert plan.entry == {
        "type": "http",
        "url": "http://127.0.0.1:9911/mcp",
        "headers": {"Authorization": "Bearer ${SETUP_TOKEN}"},
    }
    assert "s3cr3t" not in plan.diff()
    custom = plan_setup(
        "claude-code", config, transport="http", url="http://127.0.0.1:1/mcp", home=tmp_path, cwd=tmp_path, environ={}
    )
    assert custom.entry["url"] == "http://127.0.0.1:1/mcp"


def test_claude_desktop_paths_and_entry(tmp_path: Path, config: Config) -> None:
    roots = [tmp_path]
    linux = plan_setup("claude-desktop", config, home=tmp_path, cwd=tmp_path, environ={}, platform="linux", roots=roots)
    assert linux.path == tmp_path / ".config" / "Claude" / "claude_desktop_config.json"
    assert set(linux.entry) == {"command", "args", "env"}  # Desktop's format: no "type"
    mac = plan_setup("claude-desktop", config, home=tmp_path, cwd=tmp_path, environ={}, platform="darwin", roots=roots)
    assert mac.path == tmp_path / "Library" / "Application Support" / "Claude" / "claude_desktop_config.json"
    windows = plan_setup(
        "claude-desktop",
        config,
        home=tmp_path,
        cwd=tmp_path,
        environ={"APPDATA": str(tmp_path / "roaming")},
        platform="win32",
        roots=roots,
    )
    assert windows.path == tmp_path / "roaming" / "Claude" / "claude_desktop_config.json"

    apply_plan(linux)
    written = json.loads(linux.path.read_text())
    assert written["mcpServers"]["caelum"]["args"][-5:] == ["serve", "--transport", "stdio", "--root", str(tmp_path)]
    with pytest.raises(CaelumError, match="over stdio"):
        plan_setup("claude-desktop", config, transport="http", home=tmp_path, cwd=tmp_path, environ={})
    with pytest.raises(CaelumError, match="one configuration per user"):
        plan_setup("claude-desktop", config, scope="project", home=tmp_path, cwd=tmp_path, environ={}, roots=roots)


def test_a_symlinked_client_file_is_written_through_the_link(tmp_path: Path, config: Config) -> None:
    """Dotfiles kept in a repository and linked into HOME: the link stays, its target gets the entry."""
    home, dotfiles = tmp_path / "home", tmp_path / "dotfiles"
    home.mkdir()
    dotfiles.mkdir()
    target = dotfiles / "claude.json"
    target.write_text('{"userID": "abc"}')
    os.chmod(target, 0o640)
    link = home / ".claude.json"
    link.symlink_to(Path("..") / "dotfiles" / "claude.json")  # relative, as stow writes them

    plan = plan_setup("claude-code", config, home=home, cwd=tmp_path, environ={})
    backup = apply_plan(plan)
    assert link.is_symlink() and os.readlink(link) == str(Path("..") / "dotfiles" / "claude.json")
    data = json.loads(target.read_text())
    assert data["userID"] == "abc" and "caelum" in data["mcpServers"]
    assert stat.S_IMODE(target.stat().st_mode) == 0o640  # the target's permissions kept
    assert backup is not None and backup.read_text() == '{"userID": "abc"}' and not backup.is_symlink()
    assert sorted(p.name for p in dotfiles.iterdir()) == ["claude.json"]  # no temporary file left behind

    dangling = home / "dangling"
    dangling.mkdir()
    (dangling / ".claude.json").symlink_to(tmp_path / "nowhere" / "claude.json")
    lost = plan_setup("claude-code", config, home=dangling, cwd=tmp_path, environ={})
    with pytest.raises(CaelumError, match=r"is a symbolic link to .*which is not a file; create that file"):
        apply_plan(lost)
    assert (dangling / ".claude.json").is_symlink() and not (tmp_path / "nowhere").exists()


def test_claude_desktop_needs_roots_and_gets_them_on_the_serve_command(tmp_path: Path, config: Config) -> None:
    with pytest.raises(CaelumError) as info:
        plan_setup("claude-desktop", config, home=tmp_path, cwd=tmp_path, environ={}, platform="linux")
    assert "starts servers in /" in str(info.value) and "pass --root FOLDER" in str(info.value)
    project, notes = tmp_path / "project", tmp_path / "notes"
    project.mkdir()
    notes.mkdir()
    plan = plan_setup(
        "claude-desktop", config, home=tmp_path, cwd=tmp_path, environ={}, platform="linux", roots=["project", notes]
    )
    assert plan.entry["args"][-4:] == ["--root", str(project), "--root", str(notes)]  # relative: from cwd
    with pytest.raises(CaelumError, match="--root missing: not a folder"):
        plan_setup("claude-desktop", config, home=tmp_path, cwd=tmp_path, environ={}, roots=["missing"])
    with pytest.raises(CaelumError, match="--root is for --transport stdio"):
        plan_setup("claude-code", config, transport="http", home=tmp_path, cwd=tmp_path, environ={}, roots=[notes])
    code = plan_setup("claude-code", config, home=tmp_path, cwd=tmp_path, environ={}, roots=[project])
    assert code.entry["args"][-2:] == ["--root", str(project)]  # optional for Claude Code, honoured


@pytest.mark.slow  # over a second: kept out of make test-fast
async def test_the_desktop_entry_setup_writes_reads_only_its_roots_when_started_in_slash(tmp_path: Path) -> None:
    """``setup claude-desktop --root`` from the command line, then the server started exactly as
    Desktop starts it (the entry's command and args, in /, no MCP roots): /etc is refused, the root is not."""
    home, project = tmp_path / "home", tmp_path / "project"
    home.mkdir()
    project.mkdir()
    conf = tmp_path / "caelum.toml"
    conf.write_text(f'embedded = "off"\nimplicit_ollama = false\ndata_dir = "{tmp_path / "data"}"\n')
    refused = run_setup(home, tmp_path, "claude-desktop", config=conf)
    assert refused.returncode == 2 and "pass --root FOLDER" in refused.stderr, refused.stderr
    done = run_setup(home, tmp_path, "claude-desktop", "--root", str(project), config=conf)
    assert done.returncode == 0, done.stderr
    written = json.loads((home / ".config" / "Claude" / "claude_desktop_config.json").read_text())
    entry = written["mcpServers"]["caelum"]
    assert entry["args"][-2:] == ["--root", str(project)]

    from mcp import Client, StdioServerParameters
    from mcp.client.stdio import stdio_client

    from caelum_mcp.tools.paths import OUTSIDE_ROOTS

    params = StdioServerParameters(
        command=entry["command"],
        args=entry["args"],
        env={"PATH": os.environ.get("PATH", ""), "HOME": str(home), **entry["env"]},
        cwd="/",
    )
    with (tmp_path / "stderr.log").open("w") as errlog:
        async with Client(stdio_client(params, errlog=errlog)) as client:
            etc = await client.call_tool("search_knowledge", {"query": "root", "project": "/etc"})
            mine = await client.call_tool("memory", {"action": "list", "project": str(project)})
    assert etc.is_error and OUTSIDE_ROOTS in " ".join(getattr(c, "text", "") for c in etc.content)
    assert not mine.is_error, mine.content


@pytest.mark.slow  # over a second: kept out of make test-fast
def test_a_broken_client_file_is_left_alone_with_a_clear_error(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / ".claude.json").write_text("{not json")
    result = run_setup(home, tmp_path, "claude-code")
    assert result.returncode == 2
    assert "is not valid JSON" in result.stderr and "move it aside" in result.stderr
    assert "Traceback" not in result.stderr
    assert (home / ".claude.json").read_text() == "{not json"
    bad_name = run_setup(home, tmp_path, "claude-code", "--name", "a b")
    assert bad_name.returncode == 2 and "--name" in bad_name.stderr


# The real Claude Code CLI -----------------------------------------------------------------------


@pytest.fixture
def claude_cli() -> Iterator[str]:
    found = ROOT / ".tools" / "node_modules" / ".bin" / "claude"
    path = str(found) if found.exists() else shutil.which("claude")
    if path is None:
        pytest.skip("the Claude Code CLI is not installed: `make test` installs it into .tools with npm")
    yield path


def claude_env(home: Path, **extra: str) -> dict[str, str]:
    return {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(home),
        "DISABLE_TELEMETRY": "1",
        "DISABLE_AUTOUPDATER": "1",
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        **extra,
    }


def claude_mcp_list(claude: str, home: Path, cwd: Path, **env: str) -> str:
    listed = subprocess.run(
        [claude, "mcp", "list"], cwd=cwd, env=claude_env(home, **env), capture_output=True, text=True, timeout=120
    )
    return listed.stdout + listed.stderr


@pytest.mark.npm
@pytest.mark.slow
def test_claude_code_connects_to_the_stdio_server_setup_wrote(tmp_path: Path, config: Config, claude_cli: str) -> None:
    home, project = tmp_path / "home", tmp_path / "project"
    home.mkdir()
    project.mkdir()
    done = run_setup(home, project, "claude-code", config=tmp_path / "caelum.toml")
    assert done.returncode == 0, done.stderr
    out = claude_mcp_list(claude_cli, home, project)
    assert "caelum:" in out and "Connected" in out, out
    assert str(install_command()[0]) in out  # the entry Claude Code read is the one setup wrote


@pytest.mark.npm
@pytest.mark.slow
async def test_claude_code_connects_over_http_with_the_token_variable(
    tmp_path: Path, config: Config, claude_cli: str
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    async with serving(tmp_path / "srv", token="http-setup-token-77a1") as served:
        conf = tmp_path / "client.toml"
        conf.write_text('implicit_ollama = false\n[server]\nbearer_token_env = "CAELUM_SETUP_TOKEN"\n')
        done = run_setup(home, tmp_path, "claude-code", "--transport", "http", "--url", served.mcp, config=conf)
        assert done.returncode == 0, done.stderr
        assert "http-setup-token" not in (home / ".claude.json").read_text()
        import anyio.to_thread

        connected = await anyio.to_thread.run_sync(
            lambda: claude_mcp_list(claude_cli, home, tmp_path, CAELUM_SETUP_TOKEN="http-setup-token-77a1")
        )
        refused = await anyio.to_thread.run_sync(lambda: claude_mcp_list(claude_cli, home, tmp_path))
    assert f"caelum: {served.mcp} (HTTP) - ✔ Connected" in connected, connected
    assert "Connected" not in refused and "CAELUM_SETUP_TOKEN" in refused, refused


def test_a_project_scope_entry_names_no_path_of_this_machine(tmp_path: Path, config: Config) -> None:
    # .mcp.json is committed and opened by the whole team: an absolute venv or home path works on one machine.
    home, project = tmp_path / "home", tmp_path / "proj"
    (project / "src").mkdir(parents=True)
    shared = plan_setup(
        "claude-code", config, scope="project", home=home, cwd=project, environ={}, roots=["src", project]
    )
    apply_plan(shared)
    entry = json.loads((project / ".mcp.json").read_text())["mcpServers"]["caelum"]
    assert entry["command"] == "caelum-mcp" and entry["args"] == [
        "serve",
        "--transport",
        "stdio",
        "--root",
        "src",
        "--root",
        ".",
    ]
    assert str(tmp_path) not in json.dumps(entry)
    assert any("PATH" in note for note in shared.notes) and any("outside the project" in n for n in shared.notes)

    project_config = project / "caelum.toml"
    project_config.write_text('embedded = "off"\n')
    inside = plan_setup("claude-code", load_config(project_config, environ={}), scope="project", home=home, cwd=project)
    assert inside.entry["args"][:2] == ["--config", "caelum.toml"]

    with pytest.raises(CaelumError, match="outside the project"):
        plan_setup("claude-code", config, scope="project", home=home, cwd=project, environ={}, roots=[tmp_path])

    mine = plan_setup("claude-code", config, scope="user", home=home, cwd=project, environ={})
    assert Path(mine.entry["command"]).is_absolute()  # this machine's own entry keeps its exact install
