"""The fast EAGLE-3 training paths give the loss of the plain computation: target logits computed lazily at
the trained rows over the draft vocabulary only (offline features, optionally with the stored target argmax),
the draft lm_head at trained rows only; plus length-grouped batches, --eval-every / --sim-states and the
draft checkpoint without the target's embedding."""

import copy
from collections import Counter
from pathlib import Path

import pytest
import torch

from eaglespec.models import EagleDraftModel, TargetModel, build_draft, bundled_model_path
from eaglespec.training import Eagle3TrainConfig, train_eagle3
from eaglespec.training.data import TargetBatch, length_grouped_order
from eaglespec.training.losses import eagle3_step_loss, ttt_total_loss
from eaglespec.training.methods import Eagle3Method
from eaglespec.training.ttt import shift_left, ttt_forward
from fixtures import dump_stories260k_features, read_metrics, tiny_model, train_config


def _dense_reference(draft, batch: TargetBatch, steps: int, weight: float):
    """The plain computation: full [B, T, V] target logits, draft logits at every position, shifted masks."""
    ids, logits = shift_left(batch.input_ids, 1), shift_left(batch.logits, 1)
    outs = ttt_forward(draft, ids, draft.project_target_features(batch.features), steps)
    mask = shift_left(batch.loss_mask, 2).bool() & draft.t2d[logits.argmax(-1)]
    target = logits[..., draft.t2d]
    losses = [eagle3_step_loss(draft.compute_logits(o), shift_left(target, j), shift_left(mask, j))
              for j, o in enumerate(outs)]
    return ttt_total_loss(losses, weight), losses


@pytest.fixture(scope="module")
def case():
    target = TargetModel(tiny_model("llama"))
    draft = build_draft(target, "eagle3", used_tokens=torch.arange(0, 128, 2), seed=3)  # draft row i = target id 2i
    with torch.no_grad():
        for p in draft.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p, generator=torch.Generator().manual_seed(0)))
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, 128, (3, 16), generator=g)
    valid = torch.ones(3, 16, dtype=torch.bool)
    valid[2, 10:] = False  # a padded row
    ids[~valid] = 0
    loss_mask = (torch.rand(3, 16, generator=g) > 0.3).long() * valid
    out = target(ids, attention_mask=valid.long(), aux_layer_ids=draft.config.aux_layer_ids)
    full = TargetBatch(ids, loss_mask, valid, out.aux_hidden.float(), out.last_hidden.float(), out.logits.float())
    return target, draft, full


@pytest.mark.parametrize("kind", ["full_logits", "lazy", "lazy_with_argmax"])
def test_sparse_eagle3_loss_equals_the_dense_computation(case, kind):
    target, draft, full = case
    batch = copy.copy(full)
    if kind != "full_logits":
        batch.logits, batch.lm_head = None, target.lm_head
    if kind == "lazy_with_argmax":
        batch.argmax = full.logits.argmax(-1)
    draft.zero_grad()
    ref_loss, ref_steps = _dense_reference(draft, full, 3, 0.8)
    ref_loss.backward()
    ref_grads = {n: p.grad.clone() for n, p in draft.named_parameters() if p.grad is not None}
    draft.zero_grad()
    out = Eagle3Method(3, 0.8).train_step(draft, draft, batch)
    out.loss.backward()
    assert ref_steps[0].count.item() > 5 and ref_steps[2].count.item() > 0, [s.count for s in ref_steps]
    for j, s in enumerate(ref_steps):
        assert out.sums[f"count_{j}"].item() == s.count.item()
        assert out.sums[f"correct_{j}"].item() == s.correct.item()
        torch.testing.assert_close(out.sums[f"ploss_sum_{j}"], s.ploss_sum, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.loss, ref_loss, rtol=1e-5, atol=1e-6)
    for name, grad in ref_grads.items():
        torch.testing.assert_close(draft.get_parameter(name).grad, grad, rtol=1e-4, atol=1e-6, msg=name)
    draft.zero_grad()


def test_length_grouped_order_keeps_items_and_groups_lengths():
    lengths = {i: (i * 37) % 101 + 1 for i in range(100)}
    order = list(range(100))
    grouped = length_grouped_order(order, lengths, 8, epoch=1, seed=0)
    assert Counter(grouped) == Counter(order)
    batches = [grouped[k:k + 8] for k in range(0, 100, 8)]
    assert len(batches[-1]) == 4 and sorted(batches[-1]) == sorted(batches[-1])  # the short batch stays last
    spread = sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in batches)
    plain = sum(max(lengths[i] for i in order[k:k + 8]) - min(lengths[i] for i in order[k:k + 8])
                for k in range(0, 100, 8))
    assert spread < plain / 4
    assert grouped == length_grouped_order(order, lengths, 8, epoch=1, seed=0)  # seeded
    assert grouped != length_grouped_order(order, lengths, 8, epoch=2, seed=0)


@pytest.fixture(scope="module")
def eagle3_features(tiny_prepared, tmp_path_factory) -> Path:
    return dump_stories260k_features(tiny_prepared, "eagle3", tmp_path_factory.mktemp("features") / "eagle3")


def test_offline_eagle3_equals_online_and_checkpoints_omit_the_embedding(tiny_prepared, eagle3_features, tmp_path):
    online = train_eagle3(Eagle3TrainConfig(train_config(tmp_path / "online"), data=tiny_prepared, ttt_length=3))
    offline = train_eagle3(Eagle3TrainConfig(train_config(tmp_path / "offline", group_by_length=False),
                                             features=eagle3_features, ttt_length=3))
    for a, b in zip(read_metrics(tmp_path / "online"), read_metrics(tmp_path / "offline"), strict=True):
        assert (a["split"], a["epoch"], a["positions_trained"]) == (b["split"], b["epoch"], b["positions_trained"])
        assert a["ploss"] == pytest.approx(b["ploss"], rel=1e-4)
    target = TargetModel.from_pretrained(bundled_model_path())
    from safetensors.torch import load_file

    for result in (online, offline):
        assert "embed_tokens.weight" not in load_file(str(result.last_checkpoint / "model.safetensors"))
        draft = EagleDraftModel.from_pretrained(result.last_checkpoint, target=target)
        assert torch.equal(draft.embed_tokens.weight, target.embed_tokens.weight)


def test_eval_every_and_sim_states(eagle3_features, tmp_path, capsys):
    out = tmp_path / "run"
    cfg = train_config(out, num_epochs=3, eval_every=2, sim_states=0, group_by_length=True)
    train_eagle3(Eagle3TrainConfig(cfg, features=eagle3_features, ttt_length=2))
    tests = [m for m in read_metrics(out) if m["split"] == "test"]
    assert [m["epoch"] for m in tests] == [2, 3]  # every 2nd epoch and the last
    assert all(m["sim_accept_length"] is None and m["sim_accept_length_chain"] is None for m in tests)
    printed = capsys.readouterr().out
    assert "epoch 1: trained" in printed and "tokens/s" in printed and "test evaluation" in printed
    assert "simulated acceptance length" not in printed  # --sim-states 0: no simulation (and no target decoding)
    out = tmp_path / "run2"
    train_eagle3(Eagle3TrainConfig(train_config(out, num_epochs=1, sim_states=3), features=eagle3_features, ttt_length=2))
    (test,) = [m for m in read_metrics(out) if m["split"] == "test"]
    assert test["sim_accept_length"] >= 1.0 and test["sim_accept_length_chain"] >= 1.0
    # the chain engines draft (3 tokens) accepts at most what the longer chain does, and at most 3 + 1
    assert 1.0 <= test["sim_accept_length_chain3"] <= min(test["sim_accept_length_chain"], 4.0)
    assert len(test["accept"]) == 2 and all(0 < a < 100 for a in test["accept"])  # expected acceptance, percent


def test_the_acceptance_objective_trains_and_a_resume_with_another_objective_is_refused(eagle3_features, tmp_path):
    """--objective tv: the draft learns (expected acceptance rises over epochs; soft CE is still reported, so runs
    of different objectives compare); --resume with --objective ce names the setting that differs."""
    out = tmp_path / "tv"
    train_eagle3(Eagle3TrainConfig(train_config(out, num_epochs=3, lr=3e-3, sim_states=0), features=eagle3_features,
                                   ttt_length=2, objective="tv"))
    train = [m for m in read_metrics(out) if m["split"] == "train"]
    assert train[-1]["accept"][0] > train[0]["accept"][0] and all(p > 0 for p in train[-1]["ploss"])
    with pytest.raises(ValueError, match="objective: checkpoint 'tv', now 'ce'"):
        train_eagle3(Eagle3TrainConfig(train_config(out, num_epochs=3, lr=3e-3, sim_states=0, resume=True),
                                       features=eagle3_features, ttt_length=2))
    with pytest.raises(ValueError, match="--objective: expected one of ce, tv, lk, ce\\+tv"):
        Eagle3TrainConfig(train_config(out), features=eagle3_features, objective="kl")


def test_bad_eval_settings_are_refused(tmp_path):
    with pytest.raises(ValueError, match="--eval-every"):
        train_config(tmp_path, eval_every=0)
    with pytest.raises(ValueError, match="--sim-states"):
        train_config(tmp_path, sim_states=-1)
    with pytest.raises(ValueError, match="--target-dtype"):
        train_config(tmp_path, target_dtype="fp8")


def test_greedy_continuations_of_selected_rows_equal_all_rows(case):
    from eaglespec.training.metrics import target_greedy_continuations

    target, _, full = case
    every = target_greedy_continuations(target, full.input_ids, 4)
    rows = [(0, 3), (0, 11), (2, 0), (2, 9), (0, 3)]  # sequence 1 has none, a repeat, a padded sequence's last row
    some = target_greedy_continuations(target, full.input_ids, 4, rows)
    assert torch.equal(some[..., 0], every[..., 0])  # the first forward covers every row
    for b, s in rows:
        assert torch.equal(some[b, s], every[b, s]), (b, s)
    assert (some[1, :, 1:] == -1).all() and (some[0, 4, 1:] == -1).all()


def test_chain_predictions_from_chosen_positions_equal_all_positions(case):
    from eaglespec.training.ttt import chain_predictions, query_slots

    _, draft, full = case
    ids, hidden = shift_left(full.input_ids, 1), draft.project_target_features(full.features)
    every = chain_predictions(draft, ids, hidden, 4)  # [B, T, 4]
    rows = [(0, 2), (0, 13), (2, 5), (2, 8)]
    ends, live = query_slots(rows, 3)
    some = chain_predictions(draft, ids, hidden, 4, ends)  # [B, S, 4]
    assert ends.tolist() == [[2, 13], [0, 0], [5, 8]] and live.tolist() == [[True, True], [False, False], [True, True]]
    for b, t in rows:
        k = ends[b].tolist().index(t)
        assert torch.equal(some[b, k], every[b, t]), (b, t)


@pytest.mark.parametrize("checkpointing", [False, True])
def test_ttt_steps_at_chosen_positions_equal_all_positions(case, checkpointing):
    from eaglespec.training.ttt import query_slots, ttt_forward_at

    _, draft, full = case
    ids, hidden = shift_left(full.input_ids, 1), draft.project_target_features(full.features)
    every = ttt_forward(draft, ids, hidden, 3)
    ends, _ = query_slots([(0, 1), (0, 7), (1, 15), (2, 4)], 3)
    some = ttt_forward_at(draft, ids, hidden, 3, ends, gradient_checkpointing=checkpointing)
    torch.testing.assert_close(some[0], every[0])
    for j in (1, 2):
        torch.testing.assert_close(some[j], every[j][torch.arange(3)[:, None], ends], rtol=1e-5, atol=1e-6)
    sum(o.square().sum() for o in some).backward()  # gradients flow through the gathered positions
    assert draft.fc.weight.grad is not None
    draft.zero_grad()


def test_a_batch_without_trained_rows_gives_zero_loss(case):
    _, draft, full = case
    batch = copy.copy(full)
    batch.loss_mask = torch.zeros_like(full.loss_mask)
    out = Eagle3Method(3, 0.8).train_step(draft, draft, batch)
    assert out.loss.item() == 0.0 and all(out.sums[f"count_{j}"].item() == 0 for j in range(3))


def test_several_feature_directories_read_as_one(eagle3_features):
    from eaglespec.data.features import FeatureDataset, FeatureDatasets

    one = FeatureDataset(eagle3_features)
    both = FeatureDatasets([eagle3_features, eagle3_features])
    n = len(one)
    assert len(both) == 2 * n
    for i in (0, n - 1, n, 2 * n - 1):
        a, b = both[i], one[i % n]
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
        assert both.sample_length(i) == one.sample_length(i % n)
    with pytest.raises(IndexError):
        both[2 * n]


def test_eagle1_trains_on_eagle3_features_as_on_its_own(tiny_prepared, eagle3_features, tmp_path):
    """EAGLE-3 dumps hold last_hidden: EAGLE-1 trained on them gives the losses of its own dump, so one
    dump serves an EAGLE-1 vs EAGLE-3 comparison."""
    from eaglespec.training import Eagle1TrainConfig, train_eagle1

    eagle1_features = dump_stories260k_features(tiny_prepared, "eagle1", tmp_path / "eagle1")
    for name, features in (("own", eagle1_features), ("eagle3", [eagle3_features])):
        train_eagle1(Eagle1TrainConfig(train_config(tmp_path / name, num_epochs=1, group_by_length=False),
                                       tmpdir=features))
    for a, b in zip(read_metrics(tmp_path / "own"), read_metrics(tmp_path / "eagle3"), strict=True):
        assert (a["split"], a["positions_trained"]) == (b["split"], b["positions_trained"])
        assert a["ploss"] == pytest.approx(b["ploss"], rel=1e-5)


def test_features_of_another_method_name_the_directory(tiny_prepared, tmp_path):
    eagle1_features = dump_stories260k_features(tiny_prepared, "eagle1", tmp_path / "eagle1")
    with pytest.raises(ValueError, match=f"{tmp_path / 'eagle1'}: .*dumped for 'eagle1', training wants 'eagle3'"):
        train_eagle3(Eagle3TrainConfig(train_config(tmp_path / "run"), features=[eagle1_features], ttt_length=2))
