"""Shared fixtures: a real llama.cpp server (SmolLM2-135M) and the Ollama wire fixtures."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from caelum_mcp.embedded.server import EmbeddedServer, embedded_status

FIXTURES = Path(__file__).parent / "fixtures"
OLLAMA_FIXTURES = FIXTURES / "ollama"


MODEL_FIXTURES = {"llama_server", "llama_url"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """A test that asks for the real model server is a ``model`` test (``make test-fast`` skips it)."""
    for item in items:
        if MODEL_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.model)


@pytest.fixture(scope="session")
def llama_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedServer]:
    """One real llama.cpp server for the whole session, in a child process on loopback."""
    ok, detail = embedded_status()
    if not ok:
        pytest.fail(f"the embedded model is required for the tests: {detail}")
    log = tmp_path_factory.mktemp("llama") / "llama.log"
    server = EmbeddedServer(log_path=log, n_parallel=2)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def llama_url(llama_server: EmbeddedServer) -> str:
    assert llama_server.url
    return llama_server.url


@pytest.fixture
def mark() -> Iterator[str]:
    """A unique command-line marker; whatever still carries it when the test ends is killed."""
    from fakes.escapees import marked

    token = f"caelum-test-{uuid.uuid4().hex}"
    yield token
    for proc in marked(token):
        proc.kill()
