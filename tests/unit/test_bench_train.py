"""bench/train.py's statistics over seeds and dev pairs, on literal per-pair credits."""

from __future__ import annotations

import numpy as np
import pytest

from bench.train import paired_difference, seed_summary
from bench.train_runs import steps_for
from rmserve.training.config import TrainConfig


def runs(*credits: list[float]) -> list[dict]:
    return [{"credit": c} for c in credits]


def test_seed_summary_is_mean_and_sample_sd_of_the_seed_accuracies():
    a = runs([1, 1, 0, 0], [1, 1, 1, 0], [1, 0, 0, 0])  # 0.5, 0.75, 0.25
    assert seed_summary(a, np.ones(4, dtype=bool)) == (pytest.approx(0.5), pytest.approx(0.25))
    assert seed_summary(a, np.array([True, True, False, False])) == (pytest.approx(5 / 6), pytest.approx(np.std([1, 1, 0.5], ddof=1)))


def test_paired_difference_resamples_prompts_for_both_sides_and_seeds_apart():
    prompts = np.array(["p0", "p1", "p2", "p3"], dtype=object)
    every = np.ones(4, dtype=bool)
    a = runs([1, 1, 0, 1], [1, 0, 0, 1])
    b = runs([1, 1, 0, 0], [1, 1, 0, 0])
    difference, lo, hi = paired_difference(a, b, every, prompts, resamples=500)
    assert difference == pytest.approx(np.mean(a[0]["credit"] + a[1]["credit"]) - 0.5)  # 0.625 − 0.5
    assert lo <= difference <= hi and lo < hi
    # b's seeds agree pair by pair: b against itself differs by nothing on any resample
    assert paired_difference(b, b, every, prompts, resamples=200) == (0.0, 0.0, 0.0)
    # pairs of one prompt move together: with one prompt the only spread left is a's seeds (0.75 and 0.5
    # against b's 0.5): a resample's difference is 0.25, 0.125 or 0, each seed draw equally likely
    one = np.array(["p"] * 4, dtype=object)
    _, lo, hi = paired_difference(a, b, every, one, resamples=500)
    assert (lo, hi) == (pytest.approx(0.0), pytest.approx(0.25))


def test_steps_cover_the_recipe_s_epochs():
    assert steps_for(1658, TrainConfig(epochs=1.0)) == 104 and steps_for(1658, TrainConfig(epochs=2.0)) == 208
