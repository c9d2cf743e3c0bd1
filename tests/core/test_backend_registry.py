"""A new backend is one module and one registration: its ``[[hosts]]`` keys, validation and host follow.

The backend here lives in this test module, as a plug-in would live in its own: ``register_backend``
is the one line that makes a config naming ``kind = "echo"`` load, validate its own keys and become
a host of the pool.
"""

from __future__ import annotations

import json
import os
import re
import types
from collections.abc import AsyncIterator, Iterator, Mapping
from pathlib import Path
from typing import Literal, Self

import httpx2
import pytest
from pydantic import Field, ValidationError, field_validator
from pydantic_core import PydanticCustomError

from caelum_mcp.core.errors import ConfigError, HostOverloadedError
from caelum_mcp.core.types import (
    ChatMessage,
    ChatRequest,
    ChatResponse,
    HealthReport,
    ModelInfo,
    StreamChunk,
    Usage,
)
from caelum_mcp.engine.backends.base import Backend, HostConfigBase
from caelum_mcp.engine.backends.ollama import OllamaBackend, OllamaHostConfig
from caelum_mcp.engine.backends.openai import OpenAIBackend
from caelum_mcp.engine.backends.registry import (
    BACKENDS,
    BackendEntry,
    BackendRegistry,
    UnknownBackendError,
    backend_class,
    register_backend,
)
from caelum_mcp.engine.config import load_config
from caelum_mcp.serving.app import build_pool, make_host


class EchoHostConfig(HostConfigBase):
    kind: Literal["echo"] = Field(default="echo", description="says back what it was told")
    prefix: str = Field(default="echo: ", description="put before every answer")

    @field_validator("prefix")
    @classmethod
    def _says_something(cls, value: str) -> str:
        if not value:  # a validator's own error type, not one of pydantic's
            raise PydanticCustomError("empty_prefix", "an empty prefix hides that {this} is an echo", {"this": "it"})
        return value


class EchoBackend(Backend):
    """Answers with the last message, after its prefix: the smallest backend there is."""

    kind = "echo"
    config_model = EchoHostConfig

    def __init__(self, base_url: str, client: httpx2.AsyncClient, *, name: str = "", prefix: str = "") -> None:
        super().__init__(base_url, client, name=name)
        self.prefix = prefix

    @classmethod
    def from_config(cls, config: HostConfigBase, *, http: httpx2.AsyncClient, environ: Mapping[str, str]) -> Self:
        echo = EchoHostConfig.of(config)
        return cls(echo.url, http, name=echo.name, prefix=echo.prefix)

    async def chat(self, request: ChatRequest, *, limit_s: float | None = None) -> ChatResponse:
        return ChatResponse(model=request.model, content=self.prefix + request.messages[-1].content, usage=Usage())

    async def stream(self, request: ChatRequest, *, limit_s: float | None = None) -> AsyncIterator[StreamChunk]:
        yield StreamChunk(done=True, response=await self.chat(request))

    async def list_models(self) -> list[ModelInfo]:
        return [ModelInfo(name="echo:8b", parameters_b=8.0)]

    async def health(self) -> HealthReport:
        return HealthReport(ok=True, version="echo")


@pytest.fixture
def echo() -> Iterator[None]:
    register_backend("echo", EchoBackend)
    yield
    BACKENDS.remove("echo")


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    os.chmod(path, 0o600)
    return path


ECHO_HOST = "implicit_ollama = false\n[[hosts]]\nname = 'box'\nkind = 'echo'\nurl = 'http://127.0.0.1:9'\n"


async def test_a_registered_backend_becomes_a_host_from_the_config_naming_its_kind(echo: None, tmp_path: Path) -> None:
    config = load_config(write(tmp_path / "c.toml", ECHO_HOST + "prefix = '> '\n"), environ={})
    (entry,) = config.hosts
    assert isinstance(entry, EchoHostConfig) and entry.prefix == "> "
    async with httpx2.AsyncClient() as http:
        pool = build_pool(config, http, {})
        host = pool.hosts["box"]
        assert isinstance(host.backend, EchoBackend) and host.backend.prefix == "> "
        await pool.refresh_host(host)
        assert host.last_health is not None and host.last_health.version == "echo"
        assert list(host.models) == ["echo:8b"]
        request = ChatRequest(model="echo:8b", messages=(ChatMessage(role="user", content="hi"),))
        assert (await host.backend.chat(request)).content == "> hi"


def test_a_registered_kind_validates_its_own_keys(echo: None, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"unknown key `hosts\[0\]\(name='box'\).prefx`: did you mean `prefix`"):
        load_config(write(tmp_path / "c.toml", ECHO_HOST + "prefx = '> '\n"), environ={})
    # Its keys belong to it alone: an Ollama host with one is told so.
    ollama = "[[hosts]]\nname = 'gpu'\nurl = 'http://127.0.0.1:11434'\nprefix = '> '\n"
    with pytest.raises(ConfigError, match=r"unknown key `hosts\[0\]\(name='gpu'\).prefix`"):
        load_config(write(tmp_path / "o.toml", ollama), environ={})


def test_a_kinds_own_validation_error_is_reported_at_its_key(echo: None, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path / "c.toml", ECHO_HOST + "prefix = ''\n"), environ={})
    assert "`hosts[0](name='box').prefix` = \"\": an empty prefix hides that it is an echo." in str(caught.value)


def test_without_its_registration_the_kind_is_refused_naming_the_known_ones(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path / "c.toml", ECHO_HOST), environ={})
    message = str(caught.value)
    assert "`hosts[0](name='box').kind` = \"echo\": unknown host kind" in message
    assert "'ollama' (Ollama's native API, the default)" in message and "'openai'" in message


def test_an_unknown_kind_in_code_is_a_config_error_naming_the_kinds_never_a_key_error() -> None:
    with pytest.raises(UnknownBackendError, match=r"no backend of kind 'echo'; known kinds: 'ollama', 'openai'"):
        backend_class("echo")
    assert issubclass(UnknownBackendError, ConfigError)


async def test_backends_built_only_in_code_cannot_serve_a_hosts_entry(tmp_path: Path) -> None:
    # Claude is configured under [claude] and the scripted backend in code: neither is a host kind.
    for kind in ("anthropic", "scripted"):
        text = f"[[hosts]]\nname = 'x'\nkind = '{kind}'\nurl = 'http://127.0.0.1:9'\n"
        with pytest.raises(ConfigError, match="unknown host kind"):
            load_config(write(tmp_path / "c.toml", text), environ={})
    async with httpx2.AsyncClient() as http:
        with pytest.raises(UnknownBackendError, match="cannot serve a \\[\\[hosts\\]\\] entry"):
            BACKENDS.build(HostConfigBase(name="x", kind="scripted", url="http://127.0.0.1:9"), http=http, environ={})


def test_a_kind_is_registered_once() -> None:
    registry = BackendRegistry([BackendEntry("ollama", OllamaBackend)])
    registry.add(BackendEntry("ollama", OllamaBackend))  # the same entry again is no conflict
    with pytest.raises(ValueError, match="'ollama' is already registered"):
        registry.add(BackendEntry("ollama", OpenAIBackend))


def test_an_entry_whose_target_is_not_a_backend_says_which() -> None:
    registry = BackendRegistry([BackendEntry("broken", "caelum_mcp.engine.backends.base:HostConfigBase")])
    with pytest.raises(
        TypeError, match=r"backend 'broken': caelum_mcp\.engine\.backends\.base:HostConfigBase is not a Backend"
    ):
        registry.backend_class("broken")


def test_a_registry_of_one_kind_reports_errors_where_the_file_has_them() -> None:
    # A union of one model is that model, whose errors carry no tag to take out.
    registry = BackendRegistry([BackendEntry("ollama", OllamaBackend)])
    with pytest.raises(ValidationError) as caught:
        registry.validate_host({"name": "a", "url": "127.0.0.1:1"})
    assert [e["loc"] for e in caught.value.errors()] == [("url",)]


async def test_each_kind_builds_its_backend_with_its_own_settings() -> None:
    async with httpx2.AsyncClient() as http:
        host = OllamaHostConfig(name="gpu", url="http://127.0.0.1:11434", keep_alive="10m", api_key_env="GPU_KEY")
        backend = make_host(load_config(environ={}), host, http, {"GPU_KEY": "k"}).backend
        assert isinstance(backend, OllamaBackend)
        assert (backend.keep_alive, backend.name, backend.headers()) == ("10m", "gpu", {"Authorization": "Bearer k"})
        openai = load_config(
            environ={},
            overrides={"hosts": [{"name": "cpp", "kind": "openai", "url": "http://127.0.0.1:8080/v1"}]},
        ).hosts[0]
        built = BACKENDS.build(openai, http=http, environ={})
        assert isinstance(built, OpenAIBackend) and built.base_url == "http://127.0.0.1:8080"


# the worked example README "Adding a backend" points to ---------------------------------------------

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "tgi_backend.py"


def readme_backend() -> types.ModuleType:
    assert EXAMPLE.is_file(), "the worked example of a backend is gone"
    module = types.ModuleType("tgi_backend_example")
    exec(compile(EXAMPLE.read_text(), str(EXAMPLE), "exec", dont_inherit=True), module.__dict__)
    return module


def test_the_readme_points_to_the_example_backend_and_fits_on_one_screen() -> None:
    section = readme_section("Adding a backend")
    assert "tests/examples/tgi_backend.py" in section
    assert len(section.splitlines()) <= 50, "README's 'Adding a backend' no longer fits on one screen"


def readme_section(title: str) -> str:
    text = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    found = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## )", text, re.S | re.M)
    assert found, f"README has no '## {title}' section"
    return found.group(0)


@pytest.fixture
def tgi() -> Iterator[types.ModuleType]:
    module = readme_backend()
    register_backend("tgi", module.TGIBackend)
    yield module
    BACKENDS.remove("tgi")


async def test_the_readme_backend_serves_a_host_its_config_names(tgi: types.ModuleType, tmp_path: Path) -> None:
    sent: list[httpx2.Request] = []
    busy = [False]

    def server(request: httpx2.Request) -> httpx2.Response:
        sent.append(request)
        if request.url.path == "/info":
            return httpx2.Response(200, json={"model_id": "HuggingFaceH4/zephyr-7b-beta", "version": "2.4.1"})
        if busy[0]:
            return httpx2.Response(503, json={"error": "Model is overloaded"}, headers={"Retry-After": "2"})
        return httpx2.Response(200, json={"generated_text": "4", "details": {"finish_reason": "eos_token"}})

    text = (
        "implicit_ollama = false\n[[hosts]]\nname = 'tgi-1'\nkind = 'tgi'\nurl = 'http://127.0.0.1:8080'\n"
        "api_key_env = 'TGI_TOKEN'\nmax_new_tokens = 256\n"
    )
    config = load_config(write(tmp_path / "c.toml", text), environ={})
    async with httpx2.AsyncClient(transport=httpx2.MockTransport(server)) as http:
        host = build_pool(config, http, {"TGI_TOKEN": "hf_x"}).hosts["tgi-1"]
        assert isinstance(host.backend, tgi.TGIBackend) and host.backend.max_new_tokens == 256
        health = await host.backend.health()
        assert health.ok and health.version == "2.4.1"
        assert [m.name for m in await host.backend.list_models()] == ["HuggingFaceH4/zephyr-7b-beta"]
        request = ChatRequest(model="zephyr", messages=(ChatMessage(role="user", content="2+2?"),))
        assert (await host.backend.chat(request)).content == "4"
        body = json.loads(sent[-1].content)
        assert body["parameters"] == {"max_new_tokens": 256} and body["inputs"].endswith("<|assistant|>\n")
        assert sent[-1].headers["Authorization"] == "Bearer hf_x"
        busy[0] = True
        with pytest.raises(HostOverloadedError, match="Model is overloaded") as caught:
            await host.backend.chat(request)
        assert caught.value.retry_after_s == 2.0
    with pytest.raises(ConfigError, match=r"`hosts\[0\]\(name='tgi-1'\).max_new_tokens` = 0"):
        load_config(write(tmp_path / "c.toml", text.replace("256", "0")), environ={})
