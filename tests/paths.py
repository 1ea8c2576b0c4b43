"""Where the shared real data lives: `../shared` beside the checkout (CI places a copy there)."""

import os
from pathlib import Path

import pytest

SHARED = Path(os.environ.get("EAGLESPEC_SHARED", Path(__file__).resolve().parents[1].parent / "shared"))


def shared_path(*parts: str) -> Path:
    """A file under shared/, or skip the test with the reason when it is absent."""
    p = SHARED.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"shared data not found: {p} (set EAGLESPEC_SHARED)")
    return p
