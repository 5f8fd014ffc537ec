"""Evaluate a bundle on preference pairs with the serving engine (ONNX Runtime), in numpy.

What is measured is exactly what the service computes: same bundle, same input formatting, same engine.
This module owns the evaluation metrics (tie-aware accuracy, soft-label log-loss, AUC, calibration error,
length-bias diagnostics, reward distribution) and the calibration temperature fit; `rmserve.training.report` draws
them. Every pair carries `label` = P(chosen ≻ rejected): 1.0 for a plain pair, 0.5 for a tie, soft in
between. A metric that is undefined on the data (accuracy with only ties, a correlation of a constant)
is None, so the metrics stay valid JSON.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rmserve.service.core.bundle import Calibration, load_bundle
from rmserve.service.core.engine import OnnxRewardModel
from rmserve.service.core.inputs import InputEncoder
from rmserve.training.data import load_pairs, shipped_data
from rmserve.training.ratings import RatingOptions
from rmserve.training.records import PreferencePair

TIE = 0.5
CALIBRATION_BINS = 10
LENGTH_BUCKETS = 4
HISTOGRAM_BINS = 20
PERCENTILES = (1, 5, 25, 50, 75, 95, 99)
TEMPERATURE_BOUNDS = (1e-2, 1e2)


@dataclass(frozen=True)
class ScoredPairs:
    """Rewards, labels and response lengths of a set of pairs, index-aligned."""

    chosen: np.ndarray
    rejected: np.ndarray
    labels: np.ndarray
    chosen_tokens: np.ndarray
    rejected_tokens: np.ndarray
    chosen_chars: np.ndarray
    rejected_chars: np.ndarray

    @property
    def delta(self) -> np.ndarray:
        return self.chosen.astype(np.float64) - self.rejected.astype(np.float64)


def engine_scores(engine: OnnxRewardModel, encoder: InputEncoder, rows: list, batch_size: int = 16) -> np.ndarray:
    """Rewards for (prompt, response) rows, in sorted-by-length batches."""
    encoded = encoder.encode(rows)
    order = np.argsort([len(e.ids) for e in encoded], kind="stable")
    scores = np.zeros(len(encoded), dtype=np.float32)
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        scores[chunk] = engine(encoder.pad([encoded[i] for i in chunk]))
    return scores


def score_pairs(engine: OnnxRewardModel, encoder: InputEncoder, pairs: list[PreferencePair]) -> tuple[np.ndarray, np.ndarray]:
    chosen = engine_scores(engine, encoder, [(p.prompt, p.chosen) for p in pairs])
    rejected = engine_scores(engine, encoder, [(p.prompt, p.rejected) for p in pairs])
    return chosen, rejected


def response_tokens(encoder: InputEncoder, responses: list[str]) -> np.ndarray:
    """Tokens of each response alone, before truncation: the length the model is biased by, not the cut one."""
    encodings = encoder.tokenizer.encode_batch(responses, add_special_tokens=False)
    return np.array([len(e.ids) for e in encodings], dtype=np.int64)


def scored_pairs(engine: OnnxRewardModel, encoder: InputEncoder, pairs: list[PreferencePair]) -> ScoredPairs:
    chosen, rejected = score_pairs(engine, encoder, pairs)
    return ScoredPairs(
        chosen=chosen, rejected=rejected, labels=labels_of(pairs),
        chosen_tokens=response_tokens(encoder, [p.chosen for p in pairs]),
        rejected_tokens=response_tokens(encoder, [p.rejected for p in pairs]),
        chosen_chars=np.array([len(p.chosen) for p in pairs], dtype=np.int64),
        rejected_chars=np.array([len(p.rejected) for p in pairs], dtype=np.int64),
    )


def labels_of(pairs: list[PreferencePair]) -> np.ndarray:
    return np.array([p.label for p in pairs], dtype=np.float64)


def _labels(labels: np.ndarray | None, n: int) -> np.ndarray:
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
    p = _labels(labels, len(delta))
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
    p = _labels(labels, len(delta))
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
    p = _labels(labels, len(chosen))
    decided = p != TIE
    flip = p[decided] < TIE
    c, r = chosen[decided], rejected[decided]
    return auc(np.where(flip, r, c), np.where(flip, c, r))


def reliability(delta: np.ndarray, labels: np.ndarray | None = None, temperature: float = 1.0,
                bins: int = CALIBRATION_BINS) -> list[dict[str, Any]]:
    """Equal-width bins of predicted P = σ(Δ/T): count, mean prediction, mean label. Each pair counts in both
    orientations, (σ(Δ/T), p) and (σ(−Δ/T), 1 − p), so the result does not depend on which side is 'chosen'."""
    delta = np.asarray(delta, dtype=np.float64)
    p = _labels(labels, len(delta))
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
    p = _labels(labels, len(delta))
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


def fit_calibration(delta: np.ndarray, labels: np.ndarray | None, source: str) -> Calibration:
    """The bundle's calibration fitted on `source` (the dev set), saying what it was fitted on and what it gained."""
    temperature = fit_temperature(delta, labels)
    before, after = soft_log_loss(delta, labels), soft_log_loss(delta, labels, temperature)
    return Calibration(temperature=temperature,
                       fitted_on=f"{source}: {len(delta)} pairs, log-loss {before:.4f} at T=1, {after:.4f} at T={temperature:.4g}")


def pearson(x: np.ndarray, y: np.ndarray) -> float | None:
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    x, y = x - x.mean(), y - y.mean()
    denominator = math.sqrt(float(np.sum(x * x) * np.sum(y * y)))
    return float(np.sum(x * y) / denominator) if denominator > 0 else None


def spearman(x: np.ndarray, y: np.ndarray) -> float | None:
    """Pearson correlation of average ranks (the usual treatment of tied values)."""
    return pearson(average_ranks(x), average_ranks(y))


def length_metrics(scored: ScoredPairs, buckets: int = LENGTH_BUCKETS) -> dict[str, Any]:
    """Length bias: accuracy by quantile bucket of a pair's total response tokens; accuracy when the preferred
    response is the longer / shorter one; how often 'the longer one wins' would be right; correlation of each
    response's reward with its length."""
    delta, p = scored.delta, _labels(scored.labels, len(scored.chosen))
    total = scored.chosen_tokens + scored.rejected_tokens
    decided = p != TIE
    interior = np.unique(np.quantile(total, np.linspace(0.0, 1.0, buckets + 1)[1:-1]))
    bucket = np.searchsorted(interior, total, side="left")
    by_bucket = []
    for b in range(len(interior) + 1):
        inside = bucket == b
        if not inside.any():
            continue
        rows = inside & decided
        by_bucket.append({
            "min_tokens": int(total[inside].min()), "max_tokens": int(total[inside].max()),
            "pairs": int(inside.sum()), "ties": int(np.sum(inside & ~decided)),
            "accuracy": float(np.mean(pair_credit(delta[rows], p[rows]))) if rows.any() else None,
        })
    preferred_len = np.where(p > TIE, scored.chosen_tokens, scored.rejected_tokens)
    other_len = np.where(p > TIE, scored.rejected_tokens, scored.chosen_tokens)
    split = {}
    for name, rows in (("preferred_longer", preferred_len > other_len), ("preferred_shorter", preferred_len < other_len),
                       ("same_length", preferred_len == other_len)):
        rows = rows & decided
        split[name] = {"pairs": int(rows.sum()),
                       "accuracy": float(np.mean(pair_credit(delta[rows], p[rows]))) if rows.any() else None}
    longer_wins = pair_credit((preferred_len - other_len)[decided].astype(np.float64), np.ones(int(decided.sum())))
    rewards = np.concatenate([scored.chosen, scored.rejected])
    correlation = {
        unit: {"pearson": pearson(rewards, lengths), "spearman": spearman(rewards, lengths)}
        for unit, lengths in (("tokens", np.concatenate([scored.chosen_tokens, scored.rejected_tokens])),
                              ("chars", np.concatenate([scored.chosen_chars, scored.rejected_chars])))
    }
    return {
        "buckets": by_bucket, **split,
        "longer_wins_accuracy": float(np.mean(longer_wins)) if longer_wins.size else None,
        "correlation": correlation,
    }


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


def evaluate_scores(scored: ScoredPairs, temperature: float = 1.0) -> dict[str, Any]:
    """Every metric of scored pairs; `temperature` is the bundle's calibration T."""
    delta, labels = scored.delta, scored.labels
    return {
        **pair_metrics(scored.chosen, scored.rejected, labels),
        "auc": pair_auc(scored.chosen, scored.rejected, labels),
        "temperature": float(temperature),
        "log_loss": soft_log_loss(delta, labels, temperature),
        "ece": expected_calibration_error(delta, labels, temperature),
        "calibration": {
            "ece_at_t1": expected_calibration_error(delta, labels, 1.0),
            "best_temperature_here": fit_temperature(delta, labels),
            "bins": reliability(delta, labels, temperature),
        },
        "length": length_metrics(scored),
        "reward": reward_distribution(scored.chosen, scored.rejected),
    }


def run_evaluation(bundle_dir: str | Path, data: str | Path | None = None, limit: int | None = None,
                   skip_bad_rows: bool = True, device: str = "auto",
                   ratings: RatingOptions | None = None) -> tuple[dict[str, Any], ScoredPairs]:
    """Score the pairs of `data` (default: the shipped dev split) with the bundle: (metrics, scored pairs).
    A ratings file becomes pairs with `ratings`."""
    bundle = load_bundle(bundle_dir)
    path = Path(data) if data else shipped_data("dev")
    loaded = load_pairs(path, limit, skip_bad_rows, ratings)
    engine = OnnxRewardModel(str(bundle.model_path), device=device)  # type: ignore[arg-type]
    scored = scored_pairs(engine, bundle.encoder(), loaded.pairs)
    metrics = evaluate_scores(scored, bundle.manifest.calibration.temperature)
    return {"bundle_id": bundle.manifest.bundle_id, "data": str(path), "skipped_rows": len(loaded.skipped),
            **metrics}, scored


def evaluate_bundle(bundle_dir: str | Path, data: str | Path | None = None, limit: int | None = None,
                    skip_bad_rows: bool = True, device: str = "auto") -> dict[str, Any]:
    return run_evaluation(bundle_dir, data, limit, skip_bad_rows, device)[0]


def _f(x: float | None, digits: int = 4) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def format_summary(metrics: dict[str, Any]) -> str:
    """The metrics as a few readable lines (what `rmserve eval` prints without --json)."""
    length, calibration, reward = metrics["length"], metrics["calibration"], metrics["reward"]
    skipped = metrics.get("skipped_rows", 0)
    lines = [
        f"bundle {metrics['bundle_id']} on {Path(metrics['data']).name}: {metrics['pairs']} pairs "
        f"({metrics['ties']} ties), accuracy {_f(metrics['accuracy'])}, loss {_f(metrics['loss'])}, "
        f"mean margin {_f(metrics['mean_margin'])}"
        + (f"; {skipped} bad row{'s' if skipped > 1 else ''} skipped" if skipped else ""),
        f"AUC {_f(metrics['auc'])} (preferred vs other rewards across the set); calibration at T = "
        f"{metrics['temperature']:.4g}: log-loss {_f(metrics['log_loss'])}, ECE {_f(metrics['ece'])}"
        + ("" if metrics["temperature"] == 1.0 else f" (ECE at T = 1: {_f(calibration['ece_at_t1'])})")
        + f"; best T on this data {calibration['best_temperature_here']:.4g}",
        "accuracy by pair length (response tokens): " + " | ".join(
            f"{b['min_tokens']}-{b['max_tokens']}: {_f(b['accuracy'], 3)} ({b['pairs']})" for b in length["buckets"]),
        f"preferred response longer: accuracy {_f(length['preferred_longer']['accuracy'], 3)} on "
        f"{length['preferred_longer']['pairs']} pairs; shorter: {_f(length['preferred_shorter']['accuracy'], 3)} on "
        f"{length['preferred_shorter']['pairs']}; same length: {length['same_length']['pairs']}; "
        f"'the longer wins' would score {_f(length['longer_wins_accuracy'], 3)}",
        "reward vs length: " + "; ".join(
            f"Pearson {_f(c['pearson'], 3)}, Spearman {_f(c['spearman'], 3)} ({unit})"
            for unit, c in length["correlation"].items()),
        "rewards: " + "; ".join(
            f"{side} mean {_f(reward[side]['mean'])} sd {_f(reward[side]['std'])} "
            f"[p5 {_f(reward[side]['p5'])}, p50 {_f(reward[side]['p50'])}, p95 {_f(reward[side]['p95'])}]"
            for side in ("chosen", "rejected")),
    ]
    return "\n".join(lines)
