"""Where a model named on the command line lives: a bundled model (stories260K, the FIM code model
stdlib-fim-10m), a fetched model, a committed draft."""

from __future__ import annotations

import os
from pathlib import Path

from eaglespec.models.fetch import KNOWN_MODELS, fetched_model_path

BUNDLED_MODEL_NAME = "stories260K"
# recipes/code's fill-in-the-middle code model, trained here on CPython 3.11's standard library (issue 37)
FIM_MODEL_NAME = "stdlib-fim-10m"
BUNDLED_MODELS = (BUNDLED_MODEL_NAME, FIM_MODEL_NAME)
ASSETS_DIR = Path(__file__).resolve().parent.parent / "assets"  # ships inside the package
COMMITTED_DRAFTS = {"smollm2-135m": "smollm2-135m-eagle3", "stdlib-fim-10m": "stdlib-fim-10m-eagle3"}  # target name -> draft under assets/drafts/


def bundled_model_path(name: str = BUNDLED_MODEL_NAME) -> Path:
    """The Hugging Face directory of a bundled target (ships inside the package; default stories260K)."""
    if name not in BUNDLED_MODELS:
        raise ValueError(f"no bundled model {name!r}; bundled: {', '.join(BUNDLED_MODELS)}")
    return ASSETS_DIR / name


def committed_draft_path(target: str) -> Path:
    """The draft shipped in the package for a named target, or a clear error."""
    if target not in COMMITTED_DRAFTS:
        raise ValueError(f"no committed draft for {target!r}; drafts ship for: {', '.join(COMMITTED_DRAFTS)}")
    path = bundled_model_path().parent / "drafts" / COMMITTED_DRAFTS[target]
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path}: the committed draft for {target} is missing from this installation")
    return path


def resolve_model_path(path: str | os.PathLike) -> str:
    """`stories260K` and `stdlib-fim-10m` name the bundled models; a name `eaglespec fetch` knows (e.g. `smollm2-135m`) names its
    installed directory, and a committed draft's name (e.g. `smollm2-135m-eagle3`) the draft shipped in the
    package, when no such local path exists; anything else is returned unchanged."""
    if str(path) in BUNDLED_MODELS:
        return str(bundled_model_path(str(path)))
    if Path(path).exists():
        return str(path)
    if str(path) in KNOWN_MODELS:
        return str(fetched_model_path(str(path)))
    targets = {draft: target for target, draft in COMMITTED_DRAFTS.items()}
    if str(path) in targets:
        return str(committed_draft_path(targets[str(path)]))
    return str(path)
