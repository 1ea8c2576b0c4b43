"""`export_draft`: an eaglespec draft -> the layout SGLang, vLLM, speculators or the reference EAGLE loads.

Every export is checked strictly twice: the tensors built for the format against the format's expected list,
and the written files read back from disk against the same list.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from eaglespec._io import atomic_directory
from eaglespec.export import configs
from eaglespec.export.layout import FC_BIAS, Layout, TensorSpec, check_tensors, expected_tensors, layout_for
from eaglespec.models.config import DraftConfig
from eaglespec.models.dflash import DFlashDraftModel
from eaglespec.models.draft import WEIGHTS_NAME, EagleDraftModel

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class ExportReport:
    """What was written: the format, its directory, every tensor and the decisions taken."""

    fmt: str
    output: Path
    tensors: list[TensorSpec]
    config: dict[str, Any]
    notes: list[str] = field(default_factory=list)

    def render(self) -> str:
        header = f"{self.fmt}: wrote {self.output} (architectures {self.config.get('architectures')})"
        checked = f"{len(self.tensors)} tensors present with the expected shapes and dtypes, none extra"
        return render_report(header, self.tensors, [f"note: {n}" for n in self.notes], checked)


def render_report(header: str, tensors: list[TensorSpec], details: list[str], checked: str) -> str:
    """An export's report: what was written, one line per tensor, then details and what was checked."""
    lines = [header, *(f"  {spec.describe()}" for spec in tensors), *(f"  {d}" for d in details)]
    return "\n".join([*lines, f"  checked: {checked}"])


@dataclass
class _Target:
    path: str
    architectures: list[str]
    max_position_embeddings: int | None


def _target_info(config: DraftConfig, target: str | os.PathLike | None) -> _Target:
    """The target's path (for speculators' verifier) and context length, from --target or the draft's record."""
    if target is None:
        recorded = config.target.name_or_path if config.target else ""
        archs = config.target.architectures if config.target else []
        return _Target(recorded, list(archs), None)
    from transformers import AutoConfig

    from eaglespec.models import resolve_model_path
    from eaglespec.models.target import check_draft_matches_target

    path = os.path.abspath(resolve_model_path(target))
    cfg = AutoConfig.from_pretrained(path)
    check_draft_matches_target(config, cfg, source="draft")
    text = cfg.get_text_config()
    return _Target(path, list(getattr(cfg, "architectures", None) or []),
                   getattr(text, "max_position_embeddings", None))


def load_draft(draft_dir: str | os.PathLike, target: str | os.PathLike | None) -> EagleDraftModel | DFlashDraftModel:
    """The draft, strictly loaded. A draft saved without embed_tokens (it takes its target's) gets the target's
    embedding, so the export carries a copy: engines load the draft's own embed_tokens when present."""
    from eaglespec.models import draft as draft_module

    if DraftConfig.load(draft_dir).is_dflash:
        return DFlashDraftModel.from_pretrained(draft_dir)  # no embedding or lm_head of its own: nothing to bind
    stores_embedding = not getattr(draft_module, "embedding_from_target", lambda d: False)(draft_dir)
    if stores_embedding:
        return EagleDraftModel.from_pretrained(draft_dir)
    if target is None:
        raise ValueError(f"{draft_dir}: this draft takes its embedding from its target; pass --target PATH so the "
                         "export can carry a copy")
    from eaglespec.models import resolve_model_path
    from eaglespec.models.target import TargetModel

    return EagleDraftModel.from_pretrained(draft_dir, target=TargetModel.from_pretrained(resolve_model_path(target)))


def format_state(layout: Layout, config: DraftConfig, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our state dict -> the format's tensors (renamed; fc.bias added as zeros or dropped as the format needs)."""
    out = {}
    for name, t in state.items():
        if name in layout.drop:
            continue
        if name == FC_BIAS and layout.fc_bias == "never":
            if bool(t.any()):
                raise ValueError("vLLM's EagleLlamaForCausalLM has no fc bias and this draft was trained with a "
                                 "non-zero one; export it as --format sglang or eagle instead")
            continue
        out[layout.their_name(name)] = t.contiguous()
    if config.method == "eagle1" and layout.fc_bias == "always" and FC_BIAS not in out:
        out[FC_BIAS] = torch.zeros(config.hidden_size, dtype=state["fc.weight"].dtype)  # computes as without
    return out


def format_config(fmt: str, config: DraftConfig, dtype: torch.dtype, target: _Target,
                  speculative_tokens: int) -> tuple[dict[str, Any], list[str]]:
    if config.is_dflash and fmt != "speculators":
        return configs.dflash_config(config, dtype)  # layout_for refused every other format already
    if fmt in ("sglang", "vllm"):
        return configs.engine_config(config, fmt, dtype)
    if fmt == "eagle":
        return configs.reference_config(config, dtype)
    check_local_target(target)
    if config.is_dflash:
        return configs.dflash_speculators_config(config, dtype, target.path, target.architectures)
    return configs.speculators_config(config, dtype, target.path, target.architectures, speculative_tokens)


def check_local_target(target: _Target) -> None:
    if not target.path or not os.path.isdir(target.path):
        raise ValueError(f"speculators needs the verifier (target) as a local directory; got {target.path!r}: "
                         "pass --target PATH")


def target_tensors(target: _Target, names: tuple[str, ...], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The target's input embedding / output head (`layout.TARGET_TENSORS`), for formats that store copies."""
    if not names:
        return {}
    check_local_target(target)
    from eaglespec.models.target import TargetModel

    model = TargetModel.from_pretrained(target.path).model
    weights = {"embed_tokens.weight": model.get_input_embeddings().weight,
               "lm_head.weight": model.get_output_embeddings().weight}
    return {name: weights[name].detach().to(dtype).clone() for name in names}  # a tied pair saves as two copies


def export_draft(draft_dir: str | os.PathLike, fmt: str, output: str | os.PathLike,
                 target: str | os.PathLike | None = None, dtype: str | None = None,
                 speculative_tokens: int = configs.SPECULATIVE_TOKENS, overwrite: bool = False) -> ExportReport:
    """Write the draft in `draft_dir` (or a committed draft's name) as `fmt` into `output`, checked strictly."""
    from eaglespec.models import resolve_model_path

    draft_dir = resolve_model_path(draft_dir)
    model = load_draft(draft_dir, target)  # strict: our own layout first
    config = model.config
    info = _target_info(config, target)
    if info.max_position_embeddings is not None and info.max_position_embeddings != config.max_position_embeddings:
        config.max_position_embeddings = int(info.max_position_embeddings)  # the target's, never a stale value
    float_dtype = DTYPES[dtype] if dtype else model.fc.weight.dtype
    state = {k: (v.to(float_dtype) if v.is_floating_point() else v) for k, v in model.state_dict().items()}
    layout = layout_for(fmt, config)
    tensors = {**format_state(layout, config, state), **target_tensors(info, layout.from_target, float_dtype)}
    cfg, notes = format_config(fmt, config, float_dtype, info, speculative_tokens)
    expected = expected_tensors(fmt, config, float_dtype)
    check_tensors(tensors, expected, f"{fmt} export of {draft_dir}")
    with atomic_directory(output, overwrite=overwrite) as tmp:
        save_file(tensors, str(tmp / WEIGHTS_NAME), metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
        check_tensors(load_file(str(tmp / WEIGHTS_NAME)), expected, f"{fmt} export written to {output}")
    return ExportReport(fmt, Path(output), [expected[n] for n in sorted(expected)], cfg, notes)
