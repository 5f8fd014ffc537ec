import math

import pytest

torch = pytest.importorskip("torch")

from rmserve.training.losses import bradley_terry_loss, pairwise_accuracy  # noqa: E402


def test_bradley_terry_on_literal_tensors():
    chosen = torch.tensor([1.0, 0.0, -2.0])
    rejected = torch.tensor([0.0, 0.0, 1.0])
    expected = (math.log1p(math.exp(-1.0)) + math.log(2.0) + math.log1p(math.exp(3.0))) / 3
    assert float(bradley_terry_loss(chosen, rejected)) == pytest.approx(expected, rel=1e-6)


def test_bradley_terry_stays_finite_for_huge_gaps():
    loss = bradley_terry_loss(torch.tensor([-500.0]), torch.tensor([500.0]))
    assert float(loss) == pytest.approx(1000.0)
    assert float(bradley_terry_loss(torch.tensor([500.0]), torch.tensor([-500.0]))) == pytest.approx(0.0, abs=1e-12)


def test_bradley_terry_gradient_pushes_chosen_up_and_rejected_down():
    chosen = torch.tensor([0.0], requires_grad=True)
    rejected = torch.tensor([0.0], requires_grad=True)
    bradley_terry_loss(chosen, rejected).backward()
    assert float(chosen.grad) == pytest.approx(-0.5) and float(rejected.grad) == pytest.approx(0.5)


def test_pairwise_accuracy_counts_strict_wins_only():
    assert pairwise_accuracy(torch.tensor([1.0, 0.0, 2.0, 1.0]), torch.tensor([0.0, 0.0, 3.0, 0.5])) == 0.5


from rmserve.training.losses import (  # noqa: E402
    centering_penalty,
    listwise_mean,
    margin_loss,
    pair_losses,
    soft_label_loss,
)

LOG2 = math.log(2.0)


def softplus(x: float) -> float:  # -log sigmoid(-x), computed by hand for the expected values
    return math.log1p(math.exp(x))


def test_pair_losses_on_literal_tensors():
    delta = torch.tensor([0.0, 0.0, 2.0, 1.0, -1.0])
    label = torch.tensor([1.0, 0.5, 1.0, 0.75, 0.0])
    margin = torch.tensor([0.0, 0.0, 1.0, 0.0, 0.0])
    expected = [
        LOG2,                                        # Δ = 0, hard label: log 2
        LOG2,                                        # Δ = 0, tie: 0.5·log 2 + 0.5·log 2
        softplus(-1.0),                              # -log σ(2 - 1)
        0.75 * softplus(-1.0) + 0.25 * softplus(1.0),
        softplus(-1.0),                              # label 0 on Δ = -1: the pair is right the other way round
    ]
    assert pair_losses(delta, label, margin).tolist() == pytest.approx(expected, rel=1e-6)


def test_margin_and_soft_label_reduce_to_bradley_terry():
    chosen = torch.tensor([0.3, -1.2, 4.0, 0.0])
    rejected = torch.tensor([0.1, 0.5, -2.0, 0.0])
    bt = float(bradley_terry_loss(chosen, rejected))
    zeros, ones = torch.zeros(4), torch.ones(4)
    assert float(margin_loss(chosen, rejected, zeros)) == pytest.approx(bt, rel=1e-6)
    assert float(soft_label_loss(chosen, rejected, ones)) == pytest.approx(bt, rel=1e-6)
    assert float(pair_losses(chosen - rejected, ones, zeros).mean()) == pytest.approx(bt, rel=1e-6)
    # with label 1 the general per-pair loss is the margin loss; with margin 0 it is the soft-label loss
    margin = torch.tensor([0.0, 0.5, 1.0, 2.0])
    label = torch.tensor([1.0, 0.5, 0.9, 0.2])
    assert float(pair_losses(chosen - rejected, ones, margin).mean()) == pytest.approx(
        float(margin_loss(chosen, rejected, margin)), rel=1e-6)
    assert float(pair_losses(chosen - rejected, label, zeros).mean()) == pytest.approx(
        float(soft_label_loss(chosen, rejected, label)), rel=1e-6)


def test_margin_loss_on_literal_tensors():
    loss = margin_loss(torch.tensor([1.0, 3.0]), torch.tensor([0.0, 0.0]), torch.tensor([1.0, 1.0]))
    assert float(loss) == pytest.approx((LOG2 + softplus(-2.0)) / 2, rel=1e-6)


def test_soft_label_tie_is_minimal_at_equal_rewards():
    chosen = torch.tensor([0.0], requires_grad=True)
    loss = soft_label_loss(chosen, torch.tensor([0.0]), torch.tensor([0.5]))
    loss.backward()
    assert loss.item() == pytest.approx(LOG2) and chosen.grad.item() == pytest.approx(0.0, abs=1e-7)
    # a tie is pulled back towards Δ = 0 from either side
    for start, sign in [(2.0, 1.0), (-2.0, -1.0)]:
        c = torch.tensor([start], requires_grad=True)
        soft_label_loss(c, torch.tensor([0.0]), torch.tensor([0.5])).backward()
        assert float(c.grad) * sign > 0


def test_listwise_mean_weighs_each_group_once():
    # group 0: 3 pairs with losses 1, 2, 3 (mean 2); group 1: one pair with loss 10
    per_pair = torch.tensor([1.0, 10.0, 2.0, 3.0])
    group = torch.tensor([0, 1, 0, 0])
    assert float(listwise_mean(per_pair, group, 2)) == pytest.approx((2.0 + 10.0) / 2)
    assert float(per_pair.mean()) != pytest.approx(6.0)  # the plain pair mean would weigh group 0 three times
    # a group with no pairs is left out instead of making the loss NaN
    assert float(listwise_mean(per_pair, group, 3)) == pytest.approx(6.0)


def test_listwise_mean_gradient_splits_each_group_evenly():
    per_pair = torch.tensor([1.0, 10.0, 2.0, 3.0], requires_grad=True)
    listwise_mean(per_pair, torch.tensor([0, 1, 0, 0]), 2).backward()
    assert per_pair.grad.tolist() == pytest.approx([1 / 6, 1 / 2, 1 / 6, 1 / 6])


def test_listwise_mean_of_single_pair_groups_is_the_plain_mean():
    per_pair = torch.tensor([0.5, 1.5, 4.0])
    assert float(listwise_mean(per_pair, torch.tensor([2, 0, 1]), 3)) == pytest.approx(2.0)


def test_centering_penalty_on_literal_tensors():
    chosen = torch.tensor([1.0, 2.0, -0.5])
    rejected = torch.tensor([-1.0, 1.0, -0.5])
    assert float(centering_penalty(chosen, rejected)) == pytest.approx((0.0 + 9.0 + 1.0) / 3)
    c = chosen.clone().requires_grad_()
    centering_penalty(c, rejected).backward()
    assert c.grad.tolist() == pytest.approx([0.0, 2.0, -2.0 / 3])  # 2(r_c + r_r)/n


@pytest.mark.parametrize("gap", [1e3, -1e3, 1e5, -1e5])
def test_losses_and_gradients_stay_finite_for_huge_gaps(gap):
    chosen = torch.tensor([gap, gap], requires_grad=True)
    rejected = torch.tensor([0.0, 0.0], requires_grad=True)
    label = torch.tensor([1.0, 0.3])
    margin = torch.tensor([2.0, 0.0])
    losses = [
        margin_loss(chosen, rejected, margin),
        soft_label_loss(chosen, rejected, label),
        listwise_mean(pair_losses(chosen - rejected, label, margin), torch.tensor([0, 0]), 1),
    ]
    for loss in losses:
        grads = torch.autograd.grad(loss, (chosen, rejected))
        assert math.isfinite(loss.item()) and all(bool(torch.isfinite(g).all()) for g in grads)
    # a pair the model has badly wrong costs about |Δ|, not inf
    assert float(pair_losses(torch.tensor([-abs(gap)]), torch.tensor([1.0]), torch.tensor([0.0]))) == pytest.approx(
        abs(gap), rel=1e-6)
