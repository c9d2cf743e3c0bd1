"""The pool's one policy object and its one tier table: built from the settings, checked, and read
the same way by selection, slots, failover and health."""

from __future__ import annotations

from pathlib import Path

import httpx2
import pytest

from caelum_mcp.core.types import ModelInfo, Tier
from caelum_mcp.engine.backends.ollama import OllamaBackend
from caelum_mcp.engine.config import PoolConfig, load_config
from caelum_mcp.engine.hosts import Host
from caelum_mcp.engine.pool import Pool, PoolPolicy


def _host(name: str, models: dict[str, float], tiers: dict[str, Tier] | None = None) -> Host:
    host = Host(
        name=name, backend=OllamaBackend("http://127.0.0.1:9", httpx2.AsyncClient()), tier_overrides=tiers or {}
    )
    host.models = {m: ModelInfo(name=m, parameters_b=size) for m, size in models.items()}
    return host


def test_the_policy_of_the_default_settings_is_the_default_policy() -> None:
    assert PoolPolicy.from_config(PoolConfig()) == PoolPolicy()
    custom = PoolConfig(
        max_attempts=5, call_deadline_s=60, first_byte_timeout_s=20, retry_after_cap_s=2, ewma_alpha=0.5
    )
    policy = PoolPolicy.from_config(custom, {"qwen3:8b": Tier.CODE})
    assert (policy.max_attempts, policy.call_deadline_s, policy.first_byte_timeout_s) == (5, 60, 20)
    assert (policy.retry_after_cap_s, policy.ewma_alpha, dict(policy.tiers)) == (2, 0.5, {"qwen3:8b": Tier.CODE})


async def test_the_server_builds_its_pool_from_the_pool_and_tiers_settings(tmp_path: Path) -> None:
    from caelum_mcp.serving.app import build_pool

    path = tmp_path / "c.toml"
    path.write_text(
        "implicit_ollama = false\n[pool]\nmax_attempts = 7\nfirst_byte_timeout_s = 9\n[tiers]\n'qwen3:8b' = 'large'\n",
        encoding="utf-8",
    )
    async with httpx2.AsyncClient() as http:
        pool = build_pool(load_config(path, environ={}), http, {})
    assert (pool.policy.max_attempts, pool.policy.first_byte_timeout_s) == (7, 9)
    assert pool.policy.tiers == {"qwen3:8b": Tier.LARGE}


@pytest.mark.parametrize(
    ("setting", "value"),
    [
        ("max_attempts", 0),
        ("max_attempts", 2.5),
        ("call_deadline_s", -1.0),
        ("ewma_alpha", 1.5),
        ("min_attempt_s", float("nan")),
    ],
)
def test_a_bad_setting_is_refused_with_its_name_and_what_it_must_be(setting: str, value: float) -> None:
    with pytest.raises(ValueError, match=rf"pool policy: {setting} must be"):
        PoolPolicy(**{setting: value})  # type: ignore[arg-type]


def test_settings_that_may_be_zero_are_accepted() -> None:
    policy = PoolPolicy(retry_after_cap_s=0, outlier_factor=0)
    assert (policy.retry_after_cap_s, policy.outlier_factor) == (0, 0)


def test_one_tier_table_serves_selection_listing_and_the_call_probe() -> None:
    """A pool-wide override (below a host's own) is what every part of the pool sees."""
    a = _host("a", {"qwen3:8b": 8.0, "gemma3:1b": 1.0})
    b = _host("b", {"qwen3:8b": 8.0}, tiers={"qwen3:8b": Tier.EMBEDDING})
    table = {"qwen3:8b": Tier.CODE, "gemma3:1b": Tier.EMBEDDING}
    pool = Pool([a, b], PoolPolicy(tiers=table))
    table["qwen3:8b"] = Tier.MICRO  # the pool kept its own copy
    sel = pool.select(tier=Tier.CODE)
    assert (sel.host, sel.model, sel.tier) == (a, "qwen3:8b", Tier.CODE)
    assert pool.available_tiers() == {Tier.CODE, Tier.EMBEDDING}
    assert [(e.host, e.model, e.code) for e in pool.eligible_models(code=True)] == [("a", "qwen3:8b", True)]
    tiers = pool.tiers
    assert pool.selection.tiers is tiers and pool.health.selector.tiers is tiers, "one table for all"
    assert tiers.of(b, "qwen3:8b") == {Tier.EMBEDDING}, "the host's own table wins"
    assert (tiers.first_chat_model(a), tiers.first_chat_model(b)) == ("qwen3:8b", None)
    # failover's "could another host take over" reads the same table: b serves no code model
    assert not pool.selection.has_fallback(a, tier=Tier.CODE, model=None, min_tier=None, exclude=())
    assert pool.selection.has_fallback(b, tier=Tier.CODE, model=None, min_tier=None, exclude=())
    with pytest.raises(TypeError):
        pool.policy.tiers["x"] = Tier.LARGE  # type: ignore[index]
