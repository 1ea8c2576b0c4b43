"""DFlash draft (arXiv 2602.06036): a block of tokens drafted in ONE forward of a small target-width decoder whose
keys and values also hold the target's features (plain PyTorch, our own code; layout of z-lab's DFlashDraftModel).

Glossary as in `draft.py`: H = hidden size (the target's), F = concatenated target features (one H per aux layer),
B = batch, T = block tokens in this forward, C = new context positions, S = cached + C + T keys.

    ctx = hidden_norm(fc(cat(target layer outputs)))          # [B, C, F] -> [B, C, H], one per context position
    x   = embed([anchor, MASK, ..., MASK])                   # the target's embedding, frozen; [B, T, H]
    per layer:  h = input_layernorm(x)
                q = q_norm(q_proj(h));  k = k_norm(k_proj([ctx ; h]));  v = v_proj([ctx ; h])
                x = x + o_proj(attention(q, k, v))            # context: its own positions; block: anchor's onward
                x = x + mlp(post_attention_layernorm(x))
    logits = target_lm_head(norm(x))                          # slot k predicts the token at anchor position + k

The context never passes a layer's input norm; it is projected once (fc + hidden_norm) and every layer makes its
own keys and values of it. Attention: a block sees every context position before its anchor and all of its own
slots (bidirectional); `block_attention_mask` builds that for any number of blocks (training) and the decoder's
case (one block after the whole cached context) alike. Tensor names are z-lab's (`fc`, `hidden_norm`,
`layers.{i}.*` with `self_attn.q_norm` / `k_norm`, `norm`); the embedding and lm_head are the target's, bound at
load and never saved.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from transformers.models.llama.modeling_llama import LlamaMLP, LlamaRMSNorm, LlamaRotaryEmbedding, rotate_half

from eaglespec.models.config import DFLASH, DraftConfig
from eaglespec.models.draft import WEIGHTS_NAME, llama_config, load_strict


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """RoPE on [B, heads, N, hd] with cos / sin [B, N, hd]."""
    return x * cos[:, None] + rotate_half(x) * sin[:, None]


class DFlashAttention(nn.Module):
    """GQA attention whose queries are the block's and whose keys / values are [context ; block]."""

    def __init__(self, config: DraftConfig):
        super().__init__()
        nh, nkv, hd, H = config.num_attention_heads, config.num_key_value_heads, config.head_dim, config.hidden_size
        self.num_heads, self.num_kv_heads, self.head_dim = nh, nkv, hd
        self.q_proj = nn.Linear(H, nh * hd, bias=config.attention_bias)
        self.k_proj = nn.Linear(H, nkv * hd, bias=config.attention_bias)
        self.v_proj = nn.Linear(H, nkv * hd, bias=config.attention_bias)
        self.o_proj = nn.Linear(nh * hd, H, bias=config.attention_bias)
        self.q_norm = LlamaRMSNorm(hd, eps=config.rms_norm_eps)
        self.k_norm = LlamaRMSNorm(hd, eps=config.rms_norm_eps)

    def forward(self, x: torch.Tensor, ctx: torch.Tensor, position_embeddings: tuple[torch.Tensor, torch.Tensor],
                attention_mask: torch.Tensor, cache=None, layer_idx: int = 0) -> torch.Tensor:
        B, T, _ = x.shape
        kv_in = torch.cat((ctx, x), dim=1)  # [B, C + T, H]
        q = self.q_norm(self.q_proj(x).view(B, T, self.num_heads, self.head_dim)).transpose(1, 2)
        k = self.k_norm(self.k_proj(kv_in).view(B, -1, self.num_kv_heads, self.head_dim)).transpose(1, 2)
        v = self.v_proj(kv_in).view(B, -1, self.num_kv_heads, self.head_dim).transpose(1, 2)
        cos, sin = position_embeddings  # [B, C + T, hd]
        C = kv_in.shape[1] - T
        q, k = rotate(q, cos[:, C:], sin[:, C:]), rotate(k, cos, sin)  # T may be 0: context keys / values only
        if cache is not None:
            k, v = cache.update(k, v, layer_idx)  # [B, nkv, S, hd]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attention_mask,
                                             enable_gqa=self.num_heads != self.num_kv_heads)
        return self.o_proj(out.transpose(1, 2).reshape(B, T, self.num_heads * self.head_dim))


class DFlashDecoderLayer(nn.Module):
    def __init__(self, config: DraftConfig):
        super().__init__()
        self.input_layernorm = LlamaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.self_attn = DFlashAttention(config)
        self.post_attention_layernorm = LlamaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.mlp = LlamaMLP(llama_config(config))

    def forward(self, x, ctx, position_embeddings, attention_mask, cache=None, layer_idx: int = 0) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), ctx, position_embeddings, attention_mask, cache, layer_idx)
        return x + self.mlp(self.post_attention_layernorm(x))


def block_attention_mask(anchors: torch.Tensor, block_size: int, context: int, past: int = 0) -> torch.Tensor:
    """bool [1, 1, N * block_size, past + context + N * block_size] for N blocks anchored at absolute positions
    `anchors` [N]: a block's slots see every context position before its anchor (`past` cached ones, then
    `context` new ones at positions past..past + context - 1) and every slot of their own block."""
    device = anchors.device
    slot_anchor = anchors.repeat_interleave(block_size)  # [N * bs]
    ctx_pos = torch.arange(past + context, device=device)
    sees_ctx = ctx_pos[None, :] < slot_anchor[:, None]
    block_of = torch.arange(anchors.numel(), device=device).repeat_interleave(block_size)
    sees_block = block_of[:, None] == block_of[None, :]
    return torch.cat((sees_ctx, sees_block), dim=1)[None, None]


class DFlashDraftModel(nn.Module):
    """A DFlash drafter. Build it from a target with `eaglespec.models.build_draft(target, "dflash", ...)`."""

    def __init__(self, config: DraftConfig):
        super().__init__()
        if not config.is_dflash:
            raise ValueError(f"DFlashDraftModel needs a dflash config, got method {config.method!r}")
        self.config = config
        H = config.hidden_size
        self.fc = nn.Linear(config.fc_in_features, H, bias=False)
        self.hidden_norm = LlamaRMSNorm(H, eps=config.rms_norm_eps)
        self.layers = nn.ModuleList(DFlashDecoderLayer(config) for _ in range(config.num_hidden_layers))
        self.norm = LlamaRMSNorm(H, eps=config.rms_norm_eps)
        # bound from the target, outside the module tree: neither saved, trained nor moved twice
        object.__setattr__(self, "_target_embedding", None)
        object.__setattr__(self, "_target_lm_head", None)
        object.__setattr__(self, "_rope", LlamaRotaryEmbedding(llama_config(config)))  # fp32 frequencies

    @property
    def method(self) -> str:
        return DFLASH

    @property
    def block_size(self) -> int:
        return self.config.block_size

    def bind_target(self, embedding: nn.Module, lm_head: nn.Module) -> None:
        """The target's input embedding and lm_head, which the drafter reads its block through and scores with."""
        V, H = self.config.vocab_size, self.config.hidden_size
        for name, module in (("input embedding", embedding), ("lm_head", lm_head)):
            if tuple(module.weight.shape) != (V, H):
                raise ValueError(f"target {name} has shape {tuple(module.weight.shape)}, the draft expects {(V, H)}")
        object.__setattr__(self, "_target_embedding", embedding)
        object.__setattr__(self, "_target_lm_head", lm_head)

    def _bound(self) -> tuple[nn.Module, nn.Module]:
        if self._target_embedding is None:
            raise RuntimeError("this dflash draft has no target bound: load it with its target "
                               "(eaglespec.models.load_draft(path, target=...)) or call bind_target()")
        return self._target_embedding, self._target_lm_head

    def project_target_features(self, features: torch.Tensor) -> torch.Tensor:
        """Concatenated target layer outputs [B, C, F] -> the context every layer attends to [B, C, H]."""
        return self.hidden_norm(self.fc(features))

    def block_ids(self, anchors: torch.Tensor) -> torch.Tensor:
        """[N] anchor tokens -> [N, block_size]: each anchor followed by mask tokens."""
        ids = torch.full((anchors.numel(), self.block_size), self.config.mask_token_id, device=anchors.device)
        ids[:, 0] = anchors
        return ids

    def forward(
        self,
        input_ids: torch.Tensor,  # [B, T] block tokens (anchor, masks; several blocks side by side in training)
        context: torch.Tensor,  # [B, C, H] projected target features of C new context positions (C may be 0)
        position_ids: torch.Tensor,  # [B, C + T] positions of the context, then of the block tokens
        attention_mask: torch.Tensor,  # bool [B or 1, 1, T, S], True = may attend
        cache=None,  # transformers Cache: context keys / values of earlier calls (layer i = draft layer i)
    ) -> torch.Tensor:
        """The block's hidden states after the final norm [B, T, H]."""
        if attention_mask.dtype != torch.bool:
            raise TypeError(f"attention_mask must be a bool tensor (True = attend), got {attention_mask.dtype}")
        embedding, _ = self._bound()
        x = embedding(input_ids).to(context.dtype)
        if self._rope.inv_freq.device != x.device:
            self._rope.to(x.device)  # device only; inv_freq stays float32
        position_embeddings = self._rope(x, position_ids)
        for i, layer in enumerate(self.layers):
            x = layer(x, context, position_embeddings, attention_mask, cache, i)
        return self.norm(x)

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """Block hidden states -> logits over the target vocabulary (the target's lm_head)."""
        _, lm_head = self._bound()
        return lm_head(hidden_states.to(lm_head.weight.dtype))

    def trainable_parameter_names(self) -> list[str]:
        return [n for n, p in self.named_parameters() if p.requires_grad]

    def save_pretrained(self, directory: str | os.PathLike, dtype: torch.dtype | None = None) -> None:
        """config.json + model.safetensors (floating tensors cast to `dtype` if given); no embedding, no lm_head."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        state = {name: (t.detach().to(dtype) if dtype is not None and t.is_floating_point() else t.detach())
                 .contiguous().cpu() for name, t in self.state_dict().items()}
        save_file(state, str(directory / WEIGHTS_NAME), metadata={"format": "pt", "method": self.method})
        self.config.save(directory)

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, target=None, dtype: torch.dtype | None = None,
                        device: str | torch.device | None = None) -> "DFlashDraftModel":
        """Load strictly; with `target` (a TargetModel or HF causal LM), check it is the draft's and bind its
        embedding and lm_head (without one the draft cannot run)."""
        directory = Path(directory)
        config = DraftConfig.load(directory)
        if not config.is_dflash:
            raise ValueError(f"{directory}: a {config.method} draft, not a dflash one")
        weights = directory / WEIGHTS_NAME
        if not weights.is_file():
            raise FileNotFoundError(f"{weights}: draft weights not found")
        model = cls(config)
        load_strict(model, load_file(str(weights)), str(weights))
        if dtype is not None:
            model.to(dtype)
        if device is not None:
            model.to(device)
        if target is not None:
            from eaglespec.models.target import TargetModel, check_draft_matches_target

            target = target if isinstance(target, TargetModel) else TargetModel(target)
            check_draft_matches_target(config, target.config, source=str(directory))
            model.bind_target(target.embed_tokens, target.lm_head)
        return model
