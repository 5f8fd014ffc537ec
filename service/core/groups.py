"""What a scoring answer reports about its rewards: raw, normalized, group statistics (when the request
was one prompt with its responses) and the kind of values it asked for, computed once per request for
every transport. The group arithmetic itself is `rmserve.group_stats`, shared with the client.

With verifiers (service/core/verification.py), the combined rewards are the request's rewards: `values`
carry them (combined with the raw reward, or the normalized one for normalized values) and the group
statistics are those of the combined rewards; `raw` and `normalized` stay the model's."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rmserve.group_stats import VALUE_KINDS, GroupStats, ValueKind, group_stats
from rmserve.service.core.verifiers import CombinedReward


@dataclass(frozen=True)
class RewardSummary:
    """Everything a scoring answer reports about its rewards, computed once."""

    raw: np.ndarray  # float64
    normalized: np.ndarray  # float64, with the bundle's reference stats
    group: GroupStats | None  # None unless the request was one prompt with its responses
    kind: ValueKind
    verification: list[CombinedReward] | None = None  # per response, with verifiers configured

    @property
    def combined(self) -> np.ndarray | None:
        if self.verification is None:
            return None
        return np.array([v.combined for v in self.verification], dtype=np.float64)

    @property
    def values(self) -> np.ndarray:
        """The values the request asked for."""
        if self.kind == "group":
            if self.group is None:
                raise ValueError("group values need one prompt with its responses")
            return self.group.advantages
        combined = self.combined
        if combined is not None:
            return combined
        return self.normalized if self.kind == "normalized" else self.raw


def summarize(raw: np.ndarray, normalized: np.ndarray, kind: ValueKind, grouped: bool,
              verification: list[CombinedReward] | None = None) -> RewardSummary:
    if kind not in VALUE_KINDS:
        raise ValueError(f"unknown values kind {kind!r}; expected one of {', '.join(VALUE_KINDS)}")
    raw64 = np.asarray(raw, dtype=np.float64)
    basis = raw64 if verification is None else np.array([v.combined for v in verification], dtype=np.float64)
    group = group_stats(basis) if grouped else None
    return RewardSummary(raw=raw64, normalized=np.asarray(normalized, dtype=np.float64), group=group, kind=kind,
                         verification=verification)
