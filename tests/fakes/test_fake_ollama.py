"""FakeOllama keeps Ollama's wire behaviour, so tests built on it test something real."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx2
import pytest
from pydantic import BaseModel, Field

from fakes.ollama_server import DEFAULT_SENTENCE, FakeOllama, example_for_schema, hashed_embedding

CHAT = "/api/chat"


@pytest.fixture
def fake() -> Iterator[FakeOllama]:
    with FakeOllama() as server:
        yield server


@pytest.fixture
def http() -> Iterator[httpx2.Client]:
    with httpx2.Client(timeout=5.0) as client:
        yield client


def chat_body(model: str = "llama3.1:8b", **kw: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "hello there"}], **kw}


def test_starts_fast_and_serves_the_fixture_routes(http: httpx2.Client) -> None:
    started = time.perf_counter()
    with FakeOllama() as fake:
        assert time.perf_counter() - started < 5.0, "started at once (a margin for a loaded machine)"
        assert http.get(fake.url + "/").text == "Ollama is running"
        assert http.get(fake.url + "/api/version").json() == {"version": "0.33.0-rc2"}
        assert [m["name"] for m in http.get(fake.url + "/api/tags").json()["models"]][1] == "qwen3:4b"
        assert http.get(fake.url + "/api/ps").json() == {"models": []}
        missing = http.get(fake.url + "/api/nope")
        assert (missing.status_code, missing.text) == (404, "404 page not found")
        assert missing.headers["content-type"].startswith("text/plain")
        assert http.get(fake.url + CHAT).status_code == 405


def test_stream_is_ndjson_with_a_final_metrics_chunk(fake: FakeOllama, http: httpx2.Client) -> None:
    with http.stream("POST", fake.url + CHAT, json=chat_body(logprobs=True)) as response:
        assert response.headers["content-type"] == "application/x-ndjson"
        lines = [json.loads(line) for line in response.iter_lines() if line]
    *pieces, last = lines
    assert "".join(p["message"]["content"] for p in pieces) == DEFAULT_SENTENCE
    assert all(p["done"] is False and p["logprobs"][0]["token"] == p["message"]["content"] for p in pieces)
    assert last["done"] is True and last["done_reason"] == "stop" and last["message"]["content"] == ""
    assert last["eval_count"] == len(pieces) and last["prompt_eval_count"] > 0
    assert all(isinstance(last[k], int) and last[k] > 0 for k in ("total_duration", "eval_duration"))


def test_non_stream_limits_thinking_and_load(fake: FakeOllama, http: httpx2.Client) -> None:
    short = http.post(fake.url + CHAT, json=chat_body(stream=False, options={"num_predict": 3})).json()
    assert short["done_reason"] == "length" and short["eval_count"] == 3
    assert short["message"]["content"] == "The sky appears"

    thought = http.post(fake.url + CHAT, json=chat_body("qwen3:4b", stream=False, think=True)).json()
    assert thought["message"]["thinking"] and thought["message"]["content"] == DEFAULT_SENTENCE
    refused = http.post(fake.url + CHAT, json=chat_body(stream=False, think=True))
    assert refused.status_code == 400 and refused.json() == {"error": '"llama3.1:8b" does not support thinking'}

    load = http.post(fake.url + CHAT, json={"model": "qwen3:4b", "messages": []}).json()
    assert load["done_reason"] == "load" and "qwen3:4b" in fake.loaded
    unload = http.post(fake.url + CHAT, json={"model": "qwen3:4b", "keep_alive": 0}).json()
    assert unload["done_reason"] == "unload" and "qwen3:4b" not in fake.loaded


def test_request_errors_use_ollama_messages(fake: FakeOllama, http: httpx2.Client) -> None:
    unknown = http.post(fake.url + CHAT, json=chat_body("llama9:70b"))
    assert (unknown.status_code, unknown.json()["error"]) == (404, "model 'llama9:70b' not found")
    assert http.post(fake.url + CHAT, content=b"").json() == {"error": "missing request body"}
    assert http.post(fake.url + CHAT, json={"messages": []}).json() == {"error": "model is required"}
    embed = http.post(fake.url + "/api/embed", json={"model": "mxbai", "input": "x"})
    assert embed.json()["error"] == 'model "mxbai" not found, try pulling it first'


@pytest.mark.parametrize(
    ("mode", "status", "message"),
    [
        ("busy", 503, "server busy, please try again.  maximum pending requests exceeded"),
        ("internal", 500, "llama runner process has terminated: exit status 2"),
        ("not_found", 404, "model 'llama3.1:8b' not found"),
    ],
)
def test_failure_modes(fake: FakeOllama, http: httpx2.Client, mode: Any, status: int, message: str) -> None:
    fake.fail = mode
    response = http.post(fake.url + CHAT, json=chat_body())
    assert (response.status_code, response.json()) == (status, {"error": message})
    fake.fail = None
    assert http.post(fake.url + CHAT, json=chat_body(stream=False)).status_code == 200


def test_midstream_failure_sends_chunks_then_an_error_line(fake: FakeOllama, http: httpx2.Client) -> None:
    fake.fail = "midstream"
    with http.stream("POST", fake.url + CHAT, json=chat_body()) as response:
        assert response.status_code == 200
        lines = [json.loads(line) for line in response.iter_lines() if line]
    assert [line.get("error") for line in lines] == [None, None, None, lines[-1]["error"]]
    assert "unexpected EOF" in lines[-1]["error"]
    with pytest.raises(ValueError, match="fail must be"):
        fake.fail = "broken"  # type: ignore[assignment]


async def test_max_in_flight_counts_concurrent_chats() -> None:
    with FakeOllama(delay_s=0.2) as fake:
        async with httpx2.AsyncClient(timeout=5.0) as client:
            await asyncio.gather(*(client.post(fake.url + CHAT, json=chat_body()) for _ in range(4)))
        assert fake.max_in_flight == 4 and fake.in_flight == 0  # served in parallel, not one after another
        assert fake.count(CHAT) == 4 and fake.request_count == 4
        fake.reset_stats()
        assert (fake.max_in_flight, fake.count(CHAT), fake.requests) == (0, 0, ())


def test_records_requests_and_restarts_on_the_same_port(http: httpx2.Client) -> None:
    fake = FakeOllama(models=[("tiny:1b", "1.2B", "llama"), {"name": "emb:v1", "family": "bert"}])
    url = fake.start()
    http.post(url + CHAT, json=chat_body("tiny:1b"), headers={"Authorization": "Bearer k"})
    assert fake.last_body()["model"] == "tiny:1b"
    assert fake.requests[-1].headers["authorization"] == "Bearer k"
    tags = http.get(url + "/api/tags").json()["models"]
    assert [m["capabilities"] for m in tags] == [["completion", "tools"], ["embedding"]]
    fake.stop()
    with pytest.raises(httpx2.ConnectError):
        http.get(url + "/api/version")
    assert fake.start() == url
    assert http.get(url + "/api/version").status_code == 200
    fake.stop()


def test_stop_is_quick_while_a_reply_is_delayed() -> None:
    fake = FakeOllama(delay_s=30)
    url = fake.start()
    errors: list[BaseException] = []

    def call() -> None:
        try:
            httpx2.post(url + CHAT, json=chat_body(), timeout=10)
        except httpx2.HTTPError as exc:
            errors.append(exc)

    caller = threading.Thread(target=call)
    caller.start()
    while fake.in_flight == 0:
        time.sleep(0.01)
    started = time.perf_counter()
    fake.stop()
    caller.join(timeout=5)
    assert time.perf_counter() - started < 10.0, "not the 30 s the reply was delayed"
    assert not caller.is_alive() and len(errors) == 1


def test_embeddings_are_normalised_and_similar_for_shared_words(fake: FakeOllama, http: httpx2.Client) -> None:
    texts = ["the sky is blue", "blue sky today", "parquet file schema"]
    body = http.post(fake.url + "/api/embed", json={"model": "nomic-embed-text:latest", "input": texts}).json()
    a, b, c = body["embeddings"]
    assert len(a) == 768 and abs(sum(x * x for x in a) - 1) < 1e-9

    def dot(x: list[float], y: list[float]) -> float:
        return sum(p * q for p, q in zip(x, y, strict=True))

    assert dot(a, b) > dot(a, c)
    assert hashed_embedding("the sky is blue", 768) == a
    empty = http.post(fake.url + "/api/embed", json={"model": "nomic-embed-text:latest", "input": []}).json()
    assert empty == {"model": "nomic-embed-text:latest", "embeddings": []}


class Finding(BaseModel):
    rule: str
    line: int = Field(ge=1)
    severity: str = Field(pattern="^(low|high)$", json_schema_extra={"enum": ["low", "high"]})


class Review(BaseModel):
    findings: list[Finding]
    confidence: float = Field(ge=0, le=1)
    summary: str | None


def test_default_answer_satisfies_a_pydantic_schema(fake: FakeOllama, http: httpx2.Client) -> None:
    schema = Review.model_json_schema()
    assert Review.model_validate(example_for_schema(schema))
    reply = http.post(fake.url + CHAT, json=chat_body(stream=False, format=schema)).json()
    review = Review.model_validate_json(reply["message"]["content"])
    assert review.confidence == 0.5 and review.findings[0].line >= 1
