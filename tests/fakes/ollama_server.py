"""FakeOllama: a real HTTP server on 127.0.0.1 that speaks Ollama's native API.

Its replies follow the wire shapes in ``tests/fixtures/ollama`` (Ollama v0.33): ndjson streams
with a final ``done`` chunk carrying metrics in nanoseconds, ``{"error": ...}`` bodies with the real
status codes and messages, gin's text/plain 404 and 405 pages. It is meant for tests of anything
that talks to one or more Ollama hosts over real sockets (backend, pool, router)::

    with FakeOllama(delay_s=0.05) as host:          # or: url = host.start(); ...; host.stop()
        ... OllamaBackend(host.url, client) ...
        host.fail = "busy"                          # switch failure mode at runtime
        assert host.max_in_flight <= 2

``stop()`` also closes kept-alive connections, so a stopped host refuses and drops like a dead
one; ``start()`` after ``stop()`` comes back on the same port (for circuit-breaker tests).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import socket
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self
from urllib.parse import urlsplit

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "ollama"

FailMode = Literal["busy", "internal", "midstream", "not_found"]
FAIL_MODES: frozenset[str] = frozenset({"busy", "internal", "midstream", "not_found"})
ModelSpec = tuple[str, str, str] | Mapping[str, Any]
Answer = Callable[[dict[str, Any]], str]

DEFAULT_SENTENCE = json.loads((FIXTURES / "chat.json").read_text())["message"]["content"]
THINKING_TEXT = "The user asks a question. I will answer it briefly."
_BUSY = json.loads((FIXTURES / "error_busy.json").read_text())["error"]
_INTERNAL = json.loads((FIXTURES / "error_internal.json").read_text())["error"]
_MIDSTREAM = json.loads((FIXTURES / "error_midstream.ndjson").read_text().splitlines()[-1])["error"]
_MIDSTREAM_CHUNKS = 3
_ROUTES: dict[str, frozenset[str]] = {
    "/": frozenset({"GET", "HEAD"}),
    "/api/version": frozenset({"GET", "HEAD"}),
    "/api/tags": frozenset({"GET", "HEAD"}),
    "/api/ps": frozenset({"GET"}),
    "/api/chat": frozenset({"POST"}),
    "/api/embed": frozenset({"POST"}),
}
_JSON = "application/json; charset=utf-8"


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    body: Any  # parsed JSON, the raw text if it was not JSON, None when empty
    headers: Mapping[str, str]


def default_answer(request: dict[str, Any]) -> str:
    """A fixed sentence; with a ``format``, a JSON string that satisfies simple schemas."""
    fmt = request.get("format")
    if isinstance(fmt, dict):
        return json.dumps(example_for_schema(fmt))
    if fmt == "json":
        return json.dumps({"answer": DEFAULT_SENTENCE})
    return str(DEFAULT_SENTENCE)


def example_for_schema(schema: Mapping[str, Any], root: Mapping[str, Any] | None = None) -> Any:
    """A value valid for common JSON schemas (objects, arrays, scalars, enums, local ``$ref``)."""
    root = schema if root is None else root
    if "$ref" in schema:
        target: Any = root
        for part in str(schema["$ref"]).removeprefix("#/").split("/"):
            target = target[part]
        return example_for_schema(target, root)
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return schema["enum"][0]
    for key in ("anyOf", "oneOf", "allOf"):
        if schema.get(key):
            return example_for_schema(schema[key][0], root)
    kind = schema.get("type", "object")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object":
        props = schema.get("properties", {})
        return {name: example_for_schema(sub, root) for name, sub in props.items()}
    if kind == "array":
        items = schema.get("items", {"type": "string"})
        return [example_for_schema(items, root) for _ in range(max(1, int(schema.get("minItems", 1))))]
    if kind in ("integer", "number"):
        low = schema.get("minimum", schema.get("exclusiveMinimum"))
        high = schema.get("maximum", schema.get("exclusiveMaximum"))
        if low is not None and high is not None:
            value = (low + high) / 2
        else:
            value = low + 1 if low is not None else (high - 1 if high is not None else 1)
        return math.floor(value) if kind == "integer" else float(value)
    if kind == "boolean":
        return True
    if kind == "null":
        return None
    text = "example".ljust(int(schema.get("minLength", 0)), "x")
    return text[: schema["maxLength"]] if "maxLength" in schema else text


def _parameter_billions(text: str) -> float:
    m = re.match(r"([0-9.]+)\s*([MB])", text.upper())
    return float(m.group(1)) * (1e-3 if m.group(2) == "M" else 1.0) if m else 1.0


def tag_entry(spec: ModelSpec) -> dict[str, Any]:
    """An ``/api/tags`` entry from ``(name, parameter_size, family)`` or a (partial) dict."""
    if isinstance(spec, Mapping) and "details" in spec:
        entry: dict[str, Any] = json.loads(json.dumps(spec))  # a deep copy the fake may change
        return entry
    if isinstance(spec, Mapping):
        extra = dict(spec)
        name, size, family = extra.pop("name"), extra.pop("parameter_size", "1B"), extra.pop("family", "")
    else:
        name, size, family = spec
        extra = {}
    embedding = "embed" in name or "bert" in family
    return {
        "name": name,
        "model": name,
        "modified_at": "2026-08-20T16:42:11.583920114-07:00",
        "size": int(_parameter_billions(size) * 0.6e9),
        "digest": hashlib.sha256(name.encode()).hexdigest(),
        "details": {
            "parent_model": "",
            "format": "gguf",
            "family": family,
            "families": [family],
            "parameter_size": size,
            "quantization_level": extra.pop("quantization", "F16" if embedding else "Q4_K_M"),
            "context_length": extra.pop("context_length", 2048 if embedding else 32768),
            "embedding_length": extra.pop("embedding_length", 768 if embedding else 4096),
        },
        "capabilities": list(extra.pop("capabilities", ["embedding"] if embedding else ["completion", "tools"])),
    }


def pieces_of(text: str) -> list[str]:
    """Split text into token-like pieces (leading space kept) whose concatenation is the text."""
    return re.findall(r"\s*\S+|\s+", text)


def hashed_embedding(text: str, dims: int) -> list[float]:
    """A deterministic L2-normalised bag-of-words vector: texts sharing words are similar."""
    vector = [0.0] * dims
    for word in re.findall(r"[a-z0-9]+", text.lower()) or [""]:
        digest = hashlib.sha256(word.encode()).digest()
        index = int.from_bytes(digest[:4], "big") % dims
        vector[index] += 1.0 if digest[4] & 1 else -1.0
    norm = math.sqrt(sum(v * v for v in vector)) or 1.0
    return [v / norm for v in vector]


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients hang up mid-stream on purpose (cancellation tests); that is not a test failure.
        return None


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive and chunked streams, like Ollama (Go net/http)
    disable_nagle_algorithm = True  # headers and body are separate writes: avoid 40 ms ACK stalls
    fake: FakeOllama

    def log_message(self, format: str, *args: Any) -> None:
        return None

    def setup(self) -> None:
        super().setup()
        self.fake._track(self.connection, add=True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.fake._track(self.connection, add=False)

    def do_GET(self) -> None:
        self.fake._handle(self, "GET")

    def do_HEAD(self) -> None:
        self.fake._handle(self, "HEAD")

    def do_POST(self) -> None:
        self.fake._handle(self, "POST")

    def do_DELETE(self) -> None:
        self.fake._handle(self, "DELETE")

    def read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            parts = []
            while size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16):
                parts.append(self.rfile.read(size))
                self.rfile.readline()  # the CRLF after each chunk
            self.rfile.readline()  # the blank line after the last chunk (no trailers expected)
            return b"".join(parts)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    # responses ---------------------------------------------------------------------------

    def send_body(self, status: int, body: bytes, content_type: str, *, head: bool = False) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def send_json(self, status: int, data: Any, *, head: bool = False) -> None:
        self.send_body(status, json.dumps(data).encode(), _JSON, head=head)

    def send_error_json(self, status: int, message: str) -> None:
        self.send_json(status, {"error": message})

    def start_stream(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/x-ndjson")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

    def stream_line(self, data: Any) -> None:
        line = json.dumps(data).encode() + b"\n"
        self.wfile.write(f"{len(line):x}\r\n".encode() + line + b"\r\n")
        self.wfile.flush()

    def end_stream(self) -> None:
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()


class FakeOllama:
    """A loopback Ollama host; every knob may be changed while it runs.

    ``models``: ``(name, parameter_size, family)`` tuples or dicts (full ``/api/tags`` entries or
    ``{"name", "parameter_size", "family", "capabilities", ...}``); default: ``tags.json``.
    ``answer(request_body) -> content``; default :func:`default_answer`.
    ``delay_s``: sleep before each successful chat reply (before the first byte of a stream).
    ``fail``: None, "busy" (503), "internal" (500), "midstream" (3 chunks, then an error line;
    500 when not streaming) or "not_found" (404); applies to ``/api/chat`` and ``/api/embed``.
    ``loaded``: model names ``/api/ps`` reports before any request (models used get added).
    """

    def __init__(
        self,
        *,
        models: Sequence[ModelSpec] | None = None,
        answer: Answer | None = None,
        delay_s: float = 0.0,
        fail: FailMode | None = None,
        loaded: Iterable[str] = (),
        version: str = "0.33.0-rc2",
    ) -> None:
        if models is None:
            self.models = json.loads((FIXTURES / "tags.json").read_text())["models"]
        else:
            self.models = [tag_entry(spec) for spec in models]
        self.answer: Answer = answer or default_answer
        self.delay_s = delay_s
        self.fail = fail
        self.version = version
        self.loaded: set[str] = set(loaded)
        self.in_flight = 0
        self.max_in_flight = 0
        self.request_count = 0
        self._recent: deque[RecordedRequest] = deque(maxlen=200)
        self._by_path: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._connections: set[socket.socket] = set()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._port = 0

    # lifecycle ------------------------------------------------------------------------------

    @property
    def fail(self) -> FailMode | None:
        return self._fail

    @fail.setter
    def fail(self, mode: FailMode | None) -> None:
        if mode is not None and mode not in FAIL_MODES:
            raise ValueError(f"fail must be None or one of {sorted(FAIL_MODES)}, not {mode!r}")
        self._fail = mode

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("FakeOllama is not running; call start() first")
        return f"http://127.0.0.1:{self._port}"

    def start(self) -> str:
        """Serve in a daemon thread; after a stop() the same port is reused. Returns the URL."""
        if self._server is not None:
            return self.url
        handler = type("FakeOllamaHandler", (_Handler,), {"fake": self})
        self._server = _Server(("127.0.0.1", self._port), handler)
        self._port = self._server.server_address[1]
        self._stopping.clear()
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
        self._thread.start()
        return self.url

    def stop(self) -> None:
        """Stop listening and cut open connections, as a host that died would."""
        server, self._server = self._server, None
        if server is None:
            return
        self._stopping.set()
        server.shutdown()
        server.server_close()
        with self._lock:
            connections = list(self._connections)
        for conn in connections:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # already closed by the client
        if self._thread is not None:
            self._thread.join(timeout=2)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # what was asked ---------------------------------------------------------------------------

    @property
    def requests(self) -> tuple[RecordedRequest, ...]:
        """The last 200 requests, oldest first."""
        with self._lock:
            return tuple(self._recent)

    def count(self, path: str) -> int:
        """How many requests ``path`` received since start (or the last reset)."""
        with self._lock:
            return self._by_path[path]

    def last_body(self, path: str = "/api/chat") -> Any:
        for recorded in reversed(self.requests):
            if recorded.path == path:
                return recorded.body
        raise LookupError(f"no request to {path} was recorded")

    def reset_stats(self) -> None:
        with self._lock:
            self._recent.clear()
            self._by_path.clear()
            self.request_count = 0
            self.max_in_flight = self.in_flight

    # serving -------------------------------------------------------------------------------

    def _track(self, conn: socket.socket, *, add: bool) -> None:
        with self._lock:
            (self._connections.add if add else self._connections.discard)(conn)

    def _handle(self, handler: _Handler, method: str) -> None:
        path = urlsplit(handler.path).path
        raw = handler.read_body()
        body: Any = None
        bad_json: str | None = None
        if raw:
            try:
                body = json.loads(raw)
            except ValueError as exc:
                body, bad_json = raw.decode("utf-8", "replace"), f"invalid character: {exc}"
        with self._lock:
            self.request_count += 1
            self._by_path[path] += 1
            headers = {k.lower(): v for k, v in handler.headers.items()}
            self._recent.append(RecordedRequest(method, path, body, headers))
        if path not in _ROUTES:
            handler.send_body(404, b"404 page not found", "text/plain", head=method == "HEAD")
            return
        if method not in _ROUTES[path]:
            handler.send_body(405, b"405 method not allowed", "text/plain", head=method == "HEAD")
            return
        head = method == "HEAD"
        if path == "/":
            handler.send_body(200, b"Ollama is running", "text/plain; charset=utf-8", head=head)
        elif path == "/api/version":
            handler.send_json(200, {"version": self.version}, head=head)
        elif path == "/api/tags":
            handler.send_json(200, {"models": self.models}, head=head)
        elif path == "/api/ps":
            handler.send_json(200, {"models": self._running()})
        elif not raw:
            handler.send_error_json(400, "missing request body")
        elif bad_json is not None or not isinstance(body, dict):
            handler.send_error_json(400, bad_json or "invalid request body")
        elif not body.get("model"):
            handler.send_error_json(400, "model is required")
        elif path == "/api/embed":
            self._embed(handler, body)
        else:
            with self._lock:
                self.in_flight += 1
                self.max_in_flight = max(self.max_in_flight, self.in_flight)
            try:
                self._chat(handler, body)
            finally:
                with self._lock:
                    self.in_flight -= 1

    def _model(self, name: str) -> dict[str, Any] | None:
        return next((m for m in self.models if name in (m["name"], m["model"])), None)

    def _running(self) -> list[dict[str, Any]]:
        expires = (datetime.now(UTC) + timedelta(minutes=5)).isoformat()
        running = []
        for model in self.models:
            if model["name"] in self.loaded:
                details = {k: v for k, v in model["details"].items() if not k.endswith("_length")}
                ctx = min(int(model["details"].get("context_length") or 4096), 4096)
                entry = {k: model[k] for k in ("name", "model", "size", "digest")}
                running.append({**entry, "details": details, "expires_at": expires})
                running[-1].update(size_vram=model["size"], context_length=ctx)
        return running

    def _scheduled_failure(self, handler: _Handler, name: str, *, embed: bool) -> bool:
        """Answer with the configured scheduler-level failure, if any; True when one was sent."""
        mode = self.fail
        model = self._model(name)
        if mode == "busy":
            handler.send_error_json(503, _BUSY)
        elif mode == "internal" or (mode == "midstream" and embed):
            handler.send_error_json(500, _INTERNAL)
        elif mode == "not_found" or model is None:
            message = f'model "{name}" not found, try pulling it first' if embed else f"model '{name}' not found"
            handler.send_error_json(404, message)
        else:
            return False
        return True

    def _chat(self, handler: _Handler, body: dict[str, Any]) -> None:
        started = time.monotonic_ns()
        name = str(body["model"])
        if self._scheduled_failure(handler, name, embed=False):
            return
        model = self._model(name) or {}
        capabilities = model.get("capabilities") or ["completion"]
        think = body.get("think") not in (None, False)
        if "completion" not in capabilities:
            handler.send_error_json(400, f'"{name}" does not support chat')
            return
        if think and "thinking" not in capabilities:
            handler.send_error_json(400, f'"{name}" does not support thinking')
            return
        if self._stopping.wait(self.delay_s):
            handler.close_connection = True  # stopped while "generating": a dead host sends nothing
            return
        stream = body.get("stream", True) is not False
        messages = body.get("messages") or []
        keep_alive = body.get("keep_alive")
        if not messages:  # Ollama loads (or with keep_alive 0 unloads) the model and says so
            unload = keep_alive in (0, "0", "0s")
            (self.loaded.discard if unload else self.loaded.add)(name)
            message = {"role": "assistant", "content": ""}
            status: dict[str, Any] = {"model": name, "created_at": _now(), "message": message, "done": True}
            status["done_reason"] = "unload" if unload else "load"
            handler.send_json(200, status)  # a plain JSON object even when streaming was asked
            return
        self.loaded.add(name)
        text = self.answer(body)
        thoughts = pieces_of(THINKING_TEXT) if think else []
        pieces = pieces_of(text)
        limit = int((body.get("options") or {}).get("num_predict") or -1)
        reason = "stop"
        if 0 <= limit < len(pieces):
            pieces, reason = pieces[:limit], "length"
        prompt_tokens = sum(len(str(m.get("content", "")).split()) + 4 for m in messages)
        want_logprobs = bool(body.get("logprobs"))

        def chunk(content: str, thinking: str = "") -> dict[str, Any]:
            message: dict[str, Any] = {"role": "assistant", "content": content}
            if thinking:
                message["thinking"] = thinking
            out: dict[str, Any] = {"model": name, "created_at": _now(), "message": message, "done": False}
            if want_logprobs and content:
                out["logprobs"] = [{"token": content, "logprob": -0.05, "bytes": list(content.encode())}]
            return out

        def final() -> dict[str, Any]:
            elapsed = max(time.monotonic_ns() - started, 1000)
            out = chunk("")
            out.update(done=True, done_reason=reason, total_duration=elapsed, load_duration=elapsed // 10)
            out.update(prompt_eval_count=prompt_tokens, prompt_eval_duration=elapsed // 5)
            out.update(eval_count=len(pieces) + len(thoughts), eval_duration=elapsed // 2)
            return out

        if not stream:
            if self.fail == "midstream":
                handler.send_error_json(500, _MIDSTREAM)
                return
            reply = final()
            reply["message"]["content"] = "".join(pieces)
            if thoughts:
                reply["message"]["thinking"] = "".join(thoughts)
            if want_logprobs:
                reply["logprobs"] = [entry for p in pieces for entry in chunk(p).get("logprobs", [])]
            handler.send_json(200, reply)
            return
        handler.start_stream()
        try:
            for thought in thoughts:
                handler.stream_line(chunk("", thought))
            for index, piece in enumerate(pieces):
                if self.fail == "midstream" and index == _MIDSTREAM_CHUNKS:
                    break
                handler.stream_line(chunk(piece))
            if self.fail == "midstream":
                handler.stream_line({"error": _MIDSTREAM})
            else:
                handler.stream_line(final())
            handler.end_stream()
        except (BrokenPipeError, ConnectionResetError):
            handler.close_connection = True  # the client went away; nothing left to send

    def _embed(self, handler: _Handler, body: dict[str, Any]) -> None:
        name = str(body["model"])
        if self._scheduled_failure(handler, name, embed=True):
            return
        raw_input = body.get("input", "")
        inputs = [raw_input] if isinstance(raw_input, str) else raw_input
        if not isinstance(inputs, list) or not all(isinstance(i, str) for i in inputs):
            handler.send_error_json(400, "invalid input type")
            return
        if not inputs or inputs == [""]:
            handler.send_json(200, {"model": name, "embeddings": []})
            return
        self.loaded.add(name)
        model = self._model(name) or {}
        dims = int(model.get("details", {}).get("embedding_length") or 768)
        if body.get("dimensions"):
            dims = min(dims, int(body["dimensions"]))
        vectors = [hashed_embedding(text, dims) for text in inputs]
        tokens = sum(len(text.split()) + 2 for text in inputs)
        reply = {"model": name, "embeddings": vectors, "total_duration": 5_000_000}
        reply.update(load_duration=1_000_000, prompt_eval_count=tokens)
        handler.send_json(200, reply)


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")
