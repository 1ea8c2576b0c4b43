"""`tune` / `--tree auto` with a DFlash draft (issue 36): the chain length (and lookup) is chosen by measurement,
the replay of a block's chains accepts what decoding accepts, and the choice is stored and used."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from replay_helpers import decoded_steps_within

from eaglespec.decoding import SpeculativeGenerator, TreeConfig
from eaglespec.evaluation import tune, tune_block, tune_cost

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "decoding"))  # dflash_helpers, decoding_helpers
from dflash_helpers import fitted_stories_dflash  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")
PROMPTS = ["Once upon a time", "Tom had a big red ball. He"]


@pytest.fixture(scope="module")
def trained():
    model, target, draft, tok, prompts = fitted_stories_dflash()
    return SpeculativeGenerator(target, draft, tok), prompts


@pytest.fixture
def short_calibration(monkeypatch):
    monkeypatch.setattr(tune, "CALIBRATION_NEW_TOKENS", 24)
    monkeypatch.setattr(tune, "LOOKUP_TOKENS", (0, 4))
    monkeypatch.setattr(tune_cost, "FORWARD_REPEATS", 1)


@pytest.mark.parametrize(("depth", "lookup"), [(4, 0), (2, 0), (3, 4)])
def test_a_block_replay_accepts_what_decoding_accepts(trained, depth, lookup):
    """Replaying a greedy continuation with the block's chains cut at `depth` gives the steps real decoding with
    that chain length takes (fp32)."""
    gen, prompts = trained
    tree = TreeConfig(kind="chain", depth=depth, lookup=lookup)
    prompt = prompts[1][0].tolist()
    decoded = gen.with_tree(tree).generate(prompt, 40, eos_token_id=[])
    sequences = [(len(prompt), prompt + decoded.token_ids)]
    features = [tune_block.sequence_features(gen, seq) for _, seq in sequences]
    walks = tune_block.block_walks(gen, sequences, features, lookup)
    tau, size = tune_block.replay(tree, walks, gen.target.device)
    steps = decoded_steps_within(decoded.stats.accept_lengths, len(walks[0]))  # the stretch replayed
    assert tau == pytest.approx(sum(steps) / len(steps)) and tau > 1.3  # the draft is accepted, so this means something
    assert 1 + depth <= size <= 1 + depth + lookup


def test_measurement_picks_the_chain_length(monkeypatch, trained, short_calibration):
    """Every chain length with and without lookup is ranked; the finalists include the whole block and are
    timed by real decoding, and the fastest measured one is the choice, stored as a chain."""
    gen, _ = trained
    timed = []

    def fake_decode(generator, tree, prompts, new_tokens):
        timed.append(tree)
        return (90.0 if tree == TreeConfig(kind="chain", depth=2) else 10.0 if tree is None else 50.0), 2.0

    monkeypatch.setattr(tune, "_decode_all", fake_decode)
    monkeypatch.setattr(tune, "rank_blocks", _ranked_with_depth_2_first(tune_block.rank_blocks))
    result = tune.tune_tree(gen, PROMPTS, log=lambda *_: None)
    assert sorted((c.tree["depth"], c.tree.get("lookup", 0)) for c in result.candidates) == [
        (d, n) for d in range(1, 5) for n in (0, 4)]
    assert TreeConfig(kind="chain", depth=4) in timed  # the whole block is always timed
    assert result.choice == {"kind": "chain", "depth": 2} and result.predicted_tokens_per_s == 90.0


def _ranked_with_depth_2_first(rank):
    def ranked(*args, **kwargs):
        order, rest, states = rank(*args, **kwargs)
        return sorted(order, key=lambda e: e[0] != TreeConfig(kind="chain", depth=2)), rest, states
    return ranked


def test_the_choice_is_real_written_and_used(tmp_path, trained, short_calibration):
    gen, _ = trained
    result = tune.tune_tree(gen, PROMPTS, log=lambda *_: None)
    best = max((c for c in result.candidates if c.measured_tokens_per_s), key=lambda c: c.measured_tokens_per_s)
    assert result.choice == best.tree and result.predicted_tokens_per_s > 0 and result.predicted_tau >= 1
    assert all(c.propose_ms > 0 and c.forward_ms > 0 for c in result.candidates)
    gen.draft.save_pretrained(tmp_path / "draft")
    tune.write_tuned_tree(tmp_path / "draft", result, gen)
    loaded = SpeculativeGenerator.from_pretrained("stories260K", tmp_path / "draft")
    assert loaded.drafter.depth == result.choice["depth"] and loaded.tree.lookup == result.choice.get("lookup", 0)
    override = SpeculativeGenerator.from_pretrained("stories260K", tmp_path / "draft", depth=1)
    assert override.drafter.depth == 1  # an explicit --depth wins over the tuned one
