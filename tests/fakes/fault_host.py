"""FaultHost: a scriptable model host on loopback, over real HTTP, for fault tests and bench/faults.py.

One host speaks one API, with its model listing and health endpoints, non-streamed and streamed
chats:

- ``"ollama"``: ``/api/version``, ``/api/tags``, ``/api/ps``, ``/api/chat`` (ndjson streams);
- ``"openai"``: ``/health``, ``/v1/models``, ``/v1/chat/completions`` (server-sent events);
- ``"anthropic"``: ``/v1/models``, ``/v1/messages`` (server-sent events), as the anthropic SDK reads it.

Each host is scriptable, and every knob may change while it runs:

- ``delay_s``: service time of a chat, spent while holding one of the host's slots;
- ``slots``: the host's own concurrency queue (at most ``slots`` chats are served at once, the rest
  wait in order, as Ollama's ``OLLAMA_NUM_PARALLEL`` does); None = no limit;
- ``usage``: the token counts a reply reports (a pair, or a function of the request body; default:
  about four characters a token of the request's messages, and of the answer);
- ``fault``: a :class:`Fault` applied to a fraction of chat requests (evenly spread: with 1/3, every
  third), optionally to the first ``count`` of them only. Modes:

  ``status`` (an error status in the API's own shape, with ``Retry-After`` when given), ``malformed``
  (200, a body that is not JSON), ``empty`` (200, no body), ``truncated`` (200, the connection closes
  halfway through the declared body), ``midstream`` (a stream sends some pieces, then the API's
  in-stream error; a non-streamed chat is truncated), ``cut`` (the connection closes without any
  reply), ``hang`` (the request is read and never answered, until the host stops) and ``silent``
  (as ``hang``, for every request: health checks and model listings too; ``fraction`` and
  ``count`` do not apply).

It runs an asyncio server in its own thread: many connections, little work per request, so a
capacity test measures the client, not the fake::

    with FaultHost("openai", delay_s=0.05, slots=2, fault=Fault("malformed", fraction=1 / 3)) as host:
        ... OpenAIBackend(host.url, client) ...
        host.fault = Fault("hang")               # from now on
        assert host.max_in_flight <= 2
"""

from __future__ import annotations

import asyncio
import json
import math
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal, Self
from urllib.parse import urlsplit

from fakes.ollama_server import DEFAULT_SENTENCE, example_for_schema, pieces_of, tag_entry

Api = Literal["ollama", "openai", "anthropic"]
FaultMode = Literal["status", "malformed", "empty", "truncated", "midstream", "cut", "hang", "silent"]
FAULT_MODES: tuple[FaultMode, ...] = (
    "status",
    "malformed",
    "empty",
    "truncated",
    "midstream",
    "cut",
    "hang",
    "silent",
)
Answer = Callable[[dict[str, Any]], str]

CHAT_PATHS: dict[Api, str] = {"ollama": "/api/chat", "openai": "/v1/chat/completions", "anthropic": "/v1/messages"}
DEFAULT_MODELS: dict[Api, tuple[tuple[str, float], ...]] = {
    "ollama": (("qwen3:8b", 8.2),),
    "openai": (("qwen3-8b-instruct", 8.2),),
    "anthropic": (("claude-sonnet-5-5", 0.0),),
}
_MAX_HEAD = 64 * 1024
_STREAM_PIECES_BEFORE_ERROR = 3


@dataclass(frozen=True)
class Fault:
    """What goes wrong, how often (``fraction`` of chat requests, evenly spread) and for how long
    (``count``: only the first ``count`` faulty requests; None = for ever)."""

    mode: FaultMode
    fraction: float = 1.0
    status: int = 503
    retry_after: str | None = None
    count: int | None = None

    def __post_init__(self) -> None:
        if self.mode not in FAULT_MODES:
            raise ValueError(f"mode must be one of {FAULT_MODES}, not {self.mode!r}")
        if not 0 <= self.fraction <= 1:
            raise ValueError("fraction must be between 0 and 1")


@dataclass
class _Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        try:
            return json.loads(self.body) if self.body else None
        except ValueError:
            return None


class FaultHost:
    """A loopback host speaking ``api``; see the module docstring."""

    def __init__(
        self,
        api: Api = "openai",
        *,
        models: Sequence[tuple[str, float]] | None = None,
        delay_s: float = 0.0,
        slots: int | None = None,
        fault: Fault | None = None,
        answer: Answer | None = None,
        usage: tuple[int, int] | Callable[[dict[str, Any]], tuple[int, int]] | None = None,
    ) -> None:
        if api not in CHAT_PATHS:
            raise ValueError(f"api must be one of {sorted(CHAT_PATHS)}")
        self.api: Api = api
        self.models = list(models if models is not None else DEFAULT_MODELS[api])
        self.delay_s = delay_s
        self.slots = slots
        self._fault = fault
        self.answer: Answer = answer or _default_answer
        self.usage = usage
        # what happened (read from the test's thread; ints are updated atomically enough)
        self.chats = 0
        self.served = 0
        self.faulted: Counter[str] = Counter()
        self.by_path: Counter[str] = Counter()
        self.in_flight = 0
        self.max_in_flight = 0
        self.bodies: list[Any] = []
        self._faults_sent = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._queue: asyncio.Semaphore | None = None
        self._queue_size: int | None = None
        self._stopping: asyncio.Event | None = None
        self._port = 0

    @property
    def fault(self) -> Fault | None:
        return self._fault

    @fault.setter
    def fault(self, fault: Fault | None) -> None:
        """A new fault (or None); its ``count`` starts from zero."""
        self._fault = fault
        self._faults_sent = 0

    # lifecycle ----------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("FaultHost is not running; call start() first")
        return f"http://127.0.0.1:{self._port}"

    def start(self) -> str:
        """Serve on an ephemeral loopback port (the same one again after a stop()); returns the URL."""
        if self._server is not None:
            return self.url
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._thread = threading.Thread(target=loop.run_forever, name="fault-host", daemon=True)
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), loop).result(timeout=10)
        return self.url

    async def _start(self) -> None:
        self._stopping = asyncio.Event()
        self._server = await asyncio.start_server(self._connection, "127.0.0.1", self._port, limit=_MAX_HEAD)
        self._port = self._server.sockets[0].getsockname()[1]

    def stop(self) -> None:
        """Stop listening and cut every open connection (hanging requests included)."""
        loop, self._loop = self._loop, None
        if loop is None:
            return
        asyncio.run_coroutine_threadsafe(self._stop(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(timeout=10)
        loop.close()
        self._server = None

    async def _stop(self) -> None:
        assert self._stopping is not None and self._server is not None
        self._stopping.set()  # hanging requests end, their connections close
        self._server.close()
        for writer in list(self._writers):
            writer.close()
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        _, late = await asyncio.wait(tasks, timeout=5) if tasks else (set(), set())
        for task in late:
            task.cancel()
        await self._server.wait_closed()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # serving ------------------------------------------------------------------------------------

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            while True:
                request = await _read_request(reader)
                if request is None:
                    break
                self.by_path[request.path] += 1
                if not await self._respond(request, writer):
                    break
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()

    async def _respond(self, request: _Request, writer: asyncio.StreamWriter) -> bool:
        """Answer one request; False when the connection must close."""
        if self._fault is not None and self._fault.mode == "silent":
            assert self._stopping is not None
            await self._stopping.wait()
            return False
        if request.path == CHAT_PATHS[self.api] and request.method == "POST":
            return await self._chat(request, writer)
        data = self._meta(request.method, request.path)
        if data is None:
            await _send(writer, 404, b"404 page not found", "text/plain")
        else:
            await _send(writer, 200, json.dumps(data).encode())
        return True

    def _meta(self, method: str, path: str) -> Any:
        """The listing and health replies, or None for an unknown path."""
        if self.api == "ollama":
            if path == "/api/version":
                return {"version": "0.33.0"}
            if path in ("/api/tags", "/api/ps"):
                return {"models": [tag_entry((name, f"{size}B", name.split(":")[0])) for name, size in self.models]}
        elif self.api == "openai":
            if path == "/health":
                return {"status": "ok"}
            if path == "/v1/models":
                return {
                    "object": "list",
                    "data": [{"id": n, "object": "model", "meta": {"n_params": int(s * 1e9)}} for n, s in self.models],
                }
        elif path.startswith("/v1/models"):
            data = [
                {"id": n, "type": "model", "display_name": n, "created_at": "2026-01-01T00:00:00Z"}
                for n, _ in self.models
            ]
            return {"data": data, "has_more": False, "first_id": data[0]["id"], "last_id": data[-1]["id"]}
        return None

    def _next_fault(self) -> Fault | None:
        """The fault for this chat request, if it is one of the faulty ones."""
        fault = self.fault
        self.chats += 1
        if fault is None or (fault.count is not None and self._faults_sent >= fault.count):
            return None
        n = self.chats
        if math.floor(n * fault.fraction + 1e-9) <= math.floor((n - 1) * fault.fraction + 1e-9):
            return None
        self._faults_sent += 1
        self.faulted[fault.mode] += 1
        return fault

    async def _chat(self, request: _Request, writer: asyncio.StreamWriter) -> bool:
        body = request.json()
        if not isinstance(body, dict):
            await _send(writer, 400, json.dumps({"error": "invalid request body"}).encode())
            return True
        self.bodies.append(body)
        fault = self._next_fault()
        mode = fault.mode if fault else None
        if mode == "cut":
            return False
        if mode == "hang":
            assert self._stopping is not None
            await self._stopping.wait()
            return False
        if fault is not None and mode == "status":
            extra = {"Retry-After": fault.retry_after} if fault.retry_after is not None else {}
            await _send(writer, fault.status, json.dumps(self._error_body(fault.status)).encode(), extra=extra)
            return True
        async with self._slot():
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            try:
                await asyncio.sleep(self.delay_s)
                if body.get("stream"):
                    return await self._stream(body, writer, mode)
                return await self._whole(body, writer, mode)
            finally:
                self.in_flight -= 1

    def _slot(self) -> asyncio.Semaphore | _NoLimit:
        if self.slots is None:
            return _NoLimit()
        if self._queue is None or self._queue_size != self.slots:
            self._queue, self._queue_size = asyncio.Semaphore(self.slots), self.slots
        return self._queue

    async def _whole(self, body: dict[str, Any], writer: asyncio.StreamWriter, mode: FaultMode | None) -> bool:
        reply = json.dumps(self._completion(body)).encode()
        if mode == "malformed":
            await _send(writer, 200, reply[: len(reply) // 2] + b"<!-- proxy error -->")
        elif mode == "empty":
            await _send(writer, 200, b"")
        elif mode in ("truncated", "midstream"):
            head = _head(200, "application/json", len(reply), {})
            writer.write(head + reply[: len(reply) // 2])
            await writer.drain()
            return False
        else:
            self.served += 1  # counted before it is sent: a client may act on the reply at once
            await _send(writer, 200, reply)
        return True

    async def _stream(self, body: dict[str, Any], writer: asyncio.StreamWriter, mode: FaultMode | None) -> bool:
        if mode == "empty":
            await _send(writer, 200, b"", self._stream_type())
            return True
        writer.write(_head(200, self._stream_type(), None, {}))
        events = self._stream_events(body)
        for index, event in enumerate(events):
            if mode in ("midstream", "truncated") and index == _STREAM_PIECES_BEFORE_ERROR:
                if mode == "midstream":
                    writer.write(_chunk(self._stream_error()))
                    writer.write(b"0\r\n\r\n")
                    await writer.drain()
                    return True
                await writer.drain()
                return False  # cut mid-stream
            if mode == "malformed" and index == _STREAM_PIECES_BEFORE_ERROR:
                writer.write(_chunk(b"data: {not json\n\n" if self.api != "ollama" else b"{not json\n"))
                writer.write(b"0\r\n\r\n")
                await writer.drain()
                return True
            if index == len(events) - 1:
                self.served += 1  # counted before the last piece: a client stops reading at it
            writer.write(_chunk(event))
            await writer.drain()
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        return True

    # the three APIs ---------------------------------------------------------------------------

    def _content(self, body: dict[str, Any]) -> str:
        return self.answer(body)

    def _tokens(self, body: dict[str, Any], content: str) -> tuple[int, int]:
        if callable(self.usage):
            return self.usage(body)
        if self.usage is not None:
            return self.usage
        prompt = json.dumps(body.get("messages", [])) + json.dumps(body.get("system", ""))
        return max(1, len(prompt) // 4), max(1, len(content) // 4)

    def _completion(self, body: dict[str, Any]) -> dict[str, Any]:
        content = self._content(body)
        tokens_in, tokens_out = self._tokens(body, content)
        model = str(body.get("model", ""))
        if self.api == "ollama":
            reply: dict[str, Any] = {
                "model": model,
                "created_at": "2026-01-01T00:00:00Z",
                "message": {"role": "assistant", "content": content},
                "done": True,
                "done_reason": "stop",
                "prompt_eval_count": tokens_in,
                "eval_count": tokens_out,
            }
            if body.get("logprobs"):
                reply["logprobs"] = [{"token": p, "logprob": -0.05} for p in pieces_of(content)]
            return reply
        if self.api == "openai":
            choice: dict[str, Any] = {
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "finish_reason": "stop",
            }
            if body.get("logprobs"):
                choice["logprobs"] = {"content": [{"token": p, "logprob": -0.05} for p in pieces_of(content)]}
            return {
                "id": "chatcmpl-fake",
                "object": "chat.completion",
                "model": model,
                "choices": [choice],
                "usage": {"prompt_tokens": tokens_in, "completion_tokens": tokens_out},
            }
        return {
            "id": f"msg_fake_{self.chats}",
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [{"type": "text", "text": content}],
            "stop_reason": "end_turn",
            "stop_sequence": None,
            "usage": {"input_tokens": tokens_in, "output_tokens": tokens_out},
        }

    def _stream_type(self) -> str:
        return "application/x-ndjson" if self.api == "ollama" else "text/event-stream"

    def _stream_events(self, body: dict[str, Any]) -> list[bytes]:
        content = self._content(body)
        tokens_in, tokens_out = self._tokens(body, content)
        model = str(body.get("model", ""))
        pieces = pieces_of(content) or [""]
        if self.api == "ollama":
            lines = [{"model": model, "message": {"role": "assistant", "content": p}, "done": False} for p in pieces]
            lines.append(
                {
                    "model": model,
                    "message": {"role": "assistant", "content": ""},
                    "done": True,
                    "done_reason": "stop",
                    "prompt_eval_count": tokens_in,
                    "eval_count": tokens_out,
                }
            )
            return [json.dumps(line).encode() + b"\n" for line in lines]
        if self.api == "openai":
            chunks: list[Any] = [
                {"model": model, "choices": [{"index": 0, "delta": {"content": p}, "finish_reason": None}]}
                for p in pieces
            ]
            chunks.append({"model": model, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
            chunks.append(
                {"model": model, "choices": [], "usage": {"prompt_tokens": tokens_in, "completion_tokens": tokens_out}}
            )
            return [f"data: {json.dumps(c)}\n\n".encode() for c in chunks] + [b"data: [DONE]\n\n"]
        message = self._completion(body) | {"content": [], "stop_reason": None}
        message["usage"] = {"input_tokens": tokens_in, "output_tokens": 1}
        events: list[tuple[str, Any]] = [
            ("message_start", {"type": "message_start", "message": message}),
            (
                "content_block_start",
                {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
            ),
        ]
        events += [
            (
                "content_block_delta",
                {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": p}},
            )
            for p in pieces
        ]
        events += [
            ("content_block_stop", {"type": "content_block_stop", "index": 0}),
            (
                "message_delta",
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                    "usage": {"output_tokens": tokens_out},
                },
            ),
            ("message_stop", {"type": "message_stop"}),
        ]
        return [f"event: {name}\ndata: {json.dumps(data)}\n\n".encode() for name, data in events]

    def _stream_error(self) -> bytes:
        if self.api == "ollama":
            return (
                json.dumps({"error": "an error was encountered while running the model: unexpected EOF"}).encode()
                + b"\n"
            )
        if self.api == "openai":
            return f"data: {json.dumps({'error': {'code': 500, 'message': 'model crashed'}})}\n\n".encode()
        data = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
        return f"event: error\ndata: {json.dumps(data)}\n\n".encode()

    def _error_body(self, status: int) -> Any:
        message = {429: "rate limited", 503: "server busy, please try again", 529: "Overloaded"}.get(
            status, "internal error"
        )
        if self.api == "ollama":
            return {"error": message}
        if self.api == "openai":
            return {"error": {"code": status, "message": message, "type": "server_error"}}
        kind = {429: "rate_limit_error", 529: "overloaded_error"}.get(status, "api_error")
        return {"type": "error", "error": {"type": kind, "message": message}}


class _NoLimit:
    async def __aenter__(self) -> None:
        return None

    async def __aexit__(self, *exc: object) -> None:
        return None


def _default_answer(body: dict[str, Any]) -> str:
    """JSON valid for the request's schema (wherever the API carries it), else a fixed sentence."""
    schema = body.get("format")
    if not isinstance(schema, dict):
        fmt = body.get("response_format") or {}
        schema = (fmt.get("json_schema") or {}).get("schema") if isinstance(fmt, dict) else None
    if not isinstance(schema, dict):
        schema = ((body.get("output_config") or {}).get("format") or {}).get("schema")
    if isinstance(schema, dict):
        value = example_for_schema(schema)
        if isinstance(value, dict) and "confidence" in value:
            value["confidence"] = 0.9
        return json.dumps(value)
    return str(DEFAULT_SENTENCE)


async def _read_request(reader: asyncio.StreamReader) -> _Request | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return None
    lines = head.decode("latin-1").split("\r\n")
    method, target, _ = lines[0].split(" ", 2)
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            name, value = line.split(":", 1)
            headers[name.strip().lower()] = value.strip()
    if "chunked" in headers.get("transfer-encoding", "").lower():
        parts = []
        while size := int((await reader.readline()).split(b";")[0].strip() or b"0", 16):
            parts.append(await reader.readexactly(size))
            await reader.readline()
        await reader.readline()
        body = b"".join(parts)
    else:
        length = int(headers.get("content-length") or 0)
        body = await reader.readexactly(length) if length else b""
    return _Request(method.upper(), urlsplit(target).path, headers, body)


def _head(status: int, content_type: str, length: int | None, extra: dict[str, str]) -> bytes:
    reason = {200: "OK", 400: "Bad Request", 404: "Not Found", 429: "Too Many Requests", 500: "Internal Server Error"}
    lines = [f"HTTP/1.1 {status} {reason.get(status, 'Error')}", f"Content-Type: {content_type}"]
    lines.append(f"Content-Length: {length}" if length is not None else "Transfer-Encoding: chunked")
    lines += [f"{k}: {v}" for k, v in extra.items()]
    lines.append(f"Date: {time.strftime('%a, %d %b %Y %H:%M:%S GMT', time.gmtime())}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


async def _send(
    writer: asyncio.StreamWriter,
    status: int,
    body: bytes,
    content_type: str = "application/json",
    *,
    extra: dict[str, str] | None = None,
) -> None:
    writer.write(_head(status, content_type, len(body), extra or {}) + body)
    await writer.drain()
