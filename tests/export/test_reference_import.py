"""Acceptance 4 (import half): checkpoints in the reference EAGLE's layouts, built to its documented shapes
(cnets.py / cnets1.py state dicts as its trainers save them), import and decode greedy-exactly."""

from __future__ import annotations

import json

import pytest
import torch
from export_helpers import load_target, make_draft
from safetensors.torch import load_file, save_file

from eaglespec.decoding import SpeculativeGenerator
from eaglespec.export import export_draft, import_draft
from eaglespec.models import EagleDraftModel


def _reference_state(tmp_path, target_dir, method, **kwargs):
    ours = make_draft(target_dir, method, tmp_path / "ours", **kwargs)
    export_draft(ours, "eagle", tmp_path / "ref", target=target_dir)
    return ours, load_file(str(tmp_path / "ref" / "model.safetensors")), json.loads((tmp_path / "ref/config.json").read_text())


def _check_greedy(target_dir, draft_dir):
    target = load_target(target_dir)
    draft = EagleDraftModel.from_pretrained(draft_dir, target=target)
    ids = torch.tensor([[1, 7, 11, 19, 23, 42]])
    expected = target.model.generate(ids, max_new_tokens=20, do_sample=False, min_new_tokens=20)[0, ids.shape[1]:]
    out = SpeculativeGenerator(target, draft).generate(ids, 20, eos_token_id=[])
    assert out.token_ids == expected.tolist()


def test_eagle3_deepspeed_state_dir(tmp_path, llama_dir):
    """traineagle3's state_N/: save_16bit_model(exclude_frozen_parameters=True) -> pytorch_model.bin without the
    frozen embedding, no config.json; full vocabulary with the reference's all-zero d2t and unset t2d."""
    ours, state, cfg = _reference_state(tmp_path, llama_dir, "eagle3")
    state.pop("embed_tokens.weight")
    state["t2d"] = torch.zeros_like(state["t2d"])
    state_dir = tmp_path / "savedir" / "state_3"
    state_dir.mkdir(parents=True)
    torch.save(state, state_dir / "pytorch_model.bin")
    (tmp_path / "savedir" / "config.json").write_text(json.dumps(cfg))
    report = import_draft("eagle", state_dir, llama_dir, tmp_path / "imported",
                          config_path=tmp_path / "savedir" / "config.json")
    assert "embed_tokens copied from the target (the checkpoint has none)" in report.notes
    back = load_file(str(tmp_path / "imported" / "model.safetensors"))
    assert back["t2d"].all() and not back["d2t"].any()
    assert torch.equal(back["midlayer.self_attn.q_proj.weight"], state["midlayer.self_attn.q_proj.weight"])
    _check_greedy(llama_dir, tmp_path / "imported")


def test_eagle3_without_config_takes_its_shape_from_the_tensors_and_target(tmp_path, llama_dir):
    ours, state, _ = _reference_state(tmp_path, llama_dir, "eagle3", draft_vocab_size=48)
    (tmp_path / "bare").mkdir()
    torch.save({k: v.half() if v.is_floating_point() else v for k, v in state.items()}, tmp_path / "bare/pytorch_model.bin")
    import_draft("eagle", tmp_path / "bare", llama_dir, tmp_path / "imported")
    assert EagleDraftModel.from_pretrained(tmp_path / "imported").config.draft_vocab_size == 48
    assert load_file(str(tmp_path / "imported/model.safetensors"))["fc.weight"].dtype == torch.float16


def test_eagle1_accelerate_state_dir_with_fc_bias(tmp_path, stories_dir):
    """train/main.py's state_N/: accelerate save_state -> model.safetensors holding embed_tokens, fc (+bias)."""
    ours, state, cfg = _reference_state(tmp_path, stories_dir, "eagle1", fc_bias=True)
    state_dir = tmp_path / "state_20"
    state_dir.mkdir()
    save_file(state, str(state_dir / "model.safetensors"))
    (state_dir / "optimizer.bin").write_bytes(b"")  # accelerate's other files are not weights and are not read
    import_draft("eagle", state_dir, stories_dir, tmp_path / "imported", config_path=tmp_path / "ref/config.json")
    assert torch.equal(load_file(str(tmp_path / "imported/model.safetensors"))["fc.bias"], state["fc.bias"])
    _check_greedy(stories_dir, tmp_path / "imported")


def test_eagle1_deepspeed_zero2_checkpoint_only(tmp_path, stories_dir):
    """train/main_deepspeed.py's full DeepSpeed checkpoint: latest + global_stepK/mp_rank_00_model_states.pt."""
    ours, state, _ = _reference_state(tmp_path, stories_dir, "eagle1")
    ckpt = tmp_path / "state_5"
    (ckpt / "global_step40").mkdir(parents=True)
    (ckpt / "latest").write_text("global_step40")
    torch.save({"module": state, "ds_version": "0.x"}, ckpt / "global_step40" / "mp_rank_00_model_states.pt")
    import_draft("eagle", ckpt, stories_dir, tmp_path / "imported")
    assert load_file(str(ours / "model.safetensors")).keys() == load_file(str(tmp_path / "imported/model.safetensors")).keys()
    _check_greedy(stories_dir, tmp_path / "imported")


def test_reference_import_errors_name_the_problem(tmp_path, stories_dir, llama_dir):
    ours, state, cfg = _reference_state(tmp_path, llama_dir, "eagle3", draft_vocab_size=48)
    bad = tmp_path / "bad"
    bad.mkdir()
    state["d2t"][3] = 10_000  # beyond the target vocabulary
    save_file(state, str(bad / "model.safetensors"))
    with pytest.raises(ValueError, match="d2t maps draft ids outside"):
        import_draft("eagle", bad, llama_dir, tmp_path / "x")
    with pytest.raises(ValueError, match="built for another target"):
        import_draft("eagle", tmp_path / "ref", stories_dir, tmp_path / "y")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no model.safetensors"):
        import_draft("eagle", tmp_path / "empty", llama_dir, tmp_path / "z")
