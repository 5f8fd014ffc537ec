"""PRM evaluation figures on literal step rewards: step AUC and accuracy, first-error localisation, best-of-N
selection with ties split evenly, random choice, and bootstrap intervals that resample whole problems."""

import numpy as np
import pytest

from rmserve.training.evaluate_steps import (
    ScoredChains,
    best_of_metrics,
    intervals,
    random_choice_accuracy,
    selection_accuracy,
    step_figures,
    step_metrics,
)


def chains(rewards, labels, groups=None):
    groups = np.arange(len(rewards)) if groups is None else np.asarray(groups)
    return ScoredChains([np.array(r, dtype=float) for r in rewards], [np.array(lb, dtype=bool) for lb in labels],
                        groups, np.zeros(len(rewards), dtype=np.int64), np.array([all(lb) for lb in labels]))


def test_step_figures_on_literal_chains():
    scored = chains(
        rewards=[[0.9, 0.8], [0.9, 0.3, 0.2], [0.4, 0.6], [0.7, 0.6, 0.1]],
        labels=[[1, 1], [1, 0, 0], [1, 1], [1, 1, 0]],
    )
    figures = step_figures(scored)
    # good steps 0.9 0.8 0.9 0.4 0.6 0.7 0.6 vs bad 0.3 0.2 0.1: every good one is higher.
    assert figures["step_auc"] == 1.0
    assert figures["step_accuracy"] == pytest.approx(9 / 10)  # 0.4 is a good step judged bad
    assert figures["first_error_localisation"] == 1.0  # both wrong chains: first below 0.5 is the first bad step
    assert figures["right_chains_all_above"] == 0.5  # the chain with 0.4 has a step below 0.5


def test_localisation_misses_an_early_alarm_and_a_silent_chain():
    scored = chains(rewards=[[0.4, 0.3, 0.2], [0.9, 0.8, 0.7], [0.9, 0.2, 0.1]],
                    labels=[[1, 0, 0], [1, 1, 0], [1, 0, 0]])
    assert step_figures(scored)["first_error_localisation"] == pytest.approx(1 / 3)


def test_selection_splits_ties_evenly_and_random_choice_is_the_right_share():
    values = np.array([0.9, 0.9, 0.1, 0.5, 0.7, 0.2])
    correct = np.array([True, False, False, False, True, True])
    groups = np.array([0, 0, 0, 1, 1, 1])
    # group 0: two candidates tie at 0.9, one right -> 1/2; group 1: 0.7 is right -> 1.
    assert selection_accuracy(values, correct, groups) == pytest.approx(0.75)
    assert random_choice_accuracy(correct, groups) == pytest.approx((1 / 3 + 2 / 3) / 2)


def test_best_of_metrics_compare_the_prm_with_an_outcome_model_and_random():
    scored = chains(rewards=[[0.9, 0.9], [0.9, 0.1], [0.8, 0.7], [0.2, 0.1]],
                    labels=[[1, 1], [1, 0], [1, 1], [1, 0]], groups=[0, 0, 1, 1])
    outcome = np.array([0.0, 1.0, 0.0, 1.0])  # prefers the wrong candidate of each problem
    best = best_of_metrics(scored, outcome, resamples=200)
    assert best["prm_min"] == 1.0 and best["outcome"] == 0.0 and best["random"] == 0.5
    assert best["prm_last"] == 1.0 and best["prm_prod"] == 1.0
    assert best["prm_minus_outcome"] == 1.0 and best["intervals"]["prm_minus_outcome"] == [1.0, 1.0]
    assert best["problems"] == 2 and best["candidates_per_problem"] == 2


def test_intervals_resample_whole_groups():
    groups = np.array([0, 0, 1, 1, 2, 2])
    seen = []

    def statistic(items):
        seen.append(items)
        return {"mean": float(np.mean(items))}

    found = intervals(statistic, groups, resamples=100)
    for items in seen:  # every resample takes both items of each drawn group, side by side
        assert len(items) == 6 and all(items[k] // 2 == items[k + 1] // 2 for k in range(0, 6, 2))
    lo, hi = found["mean"]
    assert 0.5 <= lo <= 2.5 <= hi <= 4.5


def test_step_metrics_count_steps_and_give_intervals():
    scored = chains(rewards=[[0.9, 0.2], [0.8, 0.7], [0.6, 0.4], [0.9, 0.9]],
                    labels=[[1, 0], [1, 1], [1, 0], [1, 1]], groups=[0, 0, 1, 1])
    metrics = step_metrics(scored, resamples=100)
    assert (metrics["chains"], metrics["problems"], metrics["steps"], metrics["bad_steps"]) == (4, 2, 8, 2)
    lo, hi = metrics["intervals"]["step_auc"]
    assert lo <= metrics["step_auc"] <= hi


def test_a_right_chain_stays_right_when_truncation_cut_its_first_steps():
    """Truncation cuts a chain's first steps from scoring, not from the data: a chain whose every step is
    good (the cut one too) is a right candidate, and one whose cut step was bad is a wrong one."""
    scored = ScoredChains(
        rewards=[np.array([0.9]), np.array([0.2, 0.1]), np.array([0.8]), np.array([0.3])],
        labels=[np.array([True]), np.array([True, False]), np.array([True]), np.array([False])],
        groups=np.array([0, 0, 1, 1]), steps_cut=np.array([1, 0, 2, 0]),
        correct=np.array([True, False, False, False]))  # chain 2's cut steps held its error
    best = best_of_metrics(scored, None, resamples=50)
    # problem 0: the PRM picks chain 0 (0.9), right; problem 1: it picks chain 2 (0.8), wrong.
    assert best["prm_min"] == 0.5 and best["prm_last"] == 0.5
    assert best["random"] == pytest.approx((1 / 2 + 0) / 2)
