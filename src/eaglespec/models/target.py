"""Thin adapter over any Hugging Face causal LM: logits plus the hidden states each draft method needs.

No forked modeling files and no patching: the target runs through transformers' own forward with
`output_hidden_states=True`, an optional custom 4D attention mask (tree attention) and a Cache.
"""

from __future__ import annotations

import inspect
import logging
import os
import platform
from dataclasses import dataclass

import torch
from torch import nn

from eaglespec.models.config import FEATURE_METHODS, DraftConfig, TargetInfo

logger = logging.getLogger(__name__)


@dataclass
class TargetOutput:
    logits: torch.Tensor  # [B, T, V]
    last_hidden: torch.Tensor  # [B, T, H]: after the final norm, the input of lm_head (EAGLE-1 feature)
    aux_hidden: torch.Tensor | None  # [B, T, 3H]: concat of hidden_states[i] for the aux ids (EAGLE-3)

    def features(self, method: str) -> torch.Tensor:
        """The target features a draft of `method` consumes."""
        if method == "eagle1":
            return self.last_hidden
        if self.aux_hidden is None:
            raise ValueError(f"{method} features need aux_layer_ids in the target forward")
        return self.aux_hidden


def bool_to_additive_mask(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """bool [B, 1, T, S] (True = attend) -> additive float mask (0 / dtype min) for eager and SDPA alike."""
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(~mask, torch.finfo(dtype).min)


MIN_TRANSFORMERS = "5.24"  # where `cache=` replaced `past_key_values=` (pyproject.toml pins the same)


def installed_transformers() -> str:
    import transformers

    return transformers.__version__


def transformers_too_old(version: str) -> bool:
    from packaging.version import Version

    return Version(version) < Version(MIN_TRANSFORMERS)


def require_cache_argument(model: nn.Module) -> None:
    """Decoding passes its KV cache as `cache=`, the name transformers uses since 5.24 (`past_key_values=`
    before). A forward that still takes `past_key_values` would take the cache into **kwargs and ignore it:
    attention over the new tokens alone, wrong logits or a shape error far from the cause. Refuse such a model
    here instead (a forward of only *args / **kwargs, e.g. a torch.compile or PEFT wrapper, passes it through)."""
    parameters = inspect.signature(model.forward).parameters
    if "cache" in parameters or "past_key_values" not in parameters:
        return
    name, version = type(model).__name__, installed_transformers()
    if transformers_too_old(version):
        raise RuntimeError(f"{name}.forward takes `past_key_values`, not `cache` (transformers {version}): eaglespec "
                           f"needs transformers >= {MIN_TRANSFORMERS}: pip install 'transformers>={MIN_TRANSFORMERS},<6'")
    raise RuntimeError(f"{name}.forward takes `past_key_values`, not `cache`, although transformers {version} "
                       "names it `cache`: a custom or remote-code model class written for older transformers; "
                       "eaglespec passes its KV cache as `cache=`")


def cpu_has_native_bf16() -> bool:
    """Whether bf16 matrix products run in hardware. False only for an x86 CPU without AVX512-BF16 or AMX, where
    oneDNN emulates them: a [32x576] x [576x1536] product took 5.8x as long in bf16 as in fp32 on a 2-core AVX2
    AMD EPYC (torch 2.13)."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return True  # only x86 is probed; an ARM CPU may have bf16 instructions these probes do not know
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # torch.cpu has no public probe for these
    return any(getattr(torch.cpu, name, lambda: False)() for name in probes)


def warn_if_emulated_bf16(model: nn.Module, path: str | os.PathLike) -> None:
    """A bf16 target on a CPU without bf16 hardware decodes several times slower than in fp32: say so once, at
    load, with the flag that avoids it (the slow run would otherwise look like eaglespec's fault)."""
    weight = next(model.parameters(), None)
    if weight is None or weight.dtype != torch.bfloat16 or weight.device.type != "cpu" or cpu_has_native_bf16():
        return
    logger.warning("%s: bf16 weights on a CPU without AVX512-BF16 or AMX, where bf16 matrix products are emulated "
                   "(about 6x slower than fp32 on an AVX2 CPU); an fp32 target runs faster here (`--dtype float32`; "
                   "`--target-dtype fp32` for dump-features and train), though its greedy output can differ from "
                   "bf16's where two tokens nearly tie", path)


class TargetModel:
    """Wraps a Hugging Face `*ForCausalLM` (frozen) and reads what EAGLE drafts need from it."""

    def __init__(self, model: nn.Module):
        require_cache_argument(model)
        self.model = model
        self.config = model.config.get_text_config()
        for p in model.parameters():
            p.requires_grad_(False)

    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike,
        dtype: torch.dtype | str | None = None,
        device: str | torch.device | None = None,
        attn_implementation: str | None = None,
    ) -> "TargetModel":
        from transformers import AutoModelForCausalLM

        kwargs = {}
        if attn_implementation is not None:
            kwargs["attn_implementation"] = attn_implementation
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype or "auto", **kwargs)
        if device is not None:
            model.to(device)
        model.eval()
        warn_if_emulated_bf16(model, path)
        return cls(model)

    @property
    def lm_head(self) -> nn.Module:
        return self.model.get_output_embeddings()

    @property
    def embed_tokens(self) -> nn.Module:
        return self.model.get_input_embeddings()

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @property
    def num_hidden_layers(self) -> int:
        return int(self.config.num_hidden_layers)

    @property
    def hidden_size(self) -> int:
        return int(self.config.hidden_size)

    @property
    def vocab_size(self) -> int:
        return int(self.lm_head.weight.shape[0])

    @property
    def max_position_embeddings(self) -> int:
        return int(getattr(self.config, "max_position_embeddings", None) or 2048)

    def info(self) -> TargetInfo:
        return TargetInfo(
            name_or_path=str(getattr(self.model.config, "_name_or_path", "") or ""),
            model_type=str(self.config.model_type),
            architectures=list(getattr(self.model.config, "architectures", None) or [type(self.model).__name__]),
            hidden_size=self.hidden_size,
            vocab_size=self.vocab_size,
            num_hidden_layers=self.num_hidden_layers,
        )

    @torch.no_grad()
    def forward(
        self,
        input_ids: torch.Tensor,  # [B, T]
        position_ids: torch.Tensor | None = None,  # [B, T]
        attention_mask: torch.Tensor | None = None,  # bool [B, 1, T, S] (tree/custom) or [B, S] padding mask
        cache=None,
        aux_layer_ids: list[int] | None = None,
    ) -> TargetOutput:
        if attention_mask is not None and attention_mask.ndim == 4:
            attention_mask = bool_to_additive_mask(attention_mask, self.dtype)
        out = self.model(
            input_ids=input_ids,
            position_ids=position_ids,
            attention_mask=attention_mask,
            cache=cache,
            use_cache=cache is not None,
            output_hidden_states=True,
            return_dict=True,
        )
        hs = out.hidden_states  # embeddings, input of layer 1, ..., input of layer L-1, final-norm output
        aux = torch.cat([hs[i] for i in aux_layer_ids], dim=-1) if aux_layer_ids else None
        return TargetOutput(logits=out.logits, last_hidden=hs[-1], aux_hidden=aux)

    __call__ = forward


def check_draft_matches_target(draft: DraftConfig, target_config, source: str = "draft") -> None:
    """Raise a clear error when a draft was built for another target (not a shape crash in torch)."""
    cfg = target_config.get_text_config() if hasattr(target_config, "get_text_config") else target_config
    problems = []
    if int(cfg.hidden_size) != draft.target_hidden_size:
        problems.append(f"hidden size: draft expects {draft.target_hidden_size}, target has {cfg.hidden_size}")
    target_vocab = int(cfg.vocab_size)
    if target_vocab != draft.vocab_size:
        problems.append(f"vocab size: draft expects {draft.vocab_size}, target has {target_vocab}")
    if draft.method in FEATURE_METHODS:
        bad = [i for i in draft.aux_layer_ids if not 0 <= i < int(cfg.num_hidden_layers)]
        if bad:
            problems.append(f"aux layer ids {bad} do not exist in a target with {cfg.num_hidden_layers} layers")
    if problems:
        built_for = draft.target.name_or_path if draft.target else "an unknown target"
        raise ValueError(f"{source}: draft was built for {built_for!r}, not this target: " + "; ".join(problems))
