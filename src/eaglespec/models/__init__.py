"""Draft heads (EAGLE-1, EAGLE-3), their config, the target adapter, model paths and the llama2.c converter."""

from eaglespec.models.build import build_draft, draft_config_for, set_draft_vocab
from eaglespec.models.config import DraftConfig, TargetInfo, default_aux_layer_ids
from eaglespec.models.draft import EagleDraftModel
from eaglespec.models.paths import BUNDLED_MODEL_NAME, bundled_model_path, resolve_model_path
from eaglespec.models.target import TargetModel, TargetOutput, check_draft_matches_target

__all__ = [
    "BUNDLED_MODEL_NAME",
    "DraftConfig",
    "EagleDraftModel",
    "TargetInfo",
    "TargetModel",
    "TargetOutput",
    "build_draft",
    "bundled_model_path",
    "check_draft_matches_target",
    "default_aux_layer_ids",
    "draft_config_for",
    "resolve_model_path",
    "set_draft_vocab",
]
