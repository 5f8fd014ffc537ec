"""The evaluation figures as functions of reward arrays and labels, in numpy: tie-aware pairwise accuracy,
soft-label log-loss, AUC, reliability bins and calibration error, the temperature fit, correlations and
the reward distribution.

Every pair carries `label` = P(chosen ≻ rejected): 1.0 for a plain pair, 0.5 for a tie, soft in between.
A figure that is undefined on the data (accuracy with only ties, a correlation of a constant) is None, so
the metrics stay valid JSON. `rmserve.training.evaluate` applies these to a bundle's scores (and to
bootstrap resamples of them); training counts its logged accuracy with the same `pair_credit`.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

TIE = 0.5
CALIBRATION_BINS = 10
HISTOGRAM_BINS = 20
PERCENTILES = (1, 5, 25, 50, 75, 95, 99)
TEMPERATURE_BOUNDS = (1e-2, 1e2)


def checked_labels(labels: np.ndarray | None, n: int) -> np.ndarray:
    if labels is None:
        return np.ones(n)
    labels = np.asarray(labels, dtype=np.float64)
    if labels.shape != (n,):
        raise ValueError(f"labels: expected {n} values, got shape {labels.shape}")
    bad = np.flatnonzero(~((labels >= 0.0) & (labels <= 1.0)))
    if bad.size:
        raise ValueError(f"labels[{bad[0]}] = {labels[bad[0]]!r}: a label is P(chosen ≻ rejected), in [0, 1]")
    return labels


def sigmoid(z: np.ndarray) -> np.ndarray:
    e = np.exp(-np.abs(z))
    return np.where(z >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def soft_log_loss(delta: np.ndarray, labels: np.ndarray | None = None, temperature: float = 1.0) -> float:
    """mean −[p log σ(Δ/T) + (1−p) log σ(−Δ/T)]; with hard labels, the Bradley–Terry loss."""
    delta = np.asarray(delta, dtype=np.float64)
    p = checked_labels(labels, len(delta))
    z = delta / temperature
    return float(np.mean(p * np.logaddexp(0.0, -z) + (1.0 - p) * np.logaddexp(0.0, z)))


def pair_credit(delta: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per decided pair: 1 if the preferred response scores higher, ½ if both score the same, else 0."""
    oriented = np.where(labels > TIE, delta, -delta)
    return (oriented > 0) + 0.5 * (oriented == 0)


def tie_aware_accuracy(delta: np.ndarray, labels: np.ndarray | None = None) -> tuple[float | None, int]:
    """(accuracy over pairs whose label is not a tie, number of ties). The preferred response is chosen
    when label > ½ and rejected when label < ½; a pair the model scores exactly equal counts half."""
    delta = np.asarray(delta, dtype=np.float64)
    p = checked_labels(labels, len(delta))
    decided = p != TIE
    ties = int(np.sum(~decided))
    if not decided.any():
        return None, ties
    return float(np.mean(pair_credit(delta[decided], p[decided]))), ties


def pair_metrics(chosen: np.ndarray, rejected: np.ndarray, labels: np.ndarray | None = None) -> dict[str, Any]:
    """The headline figures: pairs, ties, tie-aware accuracy, log-loss at T = 1, mean margin."""
    margin = np.asarray(chosen, dtype=np.float64) - np.asarray(rejected, dtype=np.float64)
    accuracy, ties = tie_aware_accuracy(margin, labels)
    return {
        "pairs": int(len(margin)),
        "ties": ties,
        "accuracy": accuracy,
        "loss": soft_log_loss(margin, labels),
        "mean_margin": float(np.mean(margin)),
    }


def average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks; equal values share the mean of their ranks."""
    x = np.asarray(x, dtype=np.float64)
    order = np.argsort(x, kind="mergesort")
    ordered = x[order]
    starts = np.r_[0, np.flatnonzero(ordered[1:] != ordered[:-1]) + 1]
    ends = np.r_[starts[1:], len(x)]
    ranks = np.empty(len(x))
    ranks[order] = np.repeat((starts + ends + 1) / 2.0, ends - starts)
    return ranks


def auc(preferred: np.ndarray, other: np.ndarray) -> float | None:
    """Unpaired ROC AUC (Mann–Whitney U / (n·m)): the probability that the reward of a preferred response
    drawn from anywhere in the set exceeds that of a dispreferred response drawn from anywhere in the set,
    equal rewards counting half. Unlike pairwise accuracy it ignores which responses share a prompt, so it
    asks whether the reward scale is absolute: 1 = every preferred response outscores every other one."""
    n, m = len(preferred), len(other)
    if n == 0 or m == 0:
        return None
    ranks = average_ranks(np.concatenate([preferred, other]))
    u = ranks[:n].sum() - n * (n + 1) / 2.0
    return float(u / (n * m))


def pair_auc(chosen: np.ndarray, rejected: np.ndarray, labels: np.ndarray | None = None) -> float | None:
    """AUC of the preferred side vs the dispreferred side of each decided (non-tie) pair."""
    chosen = np.asarray(chosen, dtype=np.float64)
    rejected = np.asarray(rejected, dtype=np.float64)
    p = checked_labels(labels, len(chosen))
    decided = p != TIE
    flip = p[decided] < TIE
    c, r = chosen[decided], rejected[decided]
    return auc(np.where(flip, r, c), np.where(flip, c, r))


def reliability(delta: np.ndarray, labels: np.ndarray | None = None, temperature: float = 1.0,
                bins: int = CALIBRATION_BINS) -> list[dict[str, Any]]:
    """Equal-width bins of predicted P = σ(Δ/T): count, mean prediction, mean label. Each pair counts in both
    orientations, (σ(Δ/T), p) and (σ(−Δ/T), 1 − p), so the result does not depend on which side is 'chosen'."""
    delta = np.asarray(delta, dtype=np.float64)
    p = checked_labels(labels, len(delta))
    q = sigmoid(delta / temperature)
    predicted, observed = np.concatenate([q, 1.0 - q]), np.concatenate([p, 1.0 - p])
    index = np.clip(np.floor(predicted * bins).astype(np.int64), 0, bins - 1)
    out = []
    for b in range(bins):
        inside = index == b
        count = int(inside.sum())
        out.append({
            "lo": b / bins, "hi": (b + 1) / bins, "count": count,
            "predicted": float(predicted[inside].mean()) if count else None,
            "observed": float(observed[inside].mean()) if count else None,
        })
    return out


def expected_calibration_error(delta: np.ndarray, labels: np.ndarray | None = None, temperature: float = 1.0,
                               bins: int = CALIBRATION_BINS) -> float:
    """Σ_bins (count / total) · |mean label − mean prediction| over the symmetrized `reliability` bins."""
    table = reliability(delta, labels, temperature, bins)
    total = sum(b["count"] for b in table)
    return float(sum(b["count"] / total * abs(b["observed"] - b["predicted"]) for b in table if b["count"]))


def fit_temperature(delta: np.ndarray, labels: np.ndarray | None = None,
                    bounds: tuple[float, float] = TEMPERATURE_BOUNDS) -> float:
    """The T in `bounds` minimizing the soft-label log-loss of σ(Δ/T): a grid over log T, then golden-section
    search around the best grid point. The loss is convex in 1/T, hence unimodal in log T, so this finds the
    minimum; it is deterministic. Rewards that never differ give no information: T = 1."""
    delta = np.asarray(delta, dtype=np.float64)
    p = checked_labels(labels, len(delta))
    if not np.any(delta != 0):
        return 1.0

    def loss(log_t: float) -> float:
        return soft_log_loss(delta, p, math.exp(log_t))

    grid = np.linspace(math.log(bounds[0]), math.log(bounds[1]), 41)
    values = [loss(g) for g in grid]
    i = int(np.argmin(values))
    a, b = grid[max(i - 1, 0)], grid[min(i + 1, len(grid) - 1)]
    best, best_value = float(grid[i]), values[i]
    ratio = (math.sqrt(5.0) - 1.0) / 2.0
    c, d = b - ratio * (b - a), a + ratio * (b - a)
    fc, fd = loss(c), loss(d)
    for _ in range(60):
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - ratio * (b - a)
            fc = loss(c)
        else:
            a, c, fc = c, d, fd
            d = a + ratio * (b - a)
            fd = loss(d)
    for x, fx in ((c, fc), (d, fd)):
        if fx < best_value:
            best, best_value = x, fx
    return float(math.exp(best))


def pearson(x: np.ndarray, y: np.ndarray) -> float | None:
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    x, y = x - x.mean(), y - y.mean()
    denominator = math.sqrt(float(np.sum(x * x) * np.sum(y * y)))
    return float(np.sum(x * y) / denominator) if denominator > 0 else None


def spearman(x: np.ndarray, y: np.ndarray) -> float | None:
    """Pearson correlation of average ranks (the usual treatment of tied values)."""
    return pearson(average_ranks(x), average_ranks(y))


def distribution(x: np.ndarray) -> dict[str, float]:
    x = np.asarray(x, dtype=np.float64)
    stats = {"mean": float(x.mean()), "std": float(x.std()), "min": float(x.min()), "max": float(x.max())}
    stats.update({f"p{q}": float(v) for q, v in zip(PERCENTILES, np.percentile(x, PERCENTILES))})
    return stats


def reward_distribution(chosen: np.ndarray, rejected: np.ndarray, bins: int = HISTOGRAM_BINS) -> dict[str, Any]:
    """Statistics of chosen and rejected rewards, and histogram counts of both over the same edges."""
    chosen, rejected = np.asarray(chosen, dtype=np.float64), np.asarray(rejected, dtype=np.float64)
    edges = np.histogram_bin_edges(np.concatenate([chosen, rejected]), bins=bins)
    return {
        "chosen": distribution(chosen), "rejected": distribution(rejected),
        "histogram": {"edges": edges.tolist(), "chosen": np.histogram(chosen, edges)[0].tolist(),
                      "rejected": np.histogram(rejected, edges)[0].tolist()},
    }
