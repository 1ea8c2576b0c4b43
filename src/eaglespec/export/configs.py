"""config.json of each export format, and reading those configs back into a `DraftConfig`.

Aux layer ids (EAGLE-3). Ours: id k = Hugging Face `hidden_states[k]` = the input of target layer k.
  - vLLM reads the top-level `eagle_aux_hidden_state_layer_ids` in that same numbering (it captures the embedding
    output as 0 and the output of layer i as i + 1) and, only when that key is absent, `eagle_config`'s.
  - SGLang reads `eagle_config.eagle_aux_hidden_state_layer_ids` as layer OUTPUTS (it captures before layer id + 1),
    so its id is ours - 1.
  - Both default to the inputs of layers [2, L//2, L-3] when no ids are given, and both capture each layer once in
    increasing order. The reference EAGLE hard-codes those default layers.
So: default ids are omitted (each engine uses its own, equal, default); other increasing ids are written in each
engine's numbering; ids the engines cannot express are refused with the reason.
"""

from __future__ import annotations

from typing import Any

import torch

from eaglespec.models.config import DraftConfig

ENGINE_EAGLE3_ARCH = "LlamaForCausalLMEagle3"  # SGLang's class; vLLM maps the same name to Eagle3LlamaForCausalLM
SGLANG_EAGLE1_ARCH = "LlamaForCausalLMEagle"
VLLM_EAGLE1_ARCH = "EagleLlamaForCausalLM"
REFERENCE_EAGLE1_ARCH = "LlamaForCausalLM"  # what the reference's EAGLE-1 configs declare
SPECULATORS_ARCH = "Eagle3Speculator"
# Draft tokens per step vLLM runs for a speculators checkpoint (its `speculative_tokens`); speculators' own
# converter writes 3, and vLLM's EAGLE-3 examples use 3 too.
SPECULATIVE_TOKENS = 3
REFERENCE_ROPE_SCALINGS = ("linear", "dynamic")  # the only rope_scaling types the reference's draft layer builds


def engine_default_aux_ids(num_target_layers: int) -> list[int]:
    L = num_target_layers
    return [2, L // 2, L - 3]


def _num_target_layers(config: DraftConfig) -> int:
    if config.target is None:
        raise ValueError("the draft config records no target (num_hidden_layers unknown); re-create it with init-draft")
    return config.target.num_hidden_layers


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def rope_fields(config: DraftConfig) -> dict[str, Any]:
    """rope_theta + legacy rope_scaling (None for default RoPE): read by transformers 4 and 5, SGLang and vLLM."""
    rope = dict(config.rope_parameters)
    theta = float(rope.pop("rope_theta", 10000.0))
    scaling = rope if rope.get("rope_type", "default") != "default" else None
    return {"rope_theta": theta, "rope_scaling": scaling}


def llama_fields(config: DraftConfig, dtype: torch.dtype) -> dict[str, Any]:
    """The Llama config of the one draft decoder layer, as engines and transformers read it."""
    return {
        "model_type": "llama",
        "hidden_size": config.hidden_size,
        "intermediate_size": config.intermediate_size,
        "num_attention_heads": config.num_attention_heads,
        "num_key_value_heads": config.num_key_value_heads,
        "head_dim": config.head_dim,
        "num_hidden_layers": 1,
        "rms_norm_eps": config.rms_norm_eps,
        "hidden_act": config.hidden_act,
        "max_position_embeddings": config.max_position_embeddings,
        "vocab_size": config.vocab_size,
        "attention_bias": config.attention_bias,
        "mlp_bias": False,
        "tie_word_embeddings": False,
        "torch_dtype": dtype_name(dtype),
        **rope_fields(config),
    }


def engine_aux_fields(config: DraftConfig, fmt: str) -> tuple[dict[str, Any], str]:
    """The aux-id config keys for SGLang/vLLM, and a sentence saying what was decided."""
    ids, L = list(config.aux_layer_ids), _num_target_layers(config)
    if ids == engine_default_aux_ids(L):
        return {}, f"aux layer ids {ids} are the engines' default (inputs of layers 2, L//2, L-3): ids omitted"
    if ids != sorted(set(ids)):
        raise ValueError(
            f"aux layer ids {ids}: SGLang and vLLM capture each target layer once, in increasing layer order, and "
            "concatenate in that order, so a draft trained on repeated or unordered ids would get other features; "
            "train with strictly increasing ids")
    if fmt == "sglang" and ids[0] == 0:
        raise ValueError(
            f"aux layer ids {ids}: id 0 is the embedding output, which SGLang cannot capture (it numbers layer "
            "outputs, so it would need id -1); use --format vllm or train with ids >= 1")
    fields: dict[str, Any] = {"eagle_aux_hidden_state_layer_ids": ids}
    note = f"aux layer ids: vLLM top-level {ids} (layer inputs)"
    if ids[0] >= 1:
        fields["eagle_config"] = {"eagle_aux_hidden_state_layer_ids": [i - 1 for i in ids], "use_aux_hidden_state": True}
        note += f", SGLang eagle_config {[i - 1 for i in ids]} (layer outputs)"
    return fields, note


def engine_config(config: DraftConfig, fmt: str, dtype: torch.dtype) -> tuple[dict[str, Any], list[str]]:
    """config.json for SGLang / vLLM (fmt 'sglang' or 'vllm')."""
    fields = llama_fields(config, dtype)
    if config.method == "eagle1":
        arch = SGLANG_EAGLE1_ARCH if fmt == "sglang" else VLLM_EAGLE1_ARCH
        return {"architectures": [arch], **fields}, []
    aux, note = engine_aux_fields(config, fmt)
    cfg = {"architectures": [ENGINE_EAGLE3_ARCH], **fields, "draft_vocab_size": config.draft_vocab_size,
           "target_hidden_size": config.target_hidden_size, **aux}
    return cfg, [note]


def reference_config(config: DraftConfig, dtype: torch.dtype) -> tuple[dict[str, Any], list[str]]:
    """config.json for the reference EAGLE's EaModel (its draft layer derives head_dim = H / heads and knows only
    default, linear and dynamic RoPE; its EAGLE-3 target feeds the inputs of layers 2, L//2, L-3)."""
    if config.head_dim * config.num_attention_heads != config.hidden_size:
        raise ValueError(f"the reference EAGLE computes head_dim = hidden_size / heads = "
                         f"{config.hidden_size // config.num_attention_heads}; this draft has head_dim {config.head_dim}")
    if config.attention_bias:
        raise ValueError("the reference EAGLE's draft attention has no bias; this draft has attention_bias=True")
    fields = llama_fields(config, dtype)
    rope = fields["rope_scaling"]
    if rope is not None:
        if rope.get("rope_type") not in REFERENCE_ROPE_SCALINGS:
            raise ValueError(f"RoPE type {rope.get('rope_type')!r}: the reference EAGLE supports only "
                             f"{REFERENCE_ROPE_SCALINGS} scaling")
        fields["rope_scaling"] = {"type": rope["rope_type"], "factor": rope["factor"]}
    if config.method == "eagle1":
        return {"architectures": [REFERENCE_EAGLE1_ARCH], **fields, "bias": config.fc_bias}, []
    L = _num_target_layers(config)
    if list(config.aux_layer_ids) != engine_default_aux_ids(L) or len(set(config.aux_layer_ids)) < 3:
        raise ValueError(f"aux layer ids {config.aux_layer_ids}: the reference EAGLE always feeds the inputs of layers "
                         f"{engine_default_aux_ids(L)} (distinct only for targets of 8+ layers); export as sglang/vllm")
    cfg = {"architectures": [ENGINE_EAGLE3_ARCH], **fields, "draft_vocab_size": config.draft_vocab_size,
           "target_hidden_size": config.target_hidden_size}
    return cfg, [f"aux layer ids {config.aux_layer_ids}: the reference's fixed layers"]


def speculators_config(config: DraftConfig, dtype: torch.dtype, verifier_path: str, verifier_architectures: list[str],
                       speculative_tokens: int = SPECULATIVE_TOKENS) -> tuple[dict[str, Any], list[str]]:
    """config.json in the speculators format (`vllm serve DIR` reads the method and the verifier from it)."""
    layer = {"architectures": ["LlamaForCausalLM"], **llama_fields(config, dtype)}
    cfg = {
        "architectures": [SPECULATORS_ARCH],
        "speculators_model_type": "eagle3",
        "transformer_layer_config": layer,
        "draft_vocab_size": config.draft_vocab_size,
        "target_hidden_size": config.target_hidden_size,
        "norm_before_residual": False,  # our residual is the un-normed fused hidden (vLLM's default here is True)
        "norm_before_fc": False,
        "fc_norm": False,
        "norm_output": False,
        "eagle_aux_hidden_state_layer_ids": list(config.aux_layer_ids),  # layer inputs, as ours
        "speculators_config": {
            "algorithm": "eagle3",
            "proposal_methods": [{"proposal_type": "greedy", "speculative_tokens": int(speculative_tokens)}],
            "default_proposal_method": "greedy",
            "verifier": {"name_or_path": verifier_path, "architectures": list(verifier_architectures)},
        },
        "torch_dtype": dtype_name(dtype),
    }
    return cfg, [f"verifier {verifier_path}; {speculative_tokens} speculative tokens; "
                 f"aux layer ids {list(config.aux_layer_ids)} (layer inputs)"]


DFLASH_ARCH = "DFlashDraftModel"  # z-lab's class name; vLLM maps it to its DFlashQwen3ForCausalLM
DFLASH_MODEL_TYPE = "qwen3"  # the drafter's layers are Qwen3's (per-head q / k norms), whatever the target


def dflash_layer_fields(config: DraftConfig, dtype: torch.dtype) -> dict[str, Any]:
    """The Qwen3 config of a DFlash draft's decoder layers (all of them: z-lab's and speculators' layers)."""
    return {**llama_fields(config, dtype), "model_type": DFLASH_MODEL_TYPE, "num_hidden_layers": config.num_hidden_layers,
            "layer_types": ["full_attention"] * config.num_hidden_layers}


def dflash_config(config: DraftConfig, dtype: torch.dtype) -> tuple[dict[str, Any], list[str]]:
    """config.json of a DFlash draft in z-lab's layout, which vLLM and SGLang load: its layer ids are target layer
    OUTPUTS (ours, hidden_states indices, minus 1); block_size both at the top (older readers) and in
    dflash_config (newer ones)."""
    ids = [i - 1 for i in config.aux_layer_ids]
    fields = dflash_layer_fields(config, dtype)
    cfg = {"architectures": [DFLASH_ARCH], **fields, "block_size": config.block_size,
           "num_target_layers": _num_target_layers(config),
           "dflash_config": {"mask_token_id": config.mask_token_id, "target_layer_ids": ids,
                             "block_size": config.block_size}}
    note = (f"target layer ids {ids} (z-lab: layer outputs; ours {list(config.aux_layer_ids)}: hidden_states indices); "
            f"vLLM: --speculative-config '{{\"method\": \"dflash\", \"num_speculative_tokens\": "
            f"{config.block_size - 1}}}'")
    return cfg, [note]


DFLASH_SPECULATORS_ARCH = "DFlashSpeculator"


def dflash_speculators_config(config: DraftConfig, dtype: torch.dtype, verifier_path: str,
                              verifier_architectures: list[str]) -> tuple[dict[str, Any], list[str]]:
    """config.json of a DFlash draft in speculators' format (`speculators.models.dflash`; vLLM reads it as its
    `dflash` method). Its `aux_hidden_state_layer_ids` are hidden_states indices (layer inputs), ours unchanged
    (vLLM subtracts 1 for its DFlash model); it drafts block_size - 1 tokens, as speculators writes; the block is
    bidirectional (`sliding_window_non_causal`: without a sliding window speculators' mask is non-causal anyway,
    and vLLM reads a missing or false key as a causal block in its newer versions)."""
    ids = list(config.aux_layer_ids)
    tokens = config.block_size - 1
    cfg = {
        "architectures": [DFLASH_SPECULATORS_ARCH],
        "speculators_model_type": "dflash",
        "transformer_layer_config": {"architectures": ["Qwen3ForCausalLM"], **dflash_layer_fields(config, dtype)},
        "draft_vocab_size": config.vocab_size,  # the full vocabulary: no d2t / t2d
        "block_size": config.block_size,
        "target_hidden_size": config.hidden_size,
        "aux_hidden_state_layer_ids": ids,
        "mask_token_id": config.mask_token_id,
        "sliding_window_non_causal": True,
        "sample_from_anchor": False,
        "tie_word_embeddings": False,
        "speculators_config": {
            "algorithm": "dflash",
            "proposal_methods": [{"proposal_type": "greedy", "speculative_tokens": tokens, "verifier_accept_k": 1,
                                  "accept_tolerance": 0.0}],
            "default_proposal_method": "greedy",
            "verifier": {"name_or_path": verifier_path, "architectures": list(verifier_architectures)},
        },
        "torch_dtype": dtype_name(dtype),
    }
    return cfg, [f"verifier {verifier_path}; {tokens} speculative tokens (the block); aux layer ids {ids} (layer "
                 f"inputs; vLLM's DFlash reads {[i - 1 for i in ids]}); embed_tokens and lm_head copied from the "
                 f"target, as speculators saves them"]
