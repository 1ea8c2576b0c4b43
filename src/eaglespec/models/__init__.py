"""Draft heads (EAGLE-1, EAGLE-3, DFlash), their config, the target adapter, model paths and the llama2.c converter."""

from eaglespec.models.build import build_draft, dflash_mask_token, draft_config_for, set_draft_vocab
from eaglespec.models.config import DFlashShape, DraftConfig, TargetInfo, default_aux_layer_ids
from eaglespec.models.dflash import DFlashDraftModel
from eaglespec.models.draft import EagleDraftModel
from eaglespec.models.loading import load_draft
from eaglespec.models.paths import BUNDLED_MODEL_NAME, bundled_model_path, resolve_model_path
from eaglespec.models.target import TargetModel, TargetOutput, check_draft_matches_target, cpu_has_native_bf16

__all__ = [
    "BUNDLED_MODEL_NAME",
    "DFlashDraftModel",
    "DFlashShape",
    "DraftConfig",
    "EagleDraftModel",
    "TargetInfo",
    "TargetModel",
    "TargetOutput",
    "build_draft",
    "bundled_model_path",
    "check_draft_matches_target",
    "cpu_has_native_bf16",
    "default_aux_layer_ids",
    "dflash_mask_token",
    "draft_config_for",
    "load_draft",
    "resolve_model_path",
    "set_draft_vocab",
]
