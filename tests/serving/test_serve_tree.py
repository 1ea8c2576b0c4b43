"""`eaglespec serve` decodes with the draft's tuned tree (`eaglespec tune` stores it under `decoding.tree` in the
draft's config.json), of any kind, unless a tree flag overrides it (as `eaglespec generate` does)."""

from __future__ import annotations

import json
import shutil

import pytest

from eaglespec.decoding import TreeConfig


@pytest.fixture
def chain_tuned_draft(model_dirs, tmp_path) -> str:
    """A copy of the serving draft whose config stores a tuned chain tree, as `eaglespec tune` writes it."""
    draft = tmp_path / "chain-draft"
    shutil.copytree(model_dirs[1], draft)
    config = json.loads((draft / "config.json").read_text())
    config["decoding"] = {"tree": {"kind": "chain", "depth": 3}, "predicted_tokens_per_s": 100.0}
    (draft / "config.json").write_text(json.dumps(config, indent=2))
    return str(draft)


def _served_tree(monkeypatch, argv: list[str]) -> TreeConfig:
    """Run `eaglespec serve ARGV` up to the point where it would start the server -> the generator's tree."""
    import eaglespec.serving
    from eaglespec.cli import main

    served = []
    monkeypatch.setattr(eaglespec.serving, "run_server", lambda generator, config, log_level: served.append(generator))
    assert main(["serve", *argv]) == 0
    return served[0].tree


def test_serve_uses_a_tuned_chain_tree(monkeypatch, model_dirs, chain_tuned_draft):
    tree = _served_tree(monkeypatch, ["--base", model_dirs[0], "--draft", chain_tuned_draft, "--port", "0"])
    assert tree == TreeConfig(kind="chain", depth=3)


def test_a_tree_flag_overrides_the_tuned_tree(monkeypatch, model_dirs, chain_tuned_draft):
    base = ["--base", model_dirs[0], "--draft", chain_tuned_draft, "--port", "0"]
    assert _served_tree(monkeypatch, [*base, "--tree", "dynamic"]) == TreeConfig(kind="dynamic")
    assert _served_tree(monkeypatch, [*base, "--depth", "2"]) == TreeConfig(kind="chain", depth=2)
