"""Tensor layouts of the draft formats other tools load, and the strict check every export and import runs.

Engines load draft weights by name and skip names they do not know, so a misnamed tensor loads "fine" and the
draft never accepts a token. Here every file is checked against the exact list of tensors its format expects:
each one present, with the right shape and dtype, and nothing else.

Our names (`eaglespec.models.draft`, `models.dflash`) are already those of SGLang / vLLM / the reference EAGLE:
    EAGLE-1: embed_tokens, fc (+bias), layers.0.* (no input_layernorm)
    EAGLE-3: embed_tokens, fc, midlayer.*, norm, lm_head, d2t, t2d
    DFlash: fc, hidden_norm, layers.{i}.* (with self_attn.q_norm / k_norm), norm (z-lab's; vLLM and SGLang load it;
            speculators' DFlashSpeculator has the same names and also stores the target's embed_tokens and lm_head)
Formats differ only in a prefix rename (speculators: midlayer. -> layers.0.), in fc.bias (SGLang's EAGLE-1 fc
always has a bias, vLLM's never has one) and in d2t / t2d (the engine and speculators formats store none for a
full draft vocabulary: vLLM refuses to load a d2t it has no parameter for).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from eaglespec.models.config import DraftConfig

FORMATS = ("sglang", "vllm", "speculators", "eagle")
DFLASH_FORMATS = ("vllm", "sglang", "speculators")
TARGET_TENSORS = ("embed_tokens.weight", "lm_head.weight")  # copied from the target where a format stores them
IMPORT_FORMATS = ("eagle", "speculators")
FC_BIAS = "fc.bias"
VOCAB_MAPS = ("d2t", "t2d")


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype

    def describe(self) -> str:
        return f"{self.name} {list(self.shape)} {str(self.dtype).removeprefix('torch.')}"


@dataclass(frozen=True)
class Layout:
    """How our state dict is written in one format: prefix renames, fc.bias policy, dropped tensors."""

    renames: tuple[tuple[str, str], ...] = ()  # (our prefix, their prefix)
    fc_bias: str = "as_trained"  # "as_trained" | "always" (zero when trained without) | "never"
    drop: tuple[str, ...] = ()  # our tensors the format does not store
    from_target: tuple[str, ...] = ()  # tensors the format stores that the draft shares with its target ([V, H])

    def their_name(self, ours: str) -> str:
        for old, new in self.renames:
            if ours.startswith(old):
                return new + ours[len(old):]
        return ours

    def our_name(self, theirs: str) -> str:
        for old, new in self.renames:
            if theirs.startswith(new):
                return old + theirs[len(new):]
        return theirs


def layout_for(fmt: str, config: DraftConfig) -> Layout:
    """The layout of `fmt` for a draft of `config` (refusing combinations no tool loads)."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; expected one of {FORMATS}")
    if config.is_dflash:
        if fmt not in DFLASH_FORMATS:
            raise ValueError(f"a dflash draft exports as {', '.join(DFLASH_FORMATS)} (z-lab's DFlashDraftModel layout, "
                             f"which vLLM and SGLang load, or speculators'); the {fmt} format holds EAGLE drafts")
        return Layout(from_target=TARGET_TENSORS if fmt == "speculators" else ())  # our tensor names are z-lab's
    # With the full vocabulary vLLM builds no d2t parameter and fails to load one (SGLang and speculators then
    # need none either), so the identity maps are left out.
    full_vocab = config.method == "eagle3" and config.draft_vocab_size == config.vocab_size
    if fmt == "speculators":
        if config.method != "eagle3":
            raise ValueError("the speculators format holds EAGLE-3 drafts only; export EAGLE-1 as sglang, vllm or eagle")
        return Layout(renames=(("midlayer.", "layers.0."),), drop=VOCAB_MAPS if full_vocab else ())
    if config.method == "eagle1" and fmt == "sglang":
        return Layout(fc_bias="always")  # SGLang's LlamaForCausalLMEagle builds fc with a bias
    if config.method == "eagle1" and fmt == "vllm":
        return Layout(fc_bias="never")  # vLLM's EagleLlamaForCausalLM builds fc without one
    if fmt in ("sglang", "vllm") and full_vocab:
        return Layout(drop=VOCAB_MAPS)
    return Layout()


def our_tensor_specs(config: DraftConfig, float_dtype: torch.dtype) -> dict[str, TensorSpec]:
    """Every tensor of our draft for `config` (our names), floating ones in `float_dtype`."""
    from eaglespec.models.dflash import DFlashDraftModel
    from eaglespec.models.draft import EagleDraftModel

    with torch.device("meta"):
        model = DFlashDraftModel(config) if config.is_dflash else EagleDraftModel(config)
    specs = {}
    for name, t in model.state_dict().items():
        specs[name] = TensorSpec(name, tuple(t.shape), float_dtype if t.is_floating_point() else t.dtype)
    return specs


def expected_tensors(fmt: str, config: DraftConfig, float_dtype: torch.dtype) -> dict[str, TensorSpec]:
    """The exact tensors a `fmt` checkpoint of this draft holds, in the format's names."""
    layout = layout_for(fmt, config)
    specs = {}
    for name, spec in our_tensor_specs(config, float_dtype).items():
        if name in layout.drop or (name == FC_BIAS and layout.fc_bias == "never"):
            continue
        theirs = layout.their_name(name)
        specs[theirs] = TensorSpec(theirs, spec.shape, spec.dtype)
    for name in layout.from_target:
        specs[name] = TensorSpec(name, (config.vocab_size, config.hidden_size), float_dtype)
    if config.method == "eagle1" and layout.fc_bias == "always" and FC_BIAS not in specs:
        specs[FC_BIAS] = TensorSpec(FC_BIAS, (config.hidden_size,), float_dtype)
    return specs


def check_tensors(state: dict[str, torch.Tensor], expected: dict[str, TensorSpec], source: str,
                  optional: frozenset[str] = frozenset()) -> None:
    """Raise ValueError naming every missing (unless `optional`), unexpected, misshapen or mistyped tensor."""
    problems = []
    missing = sorted(set(expected) - set(state) - set(optional))
    extra = sorted(set(state) - set(expected))
    if missing:
        problems.append("missing tensors: " + ", ".join(expected[n].describe() for n in missing))
    if extra:
        problems.append("unexpected tensors: " + ", ".join(
            f"{n} {list(state[n].shape)}" for n in extra) + " (engines would silently skip them)")
    for name in sorted(set(state) & set(expected)):
        t, spec = state[name], expected[name]
        if tuple(t.shape) != spec.shape:
            problems.append(f"{name}: shape {list(t.shape)}, expected {list(spec.shape)}")
        elif t.dtype != spec.dtype:
            problems.append(f"{name}: dtype {t.dtype}, expected {spec.dtype}")
    if problems:
        raise ValueError(f"{source}: " + "; ".join(problems))


def floating_dtype(state: dict[str, torch.Tensor], source: str) -> torch.dtype:
    """The one floating dtype of a checkpoint (mixed floating dtypes are an error)."""
    dtypes = {t.dtype for t in state.values() if t.is_floating_point()}
    if len(dtypes) != 1:
        raise ValueError(f"{source}: expected one floating dtype for all weights, found {sorted(map(str, dtypes))}")
    return next(iter(dtypes))
