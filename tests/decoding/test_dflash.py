"""DFlash decoding (issue 36): greedy output is the target's token for token (9 fixture families, stories260K,
with and without n-gram lookup, alone and batched, with a draft trained here so that blocks get accepted), sampling keeps the target's distribution, and the drafter computes a block as
the training forward does: the block after any prefix, drafted incrementally (context cached across steps, the
block's own keys and values dropped), equals a plain forward over that prefix's features and the block, and so
does the all-anchors-at-once forward training runs. A wrong mask or a shifted position breaks that equality."""

from __future__ import annotations

import json

import pytest
import torch
from decoding_helpers import STORY_PROMPTS, count_tie_or_fail, greedy_reference
from dflash_helpers import fitted_stories_dflash
from fixtures import ARCHITECTURES, stories260k, stories260k_tokenizer, tiny_model
from test_lossless_sampling import (
    P_THRESHOLD,
    PROMPT,
    chi_square_p_value,
    exact_joint,
    generated_counts,
    logits_after,
    tiny_vocab_llama,
)

from eaglespec.decoding import SpeculativeGenerator, TreeConfig
from eaglespec.decoding import block_drafter as block_drafter_module
from eaglespec.decoding.block_drafter import BlockDrafter
from eaglespec.decoding.sampling import SamplingConfig
from eaglespec.export import export_draft, export_gguf
from eaglespec.models import DFlashShape, EagleDraftModel, TargetModel, build_draft, bundled_model_path, load_draft
from eaglespec.models import dflash as dflash_module

MAX_NEW = 24


def _prompt(vocab: int, length: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.cat([torch.tensor([1]), torch.randint(3, vocab, (length - 1,), generator=g)])[None]


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_greedy_dflash_equals_the_target_on_every_family(arch):
    model = tiny_model(arch)
    target = TargetModel(model)
    draft = build_draft(target, "dflash", seed=3, dflash=DFlashShape(num_layers=2, block_size=4))
    ties = 0
    for i, (length, lookup) in enumerate([(1, 0), (9, 0), (17, 6), (40, 0)]):
        ids = _prompt(target.vocab_size, length, seed=i)
        out = SpeculativeGenerator(target, draft, tree=TreeConfig(lookup=lookup)).generate(ids, MAX_NEW)
        ties += count_tie_or_fail(model, ids, greedy_reference(model, ids, MAX_NEW), out.token_ids)
        assert out.stats.new_tokens == len(out.token_ids) <= MAX_NEW
    assert ties <= 1


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_batched_dflash_equals_alone_on_every_family(arch):
    """Prompts of lengths 1-40 in one running batch (rows finishing at different steps) with a random DFlash draft:
    each row's tokens are its own decoded alone."""
    target = TargetModel(tiny_model(arch))
    draft = build_draft(target, "dflash", seed=5, dflash=DFlashShape(num_layers=1, block_size=3))
    gen = SpeculativeGenerator(target, draft, tree=TreeConfig(lookup=4))
    prompts = [_prompt(target.vocab_size, n, seed=i) for i, n in enumerate((1, 9, 17, 40))]
    budgets = [MAX_NEW, 10, MAX_NEW - 5, 16]
    alone = [gen.generate(p, m).token_ids for p, m in zip(prompts, budgets)]
    batch = gen.running_batch(max_batch_size=3)
    ids = [batch.add(p, m) for p, m in zip(prompts, budgets)]
    outputs = {}
    while len(batch):
        outputs.update({e.request_id: e.output.token_ids for e in batch.step() if e.finished})
    assert [outputs[i] for i in ids] == alone


def test_greedy_dflash_on_stories260k_with_a_draft_that_accepts():
    """Random (untrained) drafts of three block sizes, so what is accepted is what the random draft happens to
    agree on; the block's consistency with training is tested below."""
    model, tok = stories260k(), stories260k_tokenizer()
    target = TargetModel(model)
    for block_size in (2, 5, 8):
        draft = build_draft(target, "dflash", seed=block_size, dflash=DFlashShape(block_size=block_size))
        gen = SpeculativeGenerator(target, draft, tokenizer=tok)
        ties = 0
        for text in STORY_PROMPTS[:6]:
            ids = tok(text, return_tensors="pt")["input_ids"]
            out = gen.generate(ids, 40)
            ties += count_tie_or_fail(model, ids, greedy_reference(model, ids, 40), out.token_ids)
        assert ties <= 1


def _features(target: TargetModel, draft, ids: torch.Tensor) -> torch.Tensor:
    return target(ids, aux_layer_ids=draft.config.aux_layer_ids).features("dflash")


def _reference_block_logits(draft, features: torch.Tensor, anchor: int, token: int) -> torch.Tensor:
    """The block anchored at `anchor` from scratch: context = features[:, :anchor], every key visible."""
    ctx = draft.project_target_features(features[:, :anchor])
    ids = draft.block_ids(torch.tensor([token]))
    positions = torch.arange(anchor + draft.block_size)[None]
    mask = torch.ones(1, 1, draft.block_size, anchor + draft.block_size, dtype=torch.bool)
    return draft.compute_logits(draft(ids, ctx, positions, mask)[0, 1:])


def _training_block_logits(draft, features: torch.Tensor, ids: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
    """All blocks at once over the whole sequence's features, as training runs them -> [N, block_size - 1, V]."""
    ctx = draft.project_target_features(features)
    T, bs = features.shape[1], draft.block_size
    block = draft.block_ids(ids[0, anchors]).reshape(1, -1)
    positions = torch.cat([torch.arange(T), (anchors[:, None] + torch.arange(bs)).flatten()])[None]
    mask = dflash_module.block_attention_mask(anchors, bs, T)
    return draft.compute_logits(draft(block, ctx, positions, mask)).reshape(len(anchors), bs, -1)[:, 1:]


def _incremental_block_logits(draft, features: torch.Tensor, ids: torch.Tensor, anchors: list[int]) -> list:
    """The decoder's drafter, caught up step by step to each anchor (ascending), one block per anchor."""
    drafter, out, done = BlockDrafter(draft), [], 0
    for a in anchors:
        drafter.catch_up(ids[:, done + 1:a + 1], features[:, done:a])
        done = a
        out.append(drafter.block_logits(int(ids[0, a]), drafter.depth))
    return out


@pytest.fixture(scope="module")
def consistency_case():
    model = tiny_model("qwen3")
    target = TargetModel(model)
    draft = build_draft(target, "dflash", seed=11, dflash=DFlashShape(num_layers=2, block_size=5))
    ids = _prompt(target.vocab_size, 30, seed=4)
    with torch.no_grad():
        return draft, ids, _features(target, draft, ids)


def _consistent(draft, ids, features) -> bool:
    anchors = [3, 4, 9, 17, 25]
    with torch.no_grad():
        reference = [_reference_block_logits(draft, features, a, int(ids[0, a])) for a in anchors]
        incremental = _incremental_block_logits(draft, features, ids, anchors)
        training = _training_block_logits(draft, features, ids, torch.tensor(anchors))
    return all(torch.allclose(r, i, atol=1e-5) and torch.allclose(r, t, atol=1e-5)
               for r, i, t in zip(reference, incremental, training))


def test_incremental_and_training_blocks_equal_a_plain_forward(consistency_case):
    assert _consistent(*consistency_case)


def test_a_mask_that_shows_the_anchor_its_own_feature_is_caught(consistency_case, monkeypatch):
    def leaky(anchors, block_size, context, past=0):
        return real(anchors + 1, block_size, context, past)  # the context up to and including the anchor

    real = dflash_module.block_attention_mask
    monkeypatch.setattr(dflash_module, "block_attention_mask", leaky)
    monkeypatch.setattr(block_drafter_module, "block_attention_mask", leaky)
    assert not _consistent(*consistency_case)


def test_a_shifted_block_position_is_caught(consistency_case, monkeypatch):
    """The block one position after its anchor's (a shift of everything would be invisible: RoPE is relative)."""
    def shifted(past, anchor, block_size, device):
        positions = real(past, anchor, block_size, device).clone()
        positions[:, -block_size:] += 1
        return positions

    real = block_drafter_module.block_positions
    monkeypatch.setattr(block_drafter_module, "block_positions", shifted)
    assert not _consistent(*consistency_case)


def test_sampling_with_a_dflash_draft_keeps_the_target_distribution():
    """2000 seeded runs through SpeculativeGenerator.generate; the chain's tokens are verified as candidates."""
    model = tiny_vocab_llama()
    table = logits_after(model, PROMPT)
    config = SamplingConfig(temperature=1.0, top_k=8)  # as generated_counts samples
    target = TargetModel(model)
    gen = SpeculativeGenerator(target, build_draft(target, "dflash", seed=2, dflash=DFlashShape(block_size=4)))
    counts, accepted = generated_counts(gen, runs=2000)
    assert accepted > 200, "the draft must get tokens accepted for this test to mean anything"
    p, tv = chi_square_p_value(counts, exact_joint(table, config))
    assert p > P_THRESHOLD, f"p={p:.2e} tv={tv:.3f}"


def test_a_dflash_draft_saves_loads_and_is_refused_as_an_eagle_one(tmp_path):
    target = TargetModel(tiny_model("llama"))
    draft = build_draft(target, "dflash", seed=1, dflash=DFlashShape(num_layers=2, block_size=3))
    draft.save_pretrained(tmp_path / "d")
    loaded = load_draft(tmp_path / "d", target=target)
    assert loaded.config == draft.config
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), draft.state_dict().values()))
    assert not any("embed" in k or "lm_head" in k for k in loaded.state_dict())
    with pytest.raises(ValueError, match="a dflash draft is not an EAGLE one"):
        EagleDraftModel.from_pretrained(tmp_path / "d")
    with pytest.raises(ValueError, match="a dflash draft exports as vllm, sglang, speculators .* the eagle format holds EAGLE"):
        export_draft(tmp_path / "d", "eagle", tmp_path / "eagle")
    with pytest.raises(ValueError, match="the GGUF carries the target's tokenizer; pass --target"):
        export_gguf(tmp_path / "d", tmp_path / "d.gguf", target=None)


def test_a_dflash_draft_exports_in_z_labs_layout(tmp_path):
    """vLLM and SGLang load z-lab's DFlashDraftModel checkpoint: our tensors under their own names, the config
    with z-lab's keys, its layer ids layer outputs (ours - 1), nothing of the target (embedding, lm_head)."""
    from safetensors.torch import load_file

    target = TargetModel(tiny_model("llama"))
    draft = build_draft(target, "dflash", seed=1, dflash=DFlashShape(num_layers=2, block_size=6))
    draft.save_pretrained(tmp_path / "d")
    for fmt in ("vllm", "sglang"):
        report = export_draft(tmp_path / "d", fmt, tmp_path / fmt, dtype="bfloat16")
        cfg = json.loads((tmp_path / fmt / "config.json").read_text())
        assert cfg["architectures"] == ["DFlashDraftModel"] and cfg["model_type"] == "qwen3"
        assert cfg["dflash_config"] == {"mask_token_id": draft.config.mask_token_id, "block_size": 6,
                                        "target_layer_ids": [i - 1 for i in draft.config.aux_layer_ids]}
        assert cfg["block_size"] == 6 and cfg["num_hidden_layers"] == 2 and cfg["num_target_layers"] == 8
        tensors = load_file(str(tmp_path / fmt / "model.safetensors"))
        assert set(tensors) == set(draft.state_dict()) and "layers.1.self_attn.k_norm.weight" in tensors
        assert all(t.dtype == torch.bfloat16 for t in tensors.values())
        assert any("num_speculative_tokens" in n for n in report.notes)


def test_a_dflash_draft_exports_in_speculators_format(tmp_path):
    """speculators' DFlashSpeculator: z-lab's tensor names plus copies of the target's embedding and head, its
    layer ids hidden_states indices (ours unchanged), the block's tokens as its speculative tokens, the verifier
    named; without a local target the export says so."""
    from safetensors.torch import load_file

    model = tiny_model("llama")
    model.save_pretrained(tmp_path / "target")
    target = TargetModel(model)
    draft = build_draft(target, "dflash", seed=1, dflash=DFlashShape(num_layers=2, block_size=6))
    draft.save_pretrained(tmp_path / "d")
    report = export_draft(tmp_path / "d", "speculators", tmp_path / "s", target=tmp_path / "target")
    cfg = json.loads((tmp_path / "s" / "config.json").read_text())
    assert cfg["speculators_model_type"] == "dflash" and cfg["architectures"] == ["DFlashSpeculator"]
    assert cfg["aux_hidden_state_layer_ids"] == draft.config.aux_layer_ids
    assert cfg["mask_token_id"] == draft.config.mask_token_id and cfg["block_size"] == 6
    assert cfg["draft_vocab_size"] == target.vocab_size and cfg["sliding_window_non_causal"] is True
    layer = cfg["transformer_layer_config"]
    assert layer["model_type"] == "qwen3" and layer["num_hidden_layers"] == 2
    spec = cfg["speculators_config"]
    assert spec["algorithm"] == "dflash" and spec["proposal_methods"][0]["speculative_tokens"] == 5
    assert spec["verifier"]["name_or_path"] == str((tmp_path / "target").resolve())
    tensors = load_file(str(tmp_path / "s" / "model.safetensors"))
    assert set(tensors) == set(draft.state_dict()) | {"embed_tokens.weight", "lm_head.weight"}
    assert torch.equal(tensors["embed_tokens.weight"], model.get_input_embeddings().weight)
    assert torch.equal(tensors["lm_head.weight"], model.get_output_embeddings().weight)
    assert torch.equal(tensors["fc.weight"], draft.fc.weight) and any("5 speculative tokens" in n for n in report.notes)
    tied = TargetModel.from_pretrained(str(bundled_model_path()))  # stories260K ties its embedding and head
    build_draft(tied, "dflash", seed=1, dflash=DFlashShape(block_size=4)).save_pretrained(tmp_path / "t")
    export_draft(tmp_path / "t", "speculators", tmp_path / "ts", target=bundled_model_path())
    tensors = load_file(str(tmp_path / "ts" / "model.safetensors"))
    assert torch.equal(tensors["embed_tokens.weight"], tensors["lm_head.weight"])
    (tmp_path / "d2").mkdir()
    config = json.loads((tmp_path / "d" / "config.json").read_text())
    config["target"]["name_or_path"] = str(tmp_path / "nowhere")
    (tmp_path / "d2" / "config.json").write_text(json.dumps(config))
    (tmp_path / "d2" / "model.safetensors").write_bytes((tmp_path / "d" / "model.safetensors").read_bytes())
    with pytest.raises(ValueError, match="speculators needs the verifier .* pass --target PATH"):
        export_draft(tmp_path / "d2", "speculators", tmp_path / "s2")


@pytest.fixture(scope="module")
def trained_stories_dflash():
    return fitted_stories_dflash()


def test_a_trained_dflash_draft_gets_blocks_accepted_and_stays_exact(trained_stories_dflash):
    model, target, draft, tok, prompts = trained_stories_dflash
    gen = SpeculativeGenerator(target, draft, tokenizer=tok)
    taus = []
    for ids in prompts:
        out = gen.generate(ids, 40)
        assert out.token_ids == greedy_reference(model, ids, 40)[: len(out.token_ids)]
        taus.append(out.stats.tau)
    assert sum(taus) / len(taus) > 1.5, taus  # blocks are accepted, often several tokens at a time


@pytest.mark.parametrize("max_batch_size", [2, 5])
def test_batched_dflash_rows_equal_their_batch_size_one_output(trained_stories_dflash, max_batch_size):
    """Rows of different prompt lengths and budgets, finishing at different steps, requests joining a running
    batch as others leave: each row's tokens are its own decoded alone (and the target's)."""
    model, target, draft, tok, prompts = trained_stories_dflash
    gen = SpeculativeGenerator(target, draft, tokenizer=tok, tree=TreeConfig(lookup=4 if max_batch_size == 5 else 0))
    budgets = [40, 12, 33, 25, 40, 7, 30, 18]
    alone = [gen.generate(p, m).token_ids for p, m in zip(prompts, budgets)]
    batch = gen.running_batch(max_batch_size=max_batch_size)
    request_ids = [batch.add(p, m) for p, m in zip(prompts, budgets)]
    outputs = {}
    while len(batch):
        outputs.update({e.request_id: e.output.token_ids for e in batch.step() if e.finished})
    assert [outputs[r] for r in request_ids] == alone
    assert batch.batch_forwards < sum(len(a) for a in alone)  # blocks were accepted in the batch too


def test_a_shorter_chain_keeps_the_blocks_first_slots_and_stays_exact(trained_stories_dflash):
    """`--depth d` (or tune's choice) drafts the first d slots of the whole block: the same tokens as the block's
    chain cut at d, at most d accepted per step, alone and batched, and still the target's output."""
    model, target, draft, tok, prompts = trained_stories_dflash
    whole, short = BlockDrafter(draft), BlockDrafter(draft, depth=2)
    features = _features(target, draft, prompts[0])
    for drafter in (whole, short):
        drafter.catch_up(prompts[0][:, 1:], features)
    root = int(prompts[0][0, -1])
    assert short.propose(root, max_depth=99).tokens.tolist() == whole.propose(root, max_depth=99).tokens[:3].tolist()
    gen = SpeculativeGenerator(target, draft, tokenizer=tok, tree=TreeConfig(kind="chain", depth=2))
    alone = []
    for ids in prompts[:4]:
        out = gen.generate(ids, 30)
        assert out.token_ids == greedy_reference(model, ids, 30)[: len(out.token_ids)]
        assert max(out.stats.accept_lengths) == 2  # accepted often, never past the chain
        alone.append(out.token_ids)
    assert [o.token_ids for o in gen.generate_batch(prompts[:4], 30, max_batch_size=3).outputs] == alone


def test_a_chain_longer_than_the_block_is_refused_by_name(trained_stories_dflash):
    _, target, draft, tok, _ = trained_stories_dflash
    with pytest.raises(ValueError, match=r"depth 5 does not fit the dflash draft's block of 5: it drafts 1 to 4"):
        SpeculativeGenerator(target, draft, tokenizer=tok, tree=TreeConfig(kind="chain", depth=5))
    assert SpeculativeGenerator(target, draft, tokenizer=tok).drafter.depth == 4  # default: the whole block
