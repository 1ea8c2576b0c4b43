"""Resume after SIGKILL at a random moment: same final step count, loadable final checkpoint, and no
incomplete state_* that --resume or EagleDraftModel.from_pretrained would accept."""

import math
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from eaglespec.models import EagleDraftModel, TargetModel, bundled_model_path
from eaglespec.training.checkpoint import MARKER, find_latest_complete, read_marker
from eaglespec.training.data import load_prepared_dataset, split_indices

EPOCHS = 8


def _command(method: str, data: Path, out: Path, resume: bool) -> list[str]:
    cmd = [sys.executable, "-m", "eaglespec", "train", method, "--basepath", "stories260K", "--data", str(data),
           "--bs", "2", "--num_epochs", str(EPOCHS), "--lr", "1e-3", "--warmup-steps", "2", "--test-split", "0.2",
           "--no-progress"]
    if method == "eagle1":
        cmd += ["--cpdir", str(out), "--save-freq", "1"]
    else:
        cmd += ["--savedir", str(out), "--full-save-every", "2", "--ttt-length", "2", "--grad-accum", "2"]
    return cmd + (["--resume"] if resume else [])


def _final_step(out: Path) -> int:
    marker = read_marker(find_latest_complete(out))
    return int(marker["step"])


def _check_no_acceptable_incomplete_state(out: Path) -> None:
    target = TargetModel.from_pretrained(bundled_model_path())
    for d in out.iterdir():
        if d.name.startswith("state_"):
            assert (d / MARKER).is_file(), f"{d} looks like a checkpoint but has no completion marker"
            EagleDraftModel.from_pretrained(d, target=target)  # every state_* loads


@pytest.mark.parametrize("method", ["eagle1", "eagle3"])
def test_sigkill_then_resume(method, tiny_prepared, tmp_path):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    # batches of 2 per epoch over the training split; eagle3 accumulates 2 batches per step
    train, _ = split_indices(load_prepared_dataset(tiny_prepared), 0.2, 0)
    batches = math.ceil(len(train) / 2)
    expected_steps = EPOCHS * (batches if method == "eagle1" else math.ceil(batches / 2))
    reference = None
    if method == "eagle1":  # one uninterrupted run to compare the final weights with (costs a process)
        reference = tmp_path / "reference"
        subprocess.run(_command(method, tiny_prepared, reference, False), check=True, env=env, capture_output=True)
        assert _final_step(reference) == expected_steps

    out = tmp_path / "killed"
    seed = random.Random().randrange(10**6)
    rng = random.Random(seed)
    kill_after_epoch, delay = rng.randint(1, EPOCHS - 3), rng.uniform(0.0, 0.2)
    proc = subprocess.Popen(_command(method, tiny_prepared, out, False), env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not (out / f"state_{kill_after_epoch}").is_dir() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)  # wait for a random epoch's checkpoint, then kill at a random moment of the next
    time.sleep(delay)
    assert proc.poll() is None, f"kill delay seed {seed}: the run ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert find_latest_complete(out) is None or _final_step(out) < expected_steps  # it really was cut short
    _check_no_acceptable_incomplete_state(out)

    resumed = subprocess.run(_command(method, tiny_prepared, out, True), env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, f"kill delay seed {seed}: {resumed.stdout[-2000:]}"
    assert _final_step(out) == expected_steps, f"kill delay seed {seed}"
    _check_no_acceptable_incomplete_state(out)
    final = find_latest_complete(out)
    assert read_marker(final)["epoch"] == EPOCHS
    target = TargetModel.from_pretrained(bundled_model_path())
    draft = EagleDraftModel.from_pretrained(final, target=target)
    if reference is None:
        return
    # Deterministic data order + restored RNG: the resumed run ends where the uninterrupted one did.
    ref = EagleDraftModel.from_pretrained(find_latest_complete(reference), target=target)
    for (name, a), b in zip(draft.state_dict().items(), ref.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=f"{name} (kill delay seed {seed})")


def test_find_latest_complete_ignores_temp_and_unmarked(tmp_path, tiny_prepared):
    out = tmp_path / "run"
    subprocess.run(_command("eagle1", tiny_prepared, out, False) + ["--max-steps", "3"], check=True,
                   capture_output=True)
    good = find_latest_complete(out)
    assert good is not None
    (out / ".tmp-state_9.abc").mkdir()
    ((out / ".tmp-state_9.abc") / MARKER).write_text('{"complete": true, "resumable": true, "step": 99}')
    unmarked = out / "state_8"
    unmarked.mkdir()
    for f in good.iterdir():
        if f.name != MARKER:
            (unmarked / f.name).write_bytes(f.read_bytes())
    assert find_latest_complete(out) == good


def test_save_every_minutes_resumes_mid_epoch(tiny_prepared, tmp_path, monkeypatch):
    """--save-every-minutes writes resumable checkpoints inside an epoch: a run killed after one resumes from it
    and ends with the weights of a run never interrupted."""
    from eaglespec.training import Eagle3TrainConfig, train_eagle3
    from eaglespec.training import loop
    from fixtures import train_config

    def config(out, **kw):
        common = train_config(out, num_epochs=1, save_every_minutes=1e-9, **kw)
        return Eagle3TrainConfig(common, data=tiny_prepared, ttt_length=2)

    reference = train_eagle3(config(tmp_path / "reference"))
    saves, real_save = [], loop.save_checkpoint

    def killed_after_second_save(*args, **kwargs):
        saves.append(real_save(*args, **kwargs))
        if len(saves) == 2:
            raise KeyboardInterrupt("killed")

    monkeypatch.setattr(loop, "save_checkpoint", killed_after_second_save)
    with pytest.raises(KeyboardInterrupt):
        train_eagle3(config(tmp_path / "killed"))
    monkeypatch.setattr(loop, "save_checkpoint", real_save)
    marker = read_marker(find_latest_complete(tmp_path / "killed"))
    assert (marker["step"], marker["epoch"]) == (2, 0)  # two steps into the first epoch
    resumed = train_eagle3(config(tmp_path / "killed", resume=True))
    assert resumed.state.step == reference.state.step > 2
    target = TargetModel.from_pretrained(bundled_model_path())
    a = EagleDraftModel.from_pretrained(resumed.last_checkpoint, target=target).state_dict()
    b = EagleDraftModel.from_pretrained(reference.last_checkpoint, target=target).state_dict()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=1e-5, msg=name)
