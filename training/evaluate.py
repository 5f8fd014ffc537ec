"""Evaluate a bundle on preference pairs with the serving engine (ONNX Runtime), in numpy.

What is measured is exactly what the service computes: same bundle, same input formatting, same engine.
This module owns what an evaluation is made of: scoring pairs with the engine (`ScoredPairs`, with each
pair's prompt), the length-bias lines and the subsets they are computed on, which figures get a 95 %
bootstrap interval resampled by prompt (`rmserve.training.bootstrap`), the data the calibration
temperature was fitted on, and the temperature fit export stores. The figures themselves are the numpy
functions of `rmserve.training.metrics`; `format_summary` prints them and
`rmserve.training.report` draws them.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rmserve.service.core.bundle import Calibration, load_bundle
from rmserve.service.core.engine import OnnxRewardModel
from rmserve.service.core.inputs import InputEncoder
from rmserve.training import bootstrap
from rmserve.training.data import load_pairs, load_preferences, shipped_data
from rmserve.training.metrics import (
    TEMPERATURE_BOUNDS,
    TIE,
    checked_labels,
    expected_calibration_error,
    fit_temperature,
    pair_auc,
    pair_credit,
    pair_metrics,
    pearson,
    reliability,
    reward_distribution,
    soft_log_loss,
    spearman,
    tie_aware_accuracy,
)
from rmserve.training.ratings import RatingOptions
from rmserve.training.records import PreferencePair
from rmserve.training.splits import hold_out_calibration, prompt_key

LENGTH_BUCKETS = 4


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
    prompts: np.ndarray | None = None  # each pair's prompt id (0-based); None: every pair its own prompt

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
        prompts=bootstrap.group_ids([prompt_key(p.prompt) for p in pairs]),
    )


def labels_of(pairs: list[PreferencePair]) -> np.ndarray:
    return np.array([p.label for p in pairs], dtype=np.float64)


def fit_calibration(delta: np.ndarray, labels: np.ndarray | None, source: str) -> Calibration:
    """A calibration fitted on `source` (named by its file first), saying what it was fitted on and what it gained."""
    temperature = fit_temperature(delta, labels)
    low, high = TEMPERATURE_BOUNDS
    if temperature <= low * (1 + 1e-9) or temperature >= high * (1 - 1e-9):
        why = ("the rewards order every pair as its label does, so no finite T is best: P(a≻b) will be close to 0 "
               "or 1" if temperature <= low * (1 + 1e-9) else "the rewards tell these pairs' preferences apart no "
               "better than chance: P(a≻b) will be close to 0.5")
        print(f"warning: the calibration temperature stopped at its bound, T={temperature:g}, on {source}: {why}",
              file=sys.stderr)
    before, after = soft_log_loss(delta, labels), soft_log_loss(delta, labels, temperature)
    return Calibration(temperature=temperature,
                       fitted_on=f"{source}: {len(delta)} pairs, log-loss {before:.4f} at T=1, {after:.4f} at T={temperature:.4g}")


def calibration_pairs(training: dict[str, Any]) -> tuple[list[PreferencePair], str] | None:
    """The pairs of the calibration split a checkpoint's training held out (`training` = its recorded
    options), and their description; None when it held none out."""
    fraction = float(training.get("calibration_split") or 0.0)
    if fraction <= 0 or not training.get("train_data"):
        return None
    path = Path(training["train_data"])
    loaded = load_preferences(path, training.get("limit_train"), True, RatingOptions.from_checkpoint(training))
    pairs = [pair for group in hold_out_calibration(loaded, fraction)[1] for pair in group.pairs()]
    return (pairs, f"{path.name}, calibration split ({fraction:g} of its prompts by hash, held out from "
                   "training)") if pairs else None


def bundle_calibration(engine: OnnxRewardModel, encoder: InputEncoder, training: dict[str, Any],
                       dev_delta: np.ndarray, dev_labels: np.ndarray, dev_name: str) -> Calibration:
    """The temperature export stores: fitted on the checkpoint's calibration split, which neither training
    nor the dev report sees; a checkpoint without one (--calibration-split 0, or trained before it
    existed) gets it fitted on the dev pairs, and `fitted_on` says so (then `rmserve eval` on them calls
    its ECE in-sample)."""
    held_out = calibration_pairs(training)
    if held_out is None:
        return fit_calibration(dev_delta, dev_labels, dev_name)
    pairs, source = held_out
    chosen, rejected = score_pairs(engine, encoder, pairs)
    return fit_calibration(chosen.astype(np.float64) - rejected, labels_of(pairs), source)


@dataclass(frozen=True)
class LengthSubsets:
    """The pairs each length line of the evaluation is computed on, fixed on the evaluated data."""

    buckets: list[np.ndarray]  # quantile buckets of the pair's total response tokens
    sides: dict[str, np.ndarray]  # preferred_longer / preferred_shorter / same_length, decided pairs only
    length_gap: np.ndarray  # preferred response's tokens − the other's
    decided: np.ndarray


def length_subsets(scored: ScoredPairs, buckets: int = LENGTH_BUCKETS) -> LengthSubsets:
    p = checked_labels(scored.labels, len(scored.chosen))
    total = scored.chosen_tokens + scored.rejected_tokens
    decided = p != TIE
    interior = np.unique(np.quantile(total, np.linspace(0.0, 1.0, buckets + 1)[1:-1]))
    bucket = np.searchsorted(interior, total, side="left")
    masks = [bucket == b for b in range(len(interior) + 1)]
    gap = (np.where(p > TIE, scored.chosen_tokens, scored.rejected_tokens)
           - np.where(p > TIE, scored.rejected_tokens, scored.chosen_tokens))
    sides = {"preferred_longer": (gap > 0) & decided, "preferred_shorter": (gap < 0) & decided,
             "same_length": (gap == 0) & decided}
    return LengthSubsets([m for m in masks if m.any()], sides, gap, decided)


def subset_accuracy(delta: np.ndarray, labels: np.ndarray, rows: np.ndarray) -> float | None:
    return tie_aware_accuracy(delta[rows], labels[rows])[0]


def longer_wins_accuracy(subsets: LengthSubsets, rows: np.ndarray) -> float | None:
    """How often 'the longer response is preferred' is right on the decided pairs of `rows`."""
    gap = subsets.length_gap[rows][subsets.decided[rows]].astype(np.float64)
    return float(np.mean(pair_credit(gap, np.ones(gap.size)))) if gap.size else None


def length_metrics(scored: ScoredPairs, buckets: int = LENGTH_BUCKETS) -> dict[str, Any]:
    """Length bias: accuracy by quantile bucket of a pair's total response tokens; accuracy when the preferred
    response is the longer / shorter one; how often 'the longer one wins' would be right; correlation of each
    response's reward with its length."""
    delta, p = scored.delta, checked_labels(scored.labels, len(scored.chosen))
    total = scored.chosen_tokens + scored.rejected_tokens
    subsets = length_subsets(scored, buckets)
    every = np.arange(len(delta))
    by_bucket = [{
        "min_tokens": int(total[inside].min()), "max_tokens": int(total[inside].max()),
        "pairs": int(inside.sum()), "ties": int(np.sum(inside & ~subsets.decided)),
        "accuracy": subset_accuracy(delta, p, inside),
    } for inside in subsets.buckets]
    split = {name: {"pairs": int(rows.sum()), "accuracy": subset_accuracy(delta, p, rows)}
             for name, rows in subsets.sides.items()}
    rewards = np.concatenate([scored.chosen, scored.rejected])
    correlation = {
        unit: {"pearson": pearson(rewards, lengths), "spearman": spearman(rewards, lengths)}
        for unit, lengths in (("tokens", np.concatenate([scored.chosen_tokens, scored.rejected_tokens])),
                              ("chars", np.concatenate([scored.chosen_chars, scored.rejected_chars])))
    }
    return {"buckets": by_bucket, **split, "longer_wins_accuracy": longer_wins_accuracy(subsets, every),
            "correlation": correlation}


def interval_statistics(scored: ScoredPairs, temperature: float) -> dict[tuple, bootstrap.Statistic]:
    """Every accuracy, AUC, ECE and log-loss figure of `evaluate_scores`, by its path in the metrics, as a
    function of the resampled pairs' indices (length lines keep the subsets fixed on the evaluated data)."""
    delta, labels, chosen, rejected = scored.delta, scored.labels, scored.chosen, scored.rejected
    subsets = length_subsets(scored)

    def within(rows: np.ndarray) -> bootstrap.Statistic:
        return lambda i: subset_accuracy(delta, labels, i[rows[i]])

    statistics: dict[tuple, bootstrap.Statistic] = {
        ("accuracy",): lambda i: tie_aware_accuracy(delta[i], labels[i])[0],
        ("loss",): lambda i: soft_log_loss(delta[i], labels[i]),
        ("log_loss",): lambda i: soft_log_loss(delta[i], labels[i], temperature),
        ("auc",): lambda i: pair_auc(chosen[i], rejected[i], labels[i]),
        ("ece",): lambda i: expected_calibration_error(delta[i], labels[i], temperature),
        ("calibration", "ece_at_t1"): lambda i: expected_calibration_error(delta[i], labels[i], 1.0),
        ("length", "longer_wins_accuracy"): lambda i: longer_wins_accuracy(subsets, i),
    }
    statistics.update({("length", "buckets", b, "accuracy"): within(rows) for b, rows in enumerate(subsets.buckets)})
    statistics.update({("length", name, "accuracy"): within(rows) for name, rows in subsets.sides.items()})
    return statistics


def add_intervals(metrics: dict[str, Any], scored: ScoredPairs, resamples: int = bootstrap.RESAMPLES,
                  seed: int = bootstrap.SEED) -> dict[str, Any]:
    """Sets `<figure>_ci95` = [lo, hi] (null where undefined) beside each figure of `interval_statistics`,
    and `bootstrap` = how the intervals were made. `resamples` 0: no intervals."""
    if resamples <= 0:
        return metrics
    groups = scored.prompts if scored.prompts is not None else np.arange(len(scored.chosen))
    statistics = interval_statistics(scored, metrics["temperature"])
    intervals = bootstrap.bootstrap({".".join(map(str, k)): f for k, f in statistics.items()}, groups, resamples, seed)
    for path in statistics:
        parent = metrics
        for step in path[:-1]:
            parent = parent[step]
        parent[f"{path[-1]}_ci95"] = intervals[".".join(map(str, path))].as_list()
    metrics["bootstrap"] = {
        "level": bootstrap.LEVEL, "method": "percentile", "unit": "prompt", "resamples": resamples, "seed": seed,
        "prompts": int(groups.max()) + 1, "pairs": int(len(groups)),
        "undefined": {name: i.undefined for name, i in intervals.items() if i.undefined},
    }
    return metrics


def evaluate_scores(scored: ScoredPairs, temperature: float = 1.0, resamples: int = bootstrap.RESAMPLES,
                    seed: int = bootstrap.SEED) -> dict[str, Any]:
    """Every metric of scored pairs, each accuracy, AUC, ECE and log-loss with its 95 % bootstrap interval
    over `resamples` resamples of the prompts; `temperature` is the bundle's calibration T."""
    delta, labels = scored.delta, scored.labels
    metrics = {
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
    return add_intervals(metrics, scored, resamples, seed)


def temperature_source(fitted_on: str, data: Path) -> dict[str, Any]:
    """What the bundle's temperature was fitted on, and whether that is the evaluated file (then the ECE at T
    is in-sample: the temperature was chosen on these pairs). `fitted_on` starts with the file's name."""
    return {"fitted_on": fitted_on, "in_sample": any(fitted_on.startswith(data.name + end) for end in ":, ")}


def run_evaluation(bundle_dir: str | Path, data: str | Path | None = None, limit: int | None = None,
                   skip_bad_rows: bool = True, device: str = "auto", ratings: RatingOptions | None = None,
                   resamples: int = bootstrap.RESAMPLES) -> tuple[dict[str, Any], ScoredPairs]:
    """Score the pairs of `data` (default: the shipped dev split) with the bundle: (metrics, scored pairs).
    A ratings file becomes pairs with `ratings`."""
    bundle = load_bundle(bundle_dir)
    path = Path(data) if data else shipped_data("dev")
    loaded = load_pairs(path, limit, skip_bad_rows, ratings)
    engine = OnnxRewardModel(str(bundle.model_path), device=device)  # type: ignore[arg-type]
    scored = scored_pairs(engine, bundle.encoder(), loaded.pairs)
    calibration = bundle.manifest.calibration
    metrics = evaluate_scores(scored, calibration.temperature, resamples)
    metrics["calibration"].update(temperature_source(calibration.fitted_on, path))
    return {"bundle_id": bundle.manifest.bundle_id, "data": str(path), "skipped_rows": len(loaded.skipped),
            **metrics}, scored


def evaluate_bundle(bundle_dir: str | Path, data: str | Path | None = None, limit: int | None = None,
                    skip_bad_rows: bool = True, device: str = "auto") -> dict[str, Any]:
    return run_evaluation(bundle_dir, data, limit, skip_bad_rows, device)[0]


def _f(x: float | None, digits: int = 4) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def _ci(figures: dict[str, Any], name: str, digits: int = 3) -> str:
    """' [lo, hi]' when the figure has an interval, else ''."""
    interval = figures.get(f"{name}_ci95")
    return f" [{interval[0]:.{digits}f}, {interval[1]:.{digits}f}]" if interval else ""


def _temperature_line(calibration: dict[str, Any]) -> list[str]:
    if "fitted_on" not in calibration:
        return []
    said = ("in-sample: the temperature was fitted on this file, so ECE and log-loss at T flatter it"
            if calibration["in_sample"] else "not on this file: ECE and log-loss at T are out-of-sample")
    return [f"temperature fitted on {calibration['fitted_on']} ({said})"]


def format_summary(metrics: dict[str, Any]) -> str:
    """The metrics as a few readable lines (what `rmserve eval` prints without --json); [lo, hi] after a
    figure is its bootstrap interval."""
    length, calibration, reward = metrics["length"], metrics["calibration"], metrics["reward"]
    skipped = metrics.get("skipped_rows", 0)
    lines = [
        f"bundle {metrics['bundle_id']} on {Path(metrics['data']).name}: {metrics['pairs']} pairs "
        f"({metrics['ties']} ties), accuracy {_f(metrics['accuracy'])}{_ci(metrics, 'accuracy')}, "
        f"loss {_f(metrics['loss'])}{_ci(metrics, 'loss')}, mean margin {_f(metrics['mean_margin'])}"
        + (f"; {skipped} bad row{'s' if skipped > 1 else ''} skipped" if skipped else ""),
        f"AUC {_f(metrics['auc'])}{_ci(metrics, 'auc')} (preferred vs other rewards across the set); calibration "
        f"at T = {metrics['temperature']:.4g}: log-loss {_f(metrics['log_loss'])}{_ci(metrics, 'log_loss')}, "
        f"ECE {_f(metrics['ece'])}{_ci(metrics, 'ece')}"
        + ("" if metrics["temperature"] == 1.0 else
           f" (ECE at T = 1: {_f(calibration['ece_at_t1'])}{_ci(calibration, 'ece_at_t1')})")
        + f"; best T on this data {calibration['best_temperature_here']:.4g}",
        *_temperature_line(calibration),
        "accuracy by pair length (response tokens): " + " | ".join(
            f"{b['min_tokens']}-{b['max_tokens']}: {_f(b['accuracy'], 3)}{_ci(b, 'accuracy', 2)} ({b['pairs']})"
            for b in length["buckets"]),
        f"preferred response longer: accuracy {_f(length['preferred_longer']['accuracy'], 3)}"
        f"{_ci(length['preferred_longer'], 'accuracy', 2)} on {length['preferred_longer']['pairs']} pairs; shorter: "
        f"{_f(length['preferred_shorter']['accuracy'], 3)}{_ci(length['preferred_shorter'], 'accuracy', 2)} on "
        f"{length['preferred_shorter']['pairs']}; same length: {length['same_length']['pairs']}; "
        f"'the longer wins' would score {_f(length['longer_wins_accuracy'], 3)}{_ci(length, 'longer_wins_accuracy', 2)}",
        "reward vs length: " + "; ".join(
            f"Pearson {_f(c['pearson'], 3)}, Spearman {_f(c['spearman'], 3)} ({unit})"
            for unit, c in length["correlation"].items()),
        "rewards: " + "; ".join(
            f"{side} mean {_f(reward[side]['mean'])} sd {_f(reward[side]['std'])} "
            f"[p5 {_f(reward[side]['p5'])}, p50 {_f(reward[side]['p50'])}, p95 {_f(reward[side]['p95'])}]"
            for side in ("chosen", "rejected")),
    ]
    if "bootstrap" in metrics:
        b = metrics["bootstrap"]
        lines.append(f"[lo, hi]: {b['level']:.0%} percentile bootstrap intervals over {b['resamples']} resamples of "
                     f"the {b['prompts']} prompts (all pairs of a drawn prompt together; seed {b['seed']})")
    return "\n".join(lines)
