"""EAGLE-1 and EAGLE-3 draft heads (plain PyTorch, one decoder layer each).

Glossary: H = draft hidden size (= target hidden size), Ht = target hidden size, V = target vocab,
Vd = draft vocab (EAGLE-3 lm_head rows), B = batch, T = new positions, S = cached + new positions.

EAGLE-1 (feature extrapolation)::
    x = fc(cat(embed(ids), f))            # f: target last hidden after final norm   [B, T, 2H] -> [B, T, H]
    x = x + attn(x)                        # no input_layernorm
    x = x + mlp(post_attention_layernorm(x))
    logits = target_lm_head(x)             # x is the predicted next target feature

EAGLE-3::
    h = fc(cat(aux_0, aux_1, aux_2))       # three target layer inputs, only for step 0  [B, T, 3Ht] -> [B, T, H]
    a = cat(input_layernorm(embed(ids)), hidden_norm(h))                              # [B, T, 2H]
    x = h + attn(a)
    x = x + mlp(post_attention_layernorm(x))     # pre-norm output: the hidden input of the next step
    logits = lm_head(norm(x))              # [B, T, Vd]; target id = i + d2t[i]

Tensor names follow the checkpoints vLLM / SGLang load (EAGLE_NOTES section 6).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import LlamaConfig
from transformers.models.llama.modeling_llama import (
    LlamaMLP,
    LlamaRMSNorm,
    LlamaRotaryEmbedding,
    apply_rotary_pos_emb,
)

from eaglespec.models.config import DraftConfig

EAGLE_METHODS = ("eagle1", "eagle3")

logger = logging.getLogger(__name__)

WEIGHTS_NAME = "model.safetensors"
EMBED_KEY = "embed_tokens.weight"
# safetensors metadata key: "target" = embed_tokens is not stored, it equals the target's input embedding and
# `from_pretrained(..., target=...)` binds it (copies it in) at load.
EMBED_META = "embed_tokens"


def llama_config(config: DraftConfig) -> LlamaConfig:
    """The Llama config of the single draft decoder layer (for transformers' MLP, norm and RoPE)."""
    return LlamaConfig(
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_attention_heads=config.num_attention_heads,
        num_key_value_heads=config.num_key_value_heads,
        head_dim=config.head_dim,
        num_hidden_layers=1,
        rms_norm_eps=config.rms_norm_eps,
        rope_parameters=dict(config.rope_parameters),
        max_position_embeddings=config.max_position_embeddings,
        hidden_act=config.hidden_act,
        vocab_size=config.vocab_size,
        mlp_bias=False,
    )


class DraftAttention(nn.Module):
    """Multi-head (GQA) attention whose input width may differ from its output width (EAGLE-3: 2H -> H)."""

    def __init__(self, in_features: int, config: DraftConfig):
        super().__init__()
        nh, nkv, hd = config.num_attention_heads, config.num_key_value_heads, config.head_dim
        self.num_heads, self.num_kv_heads, self.head_dim = nh, nkv, hd
        bias = config.attention_bias
        self.q_proj = nn.Linear(in_features, nh * hd, bias=bias)
        self.k_proj = nn.Linear(in_features, nkv * hd, bias=bias)
        self.v_proj = nn.Linear(in_features, nkv * hd, bias=bias)
        self.o_proj = nn.Linear(nh * hd, config.hidden_size, bias=bias)

    def forward(
        self,
        x: torch.Tensor,  # [B, T, in_features]
        position_embeddings: tuple[torch.Tensor, torch.Tensor],
        attention_mask: torch.Tensor,  # bool [B or 1, 1, T, S], True = may attend
        cache=None,  # transformers Cache; this head is its layer 0
    ) -> torch.Tensor:
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.num_heads, self.head_dim).transpose(1, 2)  # [B, nh, T, hd]
        k = self.k_proj(x).view(B, T, self.num_kv_heads, self.head_dim).transpose(1, 2)  # [B, nkv, T, hd]
        v = self.v_proj(x).view(B, T, self.num_kv_heads, self.head_dim).transpose(1, 2)
        cos, sin = position_embeddings
        q, k = apply_rotary_pos_emb(q, k, cos, sin)
        if cache is not None:
            k, v = cache.update(k, v, 0)  # [B, nkv, S, hd]
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attention_mask, enable_gqa=self.num_heads != self.num_kv_heads
        )
        return self.o_proj(out.transpose(1, 2).reshape(B, T, -1))


class DraftDecoderLayer(nn.Module):
    """The draft's one decoder layer. EAGLE-1: no input norm. EAGLE-3: two input norms, 2H attention."""

    def __init__(self, config: DraftConfig):
        super().__init__()
        llama = llama_config(config)
        H = config.hidden_size
        self.eagle3 = config.method == "eagle3"
        self.self_attn = DraftAttention(2 * H if self.eagle3 else H, config)
        self.mlp = LlamaMLP(llama)
        self.post_attention_layernorm = LlamaRMSNorm(H, eps=config.rms_norm_eps)
        if self.eagle3:
            self.input_layernorm = LlamaRMSNorm(H, eps=config.rms_norm_eps)
            self.hidden_norm = LlamaRMSNorm(H, eps=config.rms_norm_eps)

    def forward(self, embeds, hidden, position_embeddings, attention_mask, cache=None) -> torch.Tensor:
        if self.eagle3:
            attn_in = torch.cat((self.input_layernorm(embeds), self.hidden_norm(hidden)), dim=-1)
        else:
            attn_in = hidden
        x = hidden + self.self_attn(attn_in, position_embeddings, attention_mask, cache)
        return x + self.mlp(self.post_attention_layernorm(x))


def causal_mask(T: int, past: int, device: torch.device) -> torch.Tensor:
    """bool [1, 1, T, past + T]: query i (absolute position past + i) sees keys 0..past + i."""
    q = torch.arange(T, device=device)[:, None] + past
    k = torch.arange(past + T, device=device)[None, :]
    return (k <= q)[None, None]


class EagleDraftModel(nn.Module):
    """An EAGLE-1 or EAGLE-3 draft head. Build it from a target with `eaglespec.models.build_draft`."""

    def __init__(self, config: DraftConfig):
        super().__init__()
        if config.method not in EAGLE_METHODS:
            raise ValueError(f"a {config.method} draft is not an EAGLE one (eagle1 / eagle3); "
                             "eaglespec.models.load_draft loads any draft")
        self.config = config
        H = config.hidden_size
        self.embed_tokens = nn.Embedding(config.vocab_size, H)
        self.embed_tokens.weight.requires_grad_(False)  # a frozen copy of the target's embedding
        self.fc = nn.Linear(config.fc_in_features, H, bias=config.fc_bias and config.method == "eagle1")
        layer = DraftDecoderLayer(config)
        if config.method == "eagle1":
            self.layers = nn.ModuleList([layer])
            self._target_lm_head: nn.Linear | None = None  # bound from the target, never saved
        else:
            self.midlayer = layer
            self.norm = LlamaRMSNorm(H, eps=config.rms_norm_eps)
            self.lm_head = nn.Linear(H, config.draft_vocab_size, bias=False)
            self.register_buffer("d2t", torch.zeros(config.draft_vocab_size, dtype=torch.long))
            self.register_buffer("t2d", torch.ones(config.vocab_size, dtype=torch.bool))
        # Not a registered submodule: model.to(bf16) must not round the fp32 RoPE frequencies.
        object.__setattr__(self, "_rope", LlamaRotaryEmbedding(llama_config(config)))

    def _position_embeddings(self, x: torch.Tensor, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self._rope.inv_freq.device != x.device:
            self._rope.to(x.device)  # device only; inv_freq stays float32
        return self._rope(x, position_ids)  # cos, sin in x.dtype

    # ----------------------------------------------------------------------------------------------
    @property
    def method(self) -> str:
        return self.config.method

    @property
    def layer(self) -> DraftDecoderLayer:
        return self.layers[0] if self.method == "eagle1" else self.midlayer

    def bind_target_lm_head(self, lm_head: nn.Module) -> None:
        """EAGLE-1 predicts target features and scores them with the target's own (frozen) lm_head."""
        if self.method != "eagle1":
            raise ValueError("only eagle1 drafts use the target's lm_head")
        weight = lm_head.weight
        if tuple(weight.shape) != (self.config.vocab_size, self.config.hidden_size):
            raise ValueError(
                f"target lm_head has shape {tuple(weight.shape)}, the draft expects "
                f"{(self.config.vocab_size, self.config.hidden_size)}"
            )
        # Kept outside the module tree so it is neither saved nor trained nor moved twice.
        object.__setattr__(self, "_target_lm_head", lm_head)

    def project_target_features(self, features: torch.Tensor) -> torch.Tensor:
        """Target features -> the draft's hidden input at step 0.

        EAGLE-1: the target's last hidden state [B, T, H] is used as it is (fc comes after the concat).
        EAGLE-3: the concatenated aux states [B, T, 3Ht] go through fc -> [B, T, H].
        """
        if self.method == "eagle1":
            return features
        return self.fc(features)

    def forward(
        self,
        input_ids: torch.Tensor,  # [B, T] tokens x_{t+1}
        hidden_states: torch.Tensor,  # [B, T, H] feature at t (projected target feature or own output)
        position_ids: torch.Tensor | None = None,  # [B, T]; default: cache length + arange(T)
        attention_mask: torch.Tensor | None = None,  # bool [B, 1, T, S]; default causal
        cache=None,
    ) -> torch.Tensor:
        """Returns the draft hidden state [B, T, H] (EAGLE-1: predicted feature; EAGLE-3: pre-norm)."""
        B, T = input_ids.shape
        past = cache.get_seq_length() if cache is not None else 0
        if position_ids is None:
            position_ids = (torch.arange(T, device=input_ids.device) + past)[None].expand(B, T)
        if attention_mask is None:
            attention_mask = causal_mask(T, past, input_ids.device)
        elif attention_mask.dtype != torch.bool:
            raise TypeError(f"attention_mask must be a bool tensor (True = attend), got {attention_mask.dtype}")
        embeds = self.embed_tokens(input_ids).to(hidden_states.dtype)
        if self.method == "eagle1":
            hidden_states = self.fc(torch.cat((embeds, hidden_states), dim=-1))
        position_embeddings = self._position_embeddings(hidden_states, position_ids)
        return self.layer(embeds, hidden_states, position_embeddings, attention_mask, cache)

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """Draft hidden -> logits over the draft vocabulary ([..., V] for EAGLE-1, [..., Vd] for EAGLE-3)."""
        if self.method == "eagle3":
            return self.lm_head(self.norm(hidden_states))
        if self._target_lm_head is None:
            raise RuntimeError(
                "this eagle1 draft has no lm_head bound: load it with a target "
                "(EagleDraftModel.from_pretrained(path, target=...)) or call bind_target_lm_head()"
            )
        return self._target_lm_head(hidden_states.to(self._target_lm_head.weight.dtype))

    def draft_to_target_ids(self, draft_ids: torch.Tensor) -> torch.Tensor:
        """Draft-vocabulary ids -> target ids (identity for EAGLE-1)."""
        if self.method == "eagle1":
            return draft_ids
        return draft_ids + self.d2t[draft_ids]

    # ----------------------------------------------------------------------------------------------
    def trainable_parameter_names(self) -> list[str]:
        return [n for n, p in self.named_parameters() if p.requires_grad]

    def save_pretrained(self, directory: str | os.PathLike, dtype: torch.dtype | None = None,
                        target_embedding: torch.Tensor | None = None) -> None:
        """Write config.json + model.safetensors (optionally cast floating tensors to `dtype`). With
        `target_embedding` (the target's input embedding weight) equal to the draft's own, embed_tokens is
        not stored: loading then needs the target, which supplies it (as EAGLE-1's lm_head)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        metadata = {"format": "pt", "method": self.method}
        state = {}
        for name, tensor in self.state_dict().items():
            t = tensor.detach()
            if dtype is not None and t.is_floating_point():
                t = t.to(dtype)
            state[name] = t.contiguous().cpu()
        if target_embedding is not None and self.embedding_equals(target_embedding):
            del state[EMBED_KEY]
            metadata[EMBED_META] = "target"
        save_file(state, str(directory / WEIGHTS_NAME), metadata=metadata)
        self.config.save(directory)

    def embedding_equals(self, weight: torch.Tensor) -> bool:
        """True when `weight` (e.g. the target's embedding, any dtype) is exactly this draft's embedding."""
        own = self.embed_tokens.weight
        return tuple(weight.shape) == tuple(own.shape) and torch.equal(own, weight.detach().to(own.device, own.dtype))

    @classmethod
    def from_pretrained(
        cls,
        directory: str | os.PathLike,
        target=None,
        dtype: torch.dtype | None = None,
        device: str | torch.device | None = None,
    ) -> "EagleDraftModel":
        """Load a draft strictly. With `target` (a TargetModel or HF causal LM), check it was built for
        that target and, for EAGLE-1, bind the target's lm_head."""
        directory = Path(directory)
        config = DraftConfig.load(directory)
        weights = directory / WEIGHTS_NAME
        if not weights.is_file():
            raise FileNotFoundError(f"{weights}: draft weights not found")
        state = load_file(str(weights))
        if target is not None:
            from eaglespec.models.target import TargetModel, check_draft_matches_target

            target = target if isinstance(target, TargetModel) else TargetModel(target)
            check_draft_matches_target(config, target.config, source=str(directory))
        if embedding_from_target(directory):
            _bind_target_embedding(state, target, str(weights))
        model = cls(config)
        load_strict(model, state, str(weights))
        if dtype is not None:
            model.to(dtype)
        if device is not None:
            model.to(device)
        if target is not None and config.method == "eagle1":
            model.bind_target_lm_head(target.lm_head)
        return model


def embedding_from_target(directory: str | os.PathLike) -> bool:
    """True when the draft in `directory` does not store embed_tokens but takes the target's at load."""
    from safetensors import safe_open

    with safe_open(str(Path(directory) / WEIGHTS_NAME), framework="pt") as f:
        return (f.metadata() or {}).get(EMBED_META) == "target"


def _bind_target_embedding(state: dict[str, torch.Tensor], target, source: str) -> None:
    """Put the target's input embedding into a checkpoint's `state` that omits it (in the file's float dtype)."""
    if EMBED_KEY in state:
        raise ValueError(f"{source}: metadata says embed_tokens comes from the target, but the file stores it too")
    if target is None:
        raise ValueError(f"{source}: this draft does not store embed_tokens (it uses its target's input embedding); "
                         "load it with its target: EagleDraftModel.from_pretrained(path, target=...)")
    floating = [v.dtype for v in state.values() if v.is_floating_point()]
    state[EMBED_KEY] = target.embed_tokens.weight.detach().to("cpu", floating[0] if floating else torch.float32)


def load_strict(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load `state` into `model`, refusing missing, unexpected or misshapen tensors (named, with `source`)."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    misshapen = sorted(
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in set(state) & set(expected)
        if tuple(state[k].shape) != tuple(expected[k].shape)
    )
    if missing or extra or misshapen:
        parts = []
        if missing:
            parts.append(f"missing tensors {missing}")
        if extra:
            parts.append(f"unexpected tensors {extra}")
        if misshapen:
            parts.append(f"wrong shapes {misshapen}")
        raise ValueError(f"{source}: checkpoint does not match its config: " + "; ".join(parts))
    for k, v in state.items():
        if v.dtype != expected[k].dtype and not (v.is_floating_point() and expected[k].is_floating_point()):
            raise ValueError(f"{source}: tensor {k} has dtype {v.dtype}, expected {expected[k].dtype}")
    # Keep the file's floating dtype (a bf16 checkpoint loads as bf16 unless the caller casts).
    floating = {v.dtype for v in state.values() if v.is_floating_point()}
    if len(floating) == 1:
        model.to(next(iter(floating)))
    model.load_state_dict(state, strict=True)
