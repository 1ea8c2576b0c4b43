"""What the two llama.cpp draft GGUFs share (EAGLE-3: `llamacpp.py`, DFlash: `gguf_dflash.py`): the dtypes, the
target graphs that capture layer inputs, the target's facts, the general and Llama-shaped keys, the report."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from eaglespec.export.exporter import render_report
from eaglespec.export.gguf_vocab import MetaValue
from eaglespec.export.layout import TensorSpec
from eaglespec.models.config import DraftConfig

GGUF_DTYPES = {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}
GGUF_DTYPE_ALIASES = {"float32": "f32", "bfloat16": "bf16", "float16": "f16"}
# HF architectures whose llama.cpp graph captures layer inputs (`t_layer_inp`: the targets a draft that reads
# target layers can run with; other graphs abort when the draft asks for a layer's input), with that graph's
# llama.cpp architecture. The same capture serves `draft-eagle3` and `draft-dflash`.
LLAMACPP_CAPTURE_TARGETS = {
    "LlamaForCausalLM": "llama", "MistralForCausalLM": "llama", "MixtralForCausalLM": "llama",
    "Qwen3ForCausalLM": "qwen3", "Qwen3MoeForCausalLM": "qwen3moe", "GptOssForCausalLM": "gpt-oss",
}


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
        arch = self.metadata["general.architecture"].value
        return render_report(f"gguf: wrote {self.output} (general.architecture {arch})", self.tensors,
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


def file_type(dtype: torch.dtype) -> int:
    import gguf

    return int({torch.float32: gguf.LlamaFileType.ALL_F32, torch.float16: gguf.LlamaFileType.MOSTLY_F16,
                torch.bfloat16: gguf.LlamaFileType.MOSTLY_BF16}[dtype])


@dataclass(frozen=True)
class TargetFacts:
    path: Path
    architectures: list[str]
    context_length: int


def load_target_facts(config: DraftConfig, target: str | os.PathLike) -> TargetFacts:
    """The target's directory, architectures and context length, checked against the draft (sizes, layer ids)."""
    from transformers import AutoConfig

    from eaglespec.models import resolve_model_path
    from eaglespec.models.target import check_draft_matches_target

    path = Path(resolve_model_path(target)).resolve()
    cfg = AutoConfig.from_pretrained(str(path))
    check_draft_matches_target(config, cfg, source="draft")
    text = cfg.get_text_config()
    context = getattr(text, "max_position_embeddings", None) or config.max_position_embeddings
    return TargetFacts(path, list(getattr(cfg, "architectures", None) or []), int(context))


def capture_graph(architectures: list[str]) -> str | None:
    """The llama.cpp graph of the first target architecture that captures layer inputs (None: none does)."""
    return next((LLAMACPP_CAPTURE_TARGETS[a] for a in architectures if a in LLAMACPP_CAPTURE_TARGETS), None)


def base_metadata(arch: str, config: DraftConfig, dtype: torch.dtype, context_length: int,
                  name: str) -> dict[str, MetaValue]:
    """general.* and the Llama-shaped `{arch}.*` keys of a draft's decoder layers (sizes, heads, RoPE, RMS eps)."""
    u32 = "UINT32"
    rope_theta = float(config.rope_parameters.get("rope_theta", 10000.0))
    return {
        "general.architecture": MetaValue(arch, "STRING"),
        "general.type": MetaValue("model", "STRING"),
        "general.name": MetaValue(name, "STRING"),
        "general.file_type": MetaValue(file_type(dtype), u32),
        "general.quantization_version": MetaValue(2, u32),  # ggml's current quantization format version
        f"{arch}.block_count": MetaValue(config.num_hidden_layers, u32),
        f"{arch}.context_length": MetaValue(int(context_length), u32),
        f"{arch}.embedding_length": MetaValue(config.hidden_size, u32),
        f"{arch}.feed_forward_length": MetaValue(config.intermediate_size, u32),
        f"{arch}.attention.head_count": MetaValue(config.num_attention_heads, u32),
        f"{arch}.attention.head_count_kv": MetaValue(config.num_key_value_heads, u32),
        f"{arch}.attention.key_length": MetaValue(config.head_dim, u32),
        f"{arch}.attention.value_length": MetaValue(config.head_dim, u32),
        f"{arch}.attention.layer_norm_rms_epsilon": MetaValue(float(config.rms_norm_eps), "FLOAT32"),
        f"{arch}.rope.freq_base": MetaValue(rope_theta, "FLOAT32"),
    }


def common_problems(config: DraftConfig, architectures: list[str], arch: str) -> list[str]:
    """What neither llama.cpp draft architecture can compute as we do (each problem named)."""
    problems = []
    if capture_graph(architectures) is None:
        problems.append(f"target architectures {architectures}: llama.cpp captures the layer inputs a {arch} draft "
                        f"needs only in the graphs of {sorted(LLAMACPP_CAPTURE_TARGETS)}")
    if config.hidden_act != "silu":
        problems.append(f"hidden_act {config.hidden_act!r}: llama.cpp's {arch} MLP is SiLU-gated")
    if config.attention_bias:
        problems.append(f"attention_bias=True: llama.cpp's {arch} attention has no biases")
    rope_type = config.rope_parameters.get("rope_type", "default")
    if rope_type != "default":
        problems.append(f"RoPE type {rope_type!r}: this export writes default RoPE only")
    return problems
