"""`export_dflash_gguf`: a DFlash draft -> the GGUF llama.cpp's `dflash` architecture loads (`-md DRAFT.gguf
--spec-type draft-dflash`), written with the `gguf` package and read back to check it.

What llama.cpp reads (src/models/dflash.cpp, common/speculative.cpp and its converter's DFlashModel of the pinned
build):
  - `dflash.target_layers`: target layer INPUTS (llama.cpp captures the input of layer k, Hugging Face
    `hidden_states[k]`): our aux ids exactly (its converter adds 1 to z-lab's layer-output ids to get them); ours
    are below the target's depth (checked against the target), so none asks for the final output, which only three
    llama.cpp graphs capture (none of them `llama` or `qwen3`);
  - `dflash.block_size` (llama.cpp drafts n-max + 1 <= block_size slots per step: the anchor and n-max masks),
    `tokenizer.ggml.mask_token_id` (the block's mask token), the Llama keys of the draft's layers and the
    target's tokenizer;
  - tensors: `fc` [F -> H], `enc.output_norm` (our `hidden_norm`), per layer `attn_norm`, `attn_q/k/v`,
    `attn_q_norm` / `attn_k_norm` (per head), `attn_output`, `ffn_norm`, `ffn_gate/up/down`, and `output_norm`;
    no `token_embd` or `output`: llama.cpp then uses the target's, as we do. Norms stay F32.
  - RoPE: llama.cpp runs this architecture with NEOX rope (the two halves of each head, Hugging Face's order), so
    q_proj / k_proj rows are written unchanged (the eagle3 GGUF must reorder them; this one must not).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from eaglespec.export.gguf_common import (
    GGUFExportReport,
    TargetFacts,
    base_metadata,
    capture_graph,
    common_problems,
    gguf_dtype,
    load_target_facts,
)
from eaglespec.export.gguf_vocab import MetaValue, tokenizer_metadata
from eaglespec.export.layout import TensorSpec
from eaglespec.models.config import DraftConfig

ARCH = "dflash"
GLOBAL_TENSORS = {"fc.weight": "fc.weight", "hidden_norm.weight": "enc.output_norm.weight",
                  "norm.weight": "output_norm.weight"}
LAYER_TENSORS = {  # under layers.{i}. (ours, z-lab's) -> under blk.{i}. (llama.cpp's)
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "self_attn.q_norm.weight": "attn_q_norm.weight",
    "self_attn.k_norm.weight": "attn_k_norm.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}


def tensor_names(config: DraftConfig) -> dict[str, str]:
    """Our tensor name -> llama.cpp's, for every tensor of the draft."""
    names = dict(GLOBAL_TENSORS)
    for i in range(config.num_hidden_layers):
        names.update({f"layers.{i}.{ours}": f"blk.{i}.{theirs}" for ours, theirs in LAYER_TENSORS.items()})
    return names


def dflash_tensors(config: DraftConfig, state: dict[str, torch.Tensor], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Our state dict -> llama.cpp's tensors (renamed, cast; norms F32)."""
    names = tensor_names(config)
    unknown = sorted(set(state) - set(names))
    assert not unknown, f"tensors without a GGUF name: {unknown}"
    return {theirs: (t := state[ours].detach().cpu()).to(dtype if t.dim() == 2 else torch.float32)
            for ours, theirs in names.items()}


def expected_dflash_tensors(config: DraftConfig, dtype: torch.dtype) -> dict[str, TensorSpec]:
    """Every tensor of the GGUF of this draft, shapes in torch (row-major) order."""
    from eaglespec.export.layout import our_tensor_specs

    ours = our_tensor_specs(config, dtype)
    return {theirs: TensorSpec(theirs, ours[name].shape, dtype if len(ours[name].shape) == 2 else torch.float32)
            for name, theirs in tensor_names(config).items()}


def dflash_metadata(config: DraftConfig, dtype: torch.dtype, context_length: int, name: str) -> dict[str, MetaValue]:
    """The general.* and dflash.* keys llama.cpp reads for this draft, and its mask token."""
    return {
        **base_metadata(ARCH, config, dtype, context_length, name),
        f"{ARCH}.block_size": MetaValue(config.block_size, "UINT32"),
        f"{ARCH}.target_layers": MetaValue([int(i) for i in config.aux_layer_ids], "ARRAY", "INT32"),
    }


def check_dflash_representable(config: DraftConfig, info: TargetFacts) -> None:
    """Refuse, with the reason, a DFlash draft llama.cpp's dflash architecture would not compute as we do."""
    problems = common_problems(config, info.architectures, ARCH)
    if problems:
        raise ValueError("llama.cpp's dflash cannot represent this draft: " + "; ".join(problems))


def export_dflash_gguf(draft_dir: str | os.PathLike, output: Path, target: str | os.PathLike | None,
                       dtype: str | None = None) -> GGUFExportReport:
    """The DFlash branch of `export_gguf` (it checked `output` and resolved `draft_dir`)."""
    from eaglespec.export.gguf_io import check_gguf, write_gguf
    from eaglespec.models.dflash import DFlashDraftModel

    if target is None:
        raise ValueError(f"{draft_dir}: the GGUF carries the target's tokenizer; pass --target PATH")
    model = DFlashDraftModel.from_pretrained(draft_dir)
    config, state = model.config, model.state_dict()
    info = load_target_facts(config, target)
    check_dflash_representable(config, info)
    float_dtype = gguf_dtype(dtype) or model.fc.weight.dtype
    tensors = dflash_tensors(config, state, float_dtype)
    expected = expected_dflash_tensors(config, float_dtype)
    metadata = {**dflash_metadata(config, float_dtype, info.context_length, Path(draft_dir).name),
                **tokenizer_metadata(info.path, config.vocab_size),
                "tokenizer.ggml.mask_token_id": MetaValue(int(config.mask_token_id), "UINT32")}
    output.parent.mkdir(parents=True, exist_ok=True)
    write_gguf(output, ARCH, metadata, tensors, check=lambda written: check_gguf(written, metadata, expected))
    notes = [f"target {info.path} ({', '.join(info.architectures)}: llama.cpp graph "
             f"{capture_graph(info.architectures)!r})",
             f"target_layers {list(config.aux_layer_ids)}: inputs of those target layers, as ours (z-lab's ids + 1)",
             f"block_size {config.block_size}: run llama.cpp with --spec-draft-n-max {config.block_size - 1} to draft "
             "the block as trained (it drafts n-max + 1 slots)",
             "q/k rows unchanged (llama.cpp's dflash uses NEOX rope, Hugging Face's order)"]
    return GGUFExportReport(output, [expected[n] for n in sorted(expected)], metadata, notes)
