"""Group statistics for GRPO/RLOO-style training, and the reward values a request may ask for.

A request with one prompt and several responses is a *group*: its raw rewards r_1..r_n have a mean, a
population standard deviation (ddof=0, numpy's default) and each response a group-normalized advantage
(r_i - mean) / (std + eps) with eps = `GROUP_EPS`, so that a group whose rewards are all equal gets
advantages of 0 instead of a division by zero. Statistics are computed in float64 from the raw rewards.

The server's scoring core computes them once per request for every transport; the client library calls
`group_stats` itself only to merge a group it had to split over several requests, so both use exactly
this arithmetic. Needs numpy only: the client and the server both import it, and neither imports the other.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

GROUP_EPS = 1e-6

ValueKind = Literal["raw", "normalized", "group"]
VALUE_KINDS: tuple[ValueKind, ...] = ("raw", "normalized", "group")


@dataclass(frozen=True)
class GroupStats:
    mean: float
    std: float  # population standard deviation (ddof=0)
    advantages: np.ndarray  # float64, (r - mean) / (std + eps), in request order
    eps: float = GROUP_EPS


def group_stats(raw: Sequence[float] | np.ndarray, eps: float = GROUP_EPS) -> GroupStats:
    """Mean, population std and advantages of one group's raw rewards."""
    rewards = np.asarray(raw, dtype=np.float64)
    if rewards.ndim != 1 or rewards.size == 0:
        raise ValueError("a group needs at least one reward")
    # numpy's mean and std, step for step (the same sums, so the same bits), without their Python-level
    # wrappers, which cost more than the arithmetic for the few rewards of one request.
    n = rewards.size
    mean = float(np.add.reduce(rewards) / n)
    deviations = rewards - mean
    std = math.sqrt(float(np.add.reduce(deviations * deviations) / n))
    return GroupStats(mean=mean, std=std, advantages=deviations / (std + eps), eps=eps)
