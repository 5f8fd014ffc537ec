"""The calibration temperature: fitted on the dev set at export, stored in the bundle, used by /compare."""

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


def test_export_fits_the_temperature_on_the_dev_pairs(trained):
    from rmserve.service.core.engine import OnnxRewardModel
    from rmserve.training.data import load_pairs
    from rmserve.training.evaluate import fit_temperature, labels_of, score_pairs

    _, bundle, _, _ = trained
    dev = bundle.manifest.provenance["dev_data"]
    pairs = load_pairs(dev, bundle.manifest.provenance["dev_metrics_onnx"]["pairs"], skip_bad_rows=True).pairs
    chosen, rejected = score_pairs(OnnxRewardModel(str(bundle.model_path), device="cpu"), bundle.encoder(), pairs)
    expected = fit_temperature(chosen.astype(np.float64) - rejected, labels_of(pairs))
    calibration = bundle.manifest.calibration
    assert calibration.temperature == pytest.approx(expected, rel=1e-6)
    assert calibration.fitted_on.startswith(f"{Path(dev).name}: {len(pairs)} pairs, log-loss ")
