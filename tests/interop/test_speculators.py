"""Acceptance 2: speculators (its own code, in its own environment) loads our speculators export, its forward
gives the same draft tokens as ours on the same inputs, and its converter validates our sglang export."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from eaglespec.export import export_draft
from eaglespec.models import EagleDraftModel, TargetModel, build_draft, bundled_model_path
from eaglespec.training.ttt import ttt_forward

pytestmark = pytest.mark.interop
HERE = __import__("pathlib").Path(__file__).resolve().parent
STEPS = 3  # TTT steps compared (speculators' default speculative_tokens)


def _features(target: TargetModel, aux_ids: list[int]):
    g = torch.Generator().manual_seed(0)
    ids = torch.cat([torch.tensor([[1]]), torch.randint(3, target.vocab_size, (1, 23), generator=g)], dim=1)
    out = target(ids, aux_layer_ids=aux_ids)
    return ids, out.aux_hidden


@pytest.mark.parametrize("draft_vocab_size", [None, 200])
def test_speculators_loads_our_export_and_agrees(tmp_path, speculators_python, draft_vocab_size):
    target_dir = str(bundled_model_path())
    target = TargetModel.from_pretrained(target_dir, dtype=torch.float32)
    draft = build_draft(target, "eagle3", draft_vocab_size=draft_vocab_size, seed=5)
    draft.save_pretrained(tmp_path / "ours")
    export_draft(tmp_path / "ours", "speculators", tmp_path / "speculators", target=target_dir)
    export_draft(tmp_path / "ours", "sglang", tmp_path / "sglang", target=target_dir)
    ids, aux = _features(target, draft.config.aux_layer_ids)
    next_ids = torch.cat([ids[:, 1:], torch.zeros_like(ids[:, :1])], dim=1)  # x_{t+1} at position t
    positions = torch.arange(ids.shape[1])[None]
    torch.save({"aux": aux, "ids": next_ids, "positions": positions, "steps": STEPS, "target": target_dir,
                "aux_ids": draft.config.aux_layer_ids}, tmp_path / "inputs.pt")
    subprocess.run([str(speculators_python), str(HERE / "speculators_check.py"), str(tmp_path)], check=True,
                   stdout=sys.stdout, stderr=sys.stderr)
    result = torch.load(tmp_path / "result.pt")

    ours = EagleDraftModel.from_pretrained(tmp_path / "ours", target=target)
    with torch.no_grad():
        outputs = ttt_forward(ours, next_ids, ours.project_target_features(aux), STEPS, position_ids=positions)
        mine = torch.stack([ours.compute_logits(o).argmax(-1) for o in outputs], dim=-1)  # draft-vocab ids
    assert result["aux_ids"] == draft.config.aux_layer_ids
    assert torch.equal(result["draft_tokens"], mine), (result["draft_tokens"], mine)

    exported = load_file(str(tmp_path / "sglang" / "model.safetensors"))
    converted = result["converted"]
    renamed = {k.replace("midlayer.", "layers.0."): v for k, v in exported.items()}
    assert sorted(converted) == sorted(renamed)
    for name, tensor in renamed.items():
        assert torch.equal(converted[name], tensor), name


def test_speculators_loads_our_dflash_export_and_computes_our_blocks(tmp_path, speculators_python):
    """Issue 36: speculators' DFlashDraftModel loads our DFlash speculators export (its embedding and head the
    target's copies) and its own anchored-block forward gives our logits for every slot of every block."""
    from eaglespec.models import DFlashShape
    from eaglespec.training.data import TargetBatch
    from eaglespec.training.dflash import block_forward

    target_dir = str(bundled_model_path())
    target = TargetModel.from_pretrained(target_dir, dtype=torch.float32)
    draft = build_draft(target, "dflash", seed=5, dflash=DFlashShape(num_layers=2, block_size=4))
    draft.save_pretrained(tmp_path / "ours")
    export_draft(tmp_path / "ours", "speculators", tmp_path / "speculators", target=target_dir)
    g = torch.Generator().manual_seed(0)
    ids = torch.cat([torch.tensor([[1]]), torch.randint(3, target.vocab_size, (1, 23), generator=g)], dim=1)
    out = target(ids, aux_layer_ids=draft.config.aux_layer_ids)
    anchors = [2, 7, 8, 15]  # sorted, as speculators sorts its draw; 8 overlaps 7's block
    torch.save({"features": out.aux_hidden, "ids": ids, "anchors": anchors}, tmp_path / "inputs.pt")
    subprocess.run([str(speculators_python), str(HERE / "speculators_dflash_check.py"), str(tmp_path)], check=True,
                   stdout=sys.stdout, stderr=sys.stderr)
    result = torch.load(tmp_path / "result.pt")

    ones = torch.ones_like(ids)
    batch = TargetBatch(ids, ones, ones.bool(), out.aux_hidden, out.last_hidden, out.logits)
    with torch.no_grad():
        hidden = block_forward(draft, draft, batch, torch.tensor([anchors]))  # [1, N, bs, H]
        mine = draft.compute_logits(hidden[0]).flatten(0, 1)
    assert result["layer_ids"] == draft.config.aux_layer_ids and result["block_size"] == 4
    torch.testing.assert_close(result["logits"], mine, atol=1e-4, rtol=1e-4)
