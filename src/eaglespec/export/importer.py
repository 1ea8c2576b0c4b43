"""`import_draft`: reference EAGLE-1 / EAGLE-3 and speculators checkpoints -> an eaglespec draft, strictly.

Reference layouts read: the published ones (config.json + pytorch_model.bin or model.safetensors, sharded or
not), the EAGLE-1 trainer's `state_N/` (accelerate: model.safetensors with the frozen embedding), the DeepSpeed
trainers' `state_N/` (`save_16bit_model`: pytorch_model.bin without the frozen embedding; or only the ZeRO-2
checkpoint `latest` + `global_stepK/mp_rank_00_model_states.pt`). A state_N/ has no config.json: pass the one
training used, or the draft's shape is read from the tensors and the target.

Nothing is skipped: every tensor must be one the draft has, with its shape and dtype. Optional only: embed_tokens
(the reference reloads it from the target; so do we), t2d (rebuilt from d2t; checked when present), d2t when the
draft vocabulary is the full vocabulary (it must then be all zeros: target id = draft id).
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from eaglespec._io import atomic_directory
from eaglespec.export.configs import engine_default_aux_ids
from eaglespec.export.layout import (
    FC_BIAS,
    TensorSpec,
    check_tensors,
    expected_tensors,
    floating_dtype,
    layout_for,
)
from eaglespec.models.config import DraftConfig, validate_aux_layer_ids
from eaglespec.models.draft import EagleDraftModel, load_strict

EMBED = "embed_tokens.weight"
DEEPSPEED_MODEL_STATES = "mp_rank_00_model_states.pt"
# Config keys copied from a checkpoint's config over what the target implies (the draft layer's own shape).
LAYER_KEYS = ("intermediate_size", "num_attention_heads", "num_key_value_heads", "rms_norm_eps", "hidden_act",
              "attention_bias")


@dataclass
class ImportReport:
    fmt: str
    source: str
    output: Path
    method: str
    tensors: list[TensorSpec]
    notes: list[str]

    def render(self) -> str:
        lines = [f"imported {self.fmt} {self.method} draft from {self.source} into {self.output}"]
        lines += [f"  {spec.describe()}" for spec in self.tensors]
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


# --------------------------------------------------------------------------------------------------------------
def _strip_module_prefix(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """DDP/DeepSpeed wrappers may prefix every name with 'module.'."""
    if state and all(k.startswith("module.") for k in state):
        return {k[len("module."):]: v for k, v in state.items()}
    return state


def _load_bin(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(str(path), map_location="cpu", weights_only=True)


def _load_sharded(index: Path) -> dict[str, torch.Tensor]:
    weight_map = json.loads(index.read_text())["weight_map"]
    state = {}
    for shard in sorted(set(weight_map.values())):
        path = index.parent / shard
        part = load_file(str(path)) if shard.endswith(".safetensors") else _load_bin(path)
        state.update(part)
    return state


def _load_deepspeed(directory: Path) -> dict[str, torch.Tensor] | None:
    latest = directory / "latest"
    if not latest.is_file():
        return None
    path = directory / latest.read_text().strip() / DEEPSPEED_MODEL_STATES
    if not path.is_file():
        raise FileNotFoundError(f"{path}: DeepSpeed checkpoint named by {latest} not found")
    # DeepSpeed's own file pickles its settings next to the weights; it is the user's own checkpoint.
    module = torch.load(str(path), map_location="cpu", weights_only=False).get("module")
    if not module or any(t.numel() == 0 for t in module.values()):
        raise ValueError(f"{path}: holds no full weights (a ZeRO-3 partition?); run the zero_to_fp32.py DeepSpeed "
                         "wrote beside it and import its output")
    return dict(module)


def read_weights(directory: str | os.PathLike) -> tuple[dict[str, torch.Tensor], str]:
    """A reference / speculators checkpoint's tensors and the file they came from."""
    d = Path(directory)
    if not d.is_dir():
        raise FileNotFoundError(f"{d}: not a directory")
    candidates = [("model.safetensors", lambda p: load_file(str(p))), ("pytorch_model.bin", _load_bin),
                  ("model.safetensors.index.json", _load_sharded), ("pytorch_model.bin.index.json", _load_sharded)]
    for name, load in candidates:
        if (d / name).is_file():
            return _strip_module_prefix(load(d / name)), str(d / name)
    state = _load_deepspeed(d)
    if state is None:
        raise FileNotFoundError(f"{d}: no model.safetensors, pytorch_model.bin (or their .index.json) or DeepSpeed "
                                "'latest' checkpoint")
    return _strip_module_prefix(state), str(d)


def read_config(directory: Path, config_path: str | os.PathLike | None, required: bool) -> dict[str, Any]:
    path = Path(config_path) if config_path else directory / "config.json"
    if not path.is_file():
        if required or config_path:
            raise FileNotFoundError(f"{path}: checkpoint config.json not found")
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: invalid JSON: {e}") from e


# --------------------------------------------------------------------------------------------------------------
def _flatten_speculators(cfg: dict[str, Any], source: str) -> dict[str, Any]:
    """A speculators config -> one flat dict of draft-layer keys (refusing variants our draft does not compute)."""
    if cfg.get("speculators_model_type") != "eagle3":
        raise ValueError(f"{source}: speculators_model_type {cfg.get('speculators_model_type')!r}; only 'eagle3' "
                         "checkpoints can be imported")
    for flag in ("norm_before_residual", "norm_before_fc", "fc_norm", "norm_output"):
        if cfg.get(flag):
            raise ValueError(f"{source}: {flag}=true is a speculators variant the eaglespec draft does not compute")
    layer = dict(cfg.get("transformer_layer_config") or {})
    if int(layer.get("num_hidden_layers", 1)) != 1:
        raise ValueError(f"{source}: transformer_layer_config.num_hidden_layers={layer['num_hidden_layers']}; "
                         "eaglespec drafts have one layer")
    keys = ("draft_vocab_size", "target_hidden_size", "eagle_aux_hidden_state_layer_ids")
    return {**layer, **{k: cfg[k] for k in keys if cfg.get(k) is not None}}


def _detect_method(state: dict[str, torch.Tensor], fmt: str, source: str) -> str:
    if fmt == "speculators" or any(k.startswith("midlayer.") for k in state):
        return "eagle3"
    if any(k.startswith("layers.0.") for k in state):
        return "eagle1"
    raise ValueError(f"{source}: neither midlayer.* (EAGLE-3) nor layers.0.* (EAGLE-1) tensors found; "
                     f"names: {sorted(state)[:8]}")


def _aux_ids(cfg: dict[str, Any], num_layers: int, source: str) -> tuple[list[int], str]:
    """Explicit ids (vLLM/speculators top-level = ours; else SGLang's eagle_config + 1) or the reference default."""
    if cfg.get("eagle_aux_hidden_state_layer_ids"):
        return list(cfg["eagle_aux_hidden_state_layer_ids"]), "aux layer ids from the config (layer inputs)"
    sglang = (cfg.get("eagle_config") or {}).get("eagle_aux_hidden_state_layer_ids")
    if sglang:
        return [i + 1 for i in sglang], "aux layer ids from eagle_config (SGLang's layer outputs, + 1)"
    ids = engine_default_aux_ids(num_layers)
    if len(set(ids)) < len(ids) or ids[0] < 0:
        raise ValueError(f"{source}: no aux layer ids in the config, and the reference's fixed layers {ids} are not "
                         f"three distinct layers of a {num_layers}-layer target")
    return ids, f"aux layer ids {ids}: the reference's fixed layers (inputs of 2, L//2, L-3)"


def _rope(cfg: dict[str, Any]) -> dict[str, Any] | None:
    if cfg.get("rope_parameters"):
        return {"rope_type": "default", **cfg["rope_parameters"]}
    if "rope_theta" not in cfg and not cfg.get("rope_scaling"):
        return None
    scaling = dict(cfg.get("rope_scaling") or {})
    rope_type = scaling.pop("rope_type", None) or scaling.pop("type", None) or "default"
    scaling.pop("type", None)
    return {"rope_type": rope_type, **scaling, "rope_theta": float(cfg.get("rope_theta", 10000.0))}


def _meta_target(target_path: str):
    """The target's structure without its weights (enough for the draft config)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from eaglespec.models.target import TargetModel

    cfg = AutoConfig.from_pretrained(target_path)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(cfg)
    model.config._name_or_path = target_path
    return TargetModel(model)


def build_config(cfg: dict[str, Any], method: str, state: dict[str, torch.Tensor], target, source: str
                 ) -> tuple[DraftConfig, list[str]]:
    from eaglespec.models.build import draft_config_for

    notes = []
    for key, actual in (("hidden_size", target.hidden_size), ("vocab_size", target.vocab_size)):
        if cfg.get(key) is not None and int(cfg[key]) != actual:
            raise ValueError(f"{source}: config {key}={cfg[key]}, but the target has {actual}: built for another target")
    aux, vocab = None, None
    if method == "eagle3":
        aux, note = _aux_ids(cfg, target.num_hidden_layers, source)
        aux = validate_aux_layer_ids(aux, target.num_hidden_layers)
        notes.append(note)
        vocab = int(cfg.get("draft_vocab_size") or state["lm_head.weight"].shape[0])
    config = draft_config_for(target, method, draft_vocab_size=vocab, aux_layer_ids=aux, fc_bias=FC_BIAS in state)
    changes = {k: cfg[k] for k in LAYER_KEYS if cfg.get(k) is not None}
    if cfg.get("head_dim") or cfg.get("num_attention_heads"):
        changes["head_dim"] = int(cfg.get("head_dim") or config.hidden_size // int(cfg["num_attention_heads"]))
    if cfg.get("target_hidden_size"):
        changes["target_hidden_size"] = int(cfg["target_hidden_size"])
    rope = _rope(cfg)
    if rope is not None:
        changes["rope_parameters"] = rope
    return dataclasses.replace(config, **changes), notes


# --------------------------------------------------------------------------------------------------------------
def _optional(fmt: str, config: DraftConfig) -> frozenset[str]:
    names = {EMBED}
    if fmt == "eagle" and config.method == "eagle3":
        names.add("t2d")
    if config.method == "eagle3" and config.draft_vocab_size == config.vocab_size:
        names |= {"d2t", "t2d"}
    return frozenset(names)


def _vocab_maps(state: dict[str, torch.Tensor], config: DraftConfig, source: str) -> list[str]:
    """Fill d2t / t2d where the checkpoint left them out; check them where it did not."""
    V, Vd = config.vocab_size, config.draft_vocab_size
    d2t = state.get("d2t", torch.zeros(Vd, dtype=torch.long))
    if Vd == V and bool(d2t.any()):
        raise ValueError(f"{source}: d2t is not all zeros although the draft vocabulary is the full vocabulary")
    targets = torch.arange(Vd) + d2t
    if bool((targets < 0).any() | (targets >= V).any()) or targets.unique().numel() != Vd:
        raise ValueError(f"{source}: d2t maps draft ids outside 0..{V - 1} or two draft ids to one target id")
    t2d = torch.zeros(V, dtype=torch.bool)
    t2d[targets] = True
    notes = []
    if "t2d" in state and Vd < V and not torch.equal(state["t2d"], t2d):
        raise ValueError(f"{source}: t2d does not mark exactly the target ids d2t maps to")
    if "t2d" not in state or not torch.equal(state["t2d"], t2d):
        notes.append("t2d rebuilt from d2t")
    state["d2t"], state["t2d"] = d2t, t2d
    return notes


def _drop_zero_fc_bias(state: dict[str, torch.Tensor]) -> list[str]:
    """An all-zero EAGLE-1 fc.bias (SGLang's layout for a draft trained without one) computes as no bias."""
    if FC_BIAS in state and not bool(state[FC_BIAS].any()):
        del state[FC_BIAS]
        return ["all-zero fc.bias dropped (the draft computes the same without it)"]
    return []


def _embedding(state: dict[str, torch.Tensor], target_path: str, dtype: torch.dtype) -> list[str]:
    if EMBED in state:
        return []
    from eaglespec.models.target import TargetModel

    target = TargetModel.from_pretrained(target_path)
    state[EMBED] = target.embed_tokens.weight.detach().to(dtype).clone()
    return ["embed_tokens copied from the target (the checkpoint has none)"]


def import_draft(fmt: str, input_dir: str | os.PathLike, target: str | os.PathLike, output: str | os.PathLike,
                 config_path: str | os.PathLike | None = None, overwrite: bool = False) -> ImportReport:
    """Read a reference EAGLE (`fmt='eagle'`) or speculators checkpoint into an eaglespec draft directory."""
    from eaglespec.models import resolve_model_path

    if fmt not in ("eagle", "speculators"):
        raise ValueError(f"import format {fmt!r}: expected 'eagle' or 'speculators'")
    target_path = os.path.abspath(resolve_model_path(target))
    theirs, source = read_weights(input_dir)
    cfg = read_config(Path(input_dir), config_path, required=fmt == "speculators")
    if fmt == "speculators":
        cfg = _flatten_speculators(cfg, source)
    method = _detect_method(theirs, fmt, source)
    notes_bias = _drop_zero_fc_bias(theirs)
    config, notes = build_config(cfg, method, theirs, _meta_target(target_path), source)
    notes += notes_bias
    fdtype = floating_dtype(theirs, source)
    check_tensors(theirs, expected_tensors(fmt, config, fdtype), source, optional=_optional(fmt, config))
    layout = layout_for(fmt, config)
    state = {layout.our_name(k): v for k, v in theirs.items()}
    notes += _embedding(state, target_path, fdtype)
    if method == "eagle3":
        notes += _vocab_maps(state, config, source)
    model = EagleDraftModel(config)
    load_strict(model, state, source)
    with atomic_directory(output, overwrite=overwrite) as tmp:
        model.save_pretrained(tmp)
    specs = [TensorSpec(k, tuple(v.shape), v.dtype) for k, v in sorted(model.state_dict().items())]
    return ImportReport(fmt, source, Path(output), method, specs, notes)
