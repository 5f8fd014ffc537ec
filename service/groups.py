"""Group statistics for GRPO/RLOO-style training, and which reward values a request asked for.

A request with one prompt and several responses is a *group*: its raw rewards r_1..r_n have a mean, a
population standard deviation (ddof=0, numpy's default) and each response a group-normalized advantage
(r_i - mean) / (std + eps) with eps = `GROUP_EPS`, so that a group whose rewards are all equal gets
advantages of 0 instead of a division by zero. Statistics are computed in float64 from the raw rewards.

The scoring core (`Scorer.summarize`) calls `summarize` once per request for every transport; the client
library calls `group_stats` itself only to merge a group it had to split over several requests, so both
use exactly this arithmetic. No torch, no web stack: importable by a client.
"""

from __future__ import annotations

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
    mean = float(rewards.mean())
    std = float(rewards.std())
    return GroupStats(mean=mean, std=std, advantages=(rewards - mean) / (std + eps), eps=eps)


@dataclass(frozen=True)
class RewardSummary:
    """Everything a scoring answer reports about its rewards, computed once."""

    raw: np.ndarray  # float64
    normalized: np.ndarray  # float64, with the bundle's reference stats
    group: GroupStats | None  # None unless the request was one prompt with its responses
    kind: ValueKind

    @property
    def values(self) -> np.ndarray:
        """The values the request asked for."""
        if self.kind == "normalized":
            return self.normalized
        if self.kind == "group":
            if self.group is None:
                raise ValueError("group values need one prompt with its responses")
            return self.group.advantages
        return self.raw


def summarize(raw: np.ndarray, normalized: np.ndarray, kind: ValueKind, grouped: bool) -> RewardSummary:
    if kind not in VALUE_KINDS:
        raise ValueError(f"unknown values kind {kind!r}; expected one of {', '.join(VALUE_KINDS)}")
    raw64 = np.asarray(raw, dtype=np.float64)
    group = group_stats(raw64) if grouped else None
    return RewardSummary(raw=raw64, normalized=np.asarray(normalized, dtype=np.float64), group=group, kind=kind)
