"""Preference losses on reward tensors. Each is a few lines and tested on literal tensors.

Δ = r_chosen − r_rejected. All use F.logsigmoid, which stays finite (and has finite gradients) for any
|Δ|, where log(sigmoid(x)) is -inf for x below about -88 in fp32. Functions named *_loss return the
mean over pairs; `pair_losses` returns one loss per pair, for `listwise_mean` to weigh by prompt.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def bradley_terry_loss(chosen: torch.Tensor, rejected: torch.Tensor) -> torch.Tensor:
    """Mean of -log sigmoid(r_chosen - r_rejected); logsigmoid keeps large gaps finite."""
    return -F.logsigmoid(chosen - rejected).mean()


def margin_loss(chosen: torch.Tensor, rejected: torch.Tensor, margin: torch.Tensor) -> torch.Tensor:
    """Mean of -log sigmoid(Δ - m): chosen must beat rejected by the margin m >= 0 (Llama 2)."""
    return -F.logsigmoid(chosen - rejected - margin).mean()


def soft_label_loss(chosen: torch.Tensor, rejected: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy against p = P(chosen ≻ rejected): -[p log σ(Δ) + (1-p) log σ(-Δ)]; p = 0.5 is a tie,
    whose minimum is at Δ = 0."""
    delta = chosen - rejected
    return -(label * F.logsigmoid(delta) + (1 - label) * F.logsigmoid(-delta)).mean()


def pair_losses(delta: torch.Tensor, label: torch.Tensor, margin: torch.Tensor) -> torch.Tensor:
    """Per-pair -[p log σ(Δ - m) + (1-p) log σ(-Δ - m)]: Bradley–Terry at p = 1, m = 0; the margin loss
    at p = 1; the soft-label loss at m = 0. Covers every pair of a batch in one expression."""
    return -(label * F.logsigmoid(delta - margin) + (1 - label) * F.logsigmoid(-delta - margin))


def listwise_mean(per_pair: torch.Tensor, group_of_pair: torch.Tensor, n_groups: int) -> torch.Tensor:
    """Mean over groups of each group's mean pair loss, so a prompt ranked K ways counts once, not
    K(K-1)/2 times (InstructGPT). `group_of_pair[i]` is pair i's group in [0, n_groups); groups without
    pairs are left out of the mean rather than dividing by zero."""
    sums = per_pair.new_zeros(n_groups).index_add(0, group_of_pair, per_pair)
    counts = per_pair.new_zeros(n_groups).index_add(0, group_of_pair, torch.ones_like(per_pair))
    return (sums / counts.clamp(min=1)).sum() / (counts > 0).sum().clamp(min=1)


def centering_penalty(chosen: torch.Tensor, rejected: torch.Tensor) -> torch.Tensor:
    """Mean of (r_chosen + r_rejected)²: pulls each pair's rewards to sum to zero, since the losses only
    see differences and leave the offset free (Eisenstein et al. 2023). The caller multiplies by η."""
    return (chosen + rejected).square().mean()


def pairwise_accuracy(chosen: torch.Tensor, rejected: torch.Tensor) -> float:
    """Share of pairs where the chosen response scores strictly higher."""
    return float((chosen > rejected).float().mean())
