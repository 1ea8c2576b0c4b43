"""Build an (untrained) draft head for any supported target in one call."""

from __future__ import annotations

import logging

import torch
from torch import nn

from eaglespec.models.config import DraftConfig, default_aux_layer_ids, validate_aux_layer_ids
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
) -> DraftConfig:
    cfg = target.config
    H = target.hidden_size
    num_heads = int(cfg.num_attention_heads)
    V = target.vocab_size
    if method == "eagle3":
        L = target.num_hidden_layers
        aux = validate_aux_layer_ids(aux_layer_ids, L) if aux_layer_ids else default_aux_layer_ids(L)
        if len(set(aux)) < len(aux):
            logger.warning("target has only %d layers: EAGLE-3 aux layer ids %s repeat", L, aux)
    else:
        if aux_layer_ids:
            raise ValueError("aux layer ids apply to eagle3 drafts only")
        aux = []
        if draft_vocab_size not in (None, V):
            raise ValueError(f"eagle1 drafts use the target's full vocabulary ({V}); got draft_vocab_size={draft_vocab_size}")
    Vd = V if draft_vocab_size is None else int(draft_vocab_size)
    if not 0 < Vd <= V:
        raise ValueError(f"draft_vocab_size={Vd}: expected 1..{V} (the target vocabulary size)")
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
    )


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
) -> EagleDraftModel:
    """An untrained draft for `target`: embedding copied and frozen; EAGLE-3 lm_head = target rows.

    For EAGLE-3 with draft_vocab_size < V, pass `used_tokens` (the kept target ids, e.g. from
    `eaglespec.data.vocab`); without it the first Vd ids are kept (fine for tests, weak for training).
    """
    target = target if isinstance(target, TargetModel) else TargetModel(target)
    if used_tokens is not None and draft_vocab_size is None:
        draft_vocab_size = int(torch.as_tensor(used_tokens).numel())
    config = draft_config_for(target, method, draft_vocab_size, aux_layer_ids, fc_bias)
    if seed is not None:
        torch.manual_seed(seed)
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
