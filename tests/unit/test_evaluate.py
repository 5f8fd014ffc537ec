"""Evaluation metrics and the temperature fit, each checked against values worked out by hand."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from rmserve.training.evaluate import (
    ScoredPairs,
    evaluate_scores,
    fit_calibration,
    format_summary,
    length_metrics,
    temperature_source,
)
from rmserve.training.metrics import (
    auc,
    average_ranks,
    expected_calibration_error,
    fit_temperature,
    pair_auc,
    pair_metrics,
    pearson,
    reliability,
    reward_distribution,
    sigmoid,
    soft_log_loss,
    spearman,
    tie_aware_accuracy,
)

LN3 = math.log(3.0)


def arr(*values: float) -> np.ndarray:
    return np.array(values, dtype=np.float64)


def scored(chosen, rejected, labels=None, chosen_tokens=None, rejected_tokens=None, chosen_chars=None,
           rejected_chars=None) -> ScoredPairs:
    n = len(chosen)
    ones = np.ones(n, dtype=np.int64)
    return ScoredPairs(
        chosen=np.asarray(chosen, dtype=np.float32), rejected=np.asarray(rejected, dtype=np.float32),
        labels=np.ones(n) if labels is None else np.asarray(labels, dtype=np.float64),
        chosen_tokens=ones if chosen_tokens is None else np.asarray(chosen_tokens),
        rejected_tokens=ones if rejected_tokens is None else np.asarray(rejected_tokens),
        chosen_chars=ones if chosen_chars is None else np.asarray(chosen_chars),
        rejected_chars=ones if rejected_chars is None else np.asarray(rejected_chars),
    )


# --- accuracy ---------------------------------------------------------------------------------------------

def test_accuracy_leaves_ties_out_and_counts_equal_scores_half():
    # decided pairs: right (2 > 0), wrong (-1), scored equal (0) -> (1 + 0 + 0.5) / 3; the 0.5 label is a tie
    assert tie_aware_accuracy(arr(2, -1, 0, 3), arr(1, 1, 1, 0.5)) == (pytest.approx(0.5), 1)


def test_accuracy_orients_soft_labels_by_the_preferred_side():
    # label 0.3: rejected is preferred, so Δ = -2 is right; label 0.9 with Δ = -1 is wrong
    accuracy, ties = tie_aware_accuracy(arr(1, -2, 0.5, -1), arr(0.8, 0.3, 0.6, 0.9))
    assert (accuracy, ties) == (pytest.approx(0.75), 0)


def test_accuracy_perfect_inverted_and_all_ties():
    assert pair_metrics(arr(3, 2, 1), arr(0, 0, 0))["accuracy"] == 1.0
    assert pair_metrics(arr(0, 0, 0), arr(3, 2, 1))["accuracy"] == 0.0
    assert tie_aware_accuracy(arr(1, -1), arr(0.5, 0.5)) == (None, 2)


def test_pair_metrics_keeps_its_keys_for_existing_callers():
    metrics = pair_metrics(arr(1, 0), arr(0, 1))
    assert metrics == {"pairs": 2, "ties": 0, "accuracy": 0.5, "loss": pytest.approx(math.log1p(math.exp(-1)) / 2
                       + math.log1p(math.exp(1)) / 2), "mean_margin": 0.0}


# --- log-loss ---------------------------------------------------------------------------------------------

def test_log_loss_hand_values():
    assert soft_log_loss(arr(0.0)) == pytest.approx(math.log(2))
    assert soft_log_loss(arr(LN3)) == pytest.approx(-math.log(0.75))  # σ(ln 3) = 3/4
    # soft label 0.25: −[¼ log ¾ + ¾ log ¼]
    assert soft_log_loss(arr(LN3), arr(0.25)) == pytest.approx(-(0.25 * math.log(0.75) + 0.75 * math.log(0.25)))
    # T = 2 halves the margin
    assert soft_log_loss(arr(2 * LN3), arr(1.0), temperature=2.0) == pytest.approx(-math.log(0.75))
    # a tie is scored by how close P is to ½
    assert soft_log_loss(arr(0.0, LN3), arr(0.5, 0.5)) == pytest.approx(
        (math.log(2) - 0.5 * math.log(0.75) - 0.5 * math.log(0.25)) / 2)


def test_log_loss_stays_finite_for_huge_margins():
    assert soft_log_loss(arr(1e4, -1e4), arr(1.0, 0.0)) == pytest.approx(0.0, abs=1e-12)
    assert soft_log_loss(arr(-1e4), arr(1.0)) == pytest.approx(1e4)


def test_labels_out_of_range_are_refused_by_index():
    with pytest.raises(ValueError, match=r"labels\[1\]"):
        soft_log_loss(arr(0, 0), arr(1.0, 1.5))
    with pytest.raises(ValueError, match="expected 2 values"):
        tie_aware_accuracy(arr(0, 0), arr(1.0))


# --- AUC --------------------------------------------------------------------------------------------------

def test_auc_hand_values():
    assert auc(arr(1, 3), arr(2, 2)) == 0.5  # 3 beats both 2s, 1 loses to both: 2 of 4
    assert auc(arr(3, 4), arr(1, 2)) == 1.0
    assert auc(arr(1, 2), arr(3, 4)) == 0.0
    assert auc(arr(1, 2), arr(1, 0)) == 0.875  # 1 vs 1 counts half: (0.5 + 1 + 1 + 1) / 4
    assert auc(arr(), arr(1)) is None


def test_auc_is_unpaired_unlike_accuracy():
    # every pair is ranked right, but the first chosen reward (1) is below the second rejected one (5)
    chosen, rejected = arr(1, 10), arr(0, 5)
    assert pair_metrics(chosen, rejected)["accuracy"] == 1.0
    assert pair_auc(chosen, rejected) == 0.75


def test_pair_auc_flips_soft_labels_and_leaves_ties_out():
    # label 0: rejected (5) is preferred; the tie pair would otherwise pull the AUC down
    assert pair_auc(arr(0, 2, -10), arr(5, 1, 10), arr(0.0, 1.0, 0.5)) == 1.0


def test_auc_of_random_scores_is_one_half():
    rng = np.random.default_rng(7)
    assert pair_auc(rng.normal(size=20000), rng.normal(size=20000)) == pytest.approx(0.5, abs=0.02)


# --- calibration ------------------------------------------------------------------------------------------

def test_ece_is_symmetrized():
    # Δ = 0 predicts ½; one-sided it would be off by ½, but the two orientations observe 1 and 0
    assert expected_calibration_error(arr(0.0), arr(1.0)) == pytest.approx(0.0)
    # P = ¾ observed 1, and P = ¼ observed 0: off by ¼ in both bins
    assert expected_calibration_error(arr(LN3), arr(1.0)) == pytest.approx(0.25)


def test_ece_of_calibrated_and_overconfident_predictions():
    delta, labels = arr(LN3, LN3, LN3, LN3), arr(1, 1, 1, 0)  # P = ¾, and 3 of 4 are right
    assert expected_calibration_error(delta, labels) == pytest.approx(0.0)
    # at T = 2 it predicts σ(ln 3 / 2) = √3 / (1 + √3) where ¾ is observed
    assert expected_calibration_error(delta, labels, 2.0) == pytest.approx(0.75 - math.sqrt(3) / (1 + math.sqrt(3)))


def test_reliability_bins():
    table = reliability(arr(LN3, 0.0), arr(1.0, 0.5))
    assert len(table) == 10 and sum(b["count"] for b in table) == 4
    assert table[7] == {"lo": 0.7, "hi": 0.8, "count": 1, "predicted": pytest.approx(0.75), "observed": 1.0}
    assert table[5]["count"] == 2 and table[5]["observed"] == 0.5
    assert table[0]["predicted"] is None and table[0]["count"] == 0


def test_fit_temperature_recovers_t_from_exact_soft_labels():
    delta = np.random.default_rng(0).normal(0, 3, 5000)
    assert fit_temperature(delta, sigmoid(delta / 2.5)) == pytest.approx(2.5, rel=1e-4)
    assert fit_temperature(delta, sigmoid(delta / 0.4)) == pytest.approx(0.4, rel=1e-4)


def test_fit_temperature_recovers_t_from_sampled_outcomes():
    rng = np.random.default_rng(1)
    delta = rng.normal(0, 3, 20000)
    outcomes = (rng.random(delta.size) < sigmoid(delta / 2.5)).astype(np.float64)
    fitted = fit_temperature(delta, outcomes)
    assert fitted == pytest.approx(2.5, rel=0.05)
    assert fitted == fit_temperature(delta, outcomes)  # deterministic
    best = soft_log_loss(delta, outcomes, fitted)
    assert best <= soft_log_loss(delta, outcomes, fitted * 1.01)
    assert best <= soft_log_loss(delta, outcomes, fitted / 1.01)
    assert best < soft_log_loss(delta, outcomes, 1.0)


def test_fit_temperature_is_bounded():
    assert fit_temperature(arr(1, 2, 3)) == pytest.approx(1e-2)  # separable: sharper is always better
    assert fit_temperature(arr(-1, -2)) == pytest.approx(1e2)  # inverted: flattest allowed
    assert fit_temperature(arr(0, 0)) == 1.0  # no information


def test_fit_calibration_says_what_it_was_fitted_on():
    delta = np.random.default_rng(0).normal(0, 3, 200)
    calibration = fit_calibration(delta, sigmoid(delta / 2.0), "dev.jsonl")
    assert calibration.temperature == pytest.approx(2.0, rel=1e-3)
    assert calibration.fitted_on.startswith("dev.jsonl: 200 pairs")


# --- length and correlation -------------------------------------------------------------------------------

def test_average_ranks_share_ties():
    assert average_ranks(arr(3, 1, 3, 2)).tolist() == [3.5, 1.0, 3.5, 2.0]


def test_correlations_hand_values():
    assert pearson(arr(1, 2, 3), arr(2, 4, 6)) == pytest.approx(1.0)
    assert pearson(arr(1, 2, 3), arr(3, 2, 1)) == pytest.approx(-1.0)
    assert pearson(arr(1, 2, 3, 4), arr(1, 3, 2, 4)) == pytest.approx(0.8)  # 4 / √(5·5)
    assert pearson(arr(1, 2, 3, 4), arr(1, 4, 9, 16)) == pytest.approx(25 / math.sqrt(645))
    assert spearman(arr(1, 2, 3, 4), arr(1, 4, 9, 16)) == pytest.approx(1.0)
    assert spearman(arr(1, 1, 2, 3), arr(1, 2, 3, 4)) == pytest.approx(4.5 / math.sqrt(22.5))  # tied ranks 1.5, 1.5
    assert pearson(arr(1, 1, 1), arr(1, 2, 3)) is None


def test_length_metrics_hand_values():
    # Δ = 1, -1, 2, -1: right, wrong, right, wrong
    pairs = scored([1, 2, 3, 4], [0, 3, 1, 5], chosen_tokens=[10, 2, 5, 3], rejected_tokens=[2, 4, 5, 9])
    length = length_metrics(pairs)
    assert length["preferred_longer"] == {"pairs": 1, "accuracy": 1.0}
    assert length["preferred_shorter"] == {"pairs": 2, "accuracy": 0.0}
    assert length["same_length"] == {"pairs": 1, "accuracy": 1.0}
    assert length["longer_wins_accuracy"] == 0.375  # (1 + 0 + ½ + 0) / 4
    # pair totals 12, 6, 10, 12: quartile edges 9, 11, 12
    assert length["buckets"] == [
        {"min_tokens": 6, "max_tokens": 6, "pairs": 1, "ties": 0, "accuracy": 0.0},
        {"min_tokens": 10, "max_tokens": 10, "pairs": 1, "ties": 0, "accuracy": 1.0},
        {"min_tokens": 12, "max_tokens": 12, "pairs": 2, "ties": 0, "accuracy": 0.5},
    ]
    halves = length_metrics(pairs, buckets=2)["buckets"]  # median 11
    assert [(b["min_tokens"], b["max_tokens"], b["accuracy"]) for b in halves] == [(6, 10, 0.5), (12, 12, 0.5)]


def test_length_correlation_uses_every_response():
    pairs = scored([1, 2], [3, 4], chosen_tokens=[1, 2], rejected_tokens=[3, 4], chosen_chars=[40, 30],
                   rejected_chars=[20, 10])
    correlation = length_metrics(pairs)["correlation"]
    assert correlation["tokens"] == {"pearson": pytest.approx(1.0), "spearman": pytest.approx(1.0)}
    assert correlation["chars"] == {"pearson": pytest.approx(-1.0), "spearman": pytest.approx(-1.0)}


# --- distribution and the whole set -----------------------------------------------------------------------

def test_reward_distribution_hand_values():
    dist = reward_distribution(arr(1, 2, 3, 4), arr(0, 0, 5, 5), bins=5)
    assert dist["chosen"]["mean"] == 2.5 and dist["chosen"]["std"] == pytest.approx(math.sqrt(1.25))
    assert (dist["chosen"]["min"], dist["chosen"]["p25"], dist["chosen"]["p50"], dist["chosen"]["max"]) == (1, 1.75, 2.5, 4)
    assert dist["histogram"] == {"edges": [0, 1, 2, 3, 4, 5], "chosen": [0, 1, 1, 1, 1], "rejected": [2, 0, 0, 0, 2]}


def test_evaluate_scores_is_plain_json_and_summarizes():
    import json

    pairs = scored([1, 2, 0], [0, 3, 0], labels=[1.0, 1.0, 0.5], chosen_tokens=[3, 1, 2], rejected_tokens=[1, 3, 2])
    metrics = evaluate_scores(pairs, temperature=2.0)
    assert json.loads(json.dumps(metrics, allow_nan=False)) == metrics
    assert (metrics["pairs"], metrics["ties"], metrics["accuracy"], metrics["temperature"]) == (3, 1, 0.5, 2.0)
    assert metrics["log_loss"] == pytest.approx(soft_log_loss(arr(1, -1, 0), arr(1, 1, 0.5), 2.0))
    assert metrics["loss"] == pytest.approx(soft_log_loss(arr(1, -1, 0), arr(1, 1, 0.5)))
    summary = format_summary({"bundle_id": "b", "data": "x/dev.jsonl", **metrics})
    assert summary.startswith("bundle b on dev.jsonl: 3 pairs (1 ties), accuracy 0.5000")
    assert "calibration at T = 2:" in summary and "ECE at T = 1" in summary
    lo, hi = metrics["accuracy_ci95"]
    assert f"accuracy 0.5000 [{lo:.3f}, {hi:.3f}]" in summary
    assert summary.splitlines()[-1].startswith("[lo, hi]: 95% percentile bootstrap intervals over 1000 resamples of "
                                              "the 3 prompts")


def test_summary_says_what_the_temperature_was_fitted_on_and_whether_that_is_this_data():
    metrics = evaluate_scores(scored([1, 2, 0], [0, 3, 0]), temperature=0.5, resamples=0)
    for fitted_on, in_sample in (("dev.jsonl.gz: 203 pairs, log-loss 0.65 at T=1", True),
                                 ("train.jsonl.gz, calibration split (0.1 of its prompts by hash): 174 pairs", False),
                                 ("my-dev.jsonl.gz: 20 pairs", False)):
        calibration = temperature_source(fitted_on, Path("data/dev.jsonl.gz"))
        assert calibration == {"fitted_on": fitted_on, "in_sample": in_sample}
        summary = format_summary({"bundle_id": "b", "data": "data/dev.jsonl.gz", **metrics,
                                  "calibration": {**metrics["calibration"], **calibration}})
        line = next(line for line in summary.splitlines() if line.startswith("temperature fitted on "))
        assert fitted_on in line and ("in-sample" in line) == in_sample and ("out-of-sample" in line) != in_sample
    assert "[" not in format_summary({"bundle_id": "b", "data": "x", **metrics}).splitlines()[0]  # no intervals asked


def test_a_calibration_temperature_at_its_bound_is_reported(capsys):
    """Rewards that order every pair as labelled leave no finite best T (the fit stops at 0.01); rewards
    that do not tell pairs apart push it to 100. Either is said, not written into the bundle silently."""
    from rmserve.training.evaluate import fit_calibration

    separated = fit_calibration(np.array([1.0, 2.0, 3.0]), np.array([1.0, 1.0, 1.0]), "dev.jsonl")
    assert separated.temperature == pytest.approx(0.01) and "stopped at its bound, T=0.01, on dev.jsonl" in capsys.readouterr().err
    fitted = fit_calibration(np.array([1.0, -0.5, 2.0, 0.3]), np.array([1.0, 1.0, 1.0, 0.0]), "dev.jsonl")
    assert 0.01 < fitted.temperature < 100 and "bound" not in capsys.readouterr().err
