"""Acceptance 5: a misnamed, missing or extra tensor (or a wrong shape / dtype) fails with its name, on export
and on import; engines would skip such names silently."""

from __future__ import annotations

import pytest
import torch
from export_helpers import make_draft
from safetensors.torch import load_file, save_file

from eaglespec.export import check_tensors, expected_tensors, export_draft, import_draft
from eaglespec.models import DraftConfig


@pytest.fixture
def exported(tmp_path, stories_dir):
    ours = make_draft(stories_dir, "eagle3", tmp_path / "ours", draft_vocab_size=200)
    export_draft(ours, "speculators", tmp_path / "spec", target=stories_dir)
    return tmp_path / "spec"


def _tamper(directory, edit):
    path = directory / "model.safetensors"
    state = load_file(str(path))
    edit(state)
    save_file(state, str(path))


@pytest.mark.parametrize("edit,message", [
    (lambda s: s.__setitem__("layers.0.self_attn.q_prj.weight", s.pop("layers.0.self_attn.q_proj.weight")),
     r"missing tensors: layers\.0\.self_attn\.q_proj\.weight.*unexpected tensors: layers\.0\.self_attn\.q_prj"),
    (lambda s: s.pop("norm.weight"), r"missing tensors: norm\.weight \[64\] float32"),
    (lambda s: s.__setitem__("layers.0.extra.weight", torch.zeros(3)), r"unexpected tensors: layers\.0\.extra\.weight"),
    (lambda s: s.__setitem__("fc.weight", s["fc.weight"][:, :-1].contiguous()), r"fc\.weight: shape \[64, 191\]"),
    (lambda s: s.__setitem__("d2t", s["d2t"].int()), r"d2t: dtype torch\.int32, expected torch\.int64"),
])
def test_import_names_the_bad_tensor(tmp_path, stories_dir, exported, edit, message):
    _tamper(exported, edit)
    with pytest.raises(ValueError, match=message):
        import_draft("speculators", exported, stories_dir, tmp_path / "back")
    assert not (tmp_path / "back").exists()


def test_midlayer_names_in_a_speculators_checkpoint_are_misnamed(tmp_path, stories_dir, exported):
    _tamper(exported, lambda s: s.__setitem__("midlayer.hidden_norm.weight", s.pop("layers.0.hidden_norm.weight")))
    with pytest.raises(ValueError, match=r"midlayer\.hidden_norm\.weight"):
        import_draft("speculators", exported, stories_dir, tmp_path / "back")


def test_check_tensors_lists_every_problem(tmp_path, stories_dir):
    config = DraftConfig.load(make_draft(stories_dir, "eagle1", tmp_path / "d"))
    expected = expected_tensors("sglang", config, torch.float32)
    state = {n: torch.zeros(s.shape, dtype=s.dtype) for n, s in expected.items()}
    state.pop("fc.bias")
    state["layers.0.input_layernorm.weight"] = torch.ones(64)  # EAGLE-1 has no input norm
    with pytest.raises(ValueError) as err:
        check_tensors(state, expected, "x")
    assert "missing tensors: fc.bias [64] float32" in str(err.value)
    assert "unexpected tensors: layers.0.input_layernorm.weight" in str(err.value)


def test_export_refuses_a_draft_whose_own_files_are_wrong(tmp_path, stories_dir):
    ours = make_draft(stories_dir, "eagle3", tmp_path / "ours")
    _tamper(ours, lambda s: s.pop("midlayer.hidden_norm.weight"))
    with pytest.raises(ValueError, match=r"midlayer\.hidden_norm\.weight"):
        export_draft(ours, "sglang", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_speculators_export_needs_a_local_verifier(tmp_path, stories_dir):
    ours = make_draft(stories_dir, "eagle3", tmp_path / "ours")
    cfg = (ours / "config.json").read_text().replace(str(stories_dir), "org/remote-model")
    (ours / "config.json").write_text(cfg)
    with pytest.raises(ValueError, match="--target"):
        export_draft(ours, "speculators", tmp_path / "out")
