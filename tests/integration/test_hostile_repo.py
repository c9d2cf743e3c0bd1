"""Every development tool (and the knowledge index's listing), through the real MCP server, on a repository
whose git config runs programs.

The repository (``fakes.hostile_git.build_hostile_repo``) sets core.fsmonitor, clean/smudge/process
filters named in ``.gitattributes`` (nested ones and ``.git/info/attributes`` too), diff.external,
textconv and diff command drivers, pagers, hooks (core.hooksPath and .git/hooks), core.sshCommand,
askpass, a credential helper, gpg signing, include.path and includeIf, and a nested repository with
a filter of its own. Each program writes a marker; none may appear. The project's own tests (run by
``run_project_tests`` by design) write none, so every marker would be one git ran. At the end plain
git runs on the same repository and must set markers off: the fixture is live.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from fakes.hostile_git import CANARY, CANARY_VAR, build_hostile_repo, install_programs, plain_git

from .test_development import call, session

TASKS = ("analyze", "improve", "security_scan", "performance", "comprehensive")


@pytest.mark.slow  # over a second: kept out of make test-fast
async def test_no_development_tool_makes_git_run_a_repository_program(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(CANARY_VAR, CANARY)  # a secret in the server's environment
    programs = install_programs(tmp_path / "programs")
    repo = build_hostile_repo(tmp_path / "work" / "repo", programs)
    project = str(repo.root)
    calls = [("analyze_and_improve_code", {"project": project, "task": t, "llm_review": False}) for t in TASKS]
    calls += [
        ("review_changes", {"project": project}),
        ("review_changes", {"project": project, "base": repo.first, "head": repo.second}),
        ("review_changes", {"project": project, "head": repo.second}),
        ("run_project_tests", {"project": project, "timeout_s": 120}),
    ]
    # A folder the repository ignores, named as a project: git lists nothing, check-ignore says why.
    (repo.root / ".git" / "info").mkdir(exist_ok=True)
    with (repo.root / ".git" / "info" / "exclude").open("a") as exclude:
        exclude.write("scratch/\n")
    (repo.root / "scratch").mkdir()
    (repo.root / "scratch" / "probe.py").write_text("def ignored_probe():\n    return 1\n")
    calls.append(("search_knowledge", {"project": str(repo.root / "scratch"), "query": "ignored probe"}))
    results = {}
    async with session(tmp_path) as client:
        for tool, args in calls:
            result = await call(client, tool, args)
            assert not result.is_error, (tool, args, result.content)
            assert programs.fired() == {}, (tool, args, sorted(programs.fired()))
            results[(tool, args.get("task"), args.get("base"), args.get("head"))] = result.structured_content

    scratch = results[("search_knowledge", None, None, None)]
    assert [r["span"].split(":")[0] for r in scratch["results"]] == ["probe.py"]
    worktree = results[("review_changes", None, None, None)]
    changed = {f["path"] for f in worktree["files"]}
    assert {"app.py", "notes.txt", "settings.cfg", "data.inc", "extra.cond", "pkg/deep.dat", "new_module.py"} <= changed
    assert "vendor" not in changed, "a dirty submodule is not looked into"
    assert any(f["rule"] == "B307" for f in worktree["findings"])  # eval(input()) in the untracked file
    ranged = results[("review_changes", None, repo.first, repo.second)]
    assert {f["path"] for f in ranged["files"]} >= {"notes.txt", "settings.cfg", "pkg/deep.dat", "data.inc"}
    assert results[("run_project_tests", None, None, None)]["totals"]["passed"] == 1
    for task in ("analyze", "security_scan", "comprehensive"):
        findings = results[("analyze_and_improve_code", task, None, None)]["findings"]
        assert any(f["file"] == "legacy/kept.py" for f in findings), f"{task} did not list the project through git"
    improve = results[("analyze_and_improve_code", "improve", None, None)]
    assert any(p["check"]["applies"] for p in improve["patches"]), "git apply ran on the patch"

    # The control: plain git on the same repository runs the repository's programs, with our secret.
    plain_git(repo.root, "ls-files")
    plain_git(repo.root, "diff", "HEAD", "--", "notes.txt", "data.inc", "extra.cond", "pkg/deep.dat")
    fired = programs.fired()
    for marker in ("fsmonitor", "filter-clean", "include-path-clean", "include-if-clean", "nested-attributes-clean"):
        assert marker in fired, (marker, sorted(fired))
    assert CANARY in fired["fsmonitor"]
