"""Draft heads: build -> save -> load, tensor names/shapes (EAGLE_NOTES section 6), frozen parts,
KV-cache incremental == full forward, strict loading and target checks."""

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import DynamicCache

from eaglespec.models import EagleDraftModel, TargetModel, build_draft, default_aux_layer_ids
from eaglespec.models.config import validate_aux_layer_ids
from fixtures import ARCHITECTURES, stories260k, tiny_model

TARGETS = list(ARCHITECTURES) + ["stories260K"]
METHODS = ["eagle1", "eagle3"]


def _target(name: str) -> TargetModel:
    return TargetModel(stories260k() if name == "stories260K" else tiny_model(name))


def _inputs(target: TargetModel, draft, T: int = 10, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, target.vocab_size, (2, T), generator=g)
    out = target(ids, aux_layer_ids=draft.config.aux_layer_ids or None)
    return ids, draft.project_target_features(out.features(draft.method))


def _expected_shapes(draft) -> dict[str, tuple]:
    c = draft.config
    H, V, nh, nkv, hd, I = c.hidden_size, c.vocab_size, c.num_attention_heads, c.num_key_value_heads, c.head_dim, c.intermediate_size
    if c.method == "eagle1":
        p, attn_in = "layers.0.", H
        shapes = {"embed_tokens.weight": (V, H), "fc.weight": (H, 2 * H)}
        if c.fc_bias:
            shapes["fc.bias"] = (H,)
    else:
        p, attn_in = "midlayer.", 2 * H
        shapes = {
            "embed_tokens.weight": (V, H), "fc.weight": (H, 3 * c.target_hidden_size),
            "midlayer.input_layernorm.weight": (H,), "midlayer.hidden_norm.weight": (H,),
            "norm.weight": (H,), "lm_head.weight": (c.draft_vocab_size, H),
            "d2t": (c.draft_vocab_size,), "t2d": (V,),
        }
    shapes.update({
        p + "self_attn.q_proj.weight": (nh * hd, attn_in), p + "self_attn.k_proj.weight": (nkv * hd, attn_in),
        p + "self_attn.v_proj.weight": (nkv * hd, attn_in), p + "self_attn.o_proj.weight": (H, nh * hd),
        p + "mlp.gate_proj.weight": (I, H), p + "mlp.up_proj.weight": (I, H), p + "mlp.down_proj.weight": (H, I),
        p + "post_attention_layernorm.weight": (H,),
    })
    return shapes


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("name", TARGETS)
def test_build_save_load_names_frozen(name, method, tmp_path):
    target = _target(name)
    vd = None if method == "eagle1" else target.vocab_size // 2
    draft = build_draft(target, method, draft_vocab_size=vd, seed=0, fc_bias=method == "eagle1")
    # names and shapes
    saved_dir = tmp_path / "draft"
    draft.save_pretrained(saved_dir)
    tensors = load_file(str(saved_dir / "model.safetensors"))
    assert {k: tuple(v.shape) for k, v in tensors.items()} == _expected_shapes(draft)
    if method == "eagle3":
        assert tensors["d2t"].dtype == torch.int64 and tensors["t2d"].dtype == torch.bool
        assert int(tensors["t2d"].sum()) == vd
        kept = torch.arange(vd) + tensors["d2t"]
        assert torch.equal(tensors["t2d"].nonzero().flatten(), kept)
        # lm_head initialised from the target's rows of the kept tokens
        assert torch.equal(tensors["lm_head.weight"], target.lm_head.weight[kept])
    assert torch.equal(tensors["embed_tokens.weight"], target.embed_tokens.weight)
    # frozen vs trainable
    frozen = {n for n, p in draft.named_parameters() if not p.requires_grad}
    assert frozen == {"embed_tokens.weight"}
    trainable = set(draft.trainable_parameter_names())
    assert "fc.weight" in trainable and all(p.requires_grad for n, p in draft.named_parameters() if n in trainable)
    if method == "eagle1":  # the target lm_head is used but is not a draft parameter and stays frozen
        assert not any("lm_head" in n for n, _ in draft.named_parameters())
        assert not target.lm_head.weight.requires_grad
    # bit-identical outputs after the round trip
    loaded = EagleDraftModel.from_pretrained(saved_dir, target=target)
    ids, feats = _inputs(target, draft)
    with torch.no_grad():
        h1, h2 = draft(ids, feats), loaded(ids, feats)
        assert torch.equal(h1, h2)
        assert torch.equal(draft.compute_logits(h1), loaded.compute_logits(h2))
    assert loaded.config == draft.config


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("name", TARGETS)
def test_incremental_cache_matches_full_forward(name, method):
    target = _target(name)
    draft = build_draft(target, method, seed=1)
    ids, feats = _inputs(target, draft, T=11, seed=3)
    with torch.no_grad():
        full = draft(ids, feats)
        cache = DynamicCache()
        parts, start = [], 0
        for n in (4, 1, 3, 1, 2):  # uneven chunks, including single tokens
            parts.append(draft(ids[:, start:start + n], feats[:, start:start + n], cache=cache))
            start += n
        inc = torch.cat(parts, dim=1)
    assert cache.get_seq_length() == 11
    assert (full - inc).abs().max().item() < 1e-5


def test_eagle3_default_aux_layers_and_fallback():
    assert default_aux_layer_ids(32) == [2, 16, 29]
    assert default_aux_layer_ids(8) == [2, 4, 5]
    assert default_aux_layer_ids(5) == [1, 2, 4]  # stories260K: defaults would be [2, 2, 2]
    assert default_aux_layer_ids(4) == [1, 2, 3]
    with pytest.raises(ValueError, match="out of range.*0..7"):
        validate_aux_layer_ids([2, 4, 8], 8)
    with pytest.raises(ValueError, match="out of range"):
        build_draft(TargetModel(tiny_model("llama")), "eagle3", aux_layer_ids=[1, 2, 30])


def test_strict_load_lists_missing_extra_misshapen(tmp_path):
    target = TargetModel(tiny_model("llama"))
    draft = build_draft(target, "eagle3", seed=0)
    draft.save_pretrained(tmp_path)
    state = load_file(str(tmp_path / "model.safetensors"))
    state.pop("norm.weight")
    state["bogus.weight"] = torch.zeros(3)
    state["fc.weight"] = torch.zeros(5, 5)
    save_file(state, str(tmp_path / "model.safetensors"))
    with pytest.raises(ValueError) as e:
        EagleDraftModel.from_pretrained(tmp_path)
    msg = str(e.value)
    assert "missing tensors ['norm.weight']" in msg
    assert "unexpected tensors ['bogus.weight']" in msg
    assert "fc.weight: file (5, 5)" in msg


def test_draft_for_another_target_is_a_clear_error(tmp_path):
    draft = build_draft(TargetModel(tiny_model("llama")), "eagle3", seed=0)
    draft.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="not this target.*hidden size: draft expects 32, target has 64.*vocab size"):
        EagleDraftModel.from_pretrained(tmp_path, target=stories260k())
    with pytest.raises(ValueError, match="hidden size: draft expects 32, target has 48"):
        EagleDraftModel.from_pretrained(tmp_path, target=tiny_model("phi3"))


def test_config_rejects_unknown_keys(tmp_path):
    import json

    draft = build_draft(TargetModel(tiny_model("qwen2")), "eagle1", seed=0)
    draft.save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["hiden_size"] = 3
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="unknown draft config keys \\['hiden_size'\\]"):
        EagleDraftModel.from_pretrained(tmp_path)


def test_eagle1_logits_need_the_target_lm_head(tmp_path):
    target = TargetModel(tiny_model("llama"))
    build_draft(target, "eagle1", seed=0).save_pretrained(tmp_path)
    loaded = EagleDraftModel.from_pretrained(tmp_path)
    with pytest.raises(RuntimeError, match="no lm_head bound"):
        loaded.compute_logits(torch.zeros(1, 1, 32))


def test_bf16_keeps_fp32_rope():
    target = TargetModel(stories260k())
    draft = build_draft(target, "eagle3", seed=0)
    ids, feats = _inputs(target, draft)
    draft.to(torch.bfloat16)
    assert draft._rope.inv_freq.dtype == torch.float32
    with torch.no_grad():
        out = draft(ids, feats.to(torch.bfloat16))
    assert out.dtype == torch.bfloat16 and torch.isfinite(out.float()).all()
