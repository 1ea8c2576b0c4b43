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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from eaglespec.export.exporter import load_draft, render_report
from eaglespec.export.gguf_vocab import MetaValue, tokenizer_metadata
from eaglespec.export.layout import TensorSpec
from eaglespec.models.config import DraftConfig

GGUF_FORMAT = "gguf"
ARCH = "eagle3"
GGUF_DTYPES = {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}
GGUF_DTYPE_ALIASES = {"float32": "f32", "bfloat16": "bf16", "float16": "f16"}
# HF architectures whose llama.cpp graph captures layer inputs (the targets `--spec-type draft-eagle3` can
# run; other graphs abort when the draft asks for a layer's input), with that graph's llama.cpp architecture.
LLAMACPP_EAGLE3_TARGETS = {
    "LlamaForCausalLM": "llama", "MistralForCausalLM": "llama", "MixtralForCausalLM": "llama",
    "Qwen3ForCausalLM": "qwen3", "Qwen3MoeForCausalLM": "qwen3moe", "GptOssForCausalLM": "gpt-oss",
}
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


@dataclass
class GGUFExportReport:
    """What was written: the file, every tensor (numpy/torch order), the metadata and the decisions taken."""

    output: Path
    tensors: list[TensorSpec]
    metadata: dict[str, MetaValue]
    notes: list[str] = field(default_factory=list)

    def render(self) -> str:
        details = [f"{key} = {_short(meta.value)}" for key, meta in self.metadata.items()]
        checked = (f"read back with gguf.GGUFReader: {len(self.tensors)} tensors with the expected shapes and "
                   f"dtypes, none extra; {len(self.metadata)} metadata keys with the expected values")
        return render_report(f"gguf: wrote {self.output} (general.architecture {ARCH})", self.tensors,
                             details + [f"note: {n}" for n in self.notes], checked)


def _short(value: Any) -> str:
    if isinstance(value, list) and len(value) > 8:
        return f"[{len(value)} items: {', '.join(map(repr, value[:3]))}, ...]"
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def gguf_dtype(dtype: str | None) -> torch.dtype | None:
    """--dtype (f32|bf16|f16 or float32|bfloat16|float16) -> torch dtype; None keeps the draft's."""
    if dtype is None:
        return None
    name = GGUF_DTYPE_ALIASES.get(dtype, dtype)
    if name not in GGUF_DTYPES:
        raise ValueError(f"--dtype {dtype!r}: the GGUF export writes one of {sorted(GGUF_DTYPES)}")
    return GGUF_DTYPES[name]


def check_method(config: DraftConfig) -> None:
    """Only EAGLE-3 drafts have a GGUF here (before anything else is read)."""
    if config.is_dflash:
        raise ValueError("a dflash draft: its GGUF (llama.cpp's dflash architecture) is not built yet (issue 36); "
                         "export it as vllm or sglang")
    if config.method != "eagle3":
        raise ValueError(f"method {config.method!r}: llama.cpp's eagle3 architecture runs EAGLE-3 drafts only "
                         "(it has no EAGLE-1 draft model); export EAGLE-1 as sglang, vllm or eagle")


def check_representable(config: DraftConfig, target_architectures: list[str], state: dict[str, torch.Tensor]) -> None:
    """Refuse, with the reason, a draft llama.cpp's eagle3 architecture would not compute as we do."""
    check_method(config)
    problems = []
    supported = [a for a in target_architectures if a in LLAMACPP_EAGLE3_TARGETS]
    if not supported:
        problems.append(f"target architectures {target_architectures}: llama.cpp captures the layer inputs EAGLE-3 "
                        f"needs only in the graphs of {sorted(LLAMACPP_EAGLE3_TARGETS)}")
    if len(config.aux_layer_ids) != NUM_AUX_LAYERS:
        problems.append(f"aux layer ids {config.aux_layer_ids}: llama.cpp's eagle3 takes exactly {NUM_AUX_LAYERS}")
    if config.hidden_act != "silu":
        problems.append(f"hidden_act {config.hidden_act!r}: llama.cpp's eagle3 MLP is SiLU-gated")
    if config.attention_bias:
        problems.append("attention_bias=True: llama.cpp's eagle3 attention has no biases")
    if "fc.bias" in state and bool(state["fc.bias"].any()):
        problems.append("a non-zero fc bias: llama.cpp's eagle3 fc has no bias")
    rope_type = config.rope_parameters.get("rope_type", "default")
    if rope_type != "default":
        problems.append(f"RoPE type {rope_type!r}: this export writes default RoPE only")
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


def _file_type(dtype: torch.dtype) -> int:
    import gguf

    return int({torch.float32: gguf.LlamaFileType.ALL_F32, torch.float16: gguf.LlamaFileType.MOSTLY_F16,
                torch.bfloat16: gguf.LlamaFileType.MOSTLY_BF16}[dtype])


def model_metadata(config: DraftConfig, dtype: torch.dtype, context_length: int, name: str) -> dict[str, MetaValue]:
    """The general.* and eagle3.* keys llama.cpp reads for this draft (tokenizer keys come from `gguf_vocab`)."""
    u32 = "UINT32"
    rope_theta = float(config.rope_parameters.get("rope_theta", 10000.0))
    return {
        "general.architecture": MetaValue(ARCH, "STRING"),
        "general.type": MetaValue("model", "STRING"),
        "general.name": MetaValue(name, "STRING"),
        "general.file_type": MetaValue(_file_type(dtype), u32),
        "general.quantization_version": MetaValue(2, u32),  # ggml's current quantization format version
        f"{ARCH}.target_layers": MetaValue([int(i) for i in config.aux_layer_ids], "ARRAY", "INT32"),
        f"{ARCH}.target_hidden_size": MetaValue(config.target_hidden_size, u32),
        f"{ARCH}.norm_before_residual": MetaValue(False, "BOOL"),
        f"{ARCH}.norm_before_fc": MetaValue(False, "BOOL"),
        f"{ARCH}.block_count": MetaValue(1, u32),
        f"{ARCH}.context_length": MetaValue(int(context_length), u32),
        f"{ARCH}.embedding_length": MetaValue(config.hidden_size, u32),
        f"{ARCH}.feed_forward_length": MetaValue(config.intermediate_size, u32),
        f"{ARCH}.attention.head_count": MetaValue(config.num_attention_heads, u32),
        f"{ARCH}.attention.head_count_kv": MetaValue(config.num_key_value_heads, u32),
        f"{ARCH}.attention.key_length": MetaValue(config.head_dim, u32),
        f"{ARCH}.attention.value_length": MetaValue(config.head_dim, u32),
        f"{ARCH}.attention.layer_norm_rms_epsilon": MetaValue(float(config.rms_norm_eps), "FLOAT32"),
        f"{ARCH}.rope.freq_base": MetaValue(rope_theta, "FLOAT32"),
        f"{ARCH}.rope.dimension_count": MetaValue(config.head_dim, u32),
        f"{ARCH}.vocab_size": MetaValue(config.vocab_size, u32),
    }


@dataclass(frozen=True)
class _Target:
    path: Path
    architectures: list[str]
    context_length: int


def _load_target(config: DraftConfig, target: str | os.PathLike) -> _Target:
    """The target's directory, architectures and context length, checked against the draft."""
    from transformers import AutoConfig

    from eaglespec.models import resolve_model_path
    from eaglespec.models.target import check_draft_matches_target

    path = Path(resolve_model_path(target)).resolve()
    cfg = AutoConfig.from_pretrained(str(path))
    check_draft_matches_target(config, cfg, source="draft")
    text = cfg.get_text_config()
    context = getattr(text, "max_position_embeddings", None) or config.max_position_embeddings
    return _Target(path, list(getattr(cfg, "architectures", None) or []), int(context))


def export_gguf(draft_dir: str | os.PathLike, output: str | os.PathLike, target: str | os.PathLike,
                dtype: str | None = None, overwrite: bool = False) -> GGUFExportReport:
    """Write the EAGLE-3 draft in `draft_dir` (or a committed draft's name) as llama.cpp's eagle3 GGUF at
    `output`, with `target`'s tokenizer; refuse what llama.cpp cannot represent; read the file back to check it."""
    from eaglespec.export.gguf_io import check_gguf, write_gguf
    from eaglespec.models import resolve_model_path

    output = Path(output)
    if output.exists() and not overwrite:
        raise FileExistsError(f"{output} exists; pass --overwrite to replace it")
    draft_dir = resolve_model_path(draft_dir)
    check_method(DraftConfig.load(draft_dir))
    model = load_draft(draft_dir, target)
    config, state = model.config, model.state_dict()
    info = _load_target(config, target)
    check_representable(config, info.architectures, state)
    float_dtype = gguf_dtype(dtype) or model.fc.weight.dtype
    tensors = gguf_tensors(config, state, float_dtype)
    expected = expected_gguf_tensors(config, float_dtype)
    metadata = {**model_metadata(config, float_dtype, info.context_length, Path(draft_dir).name),
                **tokenizer_metadata(info.path, config.vocab_size)}
    output.parent.mkdir(parents=True, exist_ok=True)
    write_gguf(output, ARCH, metadata, tensors, check=lambda written: check_gguf(written, metadata, expected))
    return GGUFExportReport(output, [expected[n] for n in sorted(expected)], metadata, _notes(config, info))


def _notes(config: DraftConfig, info: _Target) -> list[str]:
    graph = next(LLAMACPP_EAGLE3_TARGETS[a] for a in info.architectures if a in LLAMACPP_EAGLE3_TARGETS)
    return [f"target {info.path} ({', '.join(info.architectures)}: llama.cpp graph {graph!r})",
            f"target_layers {list(config.aux_layer_ids)}: inputs of those target layers, as ours (unchanged)",
            "q/k rows reordered for llama.cpp's adjacent-pair RoPE; d2t written as absolute target ids",
            "tokenizer.ggml.pre 'default': the draft never tokenizes text (see export/gguf_vocab.py)"]
