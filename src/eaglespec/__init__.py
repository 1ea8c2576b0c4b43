"""eaglespec: train EAGLE draft heads for any Hugging Face causal LM and decode losslessly with them."""

from __future__ import annotations

import os
from pathlib import Path

__version__ = "0.1.0"

BUNDLED_MODEL_NAME = "stories260K"


def bundled_model_path() -> Path:
    """The Hugging Face directory of the bundled stories260K target (ships inside the package)."""
    return Path(__file__).resolve().parent / "assets" / BUNDLED_MODEL_NAME


def resolve_model_path(path: str | os.PathLike) -> str:
    """`stories260K` names the bundled model; a name `eaglespec fetch` knows (e.g. `smollm2-135m`) names its
    installed directory, and a committed draft's name (e.g. `smollm2-135m-eagle3`) the draft shipped in the
    package, when no such local path exists; anything else is returned unchanged."""
    if str(path) == BUNDLED_MODEL_NAME:
        return str(bundled_model_path())
    from eaglespec.models.fetch import COMMITTED_DRAFTS, KNOWN_MODELS, committed_draft_path, fetched_model_path

    if Path(path).exists():
        return str(path)
    if str(path) in KNOWN_MODELS:
        return str(fetched_model_path(str(path)))
    targets = {draft: target for target, draft in COMMITTED_DRAFTS.items()}
    if str(path) in targets:
        return str(committed_draft_path(targets[str(path)]))
    return str(path)
