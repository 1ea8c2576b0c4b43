"""Acceptance 1: our draft -> each export -> import -> bit-identical weights, the same config, the same greedy
output; and what each engine config says (aux layer ids in each engine's numbering, context length, names)."""

from __future__ import annotations

import json

import pytest
import torch
from export_helpers import load_target, make_draft
from safetensors.torch import load_file

from eaglespec.decoding import SpeculativeGenerator, TreeConfig
from eaglespec.export import export_draft, import_draft
from eaglespec.models import EagleDraftModel

# (target fixture, method, draft vocab, fc bias, export format); import reads sglang/vllm exports as 'eagle'.
CASES = [
    ("stories_dir", "eagle3", 200, False, "sglang"),
    ("stories_dir", "eagle3", 200, False, "vllm"),
    ("stories_dir", "eagle3", 200, False, "speculators"),
    ("stories_dir", "eagle3", None, False, "speculators"),
    ("llama_dir", "eagle3", None, False, "eagle"),
    ("llama_dir", "eagle3", 48, False, "sglang"),
    ("stories_dir", "eagle1", None, False, "sglang"),
    ("stories_dir", "eagle1", None, True, "sglang"),
    ("stories_dir", "eagle1", None, False, "vllm"),
    ("stories_dir", "eagle1", None, True, "eagle"),
    ("llama_dir", "eagle1", None, False, "eagle"),
]
IMPORT_AS = {"sglang": "eagle", "vllm": "eagle", "eagle": "eagle", "speculators": "speculators"}


def _greedy(target, draft_dir, prompt):
    draft = EagleDraftModel.from_pretrained(draft_dir, target=target)
    gen = SpeculativeGenerator(target, draft, tree=TreeConfig(kind="dynamic", top_k=4, depth=4, total_tokens=16))
    return gen.generate(prompt, 24).token_ids


@pytest.mark.parametrize("fixture,method,vocab,bias,fmt", CASES)
def test_export_import_round_trip_is_bit_identical(request, tmp_path, fixture, method, vocab, bias, fmt):
    target_dir = request.getfixturevalue(fixture)
    ours = make_draft(target_dir, method, tmp_path / "ours", draft_vocab_size=vocab, fc_bias=bias)
    report = export_draft(ours, fmt, tmp_path / fmt, target=target_dir)
    assert "none extra" in report.render()
    back = import_draft(IMPORT_AS[fmt], tmp_path / fmt, target_dir, tmp_path / "back")
    assert back.method == method
    a, b = load_file(str(ours / "model.safetensors")), load_file(str(tmp_path / "back" / "model.safetensors"))
    assert sorted(a) == sorted(b)
    for name in a:
        assert a[name].dtype == b[name].dtype and torch.equal(a[name], b[name]), name
    assert json.loads((ours / "config.json").read_text()) == json.loads((tmp_path / "back/config.json").read_text())
    target = load_target(target_dir)
    prompt = torch.tensor([[1, 5, 9, 13, 17]])
    assert _greedy(target, ours, prompt) == _greedy(target, tmp_path / "back", prompt)


def _export(tmp_path, target_dir, method, fmt, **kwargs):
    ours = make_draft(target_dir, method, tmp_path / "ours", **kwargs)
    export_draft(ours, fmt, tmp_path / fmt, target=target_dir)
    cfg = json.loads((tmp_path / fmt / "config.json").read_text())
    return ours, cfg, load_file(str(tmp_path / fmt / "model.safetensors"))


@pytest.mark.parametrize("fmt", ["sglang", "vllm", "speculators"])
def test_full_vocabulary_exports_carry_no_vocab_maps(tmp_path, stories_dir, fmt):
    """vLLM has no d2t parameter for a full draft vocabulary and fails to load one (found running vLLM)."""
    _, _, weights = _export(tmp_path, stories_dir, "eagle3", fmt)
    assert "d2t" not in weights and "t2d" not in weights
    _, _, weights = _export(tmp_path / "reduced", stories_dir, "eagle3", fmt, draft_vocab_size=100)
    assert weights["d2t"].shape == (100,) and weights["t2d"].shape == (512,)


def test_default_aux_ids_are_omitted_so_each_engine_uses_its_own_default(tmp_path, llama_dir):
    _, cfg, _ = _export(tmp_path, llama_dir, "eagle3", "sglang")  # 8 layers: ours [2, 4, 5] = engines' default
    assert "eagle_aux_hidden_state_layer_ids" not in cfg and "eagle_config" not in cfg
    assert cfg["architectures"] == ["LlamaForCausalLMEagle3"] and cfg["num_hidden_layers"] == 1


def test_other_aux_ids_are_written_in_each_engines_numbering(tmp_path, stories_dir):
    _, cfg, _ = _export(tmp_path, stories_dir, "eagle3", "vllm")  # 5 layers: ours [1, 2, 4]
    assert cfg["eagle_aux_hidden_state_layer_ids"] == [1, 2, 4]  # vLLM: layer inputs, as ours
    assert cfg["eagle_config"]["eagle_aux_hidden_state_layer_ids"] == [0, 1, 3]  # SGLang: layer outputs


def test_aux_ids_the_engines_cannot_express_are_refused(tmp_path, llama_dir):
    ours = make_draft(llama_dir, "eagle3", tmp_path / "a", aux_layer_ids=[5, 2, 4])
    with pytest.raises(ValueError, match="increasing"):
        export_draft(ours, "vllm", tmp_path / "x", target=llama_dir)
    ours = make_draft(llama_dir, "eagle3", tmp_path / "b", aux_layer_ids=[0, 3, 6])
    with pytest.raises(ValueError, match="embedding output"):
        export_draft(ours, "sglang", tmp_path / "y", target=llama_dir)
    export_draft(ours, "vllm", tmp_path / "z", target=llama_dir)  # vLLM captures the embedding output as 0
    cfg = json.loads((tmp_path / "z" / "config.json").read_text())
    assert cfg["eagle_aux_hidden_state_layer_ids"] == [0, 3, 6] and "eagle_config" not in cfg
    with pytest.raises(ValueError, match="reference EAGLE always feeds"):
        export_draft(ours, "eagle", tmp_path / "w", target=llama_dir)


def test_context_length_and_embedding_come_from_the_target(tmp_path, llama_dir):
    ours, _, _ = _export(tmp_path, llama_dir, "eagle3", "sglang")
    cfg = json.loads((ours / "config.json").read_text())
    cfg["max_position_embeddings"] = 2048  # a stale value in the draft's own config
    (ours / "config.json").write_text(json.dumps(cfg))
    export_draft(ours, "sglang", tmp_path / "fresh", target=llama_dir)
    written = json.loads((tmp_path / "fresh" / "config.json").read_text())
    assert written["max_position_embeddings"] == 512  # the target's
    weights = load_file(str(tmp_path / "fresh" / "model.safetensors"))
    assert torch.equal(weights["embed_tokens.weight"], load_target(llama_dir).embed_tokens.weight)


def test_eagle1_fc_bias_per_engine(tmp_path, stories_dir):
    _, cfg, weights = _export(tmp_path / "s", stories_dir, "eagle1", "sglang")
    assert cfg["architectures"] == ["LlamaForCausalLMEagle"]
    assert torch.equal(weights["fc.bias"], torch.zeros(weights["fc.weight"].shape[0]))  # SGLang's fc has a bias
    assert not any(k.startswith("layers.0.input_layernorm") for k in weights)
    _, cfg, weights = _export(tmp_path / "v", stories_dir, "eagle1", "vllm")
    assert cfg["architectures"] == ["EagleLlamaForCausalLM"] and "fc.bias" not in weights
    ours = make_draft(stories_dir, "eagle1", tmp_path / "biased", fc_bias=True)
    with pytest.raises(ValueError, match="no fc bias"):
        export_draft(ours, "vllm", tmp_path / "refused", target=stories_dir)


def test_speculators_config(tmp_path, stories_dir):
    _, cfg, weights = _export(tmp_path, stories_dir, "eagle3", "speculators", draft_vocab_size=200)
    assert cfg["speculators_model_type"] == "eagle3" and cfg["architectures"] == ["Eagle3Speculator"]
    spec = cfg["speculators_config"]
    assert spec["verifier"]["name_or_path"] == str(stories_dir)
    assert spec["proposal_methods"][0]["proposal_type"] == spec["default_proposal_method"] == "greedy"
    assert cfg["transformer_layer_config"]["num_hidden_layers"] == 1 and cfg["norm_before_residual"] is False
    assert any(k.startswith("layers.0.") for k in weights) and not any(k.startswith("midlayer.") for k in weights)


def test_bfloat16_export(tmp_path, stories_dir):
    ours = make_draft(stories_dir, "eagle3", tmp_path / "ours", draft_vocab_size=100)
    report = export_draft(ours, "sglang", tmp_path / "bf16", target=stories_dir, dtype="bfloat16")
    weights = load_file(str(tmp_path / "bf16" / "model.safetensors"))
    assert weights["fc.weight"].dtype == torch.bfloat16 and weights["d2t"].dtype == torch.int64
    assert report.config["torch_dtype"] == "bfloat16"


def test_a_draft_that_takes_the_targets_embedding_exports_a_copy(tmp_path, stories_dir):
    import inspect

    from eaglespec.models import EagleDraftModel as Draft

    if "target_embedding" not in inspect.signature(Draft.save_pretrained).parameters:
        pytest.skip("this checkout's drafts always store embed_tokens")
    target = load_target(stories_dir)
    ours = make_draft(stories_dir, "eagle3", tmp_path / "stored")
    Draft.from_pretrained(ours).save_pretrained(tmp_path / "bound", target_embedding=target.embed_tokens.weight)
    assert "embed_tokens.weight" not in load_file(str(tmp_path / "bound" / "model.safetensors"))
    with pytest.raises(ValueError, match="--target"):
        export_draft(tmp_path / "bound", "vllm", tmp_path / "refused")
    export_draft(tmp_path / "bound", "vllm", tmp_path / "vllm", target=stories_dir)
    weights = load_file(str(tmp_path / "vllm" / "model.safetensors"))
    assert torch.equal(weights["embed_tokens.weight"], target.embed_tokens.weight)
