import math

import pytest

torch = pytest.importorskip("torch")

from training.losses import bradley_terry_loss, pairwise_accuracy  # noqa: E402


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
