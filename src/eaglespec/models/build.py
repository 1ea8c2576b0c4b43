"""Build an (untrained) draft head for any supported target in one call."""

from __future__ import annotations

import dataclasses
import logging

import torch
from torch import nn

from eaglespec.models.config import (
    DFLASH,
    DFlashShape,
    DraftConfig,
    default_aux_layer_ids,
    default_dflash_layer_ids,
    validate_aux_layer_ids,
    validate_dflash_layer_ids,
)
from eaglespec.models.dflash import DFlashDraftModel
from eaglespec.models.draft import EagleDraftModel
from eaglespec.models.target import TargetModel

logger = logging.getLogger(__name__)

DEFAULT_ROPE_THETA = 10000.0


def _rope_parameters(cfg) -> dict:
    """The target's RoPE settings for the draft layer (full-attention ones for per-layer-type configs)."""
    rope = getattr(cfg, "rope_parameters", None) or {}
    if "full_attention" in rope:  # e.g. Gemma 3: {"full_attention": {...}, "sliding_attention": {...}}
        rope = rope["full_attention"]
    rope = {k: v for k, v in dict(rope).items() if k != "partial_rotary_factor"}
    rope.setdefault("rope_type", "default")
    rope.setdefault("rope_theta", getattr(cfg, "rope_theta", None) or DEFAULT_ROPE_THETA)
    return rope


def draft_config_for(
    target: TargetModel,
    method: str,
    draft_vocab_size: int | None = None,
    aux_layer_ids: list[int] | None = None,
    fc_bias: bool = False,
    dflash: DFlashShape | None = None,
) -> DraftConfig:
    cfg = target.config
    H = target.hidden_size
    num_heads = int(cfg.num_attention_heads)
    V = target.vocab_size
    aux = _aux_layer_ids(target, method, aux_layer_ids, dflash)
    if method != "eagle3" and draft_vocab_size not in (None, V):
        raise ValueError(f"{method} drafts use the target's full vocabulary ({V}); got draft_vocab_size={draft_vocab_size}")
    Vd = V if draft_vocab_size is None else int(draft_vocab_size)
    if not 0 < Vd <= V:
        raise ValueError(f"draft_vocab_size={Vd}: expected 1..{V} (the target vocabulary size)")
    shape = dflash or DFlashShape()
    extra = {"num_hidden_layers": shape.num_layers, "block_size": shape.block_size,
             "mask_token_id": shape.mask_token_id} if method == DFLASH else {}
    return DraftConfig(
        method=method,
        hidden_size=H,
        intermediate_size=int(getattr(cfg, "intermediate_size", None) or 4 * H),
        num_attention_heads=num_heads,
        num_key_value_heads=int(getattr(cfg, "num_key_value_heads", None) or num_heads),
        head_dim=int(getattr(cfg, "head_dim", None) or H // num_heads),
        vocab_size=V,
        draft_vocab_size=Vd,
        target_hidden_size=H,
        max_position_embeddings=target.max_position_embeddings,
        rms_norm_eps=float(getattr(cfg, "rms_norm_eps", None) or 1e-6),
        rope_parameters=_rope_parameters(cfg),
        fc_bias=fc_bias,
        aux_layer_ids=aux,
        target=target.info(),
        **extra,
    )


def _aux_layer_ids(target: TargetModel, method: str, ids: list[int] | None, dflash: DFlashShape | None) -> list[int]:
    """The target layers a draft reads (Hugging Face hidden_states indices), given or by the method's default."""
    L = target.num_hidden_layers
    if method == "eagle1":
        if ids:
            raise ValueError("aux layer ids apply to eagle3 and dflash drafts only")
        return []
    if method == DFLASH:
        n = (dflash or DFlashShape()).num_layers
        return validate_dflash_layer_ids(ids, L) if ids else default_dflash_layer_ids(L, n)
    aux = validate_aux_layer_ids(ids, L) if ids else default_aux_layer_ids(L)
    if len(set(aux)) < len(aux):
        logger.warning("target has only %d layers: EAGLE-3 aux layer ids %s repeat", L, aux)
    return aux


def set_draft_vocab(draft: EagleDraftModel, used_tokens: torch.Tensor, target_lm_head: nn.Module | None = None) -> None:
    """Install the draft vocabulary (sorted target ids kept) and, if given, init lm_head from the target rows.

    d2t[i] = used[i] - i (target id = i + d2t[i]); t2d[v] = v is kept.
    """
    used = torch.as_tensor(used_tokens, dtype=torch.long).flatten()
    Vd, V = draft.config.draft_vocab_size, draft.config.vocab_size
    if used.numel() != Vd:
        raise ValueError(f"draft vocabulary has {used.numel()} tokens, the draft expects {Vd}")
    if used.numel() > 1 and not bool((used[1:] > used[:-1]).all()):
        raise ValueError("draft vocabulary token ids must be strictly increasing")
    if used.numel() and (used[0] < 0 or used[-1] >= V):
        raise ValueError(f"draft vocabulary token ids must lie in 0..{V - 1}")
    with torch.no_grad():
        draft.d2t.copy_(used - torch.arange(Vd))
        draft.t2d.zero_()
        draft.t2d[used] = True
        if target_lm_head is not None:
            draft.lm_head.weight.copy_(target_lm_head.weight[used].to(draft.lm_head.weight.dtype))


def build_draft(
    target: TargetModel | nn.Module,
    method: str,
    draft_vocab_size: int | None = None,
    aux_layer_ids: list[int] | None = None,
    used_tokens: torch.Tensor | None = None,
    fc_bias: bool = False,
    dtype: torch.dtype = torch.float32,
    seed: int | None = None,
    dflash: DFlashShape | None = None,
) -> EagleDraftModel | DFlashDraftModel:
    """An untrained draft for `target`: embedding copied and frozen; EAGLE-3 lm_head = target rows; DFlash
    bound to the target's embedding and lm_head (`dflash`: its layers, block size and mask token).

    For EAGLE-3 with draft_vocab_size < V, pass `used_tokens` (the kept target ids, e.g. from
    `eaglespec.data.vocab`); without it the first Vd ids are kept (fine for tests, weak for training).
    """
    target = target if isinstance(target, TargetModel) else TargetModel(target)
    if used_tokens is not None and draft_vocab_size is None:
        draft_vocab_size = int(torch.as_tensor(used_tokens).numel())
    if method == DFLASH and (dflash is None or dflash.mask_token_id is None):
        dflash = dataclasses.replace(dflash or DFlashShape(), mask_token_id=dflash_mask_token(target.config))
    config = draft_config_for(target, method, draft_vocab_size, aux_layer_ids, fc_bias, dflash)
    if seed is not None:
        torch.manual_seed(seed)
    if method == DFLASH:
        draft = DFlashDraftModel(config).to(dtype)
        draft.bind_target(target.embed_tokens, target.lm_head)
        return draft
    draft = EagleDraftModel(config).to(dtype)
    with torch.no_grad():
        draft.embed_tokens.weight.copy_(target.embed_tokens.weight.to(dtype))
    if method == "eagle1":
        draft.bind_target_lm_head(target.lm_head)
    else:
        if used_tokens is None:
            if config.draft_vocab_size < config.vocab_size:
                logger.warning("no draft vocabulary given: keeping target ids 0..%d", config.draft_vocab_size - 1)
            used_tokens = torch.arange(config.draft_vocab_size)
        set_draft_vocab(draft, used_tokens, target.lm_head)
    return draft


def dflash_mask_token(target_config, tokenizer=None) -> int:
    """The token a DFlash block's drafted slots hold: the tokenizer's mask token, else the first embedding row no
    token uses, else the padding token, else end of text."""
    vocab = int(target_config.vocab_size)
    if tokenizer is not None and getattr(tokenizer, "mask_token_id", None) is not None:
        return int(tokenizer.mask_token_id)
    if tokenizer is not None and len(tokenizer) < vocab:
        return len(tokenizer)
    for name in ("pad_token_id", "eos_token_id"):
        token = getattr(target_config, name, None)
        token = token[0] if isinstance(token, list) and token else token
        if isinstance(token, int) and 0 <= token < vocab:
            return token
    raise ValueError("no DFlash mask token: the tokenizer has none and no unused row, and the target config names "
                     "no pad or eos token; pass one explicitly")
