"""Distributed training: launch detection, ds_config validation, and real 2-process runs of
`eaglespec train eagle3` under `torchrun --nproc_per_node 2` on CPU (gloo, DS_ACCELERATOR=cpu)
with DDP, DeepSpeed ZeRO-2 (the tutorial's ds_config as written) and ZeRO-3.

Each multi-process run takes ~15-25 s here. (The very first DeepSpeed run on a machine also
JIT-builds DeepSpeed's CPU shared-memory comm op once, ~1-2 min; it is cached afterwards.)
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from eaglespec.models import EagleDraftModel, TargetModel
from eaglespec.training.deepspeed_engine import read_ds_config, resolve_ds_config
from eaglespec.training.distributed import LaunchInfo, detect_launch

HERE = Path(__file__).resolve().parent
WORKER = HERE / "dist_worker.py"
TUTORIAL_DS_CONFIG = {  # TUTORIAL_01 section 1.4.5, verbatim
    "train_micro_batch_size_per_gpu": 1,
    "gradient_accumulation_steps": 2,
    "fp16": {"enabled": True},
    "zero_optimization": {"stage": 2},
    "gradient_clipping": 0.5,
    "steps_per_print": 100,
}
NUM_EPOCHS = 3
RUN_TIMEOUT_S = 240  # generous: the 2-core CI machine is shared; a hang must still fail, not block


# ------------------------------------------------------------------------------------------------
# launch detection and ds_config validation (no processes)
def test_detect_launch_single_process_and_torchrun():
    assert detect_launch({}) == LaunchInfo(0, 1, 0)
    assert detect_launch({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"}) == LaunchInfo(3, 4, 1)
    assert detect_launch({"RANK": "1", "WORLD_SIZE": "2"}).local_rank == 1


@pytest.mark.parametrize("env, match", [
    ({"RANK": "0"}, "WORLD_SIZE missing"),
    ({"RANK": "2", "WORLD_SIZE": "2"}, "0 <= RANK < WORLD_SIZE"),
    ({"RANK": "x", "WORLD_SIZE": "2"}, "RANK='x'"),
])
def test_detect_launch_rejects_broken_environments(env, match):
    with pytest.raises(ValueError, match=match):
        detect_launch(env)


def _resolve(config, bs=1, accum=2, world=2, on_cpu=False, lr=None):
    return resolve_ds_config(config, bs, accum, world, grad_clip=1.0, lr=lr, on_cpu=on_cpu, source="ds.json")


def test_tutorial_ds_config_resolves_as_written_on_gpu():
    out = _resolve(TUTORIAL_DS_CONFIG)
    assert out["fp16"] == {"enabled": True} and out["zero_optimization"] == {"stage": 2}
    assert out["train_batch_size"] == 1 * 2 * 2
    assert out["gradient_clipping"] == 0.5  # the config's clip wins over ours
    assert "optimizer" not in out and "scheduler" not in out  # ours are passed as objects, not added here


def test_fp16_is_switched_to_bf16_on_cpu_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING):
        out = _resolve(TUTORIAL_DS_CONFIG, on_cpu=True)
    assert out["bf16"] == {"enabled": True} and out["fp16"]["enabled"] is False
    assert "fp16 -> bf16" in caplog.text


@pytest.mark.parametrize("change, flags, fields", [
    ({"train_micro_batch_size_per_gpu": 4}, {}, ["train_micro_batch_size_per_gpu=4", "--bs 1"]),
    ({"gradient_accumulation_steps": 8}, {}, ["gradient_accumulation_steps=8", "--grad-accum 2"]),
    ({"train_batch_size": 8}, {}, ["train_batch_size=8", "world size (2) = 4"]),
    ({}, {"world": 3, "bs": 2}, ["train_micro_batch_size_per_gpu=1", "--bs 2"]),
])
def test_ds_config_mismatches_name_the_fields(change, flags, fields):
    with pytest.raises(ValueError) as e:
        _resolve({**TUTORIAL_DS_CONFIG, **change}, **flags)
    assert all(f in str(e.value) for f in fields), str(e.value)
    assert str(e.value).startswith("ds.json:")


def test_auto_values_are_filled_from_our_flags_and_leftovers_are_errors():
    cfg = {"train_micro_batch_size_per_gpu": "auto", "gradient_accumulation_steps": "auto", "train_batch_size": "auto",
           "gradient_clipping": "auto", "optimizer": {"type": "AdamW", "params": {"lr": "auto"}}}
    out = _resolve(cfg, bs=2, accum=3, world=2, lr=1e-4)
    assert (out["train_micro_batch_size_per_gpu"], out["gradient_accumulation_steps"], out["train_batch_size"]) == (2, 3, 12)
    assert out["gradient_clipping"] == 1.0 and out["optimizer"]["params"]["lr"] == 1e-4
    assert cfg["train_batch_size"] == "auto"  # the caller's dict is untouched
    with pytest.raises(ValueError, match="zero_optimization.stage"):
        _resolve({"zero_optimization": {"stage": "auto"}})


def test_invalid_ds_config_json_names_the_line(tmp_path):
    path = tmp_path / "ds.json"
    path.write_text('{\n  "fp16": {"enabled": true},\n  "zero_optimization": \n}\n')
    with pytest.raises(ValueError, match=r"ds.json:4:1: invalid JSON"):
        read_ds_config(path)


# ------------------------------------------------------------------------------------------------
# real multi-process training
@pytest.fixture(scope="module")
def tiny_run_inputs(tmp_path_factory):
    """A tiny Llama target and a prepared dataset of its own greedy continuations (learnable)."""
    import datasets

    from fixtures import tiny_model

    root = tmp_path_factory.mktemp("dist")
    model = tiny_model("llama")
    model.save_pretrained(root / "target")
    gen = torch.Generator().manual_seed(0)
    ids, masks = [], []
    for _ in range(16):
        prompt = torch.randint(3, 128, (1, 4), generator=gen)
        with torch.no_grad():
            out = model.generate(prompt, max_new_tokens=20, do_sample=False, pad_token_id=0)
        ids.append(out[0].tolist())
        masks.append([0] * 4 + [1] * (out.shape[1] - 4))
    data = root / "data"
    datasets.Dataset.from_dict({"id": [f"s{i}" for i in range(16)], "input_ids": ids, "loss_mask": masks}).save_to_disk(data)
    meta = {"data_format": "text", "tokenizer": "fixture", "tokenizer_hash": "fixture", "max_len": 64, "inputs": [],
            "version": 1}
    (data / "prepare_meta.json").write_text(json.dumps(meta))
    return root


def _torchrun(root: Path, name: str, extra: list[str]) -> tuple[subprocess.CompletedProcess, Path, list[dict]]:
    savedir, records = root / name, root / f"{name}-records"
    records.mkdir()
    argv = ["train", "eagle3", "--basepath", str(root / "target"), "--data", str(root / "data"), "--savedir",
            str(savedir), "--num_epochs", str(NUM_EPOCHS), "--lr", "3e-3", "--max-len", "64", "--no-progress", *extra]
    env = dict(os.environ, DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", PYTHONPATH=str(HERE.parent))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(WORKER), str(records), "--", *argv]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    ranks = [json.loads((records / f"rank{r}.json").read_text()) for r in range(2)]
    return proc, savedir, ranks


def _check_trained_and_loadable(root: Path, savedir: Path) -> None:
    lines = [json.loads(x) for x in (savedir / "metrics.jsonl").read_text().splitlines()]
    train = [m for m in lines if m["split"] == "train"]
    assert len(train) == NUM_EPOCHS
    assert train[-1]["ploss"][0] < train[0]["ploss"][0] - 0.05, [m["ploss"][0] for m in train]
    final = savedir / f"state_{NUM_EPOCHS}"
    assert {"config.json", "model.safetensors", "checkpoint.json"} <= {p.name for p in final.iterdir()}
    assert not [p for p in savedir.iterdir() if p.name.startswith(".tmp-")]

    from eaglespec.decoding.generate import SpeculativeGenerator

    target = TargetModel.from_pretrained(root / "target")
    draft = EagleDraftModel.from_pretrained(final, target=target)  # the dtype it was trained in (DeepSpeed: bf16)
    frozen = target.embed_tokens.weight.to(draft.embed_tokens.weight.dtype)
    assert torch.equal(draft.embed_tokens.weight, frozen)  # the frozen embedding stayed frozen
    draft.float()
    gen = SpeculativeGenerator(target, draft)
    prompt = [1, 5, 9, 17]
    spec, vanilla = gen.generate(prompt, max_new_tokens=12), gen.vanilla_generate(prompt, max_new_tokens=12)
    assert spec.token_ids == vanilla.token_ids and len(spec.token_ids) == 12


def test_ddp_two_ranks_train_identically_and_save_a_loadable_draft(tiny_run_inputs):
    root = tiny_run_inputs
    _, savedir, ranks = _torchrun(root, "ddp", [])
    assert [r["rc"] for r in ranks] == [0, 0]
    assert ranks[0]["weights_sha256"] == ranks[1]["weights_sha256"]
    _check_trained_and_loadable(root, savedir)


def test_deepspeed_zero2_tutorial_config_two_ranks(tiny_run_inputs):
    root = tiny_run_inputs
    config = root / "ds_config.json"
    config.write_text(json.dumps(TUTORIAL_DS_CONFIG, indent=4))
    proc, savedir, ranks = _torchrun(root, "zero2", ["--deepspeed_config", str(config)])
    assert "fp16 -> bf16" in proc.stderr
    assert ranks[0]["weights_sha256"] == ranks[1]["weights_sha256"]
    assert (savedir / f"state_{NUM_EPOCHS}" / "deepspeed").is_dir()  # full resumable DeepSpeed state
    _check_trained_and_loadable(root, savedir)


def test_deepspeed_zero3_shards_parameters_and_saves_the_full_draft(tiny_run_inputs):
    root = tiny_run_inputs
    config = root / "ds_zero3.json"
    config.write_text(json.dumps({**TUTORIAL_DS_CONFIG, "fp16": {"enabled": False}, "zero_optimization": {"stage": 3}}))
    _, savedir, ranks = _torchrun(root, "zero3", ["--deepspeed_config", str(config)])
    shares = [r["shares"] for r in ranks]
    for name, share in shares[0].items():
        assert share["local"] < share["full"], f"{name} is not partitioned: {share}"
        assert share["local"] + shares[1][name]["local"] >= share["full"], name  # together they hold it all
    _check_trained_and_loadable(root, savedir)


def test_ds_config_mismatch_fails_before_anything_is_loaded(tiny_run_inputs, tmp_path):
    config = tmp_path / "ds.json"
    config.write_text(json.dumps({**TUTORIAL_DS_CONFIG, "train_micro_batch_size_per_gpu": 4}))
    cmd = [sys.executable, "-m", "eaglespec", "train", "eagle3", "--basepath", str(tmp_path / "no-such-model"),
           "--data", str(tiny_run_inputs / "data"), "--savedir", str(tmp_path / "out"), "--deepspeed_config", str(config)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=dict(os.environ, DS_ACCELERATOR="cpu"))
    assert proc.returncode == 1
    assert "train_micro_batch_size_per_gpu=4 does not match --bs 1" in proc.stderr, proc.stderr
    assert not (tmp_path / "out").exists()


def test_deepspeed_launcher_local_rank_argument_is_accepted():
    from eaglespec.cli import build_parser

    pre, rest = build_parser().parse_known_args(["--local_rank=1", "train", "eagle3"])
    assert pre.command == "train" and rest == ["eagle3"]
