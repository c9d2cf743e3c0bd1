"""Prometheus metrics: one registry per server, fed as things happen and read at scrape time.

Counters and histograms move when the ledger writes a model-call row (:meth:`Metrics.observe_row`:
LLM calls by host, model, tier, path and outcome; latency; tokens in and out; Claude cost and the
counterfactual Claude cost of local calls) and when the MCP tool handler finishes a call
(:meth:`Metrics.observe_tool_call`: tool calls by tool and outcome, their duration, and the
confidence of every LLM answer in the result). Gauges are read from the running pool and the ledger
at scrape time (:class:`PoolCollector`): breaker state, health, in-flight and limit per host, and
today's Claude budget.

Counters start at zero with the process, as Prometheus expects (``rate()`` handles restarts); the
ledger keeps the all-time figures. Everything here is thread-safe: the ledger writes rows from
worker threads.

Names (all prefixed ``caelum_``)::

    llm_calls_total{host,model,tier,path,outcome}      llm_call_duration_seconds{host,model,path}
    llm_tokens_total{host,model,direction}             claude_cost_usd_total{model}
    counterfactual_cost_usd_total{model}               llm_confidence{path}
    tool_calls_total{tool,outcome}                     tool_call_duration_seconds{tool}
    host_up / host_enabled / host_in_flight / host_max_concurrency / host_latency_ewma_seconds{host}
    host_breaker_state{host,state}                     claude_budget_{used,reserved,limit}_usd
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest, start_wsgi_server
from prometheus_client.core import GaugeMetricFamily, InfoMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from caelum_mcp import __version__
from caelum_mcp.core.errors import ConfigError
from caelum_mcp.core.llm import ExecutionRecord
from caelum_mcp.engine.hosts import BreakerState, Host
from caelum_mcp.engine.ledger import LedgerEntry

log = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
TOOL_BUCKETS = (0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0)
CONFIDENCE_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.75, 0.8, 0.9, 0.95, 1.0)


class BudgetSource(Protocol):
    """What the collector needs to say how much of today's Claude budget is used."""

    def budget_figures(self) -> tuple[float, float, float | None]:
        """Spent today, held by calls in flight, and the daily limit (None: no limit), in USD."""
        ...


class PoolCollector(Collector):
    """Gauges read at scrape time from the hosts and the budget that ``source()`` returns (nothing
    while the server is not running)."""

    def __init__(self, source: Callable[[], tuple[Sequence[Host], BudgetSource] | None]) -> None:
        self.source = source

    def describe(self) -> Iterable[Metric]:
        return []  # collected lazily: the hosts are not known when the collector is registered

    def collect(self) -> Iterator[Metric]:
        yield InfoMetricFamily("caelum", "caelum-mcp build", value={"version": __version__})
        current = self.source()
        if current is None:
            return
        hosts, budget = current
        up = GaugeMetricFamily(
            "caelum_host_up", "1 when the host is in rotation, its breaker closed and healthy", labels=["host"]
        )
        enabled = GaugeMetricFamily("caelum_host_enabled", "1 when the host is in rotation", labels=["host"])
        breaker = GaugeMetricFamily(
            "caelum_host_breaker_state", "1 for the host's current breaker state", labels=["host", "state"]
        )
        in_flight = GaugeMetricFamily("caelum_host_in_flight", "requests the host is serving now", labels=["host"])
        limit = GaugeMetricFamily("caelum_host_max_concurrency", "the host's concurrency limit", labels=["host"])
        latency = GaugeMetricFamily(
            "caelum_host_latency_ewma_seconds", "moving average of the host's answer latency", labels=["host"]
        )
        for host in hosts:
            healthy = host.breaker.state is BreakerState.CLOSED and bool(host.last_health and host.last_health.ok)
            up.add_metric([host.name], float(host.enabled and healthy))
            enabled.add_metric([host.name], float(host.enabled))
            for state in BreakerState:
                breaker.add_metric([host.name, state.value], float(host.breaker.state is state))
            in_flight.add_metric([host.name], host.in_flight)
            limit.add_metric([host.name], host.max_concurrency)
            if host.latency_ewma_ms is not None:
                latency.add_metric([host.name], host.latency_ewma_ms / 1000)
        yield from (up, enabled, breaker, in_flight, limit, latency)
        spent, reserved, budget_limit = budget.budget_figures()
        yield GaugeMetricFamily("caelum_claude_budget_used_usd", "Claude money spent today (UTC)", value=spent)
        yield GaugeMetricFamily(
            "caelum_claude_budget_reserved_usd", "Claude money held by calls in flight", value=reserved
        )
        if budget_limit is not None:
            yield GaugeMetricFamily("caelum_claude_budget_limit_usd", "the daily Claude budget", value=budget_limit)


class Metrics:
    """The server's registry and the counters the ledger and the tool handler move."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        r = self.registry
        self.llm_calls = Counter(
            "caelum_llm_calls",
            "model calls by host, model, tier, path (local, claude, failed) and outcome (ok, failed)",
            ["host", "model", "tier", "path", "outcome"],
            registry=r,
        )
        self.llm_latency = Histogram(
            "caelum_llm_call_duration_seconds",
            "model call latency",
            ["host", "model", "path"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.llm_tokens = Counter(
            "caelum_llm_tokens", "tokens by direction (input, output)", ["host", "model", "direction"], registry=r
        )
        self.claude_cost = Counter("caelum_claude_cost_usd", "real money spent on Claude", ["model"], registry=r)
        self.counterfactual_cost = Counter(
            "caelum_counterfactual_cost_usd",
            "what the configured Claude model would have cost for the tokens served locally",
            ["model"],
            registry=r,
        )
        self.confidence = Histogram(
            "caelum_llm_confidence",
            "confidence of each LLM answer a tool returned, by final path",
            ["path"],
            buckets=CONFIDENCE_BUCKETS,
            registry=r,
        )
        self.tool_calls = Counter(
            "caelum_tool_calls",
            "MCP tool calls by tool and outcome (ok, error, internal_error, cancelled)",
            ["tool", "outcome"],
            registry=r,
        )
        self.tool_duration = Histogram(
            "caelum_tool_call_duration_seconds", "MCP tool call duration", ["tool"], buckets=TOOL_BUCKETS, registry=r
        )

    def watch_pool(self, source: Callable[[], tuple[Sequence[Host], BudgetSource] | None]) -> None:
        """Read the pool's gauges from ``source()`` at every scrape."""
        self.registry.register(PoolCollector(source))

    def observe_row(self, entry: LedgerEntry) -> None:
        """One model-call row, as the ledger wrote it."""
        host, model = entry.host or "-", entry.model or "-"
        outcome = "failed" if entry.outcome == "failed" else "ok"
        self.llm_calls.labels(host, model, entry.tier or "-", entry.path, outcome).inc()
        if entry.latency_ms > 0:
            self.llm_latency.labels(host, model, entry.path).observe(entry.latency_ms / 1000)
        tokens_in = entry.input_tokens + entry.cache_read_tokens + entry.cache_write_tokens
        if tokens_in:
            self.llm_tokens.labels(host, model, "input").inc(tokens_in)
        if entry.output_tokens:
            self.llm_tokens.labels(host, model, "output").inc(entry.output_tokens)
        if entry.cost_usd:
            self.claude_cost.labels(model).inc(entry.cost_usd)
        if entry.outcome == "local" and entry.counterfactual_cost_usd:
            self.counterfactual_cost.labels(model).inc(entry.counterfactual_cost_usd)

    def observe_tool_call(
        self, tool: str, outcome: str, seconds: float, executions: Sequence[ExecutionRecord] = ()
    ) -> None:
        """One MCP tool call that ended with ``outcome``, and the LLM answers its result carries."""
        self.tool_calls.labels(tool, outcome).inc()
        self.tool_duration.labels(tool).observe(max(0.0, seconds))
        for execution in executions:
            self.confidence.labels(execution.path).observe(execution.confidence)

    def render(self) -> bytes:
        """The Prometheus text exposition of everything above."""
        return generate_latest(self.registry)


@contextmanager
def metrics_port(metrics: Metrics, port: int | None, addr: str = "127.0.0.1") -> Iterator[None]:
    """Serve ``metrics`` without auth on ``addr:port`` (a thread of its own) while inside; nothing
    when ``port`` is None. For a scraper on the same machine: ``[metrics] port``."""
    if port is None:
        yield
        return
    try:
        httpd, thread = start_wsgi_server(port, addr=addr, registry=metrics.registry)
    except OSError as exc:
        raise ConfigError(f"cannot serve metrics on {addr}:{port}: {exc.strerror}; change [metrics] port") from exc
    log.info("metrics without auth at http://%s:%d/metrics", addr, port)
    try:
        yield
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)
