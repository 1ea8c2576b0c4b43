"""Training-time test: the attention pattern, and that every step equals the draft run as decoding runs
it (a KV-cached chain per position), plus the TTT loss recomputed by hand from those chains."""

import copy
import math

import pytest
import torch
from transformers import DynamicCache

from fixtures import tiny_model
from eaglespec.models import TargetModel, build_draft, set_draft_vocab
from eaglespec.training.data import TargetBatch
from eaglespec.training.methods import Eagle3Method
from eaglespec.training.ttt import chain_predictions, shift_left, ttt_attention_mask, ttt_forward


def test_ttt_attention_mask_pattern():
    m = ttt_attention_mask(4, 2)[0, 0].int()
    assert m.shape == (4, 12)
    expected = torch.tensor([
        [1, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0],
        [1, 1, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0],
        [1, 1, 1, 0, 0, 0, 1, 0, 0, 0, 1, 0],
        [1, 1, 1, 1, 0, 0, 0, 1, 0, 0, 0, 1],
    ])
    assert torch.equal(m, expected)


@pytest.fixture(scope="module")
def target_and_draft():
    target = TargetModel(tiny_model("llama"))
    draft = build_draft(target, "eagle3", draft_vocab_size=100, used_tokens=torch.arange(0, 128, 1)[:100], seed=3)
    with torch.no_grad():  # a random but non-trivial draft
        for p in draft.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))
    return target, draft


def _decoding_chain(draft, ids, hidden, t, steps):
    """What decoding computes at position t: prefix 0..t with a KV cache, then one token per step."""
    cache = DynamicCache()
    out = draft(ids[:, : t + 1], hidden[:, : t + 1], cache=cache)[:, -1:]
    outs = [out]
    for j in range(1, steps):
        token = shift_left(ids, j)[:, t : t + 1]
        out = draft(token, outs[-1], position_ids=torch.tensor([[t + j]]), cache=cache)
        outs.append(out)
    return [o[:, 0] for o in outs]


def test_ttt_steps_equal_the_decoding_chain(target_and_draft):
    _, draft = target_and_draft
    torch.manual_seed(0)
    T, steps = 4, 3
    ids = torch.randint(3, 128, (1, T))
    hidden = torch.randn(1, T, draft.config.hidden_size)
    outs = ttt_forward(draft, ids, hidden, steps)
    for t in range(T):
        chain = _decoding_chain(draft, ids, hidden, t, steps)
        for j in range(steps):
            torch.testing.assert_close(outs[j][:, t], chain[j], rtol=1e-4, atol=1e-5)


def test_gradient_checkpointing_gives_the_same_outputs_and_grads(target_and_draft):
    _, draft = target_and_draft
    ids = torch.randint(3, 128, (2, 5))
    hidden = torch.randn(2, 5, draft.config.hidden_size)
    grads = []
    for ckpt in (False, True):
        draft.zero_grad()
        outs = ttt_forward(draft, ids, hidden, 3, gradient_checkpointing=ckpt)
        sum(o.square().sum() for o in outs).backward()
        grads.append({n: p.grad.clone() for n, p in draft.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and "midlayer.self_attn.q_proj.weight" in grads[0]
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name])
    draft.zero_grad()


def test_chain_predictions_feed_own_tokens(target_and_draft):
    _, draft = target_and_draft
    ids = torch.randint(3, 128, (1, 3))
    hidden = torch.randn(1, 3, draft.config.hidden_size)
    pred = chain_predictions(draft, ids, hidden, 3)  # [1, 3, 3]
    t = 1  # recompute position 1 by hand: step j is fed the step j-1 prediction
    cache = DynamicCache()
    out = draft(ids[:, : t + 1], hidden[:, : t + 1], cache=cache)[:, -1:]
    for j in range(3):
        token = draft.draft_to_target_ids(draft.compute_logits(out).argmax(-1))
        assert token.item() == pred[0, t, j].item()
        out = draft(token, out, position_ids=torch.tensor([[t + j + 1]]), cache=cache)


@pytest.mark.parametrize("vocab", ["first_100", "even_ids"])
def test_ttt_loss_matches_manual_recomputation(target_and_draft, vocab):
    """T = 4, TTT length 2: loss = sum_j 0.8^j * mean over masked positions of soft-CE, where the mask is
    loss_mask[t+2+j] AND target argmax (row t+1+j) in the draft vocabulary. With the even ids as the draft
    vocabulary, draft row i is target id 2i: a wrong d2t / t2d mapping changes the loss."""
    target, draft = target_and_draft
    kept = torch.arange(100) if vocab == "first_100" else torch.arange(0, 128, 2)
    if vocab == "even_ids":
        draft = copy.deepcopy(draft)
        draft.config.draft_vocab_size = 64
        draft.lm_head = torch.nn.Linear(draft.config.hidden_size, 64, bias=False)
        draft.d2t = torch.zeros(64, dtype=torch.long)
        set_draft_vocab(draft, kept, target.lm_head)
    in_vocab = torch.zeros(128, dtype=torch.bool)
    in_vocab[kept] = True
    torch.manual_seed(1)
    T, steps, V = 5, 2, 128
    ids = torch.randint(3, 100, (1, T))
    out = target(ids, aux_layer_ids=draft.config.aux_layer_ids)
    logits = out.logits.clone()
    logits[..., ~in_vocab] -= 50.0  # target argmax inside the draft vocabulary ...
    logits[0, 2, 121] = 1e3  # ... except row 2: target argmax outside the draft vocabulary (121 is in neither)
    loss_mask = torch.tensor([[0, 1, 1, 1, 1]])
    batch = TargetBatch(ids, loss_mask, torch.ones(1, T, dtype=torch.bool), out.aux_hidden, out.last_hidden, logits)
    result = Eagle3Method(steps, 0.8).train_step(draft, draft, batch)

    hidden = draft.project_target_features(out.aux_hidden)
    draft_ids = shift_left(ids, 1)
    expected, counts = 0.0, []
    for j in range(steps):
        ces = []
        for t in range(T):
            row, label = t + 1 + j, t + 2 + j
            if label >= T or not loss_mask[0, label] or not in_vocab[logits[0, row].argmax()]:
                continue
            h = _decoding_chain(draft, draft_ids, hidden, t, steps)[j]
            q = torch.log_softmax(draft.compute_logits(h)[0], -1)  # draft row i = target id kept[i]
            p = torch.softmax(logits[0, row, kept], -1)
            ces.append(-(p * q).sum())
        counts.append(len(ces))
        expected = expected + 0.8**j * sum(ces) / len(ces)
    # step 0: t = 0, 1, 2 (labels 2, 3, 4) minus t = 1 (row 2 out of vocab); step 1: t = 0, 1 minus t = 0
    assert counts == [2, 1]
    assert result.sums["count_0"].item() == 2 and result.sums["count_1"].item() == 1
    torch.testing.assert_close(result.loss, expected, rtol=1e-4, atol=1e-5)
    assert math.isfinite(result.loss.item())


def test_target_greedy_continuations_match_generate(target_and_draft):
    from eaglespec.training.metrics import target_greedy_continuations

    target, _ = target_and_draft
    ids = torch.randint(3, 128, (1, 6))
    cont = target_greedy_continuations(target, ids, 4)  # [1, 6, 4]
    for s in (0, 3, 5):
        generated = target.model.generate(ids[:, : s + 1], max_new_tokens=4, do_sample=False, min_new_tokens=4)
        assert cont[0, s].tolist() == generated[0, s + 1 :].tolist()


def test_accepted_depth_on_a_hand_built_tree():
    from eaglespec.decoding.tree import DraftTree
    from eaglespec.decoding.verify import accepted_length_on_path as _accepted_depth

    #        0 (root)
    #      /   \
    #    1:7    2:8
    #    |       |
    #    3:9    4:5
    tree = DraftTree.from_parents(torch.tensor([0, 7, 8, 9, 5]), torch.tensor([-1, 0, 0, 1, 2]))
    assert _accepted_depth(tree, torch.tensor([7, 9, 4])) == 2
    assert _accepted_depth(tree, torch.tensor([8, 5, 1])) == 2
    assert _accepted_depth(tree, torch.tensor([8, 9, 1])) == 1  # 9 hangs under 7, not under 8
    assert _accepted_depth(tree, torch.tensor([3, 7, 9])) == 0


class _PartialOracleDraft(torch.nn.Module):
    """Test draft: proposes the target's greedy continuation `sequence` as its top token, except at positions
    with (37 p) mod 11 < 3 (so accepted runs have varied lengths); other proposals are fixed pseudo-random logits of
    (position, token), so identical decoding states give identical trees in any call order."""

    def __init__(self, target, sequence: list[int]):
        super().__init__()
        from eaglespec.models import draft_config_for

        self.config = draft_config_for(target, "eagle1")
        self.vocab = target.vocab_size
        self.sequence = torch.tensor(sequence)
        self.dummy = torch.nn.Parameter(torch.zeros(1), requires_grad=False)

    def project_target_features(self, features):
        return torch.zeros(*features.shape[:2], self.vocab)

    def forward(self, input_ids, hidden_states, position_ids=None, attention_mask=None, cache=None):
        B, T = input_ids.shape
        pos = position_ids.expand(B, T)
        seq, V = self.sequence, self.vocab
        noise = torch.sin((pos[..., None] * 7.1 + input_ids[..., None] * 3.3) * torch.arange(1, V + 1) * 0.37)
        on_path = (pos + 2 < len(seq)) & (input_ids == seq[(pos + 1).clamp(max=len(seq) - 1)]) & ((pos * 37) % 11 >= 3)
        hit = torch.zeros(B, T, V).scatter_(-1, seq[(pos + 2).clamp(max=len(seq) - 1)][..., None], 20.0)
        return noise + hit * on_path[..., None]

    def compute_logits(self, hidden):
        return hidden

    def draft_to_target_ids(self, ids):
        return ids


def test_simulated_tree_acceptance_equals_the_decoder_step_by_step():
    """From every decoding state SpeculativeGenerator goes through, the simulation accepts exactly what
    the decoder's verification accepted (same draft, same default dynamic tree)."""
    from eaglespec.decoding import SpeculativeGenerator
    from eaglespec.models import TargetModel
    from eaglespec.training.methods import SIM_DEPTH, simulated_tree_acceptance
    from eaglespec.training.metrics import target_greedy_continuations
    from eaglespec.training.ttt import shift_left
    from fixtures import stories260k, stories260k_tokenizer

    target = TargetModel(stories260k())
    tok = stories260k_tokenizer()
    ids = tok("Tom had a big red ball. He", return_tensors="pt").input_ids
    n = ids.shape[1]
    greedy_out = target.model.generate(ids, do_sample=False, max_new_tokens=48)[0].tolist()
    draft = _PartialOracleDraft(target, greedy_out)
    out = SpeculativeGenerator(target, draft, tok).generate(ids, max_new_tokens=40)
    assert out.token_ids == greedy_out[n:n + 40]
    decoded = out.stats.accept_lengths
    assert len(set(decoded)) >= 3, decoded  # the oracle's misses make runs of different lengths
    # the decoding state of step k: P_k tokens in the target cache, P_0 = n, P_{k+1} = P_k + accept_k + 1
    states, length = [], n
    for accept in decoded:
        states.append(length - 1)  # draft position t = P - 1 holds the root x_P
        length += accept + 1
    seq = torch.tensor([greedy_out])
    feats = target(seq).features("eagle1")
    greedy = shift_left(target_greedy_continuations(target, seq, SIM_DEPTH["eagle1"]), 1)
    simulated = simulated_tree_acceptance(draft, shift_left(seq, 1, 0), feats, greedy, [(0, t) for t in states])
    # the last steps may have been cut by the end of the 48-token oracle sequence; compare where it holds
    keep = [i for i, t in enumerate(states) if t + 2 + SIM_DEPTH["eagle1"] < len(greedy_out)]
    assert len(keep) >= 5
    assert [simulated[i] for i in keep] == [decoded[i] for i in keep]
