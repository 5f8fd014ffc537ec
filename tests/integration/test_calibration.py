"""The calibration temperature: fitted at export on the training prompts held out from training (else on the dev
set, said so), stored in the bundle, used by /compare."""

from __future__ import annotations

import math
from pathlib import Path

import httpx
import numpy as np
import pytest

from rmserve.service.core.bundle import Calibration, load_bundle, write_manifest
from tests.conftest import make_tiny_bundle
from tests.integration.server import running_server

TEMPERATURE = 2.5


def test_compare_uses_the_bundle_temperature(tmp_path):
    directory = make_tiny_bundle(tmp_path / "bundle")
    manifest = load_bundle(directory).manifest
    write_manifest(directory, manifest.model_copy(update={"calibration": Calibration(temperature=TEMPERATURE,
                                                                                     fitted_on="test")}))
    request = {"prompt": "hello there", "response_a": "i am fine thanks my friend", "response_b": "no"}
    with running_server(directory) as server:
        body = httpx.post(server.url + "/compare", json=request).json()
    assert body["model"]["calibration_temperature"] == TEMPERATURE
    z = body["reward_a"] - body["reward_b"]
    assert body["probability_a"] == pytest.approx(1.0 / (1.0 + math.exp(-z / TEMPERATURE)), abs=1e-12)
    # the rewards differ enough that ignoring T would give another answer
    assert abs(body["probability_a"] - 1.0 / (1.0 + math.exp(-z))) > 0.05


def test_export_fits_the_temperature_on_the_held_out_calibration_split(trained):
    from rmserve.service.core.engine import OnnxRewardModel
    from rmserve.training.evaluate import calibration_pairs, fit_temperature, labels_of, score_pairs

    _, bundle, _, _ = trained
    provenance = bundle.manifest.provenance
    pairs, source = calibration_pairs(provenance["training"])
    # the first 24 training rows, less the prompts the split holds out, are what training saw
    assert provenance["training"]["calibration_split"] == 0.1
    assert provenance["train_metrics"]["train_pairs"] == 24 - len(pairs) and len(pairs) >= 1
    chosen, rejected = score_pairs(OnnxRewardModel(str(bundle.model_path), device="cpu"), bundle.encoder(), pairs)
    expected = fit_temperature(chosen.astype(np.float64) - rejected, labels_of(pairs))
    calibration = bundle.manifest.calibration
    assert calibration.temperature == pytest.approx(expected, rel=1e-6)
    assert calibration.fitted_on.startswith(f"{source}: {len(pairs)} pairs, log-loss ")
    assert source.startswith("train.jsonl.gz, calibration split")


def test_without_a_calibration_split_the_temperature_is_fitted_on_the_dev_pairs_and_says_so(trained):
    from rmserve.service.core.engine import OnnxRewardModel
    from rmserve.training.data import load_pairs
    from rmserve.training.evaluate import bundle_calibration, labels_of, score_pairs, temperature_source

    _, bundle, _, _ = trained
    dev = Path(bundle.manifest.provenance["dev_data"])
    pairs = load_pairs(dev, 12, skip_bad_rows=True).pairs
    engine = OnnxRewardModel(str(bundle.model_path), device="cpu")
    chosen, rejected = score_pairs(engine, bundle.encoder(), pairs)
    delta = chosen.astype(np.float64) - rejected
    training = {**bundle.manifest.provenance["training"], "calibration_split": 0.0}
    calibration = bundle_calibration(engine, bundle.encoder(), training, delta, labels_of(pairs), dev.name)
    assert calibration.fitted_on.startswith(f"{dev.name}: {len(pairs)} pairs, log-loss ")
    assert temperature_source(calibration.fitted_on, dev)["in_sample"] is True
    assert temperature_source(bundle.manifest.calibration.fitted_on, dev)["in_sample"] is False
