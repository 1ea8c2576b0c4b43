"""Distributed training paths beyond test_distributed.py, each a real `torchrun --nproc_per_node 2`
run on CPU (gloo, DS_ACCELERATOR=cpu):

- DeepSpeed ZeRO-2 (the tutorial's ds_config): SIGKILL the whole job (launcher and both ranks)
  after the first full checkpoint, `--resume`, and end exactly where an uninterrupted run ends
  (weights, step counter, lr schedule and metrics: the optimizer and scheduler state were restored);
- a ds_config that brings its own "optimizer" and "scheduler" (DeepSpeed builds them, ours are not
  passed): trains, follows the config's lr schedule, saves a loadable draft;
- raw text JSONL through `--trainpath/--testpath --data-format text` under DDP: rank 0 prepares
  savedir/prepared/{train,test} once, the other rank reads it, both train identically.

Also a worker script: `python test_distributed_resume.py OUT_DIR -- <eaglespec args>` runs
dist_worker.py's worker and additionally appends "rank split" to OUT_DIR/prepare_calls.txt for every
call of `eaglespec.data.prepare_dataset` in this rank.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # test_distributed / dist_worker beside this file

from eaglespec.models import EagleDraftModel, TargetModel, bundled_model_path
from eaglespec.training.checkpoint import MARKER, find_latest_complete, read_marker
from eaglespec.training.schedule import lr_factor
from test_distributed import (  # noqa: F401  (tiny_run_inputs is a fixture used by name)
    NUM_EPOCHS,
    RUN_TIMEOUT_S,
    TUTORIAL_DS_CONFIG,
    _check_trained_and_loadable,
    tiny_run_inputs,
)

HERE = Path(__file__).resolve().parent
STEPS_PER_EPOCH = 4  # tiny_run_inputs: 16 samples -> 15 train -> 8 micro-batches per rank -> 4 groups of 2


def _stories() -> list[str]:
    """conftest.STORIES (loaded by path: `import conftest` would depend on which conftest pytest loaded last)."""
    spec = importlib.util.spec_from_file_location("training_conftest_stories", HERE / "conftest.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.STORIES


def _command(records: Path, argv: list[str]) -> tuple[list[str], dict]:
    """torchrun of this file as the worker (see the module docstring) with `eaglespec <argv>`."""
    env = dict(os.environ, DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", PYTHONPATH=str(HERE.parent),
               PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(Path(__file__).resolve()), str(records), "--", *argv]
    return cmd, env


def _train_argv(root: Path, savedir: Path, extra: list[str]) -> list[str]:
    """test_distributed.py's run on the tiny fixture (3 epochs, lr 3e-3), with every epoch resumable."""
    return ["train", "eagle3", "--basepath", str(root / "target"), "--data", str(root / "data"), "--savedir",
            str(savedir), "--num_epochs", str(NUM_EPOCHS), "--lr", "3e-3", "--max-len", "64", "--no-progress",
            "--full-save-every", "1", *extra]


def _launch(records: Path, argv: list[str]) -> tuple[subprocess.CompletedProcess, list[dict]]:
    records.mkdir()
    cmd, env = _command(records, argv)
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc, [json.loads((records / f"rank{r}.json").read_text()) for r in range(2)]


def _metrics(savedir: Path) -> list[dict]:
    return [json.loads(x) for x in (savedir / "metrics.jsonl").read_text().splitlines()]


def _last_per_epoch(savedir: Path, split: str) -> dict[int, dict]:
    """The last metrics line of each epoch (a killed run may have logged an epoch it did not save)."""
    return {m["epoch"]: m for m in _metrics(savedir) if m["split"] == split}


def _assert_same_weights(a: Path, b: Path) -> None:
    from safetensors.torch import load_file

    sa, sb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    assert sa.keys() == sb.keys()
    for name in sa:
        assert sa[name].dtype == sb[name].dtype, name
        torch.testing.assert_close(sa[name].float(), sb[name].float(), rtol=0, atol=0, msg=f"{name}: {a} vs {b}")


def _ds_config(root: Path, name: str, config: dict) -> Path:
    path = root / f"{name}.json"
    path.write_text(json.dumps(config, indent=4))
    return path


def _no_leftovers(directory: Path) -> None:
    tmp = [p for p in directory.rglob("*") if p.name.startswith(".tmp-")]
    assert not tmp, tmp
    for d in directory.glob("state_*"):
        assert read_marker(d) is not None, f"{d} has no completion marker"


def _descendants(pid: int) -> list[int]:
    """All processes below `pid` (torchrun starts each rank in its own session, so a process-group
    kill of the launcher would not reach them)."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parents[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
    found, frontier = [], [pid]
    while frontier:
        children = [p for p, parent in parents.items() if parent in frontier]
        found += children
        frontier = children
    return found


def _kill_tree(pid: int) -> None:
    """SIGKILL a launcher and every process it started (a crashed node: nothing gets to clean up)."""
    workers = _descendants(pid)
    assert len(workers) >= 2, f"expected the 2 ranks below torchrun, found {workers}"
    for p in [pid, *workers]:
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass
    for p in workers:  # not our children: wait until they are gone
        while Path(f"/proc/{p}").exists() and "zombie" not in _state(p):
            time.sleep(0.01)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/status").read_text().split("State:")[1].split("\n")[0].lower()
    except (OSError, IndexError):
        return "zombie"


# ------------------------------------------------------------------------------------------------
# (a) DeepSpeed ZeRO-2: SIGKILL mid-run, --resume, same end as an uninterrupted run
@pytest.fixture(scope="module")
def zero2_reference(tiny_run_inputs) -> Path:
    """An uninterrupted 3-epoch ZeRO-2 run (tutorial ds_config) with a full checkpoint every epoch."""
    root = tiny_run_inputs
    config = _ds_config(root, "ds_tutorial", TUTORIAL_DS_CONFIG)
    savedir = root / "zero2-reference"
    _, ranks = _launch(root / "zero2-reference-records", _train_argv(root, savedir, ["--deepspeed_config", str(config)]))
    assert ranks[0]["weights_sha256"] == ranks[1]["weights_sha256"]
    _check_trained_and_loadable(root, savedir)
    for epoch in range(1, NUM_EPOCHS + 1):
        marker = read_marker(savedir / f"state_{epoch}")
        assert marker["resumable"] and marker["step"] == STEPS_PER_EPOCH * epoch, marker
        assert (savedir / f"state_{epoch}" / "deepspeed").is_dir()
    return savedir


def test_deepspeed_zero2_resume_after_sigkill_matches_an_uninterrupted_run(tiny_run_inputs, zero2_reference):
    root = tiny_run_inputs
    config = root / "ds_tutorial.json"
    savedir = root / "zero2-killed"
    argv = _train_argv(root, savedir, ["--deepspeed_config", str(config)])
    # SIGKILL the launcher and both ranks as soon as the first full checkpoint exists:
    # that is in epoch 2, long before the end (each epoch trains, evaluates and saves).
    (root / "zero2-killed-records").mkdir()
    cmd, env = _command(root / "zero2-killed-records", argv)
    log = root / "zero2-killed-records" / "log.txt"
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while not (savedir / "state_1" / MARKER).is_file() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, f"the run ended before it could be killed: {log.read_text()[-3000:]}"
    _kill_tree(proc.pid)
    proc.wait()
    killed_at = find_latest_complete(savedir)
    assert killed_at is not None and read_marker(killed_at)["epoch"] < NUM_EPOCHS, killed_at
    for d in savedir.glob("state_*"):  # whatever a kill left is either complete or invisible to --resume
        assert read_marker(d) is not None, f"{d}: incomplete checkpoint under a state_* name"

    resumed, ranks = _launch(root / "zero2-resumed-records", argv + ["--resume"])
    done = read_marker(killed_at)
    assert f"resumed from {killed_at} (step {done['step']}, epoch {done['epoch']})" in resumed.stdout, resumed.stdout
    assert ranks[0]["weights_sha256"] == ranks[1]["weights_sha256"]

    final = savedir / f"state_{NUM_EPOCHS}"
    assert read_marker(final)["step"] == read_marker(zero2_reference / f"state_{NUM_EPOCHS}")["step"]
    # Same data order, restored fp32 master weights, Adam moments and lr scheduler: the same end state.
    _assert_same_weights(final, zero2_reference / f"state_{NUM_EPOCHS}")
    ref_train, got_train = _last_per_epoch(zero2_reference, "train"), _last_per_epoch(savedir, "train")
    ref_test, got_test = _last_per_epoch(zero2_reference, "test"), _last_per_epoch(savedir, "test")
    for epoch in range(done["epoch"] + 1, NUM_EPOCHS + 1):  # the epochs the resumed run trained
        for key in ("step", "lr", "ploss", "acc"):
            assert got_train[epoch][key] == pytest.approx(ref_train[epoch][key], rel=1e-6), (epoch, key)
        assert got_test[epoch]["ploss"] == pytest.approx(ref_test[epoch]["ploss"], rel=1e-6), epoch
    assert {p.name for p in final.iterdir()} >= {"config.json", "model.safetensors", "deepspeed", MARKER}
    EagleDraftModel.from_pretrained(final, target=TargetModel.from_pretrained(root / "target"))


# ------------------------------------------------------------------------------------------------
# (b) the ds_config's own optimizer and scheduler
def test_deepspeed_config_optimizer_and_scheduler_are_used(tiny_run_inputs):
    root = tiny_run_inputs
    total, warmup, peak = NUM_EPOCHS * STEPS_PER_EPOCH, 2, 3e-3
    config = _ds_config(root, "ds_own_optim", {
        **TUTORIAL_DS_CONFIG,
        "fp16": {"enabled": False},
        "bf16": {"enabled": True},
        # torch_adam: torch's AdamW; DeepSpeed's default FusedAdam would JIT-compile a C++ op on CPU (minutes)
        "optimizer": {"type": "AdamW", "params": {"lr": "auto", "betas": [0.9, 0.95], "weight_decay": 0.0,
                                                  "torch_adam": True}},
        "scheduler": {"type": "WarmupDecayLR", "params": {"warmup_min_lr": 0.0, "warmup_max_lr": peak,
                                                          "warmup_num_steps": warmup, "total_num_steps": total,
                                                          "warmup_type": "linear"}},
    })
    savedir = root / "own-optim"
    proc, ranks = _launch(root / "own-optim-records", _train_argv(root, savedir, ["--deepspeed_config", str(config)]))
    assert "optimizer 'AdamW' from the ds_config" in proc.stderr and "scheduler 'WarmupDecayLR'" in proc.stderr
    assert ranks[0]["weights_sha256"] == ranks[1]["weights_sha256"]
    _check_trained_and_loadable(root, savedir)
    # DeepSpeed's WarmupDecayLR after `step` updates has seen iteration step - 1 (its first update uses
    # iteration -1): past the warmup, lr = peak * (total - (step - 1)) / (total - warmup).
    # Our own schedule (warmup 1, decay to 0) would give a different lr after epoch 1.
    train = _last_per_epoch(savedir, "train")
    for epoch, m in train.items():
        step = m["step"]
        assert step == STEPS_PER_EPOCH * epoch
        assert m["lr"] == pytest.approx(peak * (total - step + 1) / (total - warmup), abs=1e-9), (epoch, m["lr"])
    ours = 3e-3 * lr_factor(STEPS_PER_EPOCH, 1, total)
    assert train[1]["lr"] != pytest.approx(ours), "the run used our schedule, not the ds_config's"


# ------------------------------------------------------------------------------------------------
# (c) raw text files under torchrun (DDP): prepared once by rank 0, read by both
def test_ddp_raw_text_trainpath_testpath_prepared_once(tmp_path):
    from eaglespec.training.data import load_prepared_dataset

    stories = _stories()
    train_file, test_file = tmp_path / "train.jsonl", tmp_path / "test.jsonl"
    train_file.write_text("".join(json.dumps({"id": f"t{i}", "text": t}) + "\n" for i, t in enumerate(stories[:10])))
    test_file.write_text("".join(json.dumps({"id": f"v{i}", "text": t}) + "\n" for i, t in enumerate(stories[10:])))
    savedir, records = tmp_path / "out", tmp_path / "records"
    argv = ["train", "eagle3", "--basepath", "stories260K", "--trainpath", str(train_file), "--testpath",
            str(test_file), "--data-format", "text", "--savedir", str(savedir), "--num_epochs", "2", "--lr", "3e-3",
            "--ttt-length", "3", "--max-len", "64", "--no-progress"]
    proc, ranks = _launch(records, argv)
    assert [r["rc"] for r in ranks] == [0, 0]
    assert ranks[0]["weights_sha256"] == ranks[1]["weights_sha256"]
    calls = sorted((records / "prepare_calls.txt").read_text().splitlines())
    assert calls == ["0 test", "0 train"], calls  # rank 0 alone prepares each split, once
    prepared = savedir / "prepared"
    assert sorted(p.name for p in prepared.iterdir()) == ["test", "train"]
    assert len(load_prepared_dataset(prepared / "train")) == 10 and len(load_prepared_dataset(prepared / "test")) == 2
    _no_leftovers(savedir)
    lines = _metrics(savedir)
    assert [m["split"] for m in lines] == ["train", "test"] * 2
    # 10 train samples, bs 1, 2 ranks, grad-accum 2 (default) -> 5 micro-batches per rank -> 3 steps per epoch
    assert [m["step"] for m in lines if m["split"] == "train"] == [3, 6]
    EagleDraftModel.from_pretrained(savedir / "state_2", target=TargetModel.from_pretrained(bundled_model_path()))


# ------------------------------------------------------------------------------------------------
def _worker(out_dir: Path, argv: list[str]) -> int:
    """dist_worker.run, recording each prepare_dataset call of this rank into prepare_calls.txt."""
    import dist_worker
    import eaglespec.data

    prepare = eaglespec.data.prepare_dataset

    def recording_prepare(inputs, tokenizer, output, *args, **kwargs):
        with open(out_dir / "prepare_calls.txt", "a") as f:
            f.write(f"{os.environ.get('RANK', '0')} {Path(output).name}\n")
        return prepare(inputs, tokenizer, output, *args, **kwargs)

    eaglespec.data.prepare_dataset = recording_prepare
    return dist_worker.run(out_dir, argv)


if __name__ == "__main__":
    sep = sys.argv.index("--")
    sys.exit(_worker(Path(sys.argv[1]), sys.argv[sep + 1 :]))
