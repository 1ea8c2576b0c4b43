"""`export_gguf`: an EAGLE-3 draft -> the GGUF that llama.cpp's `eagle3` architecture loads (`-md DRAFT.gguf
--spec-type draft-eagle3`), written with the `gguf` package and read back to check it.

What llama.cpp reads (src/models/eagle3.cpp, common/speculative.cpp of the pinned build, see tests/interop):
  - `eagle3.target_layers`: exactly 3 ids; id k < L makes llama.cpp capture the INPUT of target layer k, which is
    our convention (Hugging Face `hidden_states[k]`), so our aux ids are written unchanged;
    `eagle3.target_hidden_size` sizes fc's input (3 x it); `eagle3.norm_before_residual` false (our residual
    is the un-normed fused hidden), `eagle3.norm_before_fc` false (fc sees the raw concatenation);
  - the Llama keys of the one draft layer (`block_count` 1, sizes, heads, key/value length, RoPE base,
    RMS eps), the target's context length and vocabulary (`gguf_vocab`);
  - tensors: `fc`, `token_embd` (optional there; carried, as in our other exports), `blk.0.*` (`attn_norm` =
    input_layernorm on the embedding, `attn_norm_2` = hidden_norm on the fused hidden, q/k/v over 2H),
    `output_norm`, `output` [Vd rows] and `d2t`: I64 ABSOLUTE target ids (ours are offsets: id + d2t[id]);
    without d2t, `output` must cover the whole vocabulary. Norms stay F32, as llama.cpp's converter writes them.
  - RoPE: llama.cpp rotates adjacent pairs (its NORM rope type) where Hugging Face rotates the two halves of each
    head, so q_proj / k_proj rows are reordered per head (`rotary_rows_interleaved`); without it the draft runs,
    stays lossless, and accepts almost nothing.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from eaglespec.export.exporter import load_draft
from eaglespec.export.gguf_common import (
    GGUF_DTYPE_ALIASES,
    GGUFExportReport,
    TargetFacts,
    base_metadata,
    capture_graph,
    common_problems,
    gguf_dtype,
    load_target_facts,
)
from eaglespec.export.gguf_dflash import export_dflash_gguf
from eaglespec.export.gguf_vocab import MetaValue, tokenizer_metadata
from eaglespec.export.layout import TensorSpec
from eaglespec.models.config import DraftConfig

__all__ = ["GGUF_DTYPE_ALIASES", "GGUF_FORMAT", "GGUFExportReport", "export_gguf", "gguf_dtype"]

GGUF_FORMAT = "gguf"
ARCH = "eagle3"
NUM_AUX_LAYERS = 3  # llama.cpp's eagle3 refuses any other count
# our tensor name -> llama.cpp's; 2-D weights take the export dtype, the rest (norms) stay F32
TENSOR_NAMES = {
    "embed_tokens.weight": "token_embd.weight",
    "fc.weight": "fc.weight",
    "midlayer.input_layernorm.weight": "blk.0.attn_norm.weight",
    "midlayer.hidden_norm.weight": "blk.0.attn_norm_2.weight",
    "midlayer.self_attn.q_proj.weight": "blk.0.attn_q.weight",
    "midlayer.self_attn.k_proj.weight": "blk.0.attn_k.weight",
    "midlayer.self_attn.v_proj.weight": "blk.0.attn_v.weight",
    "midlayer.self_attn.o_proj.weight": "blk.0.attn_output.weight",
    "midlayer.post_attention_layernorm.weight": "blk.0.ffn_norm.weight",
    "midlayer.mlp.gate_proj.weight": "blk.0.ffn_gate.weight",
    "midlayer.mlp.up_proj.weight": "blk.0.ffn_up.weight",
    "midlayer.mlp.down_proj.weight": "blk.0.ffn_down.weight",
    "norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
}
NOT_WRITTEN = ("t2d", "fc.bias")  # t2d: llama.cpp does not use it; fc.bias: refused unless zero


def check_method(config: DraftConfig) -> None:
    """Only EAGLE-3 drafts have an eagle3 GGUF (before anything else is read)."""
    if config.method != "eagle3":
        raise ValueError(f"method {config.method!r}: llama.cpp's eagle3 architecture runs EAGLE-3 drafts only "
                         "(it has no EAGLE-1 draft model); export EAGLE-1 as sglang, vllm or eagle")


def check_representable(config: DraftConfig, target_architectures: list[str], state: dict[str, torch.Tensor]) -> None:
    """Refuse, with the reason, a draft llama.cpp's eagle3 architecture would not compute as we do."""
    check_method(config)
    problems = common_problems(config, target_architectures, ARCH)
    if len(config.aux_layer_ids) != NUM_AUX_LAYERS:
        problems.append(f"aux layer ids {config.aux_layer_ids}: llama.cpp's eagle3 takes exactly {NUM_AUX_LAYERS}")
    if "fc.bias" in state and bool(state["fc.bias"].any()):
        problems.append("a non-zero fc bias: llama.cpp's eagle3 fc has no bias")
    if problems:
        raise ValueError("llama.cpp's eagle3 cannot represent this draft: " + "; ".join(problems))


def rotary_rows_interleaved(weight: torch.Tensor, num_heads: int) -> torch.Tensor:
    """q_proj / k_proj rows [heads * head_dim, in] from Hugging Face's rotate-half order to llama.cpp's
    adjacent pairs: within each head, row j of the first half and row j of the second half (the two rotated
    together) become rows 2j and 2j + 1. head_dim 4: rows (0, 1 | 2, 3) -> (0, 2, 1, 3)."""
    rows, cols = weight.shape
    half = rows // num_heads // 2
    return weight.reshape(num_heads, 2, half, cols).transpose(1, 2).reshape(rows, cols)


def gguf_tensors(config: DraftConfig, state: dict[str, torch.Tensor], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Our state dict -> llama.cpp's tensors (renamed, rotary rows reordered, cast; norms F32, d2t absolute)."""
    out = {}
    for ours, theirs in TENSOR_NAMES.items():
        t = state[ours].detach().cpu()
        if ours.endswith("q_proj.weight"):
            t = rotary_rows_interleaved(t, config.num_attention_heads)
        elif ours.endswith("k_proj.weight"):
            t = rotary_rows_interleaved(t, config.num_key_value_heads)
        out[theirs] = t.to(dtype if t.dim() == 2 else torch.float32)
    if config.draft_vocab_size != config.vocab_size:  # a full vocabulary needs no map
        out["d2t"] = absolute_d2t(state["d2t"], config.vocab_size)
    unknown = sorted(set(state) - set(TENSOR_NAMES) - {"d2t", *NOT_WRITTEN})
    assert not unknown, f"tensors without a GGUF name: {unknown}"
    return out


def absolute_d2t(d2t: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """Our offsets (target id = draft id + d2t[draft id]) -> the absolute target ids llama.cpp scatters into."""
    ids = torch.arange(d2t.numel(), dtype=torch.int64) + d2t.to(torch.int64).cpu()
    if bool(((ids < 0) | (ids >= vocab_size)).any()) or ids.unique().numel() != ids.numel():
        raise ValueError(f"d2t maps draft ids outside the target vocabulary [0, {vocab_size}) or twice to one id")
    return ids


def expected_gguf_tensors(config: DraftConfig, dtype: torch.dtype) -> dict[str, TensorSpec]:
    """Every tensor of the GGUF of this draft, shapes in torch (row-major) order."""
    from eaglespec.export.layout import our_tensor_specs

    ours = our_tensor_specs(config, dtype)
    specs = {}
    for name, theirs in TENSOR_NAMES.items():
        shape = ours[name].shape
        specs[theirs] = TensorSpec(theirs, shape, dtype if len(shape) == 2 else torch.float32)
    if config.draft_vocab_size != config.vocab_size:
        specs["d2t"] = TensorSpec("d2t", (config.draft_vocab_size,), torch.int64)
    return specs


def model_metadata(config: DraftConfig, dtype: torch.dtype, context_length: int, name: str) -> dict[str, MetaValue]:
    """The general.* and eagle3.* keys llama.cpp reads for this draft (tokenizer keys come from `gguf_vocab`)."""
    return {
        **base_metadata(ARCH, config, dtype, context_length, name),
        f"{ARCH}.target_layers": MetaValue([int(i) for i in config.aux_layer_ids], "ARRAY", "INT32"),
        f"{ARCH}.target_hidden_size": MetaValue(config.target_hidden_size, "UINT32"),
        f"{ARCH}.norm_before_residual": MetaValue(False, "BOOL"),
        f"{ARCH}.norm_before_fc": MetaValue(False, "BOOL"),
        f"{ARCH}.rope.dimension_count": MetaValue(config.head_dim, "UINT32"),
        f"{ARCH}.vocab_size": MetaValue(config.vocab_size, "UINT32"),
    }


def export_gguf(draft_dir: str | os.PathLike, output: str | os.PathLike, target: str | os.PathLike,
                dtype: str | None = None, overwrite: bool = False) -> GGUFExportReport:
    """Write the draft in `draft_dir` (or a committed draft's name) as the GGUF llama.cpp loads at `output`:
    EAGLE-3 as its eagle3 architecture, DFlash as its dflash one (`gguf_dflash`), with `target`'s tokenizer;
    refuse what llama.cpp cannot represent; read the file back to check it."""
    from eaglespec.export.gguf_io import check_gguf, write_gguf
    from eaglespec.models import resolve_model_path

    output = Path(output)
    if output.exists() and not overwrite:
        raise FileExistsError(f"{output} exists; pass --overwrite to replace it")
    draft_dir = resolve_model_path(draft_dir)
    recorded = DraftConfig.load(draft_dir)
    if recorded.is_dflash:
        return export_dflash_gguf(draft_dir, output, target, dtype)
    check_method(recorded)
    model = load_draft(draft_dir, target)
    config, state = model.config, model.state_dict()
    info = load_target_facts(config, target)
    check_representable(config, info.architectures, state)
    float_dtype = gguf_dtype(dtype) or model.fc.weight.dtype
    tensors = gguf_tensors(config, state, float_dtype)
    expected = expected_gguf_tensors(config, float_dtype)
    metadata = {**model_metadata(config, float_dtype, info.context_length, Path(draft_dir).name),
                **tokenizer_metadata(info.path, config.vocab_size)}
    output.parent.mkdir(parents=True, exist_ok=True)
    write_gguf(output, ARCH, metadata, tensors, check=lambda written: check_gguf(written, metadata, expected))
    return GGUFExportReport(output, [expected[n] for n in sorted(expected)], metadata, _notes(config, info))


def _notes(config: DraftConfig, info: TargetFacts) -> list[str]:
    return [f"target {info.path} ({', '.join(info.architectures)}: llama.cpp graph "
            f"{capture_graph(info.architectures)!r})",
            f"target_layers {list(config.aux_layer_ids)}: inputs of those target layers, as ours (unchanged)",
            "q/k rows reordered for llama.cpp's adjacent-pair RoPE; d2t written as absolute target ids",
            "tokenizer.ggml.pre 'default': the draft never tokenizes text (see export/gguf_vocab.py)"]
