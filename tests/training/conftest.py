"""Shared fixtures of the training tests: tiny prepared datasets of stories260K text."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

STORIES = [
    "Once upon a time, there was a little girl named Lily. She loved to play outside in the sun.",
    "Tom had a red ball. He threw the ball to his dog and the dog ran to get it.",
    "One day, a big bird flew over the tree. The bird was happy and sang a song.",
    "Sue and her mom went to the park. They saw a cat and a dog playing in the grass.",
    "There was a small boy who liked to eat apples. Every day he went to the tree to pick one.",
    "The sun was hot, so Ben went to the lake. He swam with his friends all day long.",
    "Anna found a shiny stone in the garden. She showed it to her dad and he smiled.",
    "A little fish lived in the sea. It was sad because it had no friends, until one day a crab came.",
    "Max wanted to build a tower of blocks. He worked hard and the tower was very tall.",
    "Mia liked to draw pictures of flowers. Her mom put the pictures on the wall.",
    "The cat sat on the mat. It was a warm day and the cat was sleepy.",
    "Jack and Jill went up the hill to play. They laughed and ran down again.",
]


def write_prepared(directory: Path, texts: list[str]) -> Path:
    from eaglespec.models import bundled_model_path
    from eaglespec.data import prepare_dataset

    raw = directory.with_suffix(".jsonl")
    raw.write_text("".join(json.dumps({"id": f"s{i}", "text": t}) + "\n" for i, t in enumerate(texts)))
    prepare_dataset(raw, str(bundled_model_path()), directory, data_format="text", max_len=512)
    return directory


@pytest.fixture(scope="session")
def tiny_prepared(tmp_path_factory) -> Path:
    """12 short stories (about 20-30 tokens each), tokenised for stories260K, all text trained."""
    return write_prepared(tmp_path_factory.mktemp("data") / "tiny", STORIES)


@pytest.fixture(scope="session")
def overlapping_prepared(tmp_path_factory) -> tuple[Path, Path]:
    """Two prepared datasets sharing samples: the first 8 stories, and all 12."""
    root = tmp_path_factory.mktemp("overlapping")
    return write_prepared(root / "small", STORIES[:8]), write_prepared(root / "large", STORIES)
