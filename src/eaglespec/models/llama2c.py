"""Convert a llama2.c checkpoint (legacy fp32 layout) into a Hugging Face Llama directory.

llama2.c file layout (all little-endian):
    header: 7 x int32 = dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len
            (vocab_size > 0 means the classifier is tied to the token embedding)
    fp32 arrays, in this order:
        tok_embeddings [V, D], rms_att [L, D], wq [L, D, D], wk [L, KV, D], wv [L, KV, D],
        wo [L, D, D], rms_ffn [L, D], w1 [L, F, D], w2 [L, D, F], w3 [L, F, D], rms_final [D],
        then legacy RoPE tables freq_cis_real / freq_cis_imag [seq_len, head_dim // 2] each,
        then (only when vocab_size < 0) a separate classifier [V, D].

llama2.c rotates interleaved pairs (x0, x1), (x2, x3), ...; Hugging Face Llama rotates halves
(x_i, x_{i + d/2}). `_permute_rotary` reorders the rows of wq / wk per head so that both give the
same attention scores.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from eaglespec._io import atomic_directory

HEADER_FORMAT = "<7i"
HEADER_BYTES = struct.calcsize(HEADER_FORMAT)
FLOAT_BYTES = 4


@dataclass(frozen=True)
class Llama2cHeader:
    dim: int
    hidden_dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    vocab_size: int
    seq_len: int
    shared_classifier: bool

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    def array_shapes(self) -> list[tuple[str, tuple[int, ...]]]:
        D, F, L, V = self.dim, self.hidden_dim, self.n_layers, self.vocab_size
        KV = self.n_kv_heads * self.head_dim
        shapes = [
            ("tok_embeddings", (V, D)),
            ("rms_att", (L, D)),
            ("wq", (L, D, D)),
            ("wk", (L, KV, D)),
            ("wv", (L, KV, D)),
            ("wo", (L, D, D)),
            ("rms_ffn", (L, D)),
            ("w1", (L, F, D)),
            ("w2", (L, D, F)),
            ("w3", (L, F, D)),
            ("rms_final", (D,)),
            # Legacy RoPE tables: read to keep the offsets right, then dropped.
            ("freq_cis_real", (self.seq_len, self.head_dim // 2)),
            ("freq_cis_imag", (self.seq_len, self.head_dim // 2)),
        ]
        if not self.shared_classifier:
            shapes.append(("classifier", (V, D)))
        return shapes

    def expected_file_size(self) -> int:
        floats = sum(int(np.prod(shape)) for _, shape in self.array_shapes())
        return HEADER_BYTES + floats * FLOAT_BYTES


def read_header(path: Path) -> Llama2cHeader:
    size = path.stat().st_size
    if size < HEADER_BYTES:
        raise ValueError(f"{path}: {size} bytes is too small for a llama2.c header ({HEADER_BYTES} bytes)")
    with open(path, "rb") as f:
        dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len = struct.unpack(
            HEADER_FORMAT, f.read(HEADER_BYTES)
        )
    fields = dict(dim=dim, hidden_dim=hidden_dim, n_layers=n_layers, n_heads=n_heads,
                  n_kv_heads=n_kv_heads, seq_len=seq_len)
    bad = [f"{k}={v}" for k, v in fields.items() if v <= 0 or v > 1_000_000]
    if vocab_size == 0 or abs(vocab_size) > 10_000_000:
        bad.append(f"vocab_size={vocab_size}")
    if not bad and (dim % n_heads or n_heads % n_kv_heads):
        bad.append(f"dim={dim} not divisible by n_heads={n_heads}, or n_heads not divisible by n_kv_heads={n_kv_heads}")
    if bad:
        raise ValueError(f"{path}: not a llama2.c checkpoint, implausible header fields: {', '.join(bad)}")
    return Llama2cHeader(dim, hidden_dim, n_layers, n_heads, n_kv_heads, abs(vocab_size), seq_len,
                         shared_classifier=vocab_size > 0)


def _permute_rotary(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Interleaved-pair RoPE rows -> rotate-half rows, per head. w: [n_heads * head_dim, D]."""
    rows, cols = w.shape
    head_dim = rows // n_heads
    return w.view(n_heads, head_dim // 2, 2, cols).transpose(1, 2).reshape(rows, cols)


def read_llama2c(path: str | os.PathLike) -> tuple[Llama2cHeader, dict[str, torch.Tensor]]:
    """Read a llama2.c checkpoint; returns the header and a Hugging Face Llama state dict (fp32)."""
    path = Path(path)
    header = read_header(path)
    size, expected = path.stat().st_size, header.expected_file_size()
    if size != expected:
        raise ValueError(
            f"{path}: file size {size} bytes does not match the header "
            f"(dim={header.dim}, layers={header.n_layers}, vocab={header.vocab_size}, "
            f"shared classifier={header.shared_classifier}) which needs {expected} bytes; "
            f"the file is {'truncated' if size < expected else 'longer than expected'} or not llama2.c legacy format"
        )
    flat = np.fromfile(path, dtype="<f4", offset=HEADER_BYTES)
    arrays: dict[str, torch.Tensor] = {}
    offset = 0
    for name, shape in header.array_shapes():
        n = int(np.prod(shape))
        arrays[name] = torch.from_numpy(flat[offset : offset + n].copy()).view(shape)
        offset += n
    return header, _to_hf_state_dict(header, arrays)


def _to_hf_state_dict(h: Llama2cHeader, a: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    sd = {"model.embed_tokens.weight": a["tok_embeddings"], "model.norm.weight": a["rms_final"]}
    for i in range(h.n_layers):
        p = f"model.layers.{i}."
        sd[p + "input_layernorm.weight"] = a["rms_att"][i]
        sd[p + "self_attn.q_proj.weight"] = _permute_rotary(a["wq"][i], h.n_heads)
        sd[p + "self_attn.k_proj.weight"] = _permute_rotary(a["wk"][i], h.n_kv_heads)
        sd[p + "self_attn.v_proj.weight"] = a["wv"][i]
        sd[p + "self_attn.o_proj.weight"] = a["wo"][i]
        sd[p + "post_attention_layernorm.weight"] = a["rms_ffn"][i]
        sd[p + "mlp.gate_proj.weight"] = a["w1"][i]
        sd[p + "mlp.down_proj.weight"] = a["w2"][i]
        sd[p + "mlp.up_proj.weight"] = a["w3"][i]
    sd["lm_head.weight"] = a["tok_embeddings"] if h.shared_classifier else a["classifier"]
    return {k: v.contiguous() for k, v in sd.items()}


# llama2.c models are trained with these (they are not in the file).
LLAMA2C_RMS_NORM_EPS = 1e-5
LLAMA2C_ROPE_THETA = 10000.0
LLAMA2C_BOS, LLAMA2C_EOS = 1, 2


def _tokenizer_config(model_max_length: int) -> dict:
    # Loading through AutoTokenizer from tokenizer.model + this config is the path that encodes
    # correctly with transformers 5 (building LlamaTokenizer(vocab_file=...) directly does not).
    return {
        "tokenizer_class": "LlamaTokenizer",
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "pad_token": None,
        "add_bos_token": True,
        "add_eos_token": False,
        "legacy": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": model_max_length,
    }


def convert_llama2c(
    checkpoint: str | os.PathLike,
    tokenizer_model: str | os.PathLike,
    output_dir: str | os.PathLike,
    overwrite: bool = False,
) -> Path:
    """Write a Hugging Face LlamaForCausalLM directory (config, safetensors, tokenizer) atomically.

    Nothing is written when the checkpoint or tokenizer is invalid.
    """
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    output_dir = Path(output_dir)
    tokenizer_model = Path(tokenizer_model)
    if output_dir.exists() and any(output_dir.iterdir()) and not overwrite:
        raise FileExistsError(f"{output_dir}: output directory is not empty (pass --overwrite)")
    header, state_dict = read_llama2c(checkpoint)
    if not tokenizer_model.is_file():
        raise FileNotFoundError(f"{tokenizer_model}: SentencePiece tokenizer model not found")

    config = LlamaConfig(
        vocab_size=header.vocab_size,
        hidden_size=header.dim,
        intermediate_size=header.hidden_dim,
        num_hidden_layers=header.n_layers,
        num_attention_heads=header.n_heads,
        num_key_value_heads=header.n_kv_heads,
        max_position_embeddings=header.seq_len,
        rms_norm_eps=LLAMA2C_RMS_NORM_EPS,
        rope_parameters={"rope_type": "default", "rope_theta": LLAMA2C_ROPE_THETA},
        tie_word_embeddings=header.shared_classifier,
        bos_token_id=LLAMA2C_BOS,
        eos_token_id=LLAMA2C_EOS,
        dtype="float32",
    )
    model = LlamaForCausalLM(config)
    model.load_state_dict(state_dict, strict=True)

    with atomic_directory(output_dir, overwrite=overwrite) as tmp:
        model.save_pretrained(tmp)
        shutil.copyfile(tokenizer_model, tmp / "tokenizer.model")
        (tmp / "tokenizer_config.json").write_text(json.dumps(_tokenizer_config(header.seq_len), indent=2))
        tokenizer = AutoTokenizer.from_pretrained(tmp)
        probe = tokenizer("Once upon a time").input_ids
        if not probe or probe[0] != LLAMA2C_BOS or len(probe) < 2:
            raise ValueError(f"{tokenizer_model}: tokenizer encoded a probe text to {probe}; not a usable SentencePiece model")
        if len(tokenizer) != header.vocab_size:
            raise ValueError(
                f"{tokenizer_model}: tokenizer has {len(tokenizer)} tokens but the checkpoint's vocab_size is {header.vocab_size}"
            )
        for f in tmp.iterdir():
            f.chmod(0o644)
    return output_dir
