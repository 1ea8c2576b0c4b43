"""Offline features: `dump_features` equals a direct target forward per sample, manifests identify the
target, runs resume after the last finished shard, and incomplete output is never loadable."""

from __future__ import annotations

import dataclasses
import json
import shutil

import datasets
import pytest
import torch
from fixtures import tiny_model

from eaglespec.cli import main
from eaglespec.data.features import FeatureDataset, dequantize_int8, int8_group, quantize_int8
from eaglespec.distill import features as ft
from eaglespec.models import TargetModel, bundled_model_path

LENGTHS = (5, 17, 9, 12, 3, 17, 8)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def target() -> TargetModel:
    return TargetModel.from_pretrained(bundled_model_path(), dtype=torch.float32)


def make_prepared(path, lengths=LENGTHS, vocab=512, seed=0):
    """A prepared dataset as `eaglespec prepare` writes it: id, input_ids, loss_mask."""
    g = torch.Generator().manual_seed(seed)
    ids = [[1] + torch.randint(3, vocab, (n - 1,), generator=g).tolist() for n in lengths]
    masks = [[0] * (n // 2) + [1] * (n - n // 2) for n in lengths]
    datasets.Dataset.from_dict({"id": [f"s{i}" for i in range(len(lengths))], "input_ids": ids,
                                "loss_mask": masks}).save_to_disk(str(path))
    return path


@pytest.fixture
def prepared(tmp_path):
    return make_prepared(tmp_path / "prep")


@pytest.mark.parametrize("method", ["eagle1", "eagle3"])
def test_features_equal_a_direct_forward_per_sample(target, prepared, tmp_path, method):
    manifest = ft.dump_features(target, prepared, method, tmp_path / "f", dtype=torch.float32, shard_size=3)
    data = FeatureDataset(tmp_path / "f")
    rows = datasets.load_from_disk(str(prepared))
    assert len(data) == len(LENGTHS) and data.manifest == manifest
    aux_ids = [1, 2, 4] if method == "eagle3" else None  # default_aux_layer_ids(5)
    for i in range(len(data)):
        sample = data[i]
        ids = torch.tensor(rows[i]["input_ids"])
        out = target(ids[None], aux_layer_ids=aux_ids)
        assert torch.equal(sample["input_ids"], ids) and sample["input_ids"].dtype == torch.int64
        assert sample["loss_mask"].tolist() == rows[i]["loss_mask"]
        assert torch.equal(sample["last_hidden"], out.last_hidden[0])  # exact in fp32
        if method == "eagle3":
            assert sample["aux_hidden"].shape == (LENGTHS[i], 3 * 64)
            assert torch.equal(sample["aux_hidden"], out.aux_hidden[0])
            assert torch.equal(sample["target_argmax"], out.logits[0].argmax(-1))  # the target's next tokens
            assert data.sample_length(i) == LENGTHS[i]
        else:
            assert "aux_hidden" not in sample and "target_argmax" not in sample


def test_manifest_records_identity_settings_and_shards(target, prepared, tmp_path):
    ft.dump_features(target, prepared, "eagle3", tmp_path / "f", shard_size=3)
    on_disk = json.loads((tmp_path / "f" / "manifest.json").read_text())
    assert on_disk["complete"] is True and on_disk["method"] == "eagle3" and on_disk["dtype"] == "bf16"
    assert on_disk["aux_layer_ids"] == [1, 2, 4] and on_disk["num_samples"] == 7
    assert [(s["file"], s["start"], s["end"]) for s in on_disk["shards"]] == [
        ("shard_00000.safetensors", 0, 3), ("shard_00001.safetensors", 3, 6), ("shard_00002.safetensors", 6, 7)]
    assert on_disk["data_fingerprint"] == datasets.load_from_disk(str(prepared))._fingerprint
    identity = on_disk["target"]
    assert (identity["model_type"], identity["hidden_size"], identity["vocab_size"],
            identity["num_hidden_layers"]) == ("llama", 64, 512, 5)
    assert len(identity["config_sha256"]) == 64 and len(identity["weights_sha256"]) == 64
    sample = FeatureDataset(tmp_path / "f")[6]
    assert sample["last_hidden"].dtype == torch.bfloat16 and sample["aux_hidden"].dtype == torch.bfloat16


def test_batched_dump_matches_per_sample_dump(target, prepared, tmp_path):
    ft.dump_features(target, prepared, "eagle3", tmp_path / "one", dtype=torch.float32, batch_size=1)
    ft.dump_features(target, prepared, "eagle3", tmp_path / "many", dtype=torch.float32, batch_size=3)
    one, many = FeatureDataset(tmp_path / "one"), FeatureDataset(tmp_path / "many")
    for i in range(len(one)):
        for key in ("input_ids", "loss_mask"):
            assert torch.equal(one[i][key], many[i][key])
        for key in ("last_hidden", "aux_hidden"):
            torch.testing.assert_close(many[i][key], one[i][key], atol=1e-5, rtol=1e-5)


def test_int8_round_trip_is_within_half_a_step_per_group():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, 192, generator=g) * torch.tensor([0.01, 1.0, 300.0]).repeat_interleave(64)  # 3 scales
    x[2, 70] = 5000.0  # an outlier widens only its own group's step
    q, scale = quantize_int8(x, 64)
    assert q.dtype == torch.int8 and q.shape == x.shape and scale.shape == (5, 3)
    back = dequantize_int8(q, scale, torch.float32)
    step = scale.repeat_interleave(64, dim=1)
    assert ((back - x).abs() <= step / 2 * (1 + 1e-5)).all()
    assert (back[:, :64] - x[:, :64]).abs().max() < 1e-3  # small channels keep their precision
    assert q.abs().amax(-1).eq(127).all()  # each row's largest value uses the full range
    assert torch.equal(dequantize_int8(*quantize_int8(torch.zeros(2, 64), 64), torch.bfloat16), torch.zeros(2, 64))
    assert dequantize_int8(*quantize_int8(torch.zeros(0, 192), 64), torch.bfloat16).shape == (0, 192)
    assert (int8_group(576), int8_group(64), int8_group(100), int8_group(4096)) == (64, 64, 4, 64)


def test_int8_aux_features_read_back_close_and_take_less_disk(target, prepared, tmp_path):
    exact = ft.dump_features(target, prepared, "eagle3", tmp_path / "bf16", shard_size=3)
    small = ft.dump_features(target, prepared, "eagle3", tmp_path / "int8", shard_size=3, aux_int8=True)
    assert exact.aux_int8_group is None and small.aux_int8_group == 64 and small.dtype == "bf16"
    a, b = FeatureDataset(tmp_path / "bf16"), FeatureDataset(tmp_path / "int8")
    for i in range(len(a)):
        for key in ("input_ids", "loss_mask", "last_hidden", "target_argmax"):  # the targets stay exact
            assert torch.equal(a[i][key], b[i][key])
        assert b[i]["aux_hidden"].dtype == torch.bfloat16 and b[i]["aux_hidden"].shape == a[i]["aux_hidden"].shape
        groups = a[i]["aux_hidden"].float().view(LENGTHS[i], 3, 64)
        step = groups.abs().amax(-1, keepdim=True) / 127
        error = (b[i]["aux_hidden"].float().view(LENGTHS[i], 3, 64) - groups).abs()
        assert (error <= step / 2 + groups.abs() / 128).all()  # half a step, plus bf16's rounding of the result
    sizes = [sum(f.stat().st_size for f in (tmp_path / d).glob("shard_*")) for d in ("bf16", "int8")]
    per_token = [ft.bytes_per_token(64, "eagle3", torch.bfloat16, aux) for aux in (False, True)]
    assert per_token == [3 * 8 + 4 * 64 * 2, 3 * 8 + 64 * 2 + 3 * 64 + 3 * 4]
    saved = sum(LENGTHS) * (per_token[0] - per_token[1])  # the estimate; each sample's scale adds a header entry
    assert saved - 100 * len(LENGTHS) < sizes[0] - sizes[1] <= saved
    with pytest.raises(ValueError, match="aux_int8_group: 64 there, None now"):
        ft.dump_features(target, prepared, "eagle3", tmp_path / "int8", shard_size=3)


def test_max_len_truncates(target, prepared, tmp_path):
    ft.dump_features(target, prepared, "eagle1", tmp_path / "f", max_len=6)
    data = FeatureDataset(tmp_path / "f")
    assert [len(data[i]["input_ids"]) for i in range(len(data))] == [min(n, 6) for n in LENGTHS]
    assert data[1]["last_hidden"].shape == (6, 64) and data.manifest.max_len == 6


def test_check_features_match_names_what_differs(target, prepared, tmp_path):
    manifest = ft.dump_features(target, prepared, "eagle3", tmp_path / "f", shard_size=4)
    ft.check_features_match(manifest, target, "eagle3")
    ft.check_features_match(json.loads((tmp_path / "f" / "manifest.json").read_text()), target, "eagle3",
                            aux_layer_ids=[1, 2, 4])
    ft.check_features_match(manifest, target, "eagle1")  # EAGLE-3 features hold last_hidden: they serve EAGLE-1
    eagle1 = ft.dump_features(target, prepared, "eagle1", tmp_path / "f1", shard_size=4)
    with pytest.raises(ValueError, match="method: features were dumped for 'eagle1', training wants 'eagle3'"):
        ft.check_features_match(eagle1, target, "eagle3")
    with pytest.raises(ValueError, match=r"aux layer ids: features have \[1, 2, 4\], training wants \[0, 2, 3\]"):
        ft.check_features_match(manifest, target, "eagle3", aux_layer_ids=[0, 2, 3])
    other = TargetModel(tiny_model("llama"))
    with pytest.raises(ValueError, match=r"hidden_size: features have 64, target has 32.*vocab_size") as e:
        ft.check_features_match(manifest, other, "eagle3")
    assert "num_hidden_layers: features have 5, target has 8" in str(e.value)
    # Same shapes, another model: a copy of stories260K with an edited config.json.
    copy_dir = tmp_path / "stories-copy"
    shutil.copytree(bundled_model_path(), copy_dir)
    config = json.loads((copy_dir / "config.json").read_text())
    config["rms_norm_eps"] = 1e-6
    (copy_dir / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"model config \(config.json hash\) differs"):
        ft.check_features_match(manifest, TargetModel.from_pretrained(copy_dir), "eagle3")


def test_interrupted_dump_is_not_loadable_and_resumes_after_the_last_shard(target, prepared, tmp_path):
    out = tmp_path / "f"
    plan, dataset = ft.plan_feature_dump(target, prepared, "eagle3", out, dtype=torch.float32, shard_size=2)

    class Killed(Exception):
        pass

    def kill_after_two_shards(n: int, calls=[]) -> None:
        calls.append(n)
        if len(calls) == 2:
            raise Killed

    with pytest.raises(Killed):
        ft.run_feature_dump(plan, dataset, target, progress=kill_after_two_shards)
    (out / ".tmp-shard_00002.safetensors").write_bytes(b"half a shard")  # a write cut short
    with pytest.raises(ValueError, match=r"features are incomplete \(2 shards written\); rerun"):
        FeatureDataset(out)
    first_shards = {name: (out / name).stat().st_mtime_ns for name in ("shard_00000.safetensors",
                                                                       "shard_00001.safetensors")}

    resumed, dataset = ft.plan_feature_dump(target, prepared, "eagle3", out, dtype=torch.float32, shard_size=2)
    assert [s.file for s in resumed.todo] == ["shard_00002.safetensors", "shard_00003.safetensors"]
    assert not (out / ".tmp-shard_00002.safetensors").exists()
    ft.run_feature_dump(resumed, dataset, target)
    assert {name: (out / name).stat().st_mtime_ns for name in first_shards} == first_shards  # kept as they were
    ft.dump_features(target, prepared, "eagle3", tmp_path / "whole", dtype=torch.float32, shard_size=2)
    a, b = FeatureDataset(out), FeatureDataset(tmp_path / "whole")
    for i in range(len(a)):
        assert all(torch.equal(a[i][k], b[i][k]) for k in ("input_ids", "last_hidden", "aux_hidden"))


def test_output_with_other_settings_or_foreign_files_is_refused(target, prepared, tmp_path):
    out = tmp_path / "f"
    ft.dump_features(target, prepared, "eagle3", out, shard_size=3)
    with pytest.raises(ValueError, match=r"other settings \(method: 'eagle3' there, 'eagle1' now"):
        ft.dump_features(target, prepared, "eagle1", out, shard_size=3)
    with pytest.raises(ValueError, match=r"shard_size: 3 there, 5 now"):
        ft.dump_features(target, prepared, "eagle3", out, shard_size=5)
    other_data = make_prepared(tmp_path / "prep2", seed=1)
    with pytest.raises(ValueError, match="data_fingerprint"):
        ft.dump_features(target, other_data, "eagle3", out, shard_size=3)
    assert ft.dump_features(target, other_data, "eagle3", out, shard_size=3, overwrite=True).complete
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="holds no manifest.json"):
        ft.dump_features(target, prepared, "eagle1", foreign)


def test_feature_dataset_needs_a_manifest(tmp_path):
    with pytest.raises(FileNotFoundError, match="no manifest.json; not an eaglespec feature directory"):
        FeatureDataset(tmp_path)


def test_bad_arguments(target, prepared, tmp_path):
    with pytest.raises(ValueError, match="apply to eagle3 only"):
        ft.dump_features(target, prepared, "eagle1", tmp_path / "f", aux_layer_ids=[1, 2, 3])
    with pytest.raises(ValueError, match="int8 aux features apply to eagle3 only"):
        ft.dump_features(target, prepared, "eagle1", tmp_path / "f", aux_int8=True)
    with pytest.raises(ValueError, match=r"aux layer ids \[7\] out of range"):
        ft.dump_features(target, prepared, "eagle3", tmp_path / "f", aux_layer_ids=[1, 2, 7])
    with pytest.raises(ValueError, match="method: expected one of"):
        ft.dump_features(target, prepared, "medusa", tmp_path / "f")
    with pytest.raises(FileNotFoundError, match="not a prepared dataset"):
        ft.dump_features(target, tmp_path / "nothing", "eagle1", tmp_path / "f")


def test_disk_estimate_and_check(target, prepared, tmp_path):
    plan, _ = ft.plan_feature_dump(target, prepared, "eagle3", tmp_path / "f", dtype=torch.bfloat16)
    assert plan.estimated_bytes == sum(LENGTHS) * (3 * 8 + 4 * 64 * 2)  # ids, mask, target argmax + 4 states
    ft.check_disk_space(plan)
    with pytest.raises(ValueError, match="only 0.00 GiB is free .use --force"):
        ft.check_disk_space(dataclasses.replace(plan, free_bytes=0))


def test_cli_dump_features(prepared, tmp_path, capsys):
    out = tmp_path / "f"
    argv = ["dump-features", "--model", "stories260K", "--data", str(prepared), "--method", "eagle3",
            "--output", str(out), "--shard-size", "4", "--aux-layers", "1,2,3"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "2 shards to write, about" in printed and "MiB" in printed
    data = FeatureDataset(out)
    assert data.manifest.aux_layer_ids == [1, 2, 3] and data[0]["aux_hidden"].dtype == torch.bfloat16
    assert main(argv) == 0 and "already complete" in capsys.readouterr().out
    assert main(argv[:-2] + ["--method", "eagle1"]) == 1
    assert "holds features dumped with other settings" in capsys.readouterr().err
    assert main([*argv[:8], str(tmp_path / "q"), *argv[9:], "--aux-int8"]) == 0
    assert FeatureDataset(tmp_path / "q").manifest.aux_int8_group == 64



def test_acceptance_regenerate_prepare_vocab_dump_on_stories260k(tmp_path, capsys):
    """Issue 3, acceptance 3: `regenerate --from-bos` with the bundled stories260K gives a text dataset that
    `prepare`, the draft vocabulary and `dump-features` all run on."""
    from eaglespec.data.vocab import build_draft_vocab

    texts, prep, feats = tmp_path / "bos.jsonl", tmp_path / "prep", tmp_path / "feats"
    assert main(["regenerate", "--model", "stories260K", "--from-bos", "20", "--max-new-tokens", "40",
                 "--batch-size", "10", "--output", str(texts)]) == 0
    assert main(["prepare", "--data-format", "text", "--input", str(texts), "--tokenizer", "stories260K",
                 "--output", str(prep)]) == 0
    stats = json.loads((prep / "stats.json").read_text())
    assert stats["kept"] == 20
    assert main(["draft-vocab", "--data", str(prep), "--vocab-size", "512", "--draft-vocab-size", "64",
                 "--cache-dir", str(tmp_path / "cache")]) == 0
    assert "coverage:" in capsys.readouterr().out
    vocab = build_draft_vocab(prep, 512, 64)
    assert vocab.draft_vocab_size == 64 and 0 < vocab.coverage <= 1
    assert main(["dump-features", "--model", "stories260K", "--data", str(prep), "--method", "eagle3",
                 "--output", str(feats), "--shard-size", "8"]) == 0
    data = FeatureDataset(feats)
    assert len(data) == 20 and len(data.manifest.shards) == 3
    rows = datasets.load_from_disk(str(prep))
    assert all(data[i]["input_ids"].tolist() == rows[i]["input_ids"] for i in range(20))
    ft.check_features_match(data.manifest, TargetModel.from_pretrained(bundled_model_path()), "eagle3")
