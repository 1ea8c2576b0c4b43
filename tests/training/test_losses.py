import math

import pytest
import torch

from eaglespec.training.losses import eagle1_loss, eagle3_step_loss, ttt_total_loss
from eaglespec.training.noise import add_feature_noise
from eaglespec.training.schedule import lr_factor
from eaglespec.training.checkpoint import is_save_epoch

LN3 = math.log(3.0)


def _eagle1_case(mask):
    # position 0: feature error (0, 2) -> SmoothL1 (0 + 1.5) / 2 = 0.75; q = (.5, .5), p = (.25, .75) -> CE ln 2
    # position 1: feature error 0; q = (.75, .25), p = (.75, .25) -> CE = entropy(.75, .25)
    predicted = torch.tensor([[[0.0, 0.0], [1.0, 1.0]]])
    target = torch.tensor([[[0.0, 2.0], [1.0, 1.0]]])
    draft_logits = torch.tensor([[[0.0, 0.0], [LN3, 0.0]]])
    target_logits = torch.tensor([[[0.0, LN3], [LN3, 0.0]]])
    return eagle1_loss(predicted, target, draft_logits, target_logits, torch.tensor([mask]), v_w=1.0, p_w=0.1)


def test_eagle1_loss_hand_computed_and_normalised_by_mask_count():
    entropy = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    one = _eagle1_case([1, 0])
    assert one.count.item() == 1
    assert one.vloss.item() == pytest.approx(0.75)
    assert one.ploss.item() == pytest.approx(math.log(2))
    assert one.loss.item() == pytest.approx(0.75 + 0.1 * math.log(2))
    two = _eagle1_case([1, 1])
    assert two.vloss.item() == pytest.approx(0.75 / 2)
    assert two.ploss.item() == pytest.approx((math.log(2) + entropy) / 2)
    # top-1: position 0 ties (argmax 0) vs target argmax 1 -> miss; top-2 hits; position 1 hits
    assert two.correct.tolist() == [1.0, 2.0, 2.0]


def test_eagle1_loss_empty_mask_is_zero_not_nan():
    out = _eagle1_case([0, 0])
    assert out.loss.item() == 0.0 and out.count.item() == 0


def test_eagle3_step_loss_hand_computed():
    # Vd = 2. position 0: q = (.5, .5), p = (.25, .75) -> ln 2; position 1 masked out; position 2: q = p -> entropy
    draft = torch.tensor([[[0.0, 0.0], [5.0, -5.0], [LN3, 0.0]]])
    target = torch.tensor([[[0.0, LN3], [0.0, 9.0], [LN3, 0.0]]])
    mask = torch.tensor([[1, 0, 1]])
    out = eagle3_step_loss(draft, target, mask)
    entropy = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    assert out.count.item() == 2
    assert out.ploss.item() == pytest.approx((math.log(2) + entropy) / 2)
    assert out.correct.item() == 1.0  # position 0: argmax 0 vs 1 (miss); position 2: hit


def test_ttt_total_loss_weights_steps_geometrically():
    steps = [eagle3_step_loss(torch.zeros(1, 1, 2), torch.tensor([[[0.0, LN3]]]), torch.ones(1, 1))] * 3
    assert ttt_total_loss(steps, 0.8).item() == pytest.approx(math.log(2) * (1 + 0.8 + 0.64))


@pytest.mark.parametrize("kind", ["uniform", "gaussian"])
def test_noise_scale_does_not_depend_on_sequence_length(kind):
    g = torch.Generator().manual_seed(0)
    short = add_feature_noise(torch.zeros(64, 4, 32), kind, 0.2, g)
    long = add_feature_noise(torch.zeros(1, 2048, 32), kind, 0.2, g)
    expected_std = 0.2 / math.sqrt(12) if kind == "uniform" else 0.2
    assert short.std().item() == pytest.approx(expected_std, rel=0.05)
    assert long.std().item() == pytest.approx(expected_std, rel=0.05)
    if kind == "uniform":
        assert short.abs().max().item() <= 0.1 and long.abs().max().item() <= 0.1


def test_noise_none_is_identity():
    x = torch.randn(2, 3, 4)
    assert add_feature_noise(x, "none", 0.2) is x


def test_schedule_warmup_then_linear_decay():
    assert [lr_factor(s, 2, 6) for s in range(7)] == [0.5, 1.0, 1.0, 0.75, 0.5, 0.25, 0.0]
    assert [lr_factor(s, 0, 4) for s in range(4)] == [1.0, 0.75, 0.5, 0.25]


def test_schedule_drives_adamw_lr():
    from eaglespec.training.schedule import OptimizerConfig, build_optimizer

    model = torch.nn.Linear(2, 2)
    opt, sched = build_optimizer(model, OptimizerConfig(lr=1.0, total_steps=4, warmup_steps=2))
    assert opt.defaults["betas"] == (0.9, 0.95)
    lrs = []
    for _ in range(4):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == [0.5, 1.0, 1.0, 0.5]


def test_save_modulo_one_based_epochs():
    assert [e for e in range(1, 21) if is_save_epoch(e, 20, 5)] == [5, 10, 15, 20]
    assert [e for e in range(1, 8) if is_save_epoch(e, 7, 3)] == [3, 6, 7]  # the last epoch always


# --- the acceptance objectives (--objective ce | tv | lk | ce+tv) ---------------------------------------------

def _acceptance_by_hand(p: list[float], q: list[float]) -> float:
    return sum(min(a, b) for a, b in zip(p, q))


def test_acceptance_rate_is_what_speculative_sampling_accepts():
    """sum_x min(p, q) is the chance that a token drawn from q passes the test u < p/q (EAGLE_NOTES, sampling):
    computed by hand, and as that chance summed token by token (q(x) * min(1, p(x)/q(x)))."""
    from eaglespec.training.losses import acceptance_rate

    p = torch.tensor([0.5, 0.3, 0.2, 0.0])
    logits = torch.tensor([1.0, 0.0, -1.0, 0.5])
    q = torch.softmax(logits, -1)
    by_hand = _acceptance_by_hand(p.tolist(), q.tolist())
    by_test = float(sum(qx * min(1.0, px / qx) for px, qx in zip(p.tolist(), q.tolist())))
    assert float(acceptance_rate(logits, p)) == pytest.approx(by_hand) == pytest.approx(by_test)
    assert float(acceptance_rate(torch.log(p + 1e-30), p)) == pytest.approx(1.0, abs=1e-6)  # q = p: always accepted


@pytest.mark.parametrize("objective", ["ce", "tv", "lk", "ce+tv"])
def test_objective_values_and_gradients_match_a_direct_computation(objective):
    from eaglespec.training.losses import objective_loss

    torch.manual_seed(0)
    logits = torch.randn(5, 7, dtype=torch.float64, requires_grad=True)
    p = torch.softmax(torch.randn(5, 7, dtype=torch.float64) * 2, -1)
    loss, ce, alpha = objective_loss(logits, p, objective, tv_weight=0.5)

    direct_logits = logits.detach().clone().requires_grad_(True)
    q = torch.exp(direct_logits) / torch.exp(direct_logits).sum(-1, keepdim=True)
    direct_ce = -(p * torch.log(q)).sum(-1)
    direct_alpha = torch.stack([sum(torch.minimum(p[i, k], q[i, k]) for k in range(7)) for i in range(5)])
    direct = {"ce": direct_ce, "tv": 1 - direct_alpha, "lk": -torch.log(direct_alpha),
              "ce+tv": direct_ce + 0.5 * (1 - direct_alpha)}[objective]
    assert torch.allclose(loss.double(), direct, atol=1e-6)
    assert torch.allclose(ce.double(), direct_ce, atol=1e-6) and torch.allclose(alpha.double(), direct_alpha, atol=1e-6)
    (g,) = torch.autograd.grad(loss.sum(), logits)
    (want,) = torch.autograd.grad(direct.sum(), direct_logits)
    assert torch.allclose(g.double(), want, atol=1e-6)


def test_tv_gradient_by_hand():
    """d(1 - alpha)/d logit_j = -sum_{x: q < p} q(x) (1[x = j] - q(j)): only tokens the draft under-weights pull."""
    from eaglespec.training.losses import objective_loss

    logits = torch.tensor([0.2, -0.4, 1.0], requires_grad=True)
    p = torch.tensor([0.6, 0.3, 0.1])
    loss, _, _ = objective_loss(logits, p, "tv")
    loss.backward()
    q = torch.softmax(logits.detach(), -1)
    under = (q < p).float()
    want = -torch.tensor([sum(float(under[x] * q[x] * (float(x == j) - q[j])) for x in range(3)) for j in range(3)])
    assert torch.allclose(logits.grad, want, atol=1e-6)


def test_rows_loss_optimises_the_objective_but_reports_ce_and_acceptance():
    from eaglespec.training.losses import eagle3_rows_loss, soft_cross_entropy

    torch.manual_seed(1)
    logits, p = torch.randn(4, 6), torch.softmax(torch.randn(4, 6), -1)
    top = p.argmax(-1)
    ce_run, tv_run = eagle3_rows_loss(logits, p, top), eagle3_rows_loss(logits, p, top, "tv")
    ce = soft_cross_entropy(logits, p)
    alpha = torch.minimum(p, torch.softmax(logits, -1)).sum(-1)
    assert float(ce_run.ploss) == pytest.approx(float(ce.mean()))
    assert float(tv_run.ploss) == pytest.approx(float((1 - alpha).mean()))
    for run in (ce_run, tv_run):
        assert float(run.ploss_sum) == pytest.approx(float(ce.sum()))
        assert float(run.accept_sum) == pytest.approx(float(alpha.sum()))


def test_an_unknown_objective_is_refused():
    from eaglespec.training.losses import objective_loss

    with pytest.raises(ValueError, match="--objective: expected one of ce, tv, lk, ce\\+tv, got 'kl'"):
        objective_loss(torch.zeros(1, 2), torch.tensor([[0.5, 0.5]]), "kl")


def test_the_label_objective_is_dflash_only():
    """`label` needs the data's own token at every trained row: DFlash's blocks have it; EAGLE-3 refuses it by name,
    from the config and from the command line."""
    from fixtures import train_config

    from eaglespec.cli import build_parser
    from eaglespec.training.config import DFlashTrainConfig, Eagle3TrainConfig

    assert DFlashTrainConfig(train_config("unused"), data="d", objective="label").objective == "label"
    with pytest.raises(ValueError, match="--objective: expected one of ce, tv, lk, ce\\+tv, got 'label'"):
        Eagle3TrainConfig(train_config("unused"), data="d", objective="label")
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "eagle3", "--basepath", "m", "--data", "d", "--savedir", "s",
                                   "--objective", "label"])
