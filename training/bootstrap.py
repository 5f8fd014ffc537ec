"""Bootstrap intervals that resample whole prompts: how far an evaluation figure could move on another
draw of prompts like these.

Pairs that share a prompt are not independent, so the unit resampled is the prompt (a cluster bootstrap):
with P prompts, resample b draws P prompt indices with replacement, `rng.integers(0, P, size=P)` from
`np.random.default_rng(seed)`, resample after resample, and takes every pair of each drawn prompt once per
draw. A figure is recomputed on each resample by the same function that computed it on the data, and its
interval is the percentile interval: `np.percentile` (linear interpolation) of the resampled values at
(1 − level)/2 and (1 + level)/2. A resample on which a figure is undefined (a subset with no decided
pair, an AUC without both sides) is left out of that figure's interval and counted.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

LEVEL = 0.95
RESAMPLES = 1000
SEED = 0

Statistic = Callable[[np.ndarray], "float | None"]  # indices of the resampled pairs -> the figure


@dataclass(frozen=True)
class Interval:
    lo: float | None
    hi: float | None
    undefined: int  # resamples on which the figure had no value

    def as_list(self) -> list[float] | None:
        return None if self.lo is None or self.hi is None else [self.lo, self.hi]


def group_ids(keys: Sequence[Hashable]) -> np.ndarray:
    """0-based id of each item's group, numbered in order of first appearance."""
    ids: dict[Hashable, int] = {}
    return np.array([ids.setdefault(k, len(ids)) for k in keys], dtype=np.int64)


def resample(groups: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Indices of one resample: every item of each drawn group, once per draw (in item order: every figure
    here is a function of the multiset, not of the order)."""
    count = int(groups.max()) + 1 if groups.size else 0
    draws = np.bincount(rng.integers(0, count, size=count), minlength=count)
    return np.repeat(np.arange(groups.size), draws[groups])


def bootstrap(statistics: Mapping[str, Statistic], groups: np.ndarray, resamples: int = RESAMPLES,
              seed: int = SEED, level: float = LEVEL) -> dict[str, Interval]:
    """The percentile interval of each statistic over `resamples` group resamples (same resamples for all)."""
    if resamples < 1:
        raise ValueError(f"resamples must be at least 1, got {resamples}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    groups = np.asarray(groups, dtype=np.int64)
    rng = np.random.default_rng(seed)
    values: dict[str, list[float]] = {name: [] for name in statistics}
    for _ in range(resamples):
        indices = resample(groups, rng)
        for name, statistic in statistics.items():
            value = statistic(indices)
            if value is not None and np.isfinite(value):
                values[name].append(float(value))
    tails = (50.0 * (1.0 - level), 50.0 * (1.0 + level))
    out = {}
    for name, got in values.items():
        if got:
            lo, hi = np.percentile(got, tails)
            out[name] = Interval(float(lo), float(hi), resamples - len(got))
        else:
            out[name] = Interval(None, None, resamples)
    return out
