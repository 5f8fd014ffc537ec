"""Bootstrap intervals resampled by prompt: checked against a bootstrap worked out here step by step, in plain
Python, from the procedure the module documents (seeded draws of prompts, every pair of a drawn prompt,
linear-interpolated percentiles)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from rmserve.training import bootstrap
from rmserve.training.evaluate import ScoredPairs, add_intervals, evaluate_scores
from rmserve.training.metrics import pair_auc

# Six prompts, nine pairs: prompt 0 has three pairs (a ranking), prompt 3 two, one pair is a tie (label ½),
# one scores exactly equal (counts half), one has a soft label preferring the "rejected" side.
PROMPTS = [0, 0, 0, 1, 2, 3, 3, 4, 5]
CHOSEN = [2.0, 1.0, 0.5, 0.3, 1.0, 0.2, 0.9, 0.4, 0.0]
REJECTED = [1.0, 1.5, 0.5, 0.1, 2.0, 0.7, 0.1, 0.4, 1.0]
LABELS = [1.0, 1.0, 1.0, 1.0, 1.0, 0.2, 1.0, 0.5, 1.0]
CHOSEN_TOKENS = [30, 10, 20, 5, 50, 8, 40, 12, 3]
REJECTED_TOKENS = [10, 30, 20, 9, 5, 8, 20, 12, 30]
SEED, RESAMPLES = 7, 200


def literal_pairs() -> ScoredPairs:
    return ScoredPairs(
        chosen=np.array(CHOSEN, dtype=np.float32), rejected=np.array(REJECTED, dtype=np.float32),
        labels=np.array(LABELS), chosen_tokens=np.array(CHOSEN_TOKENS), rejected_tokens=np.array(REJECTED_TOKENS),
        chosen_chars=4 * np.array(CHOSEN_TOKENS), rejected_chars=4 * np.array(REJECTED_TOKENS),
        prompts=np.array(PROMPTS),
    )


def credit(i: int) -> float | None:
    """Pair i's share of a right answer, in plain Python: None for a tie label."""
    if LABELS[i] == 0.5:
        return None
    margin = CHOSEN[i] - REJECTED[i] if LABELS[i] > 0.5 else REJECTED[i] - CHOSEN[i]
    return 1.0 if margin > 0 else 0.5 if margin == 0 else 0.0


def accuracy_of(pairs: list[int]) -> float | None:
    credits = [c for c in (credit(i) for i in pairs) if c is not None]
    return sum(credits) / len(credits) if credits else None


def percentile(values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default method), by hand."""
    ordered = sorted(values)
    position = q / 100 * (len(ordered) - 1)
    below = math.floor(position)
    above = min(below + 1, len(ordered) - 1)
    return ordered[below] + (ordered[above] - ordered[below]) * (position - below)


def hand_bootstrap(statistic, resamples: int = RESAMPLES, seed: int = SEED) -> tuple[float, float, int]:
    """(lo, hi, undefined resamples): each resample draws as many prompts as there are, with replacement,
    and takes each drawn prompt's pairs once per draw."""
    members = {p: [i for i, q in enumerate(PROMPTS) if q == p] for p in sorted(set(PROMPTS))}
    rng = np.random.default_rng(seed)
    values, undefined = [], 0
    for _ in range(resamples):
        drawn = rng.integers(0, len(members), size=len(members))
        pairs = [i for p in drawn for i in members[int(p)]]
        value = statistic(pairs)
        if value is None:
            undefined += 1
        else:
            values.append(value)
    return percentile(values, 2.5), percentile(values, 97.5), undefined


def test_accuracy_interval_matches_a_hand_computed_bootstrap():
    metrics = evaluate_scores(literal_pairs(), resamples=RESAMPLES, seed=SEED)
    lo, hi, _ = hand_bootstrap(accuracy_of)
    assert metrics["accuracy_ci95"] == pytest.approx([lo, hi], abs=1e-12)
    assert lo < metrics["accuracy"] < hi  # 4.5 right of 8 decided pairs, and the resamples spread around it
    assert metrics["accuracy"] == accuracy_of(list(range(len(PROMPTS)))) == 4.5 / 8
    assert metrics["bootstrap"] == {"level": 0.95, "method": "percentile", "unit": "prompt", "resamples": RESAMPLES,
                                    "seed": SEED, "prompts": 6, "pairs": 9, "undefined": metrics["bootstrap"]["undefined"]}


def test_subset_interval_keeps_the_subset_fixed_and_counts_undefined_resamples():
    # "preferred response longer": decided pairs where the preferred side has more tokens (pair 5's soft
    # label prefers the rejected side, 8 tokens each: same length)
    longer = {i for i in range(len(PROMPTS)) if LABELS[i] != 0.5 and (
        (CHOSEN_TOKENS[i] - REJECTED_TOKENS[i]) * (1 if LABELS[i] > 0.5 else -1) > 0)}
    assert longer == {0, 4, 6}  # pair 2 has 20 tokens on each side
    metrics = evaluate_scores(literal_pairs(), resamples=RESAMPLES, seed=SEED)
    lo, hi, undefined = hand_bootstrap(lambda pairs: accuracy_of([i for i in pairs if i in longer]))
    assert metrics["length"]["preferred_longer"]["accuracy_ci95"] == pytest.approx([lo, hi], abs=1e-12)
    assert undefined > 0  # some resamples draw none of prompts 0, 2, 3
    assert metrics["bootstrap"]["undefined"]["length.preferred_longer.accuracy"] == undefined


def test_auc_interval_resamples_the_same_prompts():
    scored = literal_pairs()
    metrics = evaluate_scores(scored, resamples=RESAMPLES, seed=SEED)
    lo, hi, _ = hand_bootstrap(lambda pairs: pair_auc(scored.chosen[pairs], scored.rejected[pairs], scored.labels[pairs]))
    assert metrics["auc_ci95"] == pytest.approx([lo, hi], abs=1e-12)


def test_every_accuracy_auc_and_ece_figure_has_an_interval():
    metrics = json.loads(json.dumps(evaluate_scores(literal_pairs(), temperature=0.5, resamples=50)))
    figures = []

    def walk(node, path):
        if isinstance(node, dict):
            for key, value in node.items():
                if any(word in key for word in ("accuracy", "auc", "ece", "loss")) and not key.endswith("_ci95") \
                        and isinstance(value, float):
                    figures.append(".".join(path + [key]))
                    interval = node[f"{key}_ci95"]
                    assert len(interval) == 2 and interval[0] <= interval[1], (path, key, interval)
                walk(value, path + [key])
        elif isinstance(node, list):
            for i, item in enumerate(node):
                walk(item, path + [str(i)])

    walk(metrics, [])
    assert {"accuracy", "auc", "ece", "loss", "log_loss", "calibration.ece_at_t1", "length.longer_wins_accuracy",
            "length.preferred_longer.accuracy", "length.preferred_shorter.accuracy",
            "length.same_length.accuracy"} <= set(figures)
    assert sum(f.startswith("length.buckets.") for f in figures) == len(metrics["length"]["buckets"]) >= 2


def test_pairs_of_one_prompt_move_together():
    scored = literal_pairs()
    one_prompt = ScoredPairs(**{**scored.__dict__, "prompts": np.zeros(len(PROMPTS), dtype=np.int64)})
    metrics = evaluate_scores(one_prompt, resamples=50)
    assert metrics["accuracy_ci95"] == [metrics["accuracy"], metrics["accuracy"]]  # every resample is the whole set
    separate = evaluate_scores(ScoredPairs(**{**scored.__dict__, "prompts": None}), resamples=50)
    assert separate["bootstrap"]["prompts"] == len(PROMPTS)
    assert separate["accuracy_ci95"][0] < separate["accuracy_ci95"][1]


def test_no_resamples_no_intervals_and_bad_arguments():
    metrics = evaluate_scores(literal_pairs(), resamples=0)
    assert "bootstrap" not in metrics and "accuracy_ci95" not in metrics
    assert add_intervals(dict(metrics), literal_pairs(), resamples=0) == metrics
    with pytest.raises(ValueError, match="level"):
        bootstrap.bootstrap({"x": lambda i: 0.0}, np.zeros(3, dtype=np.int64), 10, level=1.5)


def test_resample_takes_every_pair_of_each_drawn_prompt_once_per_draw():
    groups = np.array([0, 0, 1, 2, 2, 2])

    class Draws:  # a generator that always draws prompts 2, 2, 0
        @staticmethod
        def integers(low, high, size):
            assert (low, high, size) == (0, 3, 3)
            return np.array([2, 2, 0])

    assert bootstrap.resample(groups, Draws()).tolist() == [0, 1, 3, 3, 4, 4, 5, 5]
    assert bootstrap.group_ids(["b", "a", "b", "c"]).tolist() == [0, 1, 0, 2]
