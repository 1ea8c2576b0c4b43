"""DFlash training (issue 36): anchors, the one-forward block loss against a block-by-block computation, and
training steps that lower it."""

from __future__ import annotations

import math

import pytest
import torch
from fixtures import stories260k

from eaglespec.models import DFlashShape, TargetModel, build_draft
from eaglespec.training import dflash as dflash_training
from eaglespec.training.data import TargetBatch
from eaglespec.training.dflash import DFlashMethod, sample_anchors
from eaglespec.training.losses import soft_cross_entropy

BLOCK = 4


@pytest.fixture(scope="module")
def case():
    torch.manual_seed(0)
    target = TargetModel(stories260k())
    draft = build_draft(target, "dflash", seed=0, dflash=DFlashShape(num_layers=1, block_size=BLOCK))
    ids = torch.randint(3, target.vocab_size, (2, 20))
    ids[:, 0] = 1
    loss_mask = torch.ones_like(ids)
    loss_mask[:, :6] = 0  # a prompt
    valid = torch.ones_like(ids, dtype=torch.bool)
    valid[1, 15:] = False  # padding
    loss_mask[1, 15:] = 0
    with torch.no_grad():
        out = target(ids, aux_layer_ids=draft.config.aux_layer_ids)
    batch = TargetBatch(ids, loss_mask, valid, out.aux_hidden.float(), out.last_hidden.float(), out.logits.float())
    return target, draft, batch


def test_anchors_are_positions_whose_next_token_is_trained():
    loss_mask = torch.tensor([[0, 0, 1, 1, 1, 0], [0, 1, 0, 0, 0, 0]])
    valid = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]], dtype=torch.bool)
    anchors, live = sample_anchors(loss_mask, valid, 10, torch.Generator().manual_seed(0))
    assert anchors[0][live[0]].tolist() == [1, 2, 3] and anchors[1][live[1]].tolist() == [0]
    few, live_few = sample_anchors(loss_mask, valid, 2, torch.Generator().manual_seed(0))
    assert live_few.sum(1).tolist() == [2, 1] and set(few[0].tolist()) <= {1, 2, 3}
    again, _ = sample_anchors(loss_mask, valid, 2, torch.Generator().manual_seed(0))
    assert torch.equal(few, again)


def _direct_loss(draft, batch: TargetBatch, anchors, live, gamma: float, label: bool = False) -> torch.Tensor:
    """Each block alone: context = features before its anchor, every key visible; soft CE per trained slot
    (with `label`, hard CE on the data's token at a + k)."""
    num = den = 0.0
    T = batch.input_ids.shape[1]
    for b in range(anchors.shape[0]):
        for a in anchors[b][live[b]].tolist():
            ctx = draft.project_target_features(batch.features[b:b + 1, :a])
            ids = draft.block_ids(batch.input_ids[b, a:a + 1])
            mask = torch.ones(1, 1, BLOCK, a + BLOCK, dtype=torch.bool)
            logits = draft.compute_logits(draft(ids, ctx, torch.arange(a + BLOCK)[None], mask)[0])
            for k in range(1, BLOCK):
                if a + k < T and batch.loss_mask[b, a + k]:
                    w = math.exp(-(k - 1) / gamma)
                    p = torch.softmax(batch.logits[b, a + k - 1], -1)
                    if label:
                        p = torch.nn.functional.one_hot(batch.input_ids[b, a + k], p.shape[-1]).float()
                    num = num + w * soft_cross_entropy(logits[k], p)
                    den += w
    return num / den


def test_the_one_forward_loss_equals_block_by_block(case, monkeypatch):
    _, draft, batch = case
    anchors, live = sample_anchors(batch.loss_mask, batch.valid, 5, torch.Generator().manual_seed(3))
    monkeypatch.setattr(dflash_training, "sample_anchors", lambda *a, **k: (anchors, live))
    method = DFlashMethod(BLOCK, num_anchors=5)
    out = method.train_step(draft, draft, batch)
    assert torch.allclose(out.loss, _direct_loss(draft, batch, anchors, live, method.gamma), atol=1e-5)
    trained = sum(int(out.sums[f"count_{j}"]) for j in range(BLOCK - 1))
    assert 0 < trained <= int(live.sum()) * (BLOCK - 1)


def test_the_label_objective_is_hard_cross_entropy_and_evaluates_against_the_target(case, monkeypatch):
    """--objective label: the training step's loss is the decayed hard CE on the data's tokens and reads no target
    logits (batch.logits None); evaluation still measures against the target's distribution (soft CE, alpha)."""
    _, draft, batch = case
    anchors, live = sample_anchors(batch.loss_mask, batch.valid, 5, torch.Generator().manual_seed(3))
    monkeypatch.setattr(dflash_training, "sample_anchors", lambda *a, **k: (anchors, live))
    method = DFlashMethod(BLOCK, num_anchors=5, objective="label")
    no_logits = TargetBatch(batch.input_ids, batch.loss_mask, batch.valid, batch.features, batch.last_hidden, None)
    monkeypatch.setattr(TargetBatch, "rows_logits", lambda *a, **k: pytest.fail("a label step read target logits"))
    out = method.train_step(draft, draft, no_logits)
    assert torch.allclose(out.loss, _direct_loss(draft, batch, anchors, live, method.gamma, label=True), atol=1e-5)
    assert "accept_sum_0" not in out.sums
    monkeypatch.undo()
    monkeypatch.setattr(dflash_training, "sample_anchors", lambda *a, **k: (anchors, live))
    measured = method.eval_step(draft, draft, batch, None)
    soft = DFlashMethod(BLOCK, num_anchors=5).eval_step(draft, draft, batch, None)
    for key in ("ploss_sum_0", "correct_1", "accept_sum_2", "sim_chain_sum"):
        assert torch.allclose(measured[key], soft[key]), key


def test_training_steps_lower_the_loss_and_the_chain_estimate_is_reported(case):
    _, draft, batch = case
    method = DFlashMethod(BLOCK, num_anchors=8, seed=1)
    optimizer = torch.optim.AdamW([p for p in draft.parameters() if p.requires_grad], lr=3e-3)
    def slot1_loss(sums):
        return float(sums["ploss_sum_0"] / sums["count_0"])

    first = slot1_loss(method.eval_step(draft, draft, batch, None))
    for _ in range(30):
        out = method.train_step(draft, draft, batch)
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
    sums = method.eval_step(draft, draft, batch, None)
    assert slot1_loss(sums) < first - 0.5
    tau = float(sums["sim_chain_sum"] / sums["sim_positions"])
    assert 1.0 <= tau <= BLOCK


def test_train_dflash_end_to_end_then_decode_exactly(tiny_prepared, tmp_path):
    """`train dflash` on prepared data: checkpoints a draft that loads by name of its method and decodes
    stories260K exactly; a resume with another block size is refused, naming the setting."""
    from fixtures import read_metrics, train_config

    from eaglespec.decoding import SpeculativeGenerator
    from eaglespec.training.config import DFlashTrainConfig
    from eaglespec.training.run import train_dflash

    out = tmp_path / "run"
    result = train_dflash(DFlashTrainConfig(train_config(out), data=tiny_prepared, block_size=BLOCK, num_anchors=8))
    assert result.last_checkpoint is not None and result.state.epoch == 2
    metrics = read_metrics(out)
    assert any(m["split"] == "test" and m["sim_accept_length_chain3"] is not None for m in metrics)
    gen = SpeculativeGenerator.from_pretrained("stories260K", result.last_checkpoint)
    assert gen.draft.config.method == "dflash" and gen.draft.block_size == BLOCK
    ids = torch.tensor([[1, 403, 407, 261]])
    assert gen.generate(ids, 30).token_ids == gen.vanilla_generate(ids, 30).token_ids
    with pytest.raises(ValueError, match="block_size: checkpoint 4, now 6"):
        train_dflash(DFlashTrainConfig(train_config(out, resume=True), data=tiny_prepared, block_size=6, num_anchors=8))
