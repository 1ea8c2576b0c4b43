"""Offline (dumped features) vs online (target per batch) training, and the bad-input errors."""

import json
import math
import re
import shutil
from pathlib import Path

import pytest
import torch

from eaglespec.models import EagleDraftModel
from eaglespec.training import Eagle1TrainConfig, Eagle3TrainConfig, train_eagle1, train_eagle3
from eaglespec.training.data import load_prepared_dataset, split_indices
from eaglespec.training.engine import load_ds_settings
from eaglespec.training.loop import TrainingDiverged
from fixtures import dump_stories260k_features, read_metrics, train_config


@pytest.fixture(scope="module")
def eagle1_features(tiny_prepared, tmp_path_factory) -> Path:
    return dump_stories260k_features(tiny_prepared, "eagle1", tmp_path_factory.mktemp("features") / "eagle1")


def test_offline_and_online_give_the_same_loss_curve(tiny_prepared, eagle1_features, tmp_path):
    online = train_eagle1(Eagle1TrainConfig(train_config(tmp_path / "online"), data=tiny_prepared))
    offline = train_eagle1(Eagle1TrainConfig(train_config(tmp_path / "offline"), tmpdir=eagle1_features))
    train, _ = split_indices(load_prepared_dataset(tiny_prepared), 0.2, 0)  # both sources split the same samples
    assert online.state.step == offline.state.step == 2 * math.ceil(len(train) / 2)  # 2 epochs, batches of 2
    for a, b in zip(read_metrics(tmp_path / "online"), read_metrics(tmp_path / "offline"), strict=True):
        assert a["split"] == b["split"] and a["epoch"] == b["epoch"]
        assert a["ploss"] == pytest.approx(b["ploss"], rel=1e-4)
        assert a["vloss"] == pytest.approx(b["vloss"], rel=1e-4)
    wa = EagleDraftModel.from_pretrained(online.last_checkpoint).state_dict()
    wb = EagleDraftModel.from_pretrained(offline.last_checkpoint).state_dict()
    for name in wa:
        torch.testing.assert_close(wa[name], wb[name], rtol=1e-4, atol=1e-5)


def test_features_of_another_method_are_refused(eagle1_features, tmp_path):
    with pytest.raises(ValueError, match="method"):
        train_eagle3(Eagle3TrainConfig(train_config(tmp_path / "out"), features=eagle1_features))
    assert not any((tmp_path / "out").glob("state_*"))


def test_test_features_give_runs_on_other_data_one_validation_set(overlapping_prepared, tmp_path):
    """--test-features: a run evaluates on those directories' test split, the one a run on them tests on, and
    still leaves its own data's test side out of training."""
    small, large = (dump_stories260k_features(p, "eagle3", tmp_path / p.name) for p in overlapping_prepared)
    common = dict(num_epochs=1, test_split=0.3)
    on_large = train_eagle3(Eagle3TrainConfig(train_config(tmp_path / "large-run", **common), features=large))
    on_small = train_eagle3(Eagle3TrainConfig(train_config(tmp_path / "small-run", **common), features=small,
                                              test_features=[large]))
    own_test = train_eagle3(Eagle3TrainConfig(train_config(tmp_path / "own-run", **common), features=small))

    def last_test(run):
        return [m for m in read_metrics(run.output_dir) if m["split"] == "test"][-1]["positions_trained"]

    assert last_test(on_small) == last_test(on_large) != last_test(own_test)
    small_train, _ = split_indices(load_prepared_dataset(overlapping_prepared[0]), 0.3, 0)
    assert on_small.state.step == math.ceil(len(small_train) / 2)  # trained on the small set's train side
    with pytest.raises(ValueError, match="--test-features needs --features"):
        Eagle3TrainConfig(train_config(tmp_path / "x"), data=overlapping_prepared[0], test_features=[large])


def _zero_mask_copy(src: Path, dst: Path) -> Path:
    import datasets

    ds = datasets.load_from_disk(str(src))
    ds.map(lambda r: {"loss_mask": [0] * len(r["loss_mask"])}).save_to_disk(str(dst))
    shutil.copy(src / "prepare_meta.json", dst / "prepare_meta.json")
    return dst


@pytest.mark.parametrize("method", ["eagle1", "eagle3"])
def test_all_zero_loss_mask_fails_before_training(method, tiny_prepared, tmp_path):
    data = _zero_mask_copy(tiny_prepared, tmp_path / "zero")
    cfg = (Eagle1TrainConfig(train_config(tmp_path / "out"), data=data) if method == "eagle1"
           else Eagle3TrainConfig(train_config(tmp_path / "out"), data=data))
    with pytest.raises(ValueError, match="loss_mask is 0"):
        (train_eagle1 if method == "eagle1" else train_eagle3)(cfg)
    assert not (tmp_path / "out").exists()


def test_zero_trained_tokens_after_draft_vocab_mask(tiny_prepared, tmp_path, monkeypatch):
    # A draft vocabulary holding only <unk> (id 0), which the target never predicts: nothing to train on.
    from eaglespec.training import run

    monkeypatch.setattr(run, "_draft_vocab", lambda *args: torch.tensor([0]))
    cfg = Eagle3TrainConfig(train_config(tmp_path / "out", batch_size=12), data=tiny_prepared, draft_vocab_size=1)
    with pytest.raises(ValueError, match="zero trained tokens after the draft-vocabulary mask"):
        train_eagle3(cfg)


def test_nan_loss_stops_with_step_and_last_good_checkpoint(tiny_prepared, tmp_path, monkeypatch):
    from eaglespec.training import methods

    calls = {"n": 0}
    original = methods.Eagle1Method.train_step

    def poisoned(self, model, draft, batch):
        out = original(self, model, draft, batch)
        calls["n"] += 1
        if calls["n"] == 7:  # epoch 2, after epoch 1's checkpoint
            out.loss = out.loss * float("nan")
        return out

    monkeypatch.setattr(methods.Eagle1Method, "train_step", poisoned)
    out = tmp_path / "out"
    cfg = Eagle1TrainConfig(train_config(out, num_epochs=3), data=tiny_prepared, save_freq=1)
    with pytest.raises(TrainingDiverged) as info:
        train_eagle1(cfg)
    message = str(info.value)
    assert "step 7" in message and "state_1" in message and "--lr" in message
    assert sorted(p.name for p in out.glob("state_*")) == ["state_1"]


def test_existing_checkpoints_need_resume(tiny_prepared, tmp_path):
    out = tmp_path / "out"
    train_eagle1(Eagle1TrainConfig(train_config(out, max_steps=1), data=tiny_prepared))
    with pytest.raises(FileExistsError, match="--resume"):
        train_eagle1(Eagle1TrainConfig(train_config(out, max_steps=1), data=tiny_prepared))


def test_resume_without_training_state_starts_over_and_keeps_the_drafts(tiny_prepared, tmp_path, caplog):
    # An EAGLE-3 run stopped after epoch 1 (SIGTERM) or killed before its first full save leaves 16-bit drafts
    # only: --resume starts over (so a resumed run always finishes) without overwriting them, and names
    # --init-from as the way to train one further.
    out = tmp_path / "out"
    train_eagle3(Eagle3TrainConfig(train_config(out, num_epochs=1), data=tiny_prepared, ttt_length=2))
    marker = json.loads((out / "state_1" / "checkpoint.json").read_text())
    (out / "state_1" / "checkpoint.json").write_text(json.dumps({**marker, "resumable": False}))
    before = (out / "state_1" / "model.safetensors").read_bytes()
    with caplog.at_level("WARNING"):
        result = train_eagle3(Eagle3TrainConfig(train_config(out, num_epochs=1, resume=True), data=tiny_prepared,
                                                ttt_length=2))
    kept = [d for d in out.iterdir() if d.name.startswith("not-resumable-")]
    assert len(kept) == 1 and (kept[0] / "state_1" / "model.safetensors").read_bytes() == before
    assert re.search(r"none with the training state.*starting over.*--init-from", caplog.text)
    assert result.last_checkpoint == out / "state_1"
    assert json.loads((out / "state_1" / "checkpoint.json").read_text())["resumable"]


@pytest.mark.parametrize("method", ["eagle1", "eagle3"])
def test_init_from_starts_from_the_drafts_weights(method, tiny_prepared, tmp_path):
    def run(out, **kw):
        common = train_config(out, num_epochs=1, **kw)
        if method == "eagle1":
            return train_eagle1(Eagle1TrainConfig(common, data=tiny_prepared))
        return train_eagle3(Eagle3TrainConfig(common, data=tiny_prepared, ttt_length=2, draft_vocab_size=64))

    first = run(tmp_path / "first")
    second = run(tmp_path / "second", init_from=first.last_checkpoint, lr=1e-9)  # ~no update: weights carried over
    assert second.state.step == first.state.step  # a fresh schedule, not a resumed one
    a = EagleDraftModel.from_pretrained(first.last_checkpoint, target=_stories_target()).state_dict()
    b = EagleDraftModel.from_pretrained(second.last_checkpoint, target=_stories_target()).state_dict()
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(b[name].float(), a[name].float(), rtol=1e-2, atol=1e-3)
    fresh = EagleDraftModel.from_pretrained(run(tmp_path / "fresh", lr=1e-9).last_checkpoint,
                                            target=_stories_target()).state_dict()
    assert any(not torch.allclose(fresh[n].float(), a[n].float(), atol=1e-3) for n in a if "embed" not in n)
    other = "eagle3" if method == "eagle1" else "eagle1"
    common = train_config(tmp_path / "x", init_from=first.last_checkpoint)
    with pytest.raises(ValueError, match=f"an {method} draft, but this is train {other}"):
        if other == "eagle1":
            train_eagle1(Eagle1TrainConfig(common, data=tiny_prepared))
        else:
            train_eagle3(Eagle3TrainConfig(common, data=tiny_prepared))


def test_init_from_refuses_another_draft_vocabulary(tiny_prepared, tmp_path):
    first = train_eagle3(Eagle3TrainConfig(train_config(tmp_path / "a", max_steps=1), data=tiny_prepared,
                                           ttt_length=2, draft_vocab_size=64))
    with pytest.raises(ValueError, match="--draft-vocab-size 128: the --init-from draft .* has 64"):
        train_eagle3(Eagle3TrainConfig(train_config(tmp_path / "b", init_from=first.last_checkpoint),
                                       data=tiny_prepared, draft_vocab_size=128))
    with pytest.raises(ValueError, match=r"--aux-layers \[1, 2, 3\]: the --init-from draft .* has \[1, 2, 4\]"):
        train_eagle3(Eagle3TrainConfig(train_config(tmp_path / "b", init_from=first.last_checkpoint),
                                       data=tiny_prepared, aux_layers=[1, 2, 3]))
    with pytest.raises(FileNotFoundError, match="--init-from .*config.json"):
        train_config(tmp_path / "c", init_from=tmp_path / "nothing")


def _stories_target():
    from eaglespec.models import resolve_model_path
    from eaglespec.models import TargetModel

    return TargetModel.from_pretrained(resolve_model_path("stories260K"))


def test_ds_config_mismatch_is_a_clear_error(tmp_path):
    path = tmp_path / "ds_config.json"
    path.write_text(json.dumps({"train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 2,
                                "fp16": {"enabled": True}, "zero_optimization": {"stage": 2},
                                "gradient_clipping": 0.5}))
    ok = load_ds_settings(path, batch_size=1, grad_accum=2, world_size=2, grad_clip=0.5)
    assert ok.config["train_batch_size"] == 4
    with pytest.raises(ValueError, match="train_micro_batch_size_per_gpu.*--bs 2"):
        load_ds_settings(path, batch_size=2, grad_accum=2, world_size=1, grad_clip=0.5)
    path.write_text(json.dumps({"train_batch_size": 8, "train_micro_batch_size_per_gpu": 1,
                                "gradient_accumulation_steps": 2}))
    with pytest.raises(ValueError, match="train_batch_size"):
        load_ds_settings(path, batch_size=1, grad_accum=2, world_size=2, grad_clip=0.5)


def test_cli_reports_bad_config_before_training(tmp_path, capsys):
    from eaglespec.cli import main

    rc = main(["train", "eagle1", "--basepath", "stories260K", "--data", str(tmp_path / "missing"),
               "--cpdir", str(tmp_path / "out"), "--noise-std", "-1"])
    assert rc == 1
    assert "--noise-std" in capsys.readouterr().err


def test_resume_of_a_run_split_the_old_way_is_refused(tiny_prepared, tmp_path):
    # Runs saved before the token-hash split (a seeded shuffle of the indices) have no split_rule: resuming one
    # would train on another split than it started with, so it is refused, naming the setting.
    from eaglespec.training.checkpoint import TRAINING_STATE

    out = tmp_path / "out"
    train_eagle1(Eagle1TrainConfig(train_config(out, num_epochs=1), data=tiny_prepared, save_freq=1))
    state_file = out / "state_1" / TRAINING_STATE
    state = torch.load(state_file, weights_only=False)
    del state["config"]["split_rule"]
    torch.save(state, state_file)
    with pytest.raises(ValueError, match="split_rule: checkpoint None, now 'token-hash'"):
        train_eagle1(Eagle1TrainConfig(train_config(out, num_epochs=1, resume=True), data=tiny_prepared, save_freq=1))
