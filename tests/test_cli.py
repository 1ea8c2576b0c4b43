"""The CLI: `--help` lists every command; `doctor` reports every item and exits 0; `init-draft`."""

import subprocess
import sys

import pytest

from eaglespec.cli import COMMANDS, main
from eaglespec.models import EagleDraftModel


def test_help_lists_every_command():
    out = subprocess.run([sys.executable, "-m", "eaglespec", "--help"], capture_output=True, text=True, check=True).stdout
    for name in COMMANDS:
        assert name in out


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_command_has_help(name):
    with pytest.raises(SystemExit) as e:
        main([name, "--help"])
    assert e.value.code == 0


def test_doctor_reports_everything(capsys):
    assert main(["doctor"]) == 0
    out = capsys.readouterr().out
    for item in ("python", "torch", "CPU-only build", "cuda available", "cuda version", "cuda devices",
                 "transformers", "datasets", "deepspeed", "cpu bf16", "one-token forward", "ok (stories260K"):
        assert item in out, item
    assert "all required pieces work" in out


def test_doctor_reports_missing_deepspeed_with_the_extra(monkeypatch, capsys):
    from eaglespec.commands import doctor

    real = doctor._version
    monkeypatch.setattr(doctor, "_version", lambda d: None if d == "deepspeed" else real(d))
    assert main(["doctor"]) == 0  # optional: reported, not a failure
    assert "not installed (pip install 'eaglespec[deepspeed]')" in capsys.readouterr().out


def test_doctor_fails_when_a_required_piece_is_missing(monkeypatch, capsys):
    from eaglespec.commands import doctor

    real = doctor._version
    monkeypatch.setattr(doctor, "_version", lambda d: None if d == "datasets" else real(d))
    assert main(["doctor"]) == 1
    assert "install datasets" in capsys.readouterr().err


def test_doctor_fails_on_transformers_before_the_cache_argument(monkeypatch, capsys):
    from eaglespec.commands import doctor

    real = doctor._version
    monkeypatch.setattr(doctor, "_version", lambda d: "5.17.0" if d == "transformers" else real(d))
    assert main(["doctor"]) == 1  # 5.17 takes past_key_values=: every cached forward would ignore the cache
    assert "transformers 5.17.0 is too old" in capsys.readouterr().err


@pytest.mark.parametrize("method", ["eagle1", "eagle3"])
def test_init_draft(tmp_path, method, capsys):
    out = tmp_path / method
    args = ["init-draft", "--base", "stories260K", "--method", method, "--output", str(out)]
    if method == "eagle3":
        args += ["--draft-vocab-size", "256", "--aux-layers", "1,2,3"]
    assert main(args) == 0
    draft = EagleDraftModel.from_pretrained(out)
    assert draft.method == method
    if method == "eagle3":
        assert draft.config.draft_vocab_size == 256 and draft.config.aux_layer_ids == [1, 2, 3]
    assert main(args) == 1  # refuses to overwrite
    assert "not empty" in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir()] == [method]  # no temp directories left behind
