"""Bringing a project's index up to date: incremental by content hash, embeddings batched and cached.

A file whose size and modification time are unchanged is not read; one whose bytes hash the same
is only touched; a changed file is re-chunked (its chunks and FTS rows replaced in one
transaction); a file gone from the project (deleted, now ignored, now too big) disappears. Then
every chunk whose embedding input has no vector for the embedding model yet is embedded, in
groups, and stored by that input's hash — so after an edit only the chunks that changed go to the
model. Without an embedder (no embedding model is up) the index is lexical only, and the report
says so; the vectors are added by a later sync once a model is there.
"""

from __future__ import annotations

import os
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

import anyio

from caelum_mcp.core.errors import CaelumError
from caelum_mcp.core.types import Frozen

from ..safe_read import read_head
from .chunking import chunk_file
from .sources import DEFAULT_MAX_BYTES, DEFAULT_MAX_FILES, file_digest, list_sources, read_source
from .store import FileState, KnowledgeStore, NewChunk
from .vectors import EMBED_GROUP, PACED_FIRST_GROUP, Embedder, chunk_embedding_input, embedding_input, text_hash

Progress = Callable[[str], Awaitable[None]]
_FILES_PER_STEP = 200


class IndexReport(Frozen):
    """What one sync did, and what the index holds after it."""

    files: int
    chunks: int
    added: int = 0
    changed: int = 0
    removed: int = 0
    unchanged: int = 0
    skipped: dict[str, int] = {}
    embedded: int = 0
    embedding_model: str | None = None
    embedding_note: str | None = None
    embedding_pending: int = 0  # chunks left without a vector (``embed=False``: for the background)
    seconds: float = 0.0


async def _no_progress(message: str) -> None:
    return None


async def sync_index(
    store: KnowledgeStore,
    root: Path,
    *,
    embedder: Embedder | None = None,
    embedding_model: str | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_files: int = DEFAULT_MAX_FILES,
    progress: Progress = _no_progress,
    embed: bool = True,
) -> IndexReport:
    """Update ``store`` from the files under ``root`` (resolved); see the module docstring.

    ``embedder`` with ``embedding_model`` (the model it uses) adds the missing vectors; an embedder
    that fails with a :class:`~caelum_mcp.core.errors.CaelumError` leaves the index lexical, with the
    reason in ``embedding_note``. With ``embed=False`` the vectors are left to the caller (e.g. a
    background task running :func:`embed_missing`): ``embedding_pending`` counts the chunks that
    lack one.
    """
    started = time.perf_counter()
    listing = await list_sources(root, max_bytes=max_bytes, max_files=max_files)
    known = await anyio.to_thread.run_sync(store.file_states)
    counts = {"added": 0, "changed": 0, "unchanged": 0}
    skipped = dict(listing.skipped)
    files = listing.files
    for start in range(0, len(files), _FILES_PER_STEP):
        batch = files[start : start + _FILES_PER_STEP]
        binary, grown = await anyio.to_thread.run_sync(_sync_files, store, root, batch, known, counts, max_bytes)
        if grown:  # over the limit by the time it was read (it grew, or was swapped, after the listing)
            skipped["over the size limit"] = skipped.get("over the size limit", 0) + len(grown)
            await anyio.to_thread.run_sync(store.remove_files, [p for p in grown if p in known])
        if binary:
            skipped["binary or not UTF-8"] = skipped.get("binary or not UTF-8", 0) + len(binary)
            await anyio.to_thread.run_sync(store.remove_files, [p for p in binary if p in known])
        if len(files) > _FILES_PER_STEP:
            await progress(f"indexed {min(start + _FILES_PER_STEP, len(files))} of {len(files)} files")
    gone = sorted(set(known) - set(files))
    removed = await anyio.to_thread.run_sync(store.remove_files, gone)
    embedded, pending, note = 0, 0, None
    if embedder is not None and embedding_model and not embed:
        pending = len(await anyio.to_thread.run_sync(store.missing_vectors, embedding_model))
    elif embedder is not None and embedding_model:
        try:
            embedded = await embed_missing(store, embedder, embedding_model, progress)
        except CaelumError as exc:
            note = f"semantic index incomplete, lexical search only for the rest: {exc}"
    elif embedder is None:
        note = "no embedding model is up: the index is lexical only"
    n_files, n_chunks = await anyio.to_thread.run_sync(store.counts)
    return IndexReport(
        files=n_files,
        chunks=n_chunks,
        removed=removed,
        skipped=skipped,
        embedded=embedded,
        embedding_model=embedding_model if embedder is not None else None,
        embedding_note=note,
        embedding_pending=pending,
        seconds=round(time.perf_counter() - started, 3),
        **counts,
    )


def _sync_files(
    store: KnowledgeStore,
    root: Path,
    batch: Sequence[str],
    known: dict[str, FileState],
    counts: dict[str, int],
    max_bytes: int,
) -> tuple[list[str], list[str]]:
    """Index the changed files of ``batch``; returns the ones that turned out binary, and the ones
    over ``max_bytes`` when read. Only regular files are opened, never more than ``max_bytes`` + 1
    bytes of one: the listing checked the size, but a file can grow or be swapped for a FIFO since."""
    binary: list[str] = []
    grown: list[str] = []
    for rel in batch:
        path = root / rel
        try:
            stat = os.stat(path)
        except OSError:
            continue
        old = known.get(rel)
        if old is not None and old.size == stat.st_size and old.mtime_ns == stat.st_mtime_ns:
            counts["unchanged"] += 1
            continue
        try:
            head = read_head(path, max_bytes)
        except OSError:  # NotRegularFileError too: a FIFO or device is never opened for reading
            continue
        if head.truncated:
            grown.append(rel)
            continue
        data = head.data
        digest = file_digest(data)
        state = FileState(hash=digest, size=stat.st_size, mtime_ns=stat.st_mtime_ns)
        if old is not None and old.hash == digest:
            store.touch_file(rel, state)
            counts["unchanged"] += 1
            continue
        source = read_source(root, rel, data)
        if source is None:
            binary.append(rel)
            continue
        chunks = [NewChunk(c, text_hash(chunk_embedding_input(c))) for c in chunk_file(rel, source.text)]
        store.replace_file(rel, state, chunks)
        counts["changed" if old is not None else "added"] += 1
    return binary, grown


async def embed_missing(
    store: KnowledgeStore,
    embedder: Embedder,
    model: str,
    progress: Progress,
    *,
    group_seconds: float | None = None,
) -> int:
    """Embed every chunk without a vector for ``model``; returns how many were embedded.

    Groups are :data:`EMBED_GROUP` inputs, or, with ``group_seconds``, as many as the model
    embeds in about that long (measured on the group before; the first is
    :data:`PACED_FIRST_GROUP`, and a group at most doubles). A paced group is what a query
    embedding waits behind when it shares the model with this work: llama.cpp runs one request at
    a time, and on a CPU 64 chunks take ~5 s where 3 take ~0.2 s at the same throughput.

    A group the model refuses is sent again one input at a time (a too-long input cut to half
    once), so one chunk the model cannot take costs only its own vector; when none of a group's
    first inputs gets through either, the model is down and the error is raised.
    """
    missing = await anyio.to_thread.run_sync(store.missing_vectors, model)
    done = 0
    size = EMBED_GROUP if group_seconds is None else PACED_FIRST_GROUP
    start = reported = 0
    while start < len(missing):
        group = missing[start : start + size]
        start += len(group)
        texts = await anyio.to_thread.run_sync(store.chunk_texts, [i for _, i in group])
        inputs = [embedding_input(*texts[i]) for _, i in group]
        began = time.perf_counter()
        try:
            used, vectors = await embedder(inputs)
        except CaelumError:
            singles = await _one_by_one(embedder, inputs)
            pairs = [(h, v) for (h, _), v in zip(group, singles, strict=True) if v is not None]
        else:
            if used != model:
                raise CaelumError(f"asked {model} for embeddings, {used} answered")
            pairs = [(h, v) for (h, _), v in zip(group, vectors, strict=True)]
            if group_seconds is not None:
                size = paced_group_size(size, len(group), time.perf_counter() - began, group_seconds)
        await anyio.to_thread.run_sync(store.put_vectors, model, pairs)
        done += len(pairs)
        if len(missing) > EMBED_GROUP and (start // EMBED_GROUP > reported or start == len(missing)):
            reported = start // EMBED_GROUP  # paced groups are small: a message every EMBED_GROUP
            await progress(f"embedded {done} of {len(missing)} chunks with {model}")
    return done


def paced_group_size(size: int, sent: int, seconds: float, target: float) -> int:
    """The next group's size: what fits ``target`` seconds at the rate just seen, between 1 and
    :data:`EMBED_GROUP`, and at most twice ``size``."""
    fits = int(target * sent / seconds) if seconds > 0 else EMBED_GROUP
    return max(1, min(fits, 2 * size, EMBED_GROUP))


async def _one_by_one(embedder: Embedder, inputs: Sequence[str]) -> list[Sequence[float] | None]:
    """Each input alone, cut to half its length once if refused; None for one still refused.
    Raises the last error when the first three inputs all fail (the model is not answering)."""
    out: list[Sequence[float] | None] = []
    last: CaelumError | None = None
    for text in inputs:
        vector: Sequence[float] | None = None
        for attempt in (text, text[: len(text) // 2]):
            try:
                vector = (await embedder([attempt]))[1][0]
                break
            except CaelumError as exc:
                last = exc
        out.append(vector)
        if len(out) == 3 and not any(v is not None for v in out) and last is not None:
            raise last
    return out
