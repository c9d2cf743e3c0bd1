"""The workflow engine's scheduling rules, with steps whose work is a plain async function.

The tools and commands a real step runs are exercised in tests/integration/test_workflow.py; here
each step's work records when it ran, so the graph rules are checked exactly: parallel where
independent, ``writes`` alone, ``needs``, ``when``, ``fail_if``, ``on_failure``, timeouts, reuse.
"""

from __future__ import annotations

import time
from typing import Any

import anyio
import pytest

from caelum_mcp.core.errors import CaelumError
from caelum_mcp.supervisors.workflow.definitions import BUILTIN_WORKFLOWS, PRE_COMMIT_TESTS_S, WorkflowSpec
from caelum_mcp.supervisors.workflow.engine import Reused, StepResult, StepRun, Work, WorkflowEngine


def spec(steps: dict[str, dict[str, Any]], **extra: Any) -> WorkflowSpec:
    return WorkflowSpec.model_validate(
        {"steps": {k: {"command": ["true", *v.pop("argv", [])], **v} for k, v in steps.items()}, **extra}
    )


class Recorder:
    """Each step sleeps ``delay`` (by id) and returns ``outputs`` (by id); spans are recorded."""

    def __init__(self, delays: dict[str, float] | None = None, outputs: dict[str, Any] | None = None) -> None:
        self.delays = delays or {}
        self.outputs = outputs or {}
        self.spans: dict[str, tuple[float, float]] = {}
        self.argv: dict[str, list[str]] = {}
        self.fail: set[str] = set()

    async def __call__(self, step: StepRun, work: Work) -> StepResult:
        start = time.perf_counter()
        self.argv[step.id] = work.argv or []
        await anyio.sleep(self.delays.get(step.id, 0.0))
        self.spans[step.id] = (start, time.perf_counter())
        if step.id in self.fail:
            raise CaelumError(f"{step.id} broke")
        return StepResult(ok=True, output=self.outputs.get(step.id, {"n": 1}), findings=1)

    def overlap(self, a: str, b: str) -> bool:
        (s1, e1), (s2, e2) = self.spans[a], self.spans[b]
        return s1 < e2 and s2 < e1


def engine(wf: WorkflowSpec, work: Recorder, **kw: Any) -> WorkflowEngine:
    return WorkflowEngine(spec=wf, project="/p", inputs=kw.pop("inputs", {}), execute=work, **kw)


async def test_independent_steps_run_together_and_needs_wait() -> None:
    wf = spec({"a": {}, "b": {}, "c": {}, "d": {"needs": ["a", "b", "c"]}})
    work = Recorder({"a": 0.2, "b": 0.2, "c": 0.2})
    steps = await engine(wf, work).run()
    assert [s.status for s in steps] == ["passed"] * 4
    # All three at once, not one after another: every one started before any of them ended (a
    # 0.55 s bound on the wall time said the same with 50 ms to spare, too little on a loaded machine).
    assert max(work.spans[x][0] for x in "abc") < min(work.spans[x][1] for x in "abc")
    assert work.spans["d"][0] >= max(work.spans[x][1] for x in "abc")


async def test_a_writing_step_runs_alone_and_later_steps_wait_for_it() -> None:
    wf = spec({"a": {}, "b": {}, "w": {"writes": True}, "c": {}})
    work = Recorder({"a": 0.1, "b": 0.15, "w": 0.1, "c": 0.1})
    await engine(wf, work).run()
    assert work.overlap("a", "b")
    for other in ("a", "b", "c"):
        assert not work.overlap("w", other), other
    assert work.spans["c"][0] >= work.spans["w"][1]


async def test_max_parallel_bounds_the_steps_at_once() -> None:
    wf = spec({k: {} for k in "abcd"}, max_parallel=2)
    work = Recorder(dict.fromkeys("abcd", 0.1))
    await engine(wf, work).run()
    points = sorted([(s, 1) for s, _ in work.spans.values()] + [(e, -1) for _, e in work.spans.values()])
    running = peak = 0
    for _, delta in points:
        running += delta
        peak = max(peak, running)
    assert peak == 2


async def test_when_skips_and_skipped_needs_skip_dependents_but_failed_needs_do_not() -> None:
    wf = spec(
        {
            "probe": {"fail_if": "output.n > 0", "on_failure": "continue"},
            "gated": {"needs": ["probe"], "when": "steps.probe.ok"},
            "after_gated": {"needs": ["gated"]},
            "after_probe": {"needs": ["probe"], "when": "not steps.probe.ok and inputs.go"},
        },
        inputs={"go": {"default": False}},
    )
    steps = {s.id: s for s in await engine(wf, Recorder(), inputs={"go": True}).run()}
    assert steps["probe"].status == "failed" and "output.n > 0" in (steps["probe"].error or "")
    assert steps["gated"].status == "skipped" and "steps.probe.ok" in (steps["gated"].error or "")
    assert steps["after_gated"].status == "skipped" and "gated" in (steps["after_gated"].error or "")
    assert steps["after_probe"].status == "passed"


async def test_a_failure_with_stop_starts_nothing_new_but_running_steps_finish() -> None:
    wf = spec({"bad": {}, "slow": {}, "later": {"needs": ["bad"]}, "other": {"needs": ["slow"]}})
    work = Recorder({"bad": 0.05, "slow": 0.3})
    work.fail.add("bad")
    eng = engine(wf, work)
    steps = {s.id: s for s in await eng.run()}
    assert (steps["bad"].status, steps["bad"].error) == ("failed", "bad broke")
    assert steps["slow"].status == "passed"  # already running: it finished
    assert steps["later"].status == steps["other"].status == "skipped"
    assert "bad failed" in (steps["other"].error or "")
    assert eng.stopped_by == "bad"


async def test_a_step_past_its_timeout_is_timed_out_and_says_so() -> None:
    wf = spec({"hang": {"timeout_s": 0.2, "on_failure": "continue"}, "next": {"needs": ["hang"]}})
    started = time.perf_counter()
    steps = await engine(wf, Recorder({"hang": 30})).run()
    assert time.perf_counter() - started < 2
    # its own status, not "failed": it did not fail, it was stopped
    assert steps[0].status == "timed_out" and "timed out after 0.2 s" in (steps[0].error or "")
    assert steps[0].view()["ok"] is False
    assert steps[1].status == "passed"


async def test_a_step_whose_work_says_it_timed_out_keeps_its_output_and_stops_the_run() -> None:
    wf = spec({"slow": {}, "later": {"needs": ["slow"]}})

    async def execute(step: StepRun, work: Work) -> StepResult:
        if step.id == "slow":
            return StepResult(ok=False, timed_out=True, output={"stdout_tail": "3 passed so far"}, error="timed out")
        return StepResult(ok=True)

    eng = WorkflowEngine(spec=wf, project="/p", inputs={}, execute=execute)
    steps = {s.id: s for s in await eng.run()}
    assert steps["slow"].status == "timed_out" and steps["slow"].output == {"stdout_tail": "3 passed so far"}
    assert steps["later"].status == "skipped" and eng.stopped_by == "slow"  # on_failure = "stop" holds for it too


async def test_arguments_come_from_inputs_and_earlier_results_one_argument_each() -> None:
    wf = spec(
        {
            "first": {},
            "second": {
                "needs": ["first"],
                "argv": ["--count={{ steps.first.output.n }}", "{{ inputs.name }}", "{{ project }}/x"],
            },
        },
        inputs={"name": {"default": "a b; rm -rf /"}},
    )
    work = Recorder(outputs={"first": {"n": 7}})
    await engine(wf, work, inputs={"name": "a b; rm -rf /"}).run()
    assert work.argv["second"] == ["true", "--count=7", "a b; rm -rf /", "/p/x"]


async def test_an_input_that_would_be_an_option_fails_the_step_before_it_runs() -> None:
    wf = spec({"s": {"argv": ["{{ inputs.base }}"]}}, inputs={"base": {}})
    work = Recorder()
    (step,) = await engine(wf, work, inputs={"base": "--output=/etc/passwd"}).run()
    assert step.status == "failed" and "read as an option" in (step.error or "")
    assert "s" not in work.spans


async def test_a_reusable_result_with_the_same_input_hash_is_taken_not_run() -> None:
    wf = spec({"a": {}, "b": {"needs": ["a"], "argv": ["{{ steps.a.output.n }}"]}})
    first = engine(wf, Recorder(outputs={"a": {"n": 3}}), fingerprint="files-1")
    steps = {s.id: s for s in await first.run()}
    offered = {
        sid: Reused("run1", s.input_hash or "", StepResult(ok=True, output=s.output, findings=s.findings))
        for sid, s in steps.items()
    }
    again = Recorder()
    steps2 = {s.id: s for s in await engine(wf, again, fingerprint="files-1", reusable=offered).run()}
    assert again.spans == {} and all(s.reused_from == "run1" for s in steps2.values())
    changed = Recorder(outputs={"a": {"n": 3}})
    steps3 = {s.id: s for s in await engine(wf, changed, fingerprint="files-2", reusable=offered).run()}
    assert set(changed.spans) == {"a", "b"} and not any(s.reused_from for s in steps3.values())


async def test_a_cancelled_run_marks_its_running_steps_cancelled() -> None:
    wf = spec({"a": {}, "b": {}})
    seen: list[tuple[str, str]] = []

    async def listener(step: StepRun) -> None:
        seen.append((step.id, step.status))

    eng = engine(wf, Recorder({"a": 30, "b": 30}), listener=listener)
    with anyio.move_on_after(0.2):
        await eng.run()
    assert {s.status for s in eng.steps.values()} == {"cancelled"}
    assert ("a", "cancelled") in seen and ("b", "cancelled") in seen


@pytest.mark.parametrize(
    ("steps", "message"),
    [
        ({"a": {"needs": ["b"]}, "b": {"needs": ["a"]}}, "cycle: a -> b -> a"),
        ({"a": {"needs": ["zz"]}}, "'zz', which is not a step"),
        ({"a": {}, "b": {"argv": ["{{ steps.a.status }}"]}}, "must name a step this one needs"),
        ({"a": {"argv": ["{{ inputs.nope }}"]}}, "not declared under inputs"),
        ({"a": {"when": "output.x"}}, "only fail_if can read"),
        ({"a": {"when": "steps.a.ok and"}}, "ends where a value was expected"),
        ({"a": {"argv": ["{{ bad"]}}, "placeholder is written"),
    ],
)
def test_bad_definitions_are_refused_with_the_reason(steps: dict[str, dict[str, Any]], message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        spec(steps)


def command_step(command: list[str], **extra: Any) -> WorkflowSpec:
    return WorkflowSpec.model_validate({"inputs": {"msg": {}}, "steps": {"s": {"command": command, **extra}}})


@pytest.mark.parametrize(
    "command",
    [
        ["sh", "-c", "echo {{ inputs.msg }}"],
        ["bash", "-o", "pipefail", "-ec", "git log | grep '{{ inputs.msg }}'"],
        ["/usr/bin/python3", "-c", "print('{{ inputs.msg }}')"],
        ["python3.12", "-W", "ignore", "-c", "print('{{ project }}')"],
        ["env", "LC_ALL=C", "zsh", "-c", "{{ inputs.msg }}"],  # behind a wrapper
        ["node", "--eval={{ inputs.msg }}"],
        ["perl", "-Mstrict", "-ne", "print if /{{ inputs.msg }}/"],
    ],
)
def test_a_placeholder_in_code_a_shell_or_interpreter_runs_is_refused(command: list[str]) -> None:
    with pytest.raises(ValueError, match=r"is inside the code that .* runs.*pass values as separate arguments"):
        command_step(command)


@pytest.mark.parametrize(
    "command",
    [
        ["sh", "-c", 'grep -r -- "$1" .', "sh", "{{ inputs.msg }}"],
        ["python3", "-c", "import sys; print(sys.argv[1])", "{{ inputs.msg }}"],
        ["python3", "-m", "pytest", "-k", "{{ inputs.msg }}"],
        ["git", "-c", "core.pager=cat", "log", "--grep={{ inputs.msg }}"],
    ],
)
def test_values_given_to_an_interpreter_as_arguments_are_accepted(command: list[str]) -> None:
    assert command_step(command).steps["s"].command == tuple(command)


@pytest.mark.parametrize(
    "name", ["AWS_SECRET_ACCESS_KEY", "GITHUB_TOKEN", "PGPASSWORD", "NPM_AUTH", "GOOGLE_APPLICATION_CREDENTIALS"]
)
def test_secret_looking_names_in_a_steps_env_are_refused(name: str) -> None:
    with pytest.raises(ValueError, match=rf"secrets are never passed to workflow commands: {name} looks like one"):
        command_step(["env"], env=["LANG", name])
    assert command_step(["env"], env=["LANG", "PYTHONPATH", "NODE_ENV"]).steps["s"].env[1] == "PYTHONPATH"


def test_a_steps_env_holds_bare_names_so_no_value_can_template_a_secret() -> None:
    for entry in ("X=${GITHUB_TOKEN}", "X={{ inputs.msg }}", "$AWS_SECRET_ACCESS_KEY"):
        with pytest.raises(ValueError, match="not environment variable names"):
            command_step(["env"], env=[entry])


def test_a_builtin_tests_step_lets_the_test_run_time_out_before_the_step_does() -> None:
    # The tool's own limit keeps pytest's output so far; the step's would only keep its progress.
    tests = BUILTIN_WORKFLOWS["pre-commit"].steps["tests"]
    assert tests.args["timeout_s"] == PRE_COMMIT_TESTS_S < tests.timeout_s
    assert PRE_COMMIT_TESTS_S > 300  # the tool's default: short of a whole suite on a loaded 2-core machine
