"""A draft whose embedding is the target's stores no copy of it: saved without embed_tokens, bound from the
target at load; loading stays strict for every other tensor and needs the target for this one."""

import pytest
import torch
from safetensors.torch import load_file, save_file

from eaglespec.models import EagleDraftModel, TargetModel, build_draft
from eaglespec.models.draft import EMBED_KEY, WEIGHTS_NAME, embedding_from_target
from fixtures import tiny_model


@pytest.fixture
def target_and_draft():
    target = TargetModel(tiny_model("llama"))
    draft = build_draft(target, "eagle3", draft_vocab_size=64, seed=0)
    with torch.no_grad():
        draft.fc.weight.add_(0.1)  # not the freshly built weights
    return target, draft


@pytest.mark.parametrize("dtype", [None, torch.bfloat16])
def test_saved_without_embedding_loads_equal_with_its_target(target_and_draft, tmp_path, dtype):
    target, draft = target_and_draft
    draft.save_pretrained(tmp_path, dtype=dtype, target_embedding=target.embed_tokens.weight)
    stored = load_file(str(tmp_path / WEIGHTS_NAME))
    assert EMBED_KEY not in stored and "fc.weight" in stored
    assert embedding_from_target(tmp_path)
    loaded = EagleDraftModel.from_pretrained(tmp_path, target=target)
    expected = draft.state_dict()
    for name, tensor in loaded.state_dict().items():
        want = expected[name].to(dtype) if dtype is not None and tensor.is_floating_point() else expected[name]
        assert tensor.dtype == want.dtype, name
        torch.testing.assert_close(tensor, want, rtol=0, atol=0, msg=name)
    # a plain HF model works as the target too
    hf = EagleDraftModel.from_pretrained(tmp_path, target=target.model)
    assert torch.equal(hf.embed_tokens.weight, loaded.embed_tokens.weight)


def test_without_the_target_the_error_says_to_pass_it(target_and_draft, tmp_path):
    target, draft = target_and_draft
    draft.save_pretrained(tmp_path, target_embedding=target.embed_tokens.weight)
    with pytest.raises(ValueError, match=r"does not store embed_tokens.*target=\.\.\."):
        EagleDraftModel.from_pretrained(tmp_path)


def test_an_embedding_that_differs_from_the_target_is_stored(target_and_draft, tmp_path):
    target, draft = target_and_draft
    other = target.embed_tokens.weight.clone()
    other[3, 0] += 1.0
    draft.save_pretrained(tmp_path, target_embedding=other)
    assert EMBED_KEY in load_file(str(tmp_path / WEIGHTS_NAME)) and not embedding_from_target(tmp_path)
    loaded = EagleDraftModel.from_pretrained(tmp_path)  # self-contained: no target needed
    assert torch.equal(loaded.embed_tokens.weight, draft.embed_tokens.weight)


def test_loading_stays_strict_for_the_other_tensors(target_and_draft, tmp_path):
    target, draft = target_and_draft
    draft.save_pretrained(tmp_path, target_embedding=target.embed_tokens.weight)
    path = tmp_path / WEIGHTS_NAME
    state = load_file(str(path))
    state.pop("norm.weight")
    save_file(state, str(path), metadata={"format": "pt", "method": "eagle3", "embed_tokens": "target"})
    with pytest.raises(ValueError, match=r"missing tensors \['norm.weight'\]"):
        EagleDraftModel.from_pretrained(tmp_path, target=target)
    # no metadata: a missing embedding is a missing tensor like any other, even with the target given
    save_file(load_file(str(path)), str(path), metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"missing tensors \['embed_tokens.weight', 'norm.weight'\]"):
        EagleDraftModel.from_pretrained(tmp_path, target=target)


def test_a_wrong_target_is_the_usual_clear_error(target_and_draft, tmp_path):
    from fixtures import stories260k

    target, draft = target_and_draft
    draft.save_pretrained(tmp_path, target_embedding=target.embed_tokens.weight)
    with pytest.raises(ValueError, match="not this target"):
        EagleDraftModel.from_pretrained(tmp_path, target=stories260k())
