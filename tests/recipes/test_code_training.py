"""The code recipe end to end on a tiny tree: a 2-step run writes a loadable bf16 model and its card; an
interrupted run resumes to the very weights of an uninterrupted one; a finished model is not overwritten
without --overwrite; a resume with other settings is refused."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

import codefim.training as training
from codefim.checkpoint import TrainState
from codefim.run import OutputExists, run_recipe
from codefim.training import lr_at


def test_two_steps_write_a_model_and_its_card(tiny_config):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    summary = run_recipe(tiny_config, show_progress=False)
    output = Path(tiny_config.output)
    assert summary["steps"] == 2 and summary["final_train_loss"] > 0 and summary["final_heldout_loss"] > 0
    assert json.loads((output / "training.json").read_text())["steps"] == 2
    model = AutoModelForCausalLM.from_pretrained(output)
    assert model.dtype == torch.bfloat16 and model.config.head_dim == 32
    assert AutoTokenizer.from_pretrained(output).eos_token == "<|endoftext|>"
    card = (output / "README.md").read_text()
    assert card.count("real middle:") == 5 and "PSF" in card and "held-out" in card and "The first epoch:" in card
    assert (output / "loss.png").stat().st_size > 1000


def _weights(output: str) -> dict[str, torch.Tensor]:
    return torch.load(Path(output) / "train" / "checkpoint" / "weights.pt", weights_only=True)["model"]


def test_resume_after_an_interruption_gives_the_same_weights(tiny_config, tmp_path, monkeypatch):
    config = dataclasses.replace(tiny_config, max_steps=4)
    straight = dataclasses.replace(config, output=str(tmp_path / "straight"))
    run_recipe(straight, show_progress=False)

    real_step, calls = training.train_step, []

    def interrupted_step(*args):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_step(*args)

    monkeypatch.setattr(training, "train_step", interrupted_step)
    with pytest.raises(KeyboardInterrupt):
        run_recipe(config, show_progress=False)
    assert json.loads((Path(config.output) / "train/checkpoint/state.json").read_text())["step"] == 2
    monkeypatch.setattr(training, "train_step", real_step)
    summary = run_recipe(config, show_progress=False)
    assert summary["steps"] == 4 and summary["runs"] == 2
    for name, tensor in _weights(straight.output).items():
        assert torch.equal(tensor, _weights(config.output)[name]), name


def test_a_finished_model_is_not_overwritten(tiny_config):
    run_recipe(tiny_config, show_progress=False)
    with pytest.raises(OutputExists, match="--overwrite"):
        run_recipe(tiny_config, show_progress=False)
    assert run_recipe(tiny_config, overwrite=True, show_progress=False)["runs"] == 1


def test_other_settings_do_not_resume_and_strangers_are_left_alone(tiny_config, monkeypatch):
    monkeypatch.setattr(training, "train_step", lambda *args: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):
        run_recipe(tiny_config, show_progress=False)
    with pytest.raises(ValueError, match="lr: 0.002 -> 0.001"):
        run_recipe(dataclasses.replace(tiny_config, lr=1e-3), show_progress=False)
    stranger = Path(tiny_config.output).parent / "stranger"
    (stranger / "notes.txt").parent.mkdir()
    (stranger / "notes.txt").write_text("mine")
    with pytest.raises(OutputExists, match="not a recipe output"):
        run_recipe(dataclasses.replace(tiny_config, output=str(stranger)), overwrite=True, show_progress=False)


def test_a_bad_source_writes_nothing(tiny_config, tmp_path):
    with pytest.raises(ValueError, match="--source"):
        run_recipe(dataclasses.replace(tiny_config, source=str(tmp_path / "nowhere")), show_progress=False)
    assert not Path(tiny_config.output).exists()


def test_one_schedule_by_steps_or_time_whichever_is_further(tiny_config):
    config = dataclasses.replace(tiny_config, max_steps=100, warmup_steps=10, time_budget_min=10.0)
    assert lr_at(config, TrainState(step=0)) == pytest.approx(config.lr / 10)
    assert lr_at(config, TrainState(step=50)) == pytest.approx(config.lr * (0.1 + 0.9 * 0.5))
    by_time = lr_at(config, TrainState(step=10, cpu_seconds=300.0))  # half the time, a tenth of the steps
    assert by_time == pytest.approx(lr_at(config, TrainState(step=50)))
    assert lr_at(config, TrainState(step=100)) == pytest.approx(config.lr * config.min_lr_ratio)
    assert lr_at(config, TrainState(step=10, cpu_seconds=1e9)) == pytest.approx(config.lr * config.min_lr_ratio)
    assert lr_at(config, TrainState(step=10, train_seconds=1e9)) > config.lr * 0.9  # wall time is not the budget


def test_the_command_line_takes_its_defaults_from_the_config():
    from train import parse_args

    config, args = parse_args(["--output", "out", "--time-budget", "5", "--hidden-size", "128", "--overwrite"])
    assert config.time_budget_min == 5.0 and config.shape.hidden_size == 128 and args.overwrite
    assert dataclasses.replace(config, time_budget_min=120.0, shape=type(config.shape)()) == \
        type(config)(output="out")
