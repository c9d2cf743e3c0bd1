"""Pool: failover between real hosts, breakers, concurrency limits, selection, tiers."""

from __future__ import annotations

import time
from collections import Counter
from contextlib import aclosing

import anyio
import httpx2
import pytest
from fakes.ollama_server import FakeOllama

from caelum_mcp.core.errors import AllHostsFailedError, BadRequestError, NoHostAvailableError
from caelum_mcp.core.types import ChatMessage, ChatRequest, ModelInfo, Tier
from caelum_mcp.embedded.server import EmbeddedServer
from caelum_mcp.engine.backends.ollama import OllamaBackend
from caelum_mcp.engine.hosts import BreakerState, CircuitBreaker, Host
from caelum_mcp.engine.pool import Pool, PoolPolicy

from .conftest import openai_host

HELLO = ChatRequest(model="", messages=(ChatMessage(role="user", content="Say hi."),), max_tokens=4, temperature=0)


def ollama_host(name: str, fake: FakeOllama, http: httpx2.AsyncClient, *, limit: int = 1) -> Host:
    return Host(
        name=name,
        backend=OllamaBackend(fake.url, http, name=name),
        max_concurrency=limit,
        breaker=CircuitBreaker(failure_threshold=2, cooldown_s=0.3),
    )


@pytest.mark.slow  # waits out a real timeout
async def test_host_dies_mid_run_no_request_fails_and_it_comes_back(tmp_path: object, http: httpx2.AsyncClient) -> None:
    """Two real llama.cpp servers; one is stopped during a run of 50 requests."""
    with EmbeddedServer() as a, EmbeddedServer() as b:
        assert a.url and b.url
        pool = Pool([openai_host("a", a.url, http), openai_host("b", b.url, http)], PoolPolicy(max_attempts=3))
        await pool.refresh_all()
        assert {h.name for h in pool.healthy_hosts()} == {"a", "b"}
        served_by: list[str] = []
        failures: list[BaseException] = []
        done = 0
        twelve_done = anyio.Event()

        async def one() -> None:
            nonlocal done
            try:
                result = await pool.chat(HELLO, tier=Tier.MICRO)
                served_by.append(result.host)
            except Exception as exc:
                failures.append(exc)
            done += 1
            if done == 12:
                twelve_done.set()

        async def killer() -> None:
            await twelve_done.wait()
            await anyio.to_thread.run_sync(b.stop)

        async with anyio.create_task_group() as tg:
            tg.start_soon(killer)
            limiter = anyio.CapacityLimiter(4)

            async def bounded() -> None:
                async with limiter:
                    await one()

            for _ in range(50):
                tg.start_soon(bounded)

        assert failures == [], failures
        assert len(served_by) == 50
        host_b = pool.hosts["b"]
        assert host_b.breaker.state is BreakerState.OPEN, "the dead host must be marked open"
        assert served_by[-20:] == ["a"] * 20, "traffic shifts to the live host"
        assert Counter(served_by)["b"] >= 1

        # b comes back on the same port; after the cooldown a probe closes its breaker again.
        await anyio.to_thread.run_sync(b.start)
        await anyio.sleep(0.6)
        before = host_b.served
        for _ in range(6):
            await pool.chat(HELLO, tier=Tier.MICRO)
        assert host_b.breaker.state is BreakerState.CLOSED
        assert host_b.served > before, "the recovered host is used again"


async def test_concurrency_limit_is_never_exceeded(http: httpx2.AsyncClient) -> None:
    with FakeOllama(delay_s=0.05) as one, FakeOllama(delay_s=0.05) as two:
        pool = Pool([ollama_host("one", one, http, limit=2), ollama_host("two", two, http, limit=1)])
        await pool.refresh_all()
        model = next(iter(pool.hosts["one"].models))
        results = []

        async def call() -> None:
            results.append(await pool.chat(HELLO, model=model))

        async with anyio.create_task_group() as tg:
            for _ in range(24):
                tg.start_soon(call)
        assert len(results) == 24
        assert pool.hosts["one"].peak_in_flight <= 2 and one.max_in_flight <= 2
        assert pool.hosts["two"].peak_in_flight <= 1 and two.max_in_flight <= 1
        # least-outstanding selection spreads load in proportion to capacity
        counts = Counter(r.host for r in results)
        assert counts["one"] > counts["two"] > 0


async def test_cancelled_waiter_and_abandoned_stream_give_their_slot_back(http: httpx2.AsyncClient) -> None:
    """A caller that gives up (cancelled while queued, or stops reading a stream) never keeps a slot."""
    with FakeOllama(delay_s=0.3) as fake:
        pool = Pool([ollama_host("only", fake, http, limit=1)])
        await pool.refresh_all()
        host = pool.hosts["only"]
        model = next(iter(host.models))

        async def first() -> None:
            await pool.chat(HELLO, model=model)  # holds the one slot for 0.3 s

        async with anyio.create_task_group() as tg:
            tg.start_soon(first)
            await anyio.sleep(0.05)
            with anyio.move_on_after(0.05):  # queued behind it, then cancelled
                await pool.chat(HELLO, model=model)
            assert (host.in_flight, host.outstanding) == (1, 1)
        assert (host.in_flight, host.outstanding) == (0, 0)

        fake.delay_s = 0.0
        async with aclosing(pool.stream(HELLO, model=model)) as stream:
            async for _ in stream:
                break  # abandon the stream after its first chunk
        assert (host.in_flight, host.outstanding) == (0, 0)
        async for _ in pool.stream(HELLO, model=model):
            break  # not closed by the caller: the event loop's finaliser closes it
        with anyio.fail_after(10):  # a leaked slot would make this wait forever
            assert (await pool.chat(HELLO, model=model)).host == "only"


async def test_busy_host_fails_over_and_bad_request_does_not(http: httpx2.AsyncClient) -> None:
    with FakeOllama() as busy, FakeOllama() as ok:
        busy.fail = "busy"
        pool = Pool([ollama_host("busy", busy, http), ollama_host("ok", ok, http)])
        await pool.refresh_all()
        pool.hosts["ok"].latency_ewma_ms = 1000.0  # make "busy" the first choice
        model = next(iter(pool.hosts["ok"].models))
        result = await pool.chat(HELLO, model=model)
        assert result.host == "ok" and result.attempts == 2
        assert "503" in result.errors[0] or "busy" in result.errors[0]
        ok.fail = "busy"
        with pytest.raises(AllHostsFailedError) as info:
            await pool.chat(HELLO, model=model)
        assert len(info.value.causes) >= 1
    with FakeOllama() as fake:
        pool = Pool([ollama_host("x", fake, http)])
        await pool.refresh_all()
        bad = HELLO.model_copy(update={"think": True})  # a model without thinking: 400, not retried
        with pytest.raises(BadRequestError):
            await pool.chat(bad, model=next(iter(pool.hosts["x"].models)))
        assert pool.hosts["x"].breaker.state is BreakerState.CLOSED, "a bad request is not the host's fault"


async def test_streaming_fails_over_before_first_token_only(http: httpx2.AsyncClient) -> None:
    with FakeOllama() as dead, FakeOllama() as live:
        pool = Pool([ollama_host("dead", dead, http), ollama_host("live", live, http)])
        await pool.refresh_all()
        model = next(iter(pool.hosts["live"].models))
        pool.hosts["live"].latency_ewma_ms = 500.0
        dead.stop()
        chunks = [(sel.host.name, c) async for sel, c in pool.stream(HELLO, model=model)]
        assert {name for name, _ in chunks} == {"live"}
        assert chunks[-1][1].done and chunks[-1][1].response is not None
        live.fail = "midstream"
        from caelum_mcp.core.errors import StreamInterruptedError

        with pytest.raises(StreamInterruptedError):
            async for _ in pool.stream(HELLO, model=model):
                pass


async def test_health_checks_open_and_close_breakers(http: httpx2.AsyncClient) -> None:
    with FakeOllama() as fake:
        pool = Pool([ollama_host("h", fake, http)])
        await pool.refresh_all()
        host = pool.hosts["h"]
        assert host.breaker.state is BreakerState.CLOSED and host.last_health and host.last_health.ok
        assert host.last_health.version
        fake.stop()
        async with anyio.create_task_group() as tg:
            tg.start_soon(pool.run_health_checks, 0.05)
            await anyio.sleep(0.3)
            assert host.breaker.state is BreakerState.OPEN
            with pytest.raises(NoHostAvailableError):
                pool.select(tier=Tier.SMALL)
            fake.start()
            await anyio.sleep(0.3)
            assert host.breaker.state is BreakerState.CLOSED
            tg.cancel_scope.cancel()


async def test_disable_and_enable_at_runtime(http: httpx2.AsyncClient) -> None:
    with FakeOllama() as one, FakeOllama() as two:
        pool = Pool([ollama_host("one", one, http), ollama_host("two", two, http)])
        await pool.refresh_all()
        model = next(iter(pool.hosts["one"].models))
        pool.set_enabled("one", False)
        assert {(await pool.chat(HELLO, model=model)).host for _ in range(4)} == {"two"}
        pool.set_enabled("one", True)
        pool.set_enabled("two", False)
        assert {(await pool.chat(HELLO, model=model)).host for _ in range(4)} == {"one"}
        with pytest.raises(NoHostAvailableError, match="no host named"):
            pool.set_enabled("nope", True)


async def test_many_hosts_spread_by_load(http: httpx2.AsyncClient) -> None:
    fakes = [FakeOllama(delay_s=0.02) for _ in range(5)]
    for f in fakes:
        f.start()
    try:
        pool = Pool([ollama_host(f"h{i}", f, http) for i, f in enumerate(fakes)])
        await pool.refresh_all()
        model = next(iter(pool.hosts["h0"].models))
        results = []

        async def call() -> None:
            results.append(await pool.chat(HELLO, model=model))

        async with anyio.create_task_group() as tg:
            for _ in range(25):
                tg.start_soon(call)
        assert {r.host for r in results} == {f"h{i}" for i in range(5)}
        assert all(h.peak_in_flight == 1 for h in pool.hosts.values())
    finally:
        for f in fakes:
            f.stop()


# pure selection logic ---------------------------------------------------------------------------


class _NoBackend(OllamaBackend):
    def __init__(self) -> None:
        super().__init__("http://127.0.0.1:9", httpx2.AsyncClient())


def _host(name: str, models: dict[str, float | None], **kw: object) -> Host:
    host = Host(name=name, backend=_NoBackend(), **kw)  # type: ignore[arg-type]
    host.models = {m: ModelInfo(name=m, parameters_b=size) for m, size in models.items()}
    return host


def test_tiers_from_size_name_and_overrides() -> None:
    h = _host(
        "h",
        {
            "gemma3:1b": 1.0,
            "qwen3:4b": 4.0,
            "qwen3:8b": 8.2,
            "qwen3:30b": 30.5,
            "qwen3-coder:30b": 30.5,
            "nomic-embed-text": 0.137,
            "mystery": None,
        },
    )
    assert h.tiers_of("gemma3:1b", {}) == {Tier.MICRO}
    assert h.tiers_of("qwen3:4b", {}) == {Tier.SMALL}
    assert h.tiers_of("qwen3:8b", {}) == {Tier.FULL}
    assert h.tiers_of("qwen3:30b", {}) == {Tier.LARGE}
    assert h.tiers_of("qwen3-coder:30b", {}) == {Tier.LARGE, Tier.CODE}
    assert h.tiers_of("nomic-embed-text", {}) == {Tier.EMBEDDING}
    assert h.tiers_of("mystery", {}) == {Tier.SMALL}
    assert h.tiers_of("qwen3:8b", {"qwen3:8b": Tier.CODE}) == {Tier.CODE}
    h.tier_overrides["qwen3:8b"] = Tier.LARGE
    assert h.tiers_of("qwen3:8b", {"qwen3:8b": Tier.CODE}) == {Tier.LARGE}


def test_selection_by_expected_completion_then_nearest_tier() -> None:
    a = _host("a", {"qwen3:8b": 8.0}, max_concurrency=2)
    b = _host("b", {"qwen3:8b": 8.0}, max_concurrency=1)
    pool = Pool([a, b])
    a.latency_ewma_ms, b.latency_ewma_ms = 50.0, 10.0
    assert pool.select(tier=Tier.FULL).host is b  # both free: the faster one
    b.outstanding = 1
    assert pool.select(tier=Tier.FULL).host is b  # queued on b: 2 x 10 ms beats 50 ms on idle a
    b.outstanding = 5
    assert pool.select(tier=Tier.FULL).host is a  # 6 x 10 ms on b: a's 50 ms is sooner
    a.outstanding = 2
    assert pool.select(tier=Tier.FULL).host is b  # a full too: 3/2 x 50 = 75 ms against 60 ms
    a.latency_ewma_ms = b.latency_ewma_ms = None
    a.outstanding, b.outstanding = 1, 0
    assert pool.select(tier=Tier.FULL).host is b  # no figures: the less loaded (0/1 against 1/2)
    # no large model anywhere: the nearest tier that exists serves, and says so
    sel = pool.select(tier=Tier.LARGE)
    assert sel.model == "qwen3:8b" and sel.tier is Tier.FULL
    with pytest.raises(NoHostAvailableError, match=r"model 'llama3\.1:8b'"):
        pool.select(model="llama3.1:8b")
    a.enabled = False
    b.breaker.record_failure(force_open=True)
    with pytest.raises(NoHostAvailableError, match=r"a\[disabled\].*b\[open\]"):
        pool.select(tier=Tier.FULL)


def test_breaker_cooldown_and_half_open_probe() -> None:
    now = [100.0]
    br = CircuitBreaker(failure_threshold=2, cooldown_s=5, clock=lambda: now[0])
    br.record_failure()
    assert br.state is BreakerState.CLOSED and br.allows()
    br.record_failure()
    assert br.state is BreakerState.OPEN and not br.allows()
    now[0] += 5
    assert br.allows()
    br.on_dispatch()
    assert br.state is BreakerState.HALF_OPEN and not br.allows(), "one probe at a time"
    br.record_failure()
    assert br.state is BreakerState.OPEN and not br.allows(), "a failed probe re-opens"
    now[0] += 5
    br.on_dispatch()
    br.record_success()
    assert br.state is BreakerState.CLOSED and br.failures == 0


def test_pool_records_latency_ewma() -> None:
    h = _host("h", {"m": 1.0})
    pool = Pool([h], PoolPolicy(ewma_alpha=0.5))
    pool.health.on_success(h, 100.0)
    pool.health.on_success(h, 200.0)
    assert h.latency_ewma_ms == pytest.approx(150.0)
    assert time.monotonic() > 0


@pytest.mark.slow  # over a second: kept out of make test-fast
def test_fifty_hosts_fill_evenly_and_skip_the_broken() -> None:
    hosts = [_host(f"h{i:02d}", {"qwen3:8b": 8.0}, max_concurrency=1 + i % 3) for i in range(50)]
    pool = Pool(hosts)
    for h in hosts[::10]:
        h.breaker.record_failure(force_open=True)
    picked = []
    capacity = sum(h.max_concurrency for h in hosts if h.breaker.state is BreakerState.CLOSED)
    for _ in range(capacity):
        sel = pool.select(tier=Tier.FULL)
        sel.host.outstanding += 1
        picked.append(sel.host.name)
    assert not {h.name for h in hosts[::10]} & set(picked), "open breakers get no traffic"
    # every live host is filled to exactly its own limit before any is over it
    assert all(h.outstanding == h.max_concurrency for h in hosts if h.breaker.state is BreakerState.CLOSED)


# waiting for a slot ----------------------------------------------------------------------------


def _scripted(name: str, delay_s: float, *, limit: int = 1) -> Host:
    from caelum_mcp.engine.backends.scripted import ScriptedBackend, ScriptedReply

    backend = ScriptedBackend([("qwen3:8b", 8.0)], ScriptedReply('{"answer": "ok"}', delay_s=delay_s), name=name)
    return Host(name=name, backend=backend, max_concurrency=limit, breaker=CircuitBreaker(failure_threshold=2))


async def test_requests_waiting_for_a_host_that_goes_out_of_rotation_select_again() -> None:
    a, b = _scripted("a", 0.3), _scripted("b", 0.3)
    pool = Pool([a, b])
    await pool.refresh_all()
    b.enabled = False
    hosts: list[str] = []

    async def one() -> None:
        hosts.append((await pool.chat(HELLO, tier=Tier.FULL)).host)

    async with anyio.create_task_group() as tg:
        for _ in range(3):
            tg.start_soon(one)
        await anyio.sleep(0.05)
        assert (a.in_flight, a.outstanding) == (1, 3)  # one in flight, two waiting for a's slot
        pool.set_enabled("b", True)
        pool.set_enabled("a", False)  # its waiters go to b
    assert sorted(hosts) == ["a", "b", "b"]
    assert all((h.in_flight, h.outstanding, h.free_slots) == (0, 0, 1) for h in (a, b))


async def test_a_waiter_cancelled_after_it_was_handed_a_slot_passes_it_on() -> None:
    host = _scripted("a", 0.2)
    pool = Pool([host])
    await pool.refresh_all()
    results: list[str] = []

    async def first() -> None:
        results.append((await pool.chat(HELLO, tier=Tier.FULL)).host)

    async with anyio.create_task_group() as tg:
        tg.start_soon(first)
        await anyio.sleep(0.05)
        with anyio.CancelScope() as scope:
            # queued, and cancelled just as the first request ends and hands it the slot: the
            # slot goes to the third request either way, never leaks
            async with anyio.create_task_group() as inner:
                inner.start_soon(first)
                await anyio.sleep(0.05)
                tg.start_soon(first)
                await anyio.sleep(0.12)  # the first request has finished and handed its slot over
                scope.cancel()
    assert results == ["a", "a"]
    assert (host.in_flight, host.outstanding, host.free_slots) == (0, 0, 1)


async def test_a_trace_names_the_host_a_cancelled_call_was_waiting_for() -> None:
    from caelum_mcp.engine.pool import CallTrace

    host = _scripted("a", 1.0)
    pool = Pool([host])
    await pool.refresh_all()
    trace = CallTrace()
    async with anyio.create_task_group() as tg:
        tg.start_soon(pool.chat, HELLO)
        await anyio.sleep(0.05)
        with anyio.move_on_after(0.1):
            await pool.chat(HELLO, trace=trace)
        tg.cancel_scope.cancel()
    assert (trace.hosts, trace.waiting_for) == ([], "a")
    assert (host.in_flight, host.outstanding, host.free_slots) == (0, 0, 1)


def test_pool_defaults_are_the_config_defaults() -> None:
    from caelum_mcp.engine.config import PoolConfig

    pool, config = Pool(), PoolConfig()
    assert pool.policy.call_deadline_s == config.call_deadline_s
    assert pool.policy.first_byte_timeout_s == config.first_byte_timeout_s
    assert pool.policy.retry_after_cap_s == config.retry_after_cap_s
    assert (pool.policy.max_attempts, pool.policy.ewma_alpha) == (config.max_attempts, config.ewma_alpha)


async def test_a_slot_handed_to_a_waiter_that_is_cancelled_before_it_runs_is_not_lost() -> None:
    host = _scripted("a", 0.0)
    pool = Pool([host])
    await pool.refresh_all()
    assert pool.slots.claim(host)  # someone else holds the only slot
    with anyio.CancelScope() as scope:
        async with anyio.create_task_group() as tg:
            tg.start_soon(pool.chat, HELLO)
            await anyio.sleep(0.05)
            assert host.outstanding == 2 and host.free_slots == 0
            assert pool.slots.release(host), "the waiter takes the slot over"
            scope.cancel()  # in the same step: the waiter never got to use it
    assert (host.in_flight, host.outstanding, host.free_slots) == (0, 0, 1)
    assert (await pool.chat(HELLO)).host == "a"
