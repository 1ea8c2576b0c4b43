"""Load any draft directory as the model its config names (EAGLE-1 / EAGLE-3 or DFlash)."""

from __future__ import annotations

import os

import torch

from eaglespec.models.config import DraftConfig
from eaglespec.models.dflash import DFlashDraftModel
from eaglespec.models.draft import EagleDraftModel


def load_draft(directory: str | os.PathLike, target=None, dtype: torch.dtype | None = None,
               device: str | torch.device | None = None) -> EagleDraftModel | DFlashDraftModel:
    """The draft in `directory`, checked against `target` and bound to it when given (DFlash needs it to run)."""
    model = DFlashDraftModel if DraftConfig.load(directory).is_dflash else EagleDraftModel
    return model.from_pretrained(directory, target=target, dtype=dtype, device=device)
