"""Fixtures for the code recipe (recipes/code): a tiny source tree shaped like the standard library, a tokenizer
trained on it, and a tiny recipe config."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

RECIPE_DIR = Path(__file__).resolve().parents[2] / "recipes" / "code"
sys.path.insert(0, str(RECIPE_DIR))  # the recipe's `codefim` package lives beside its script

from codefim.config import ModelShape, RecipeConfig  # noqa: E402
from codefim.corpus import SourceFile  # noqa: E402

TINY_SHAPE = ModelShape(hidden_size=64, num_layers=2, num_heads=2, num_kv_heads=1, intermediate_size=96)


def module_source(index: int) -> str:
    """A small module with three functions (a docstring, a few statements each)."""
    functions = [f'''def scale_{index}_{k}(values, factor={k + 1}):
    """Scale every value by factor, skipping None."""
    result = []
    for value in values:
        if value is None:
            continue
        result.append(value * factor + {index})
    return result
''' for k in range(3)]
    return f'"""Module {index}: helpers."""\n\nimport math\n\n\n' + "\n\n".join(functions)


@pytest.fixture(scope="session")
def tiny_source(tmp_path_factory) -> Path:
    """24 modules in two packages, plus folders the recipe must leave out (tests, site-packages)."""
    root = tmp_path_factory.mktemp("stdlib")
    for i in range(24):
        path = root / ("alpha" if i % 2 else "beta") / f"mod{i}.py"
        path.parent.mkdir(exist_ok=True)
        path.write_text(module_source(i))
    for excluded in ("test/test_x.py", "alpha/tests/test_y.py", "site-packages/pkg/z.py", "idlelib/idle_test/t.py"):
        (root / excluded).parent.mkdir(parents=True, exist_ok=True)
        (root / excluded).write_text("EXCLUDED = True\n")
    return root


@pytest.fixture(scope="session")
def tiny_files(tiny_source) -> list[SourceFile]:
    return [SourceFile(p.relative_to(tiny_source).as_posix(), p.read_text())
            for p in sorted(tiny_source.rglob("mod*.py"))]


@pytest.fixture(scope="session")
def code_tokenizer(tmp_path_factory, tiny_files):
    """A 400-token tokenizer trained on the tiny tree and loaded back with AutoTokenizer."""
    from transformers import AutoTokenizer

    from codefim.tokenizer import save_hf_tokenizer, train_bpe

    folder = tmp_path_factory.mktemp("tokenizer")
    save_hf_tokenizer(train_bpe((f.text for f in tiny_files), vocab_size=400), folder, max_length=256)
    return AutoTokenizer.from_pretrained(folder)


@pytest.fixture
def tiny_config(tiny_source, tmp_path) -> RecipeConfig:
    """Steps, not time, end this run (a 10-hour budget), so it is deterministic."""
    return RecipeConfig(output=str(tmp_path / "model"), source=str(tiny_source), heldout_fraction=0.25,
                        vocab_size=400, seq_len=128, batch_size=2, max_steps=2, warmup_steps=1, eval_every=1,
                        heldout_rows=4, time_budget_min=600.0, threads=1, shape=TINY_SHAPE)
