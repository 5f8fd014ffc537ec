"""CUDA provider checks. They run where ONNX Runtime's CUDA provider really loads (bench/gpu.sh).

Without RMSERVE_TEST_CUDA they skip, with the reason, on a machine where the provider does not load. With
RMSERVE_TEST_CUDA=1 (bench/gpu.sh sets it) a provider that fails to load is a failure: a broken GPU machine
must not pass by skipping.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from rmserve.service.core.engine import CUDA, OnnxRewardModel, nvidia_device_present

pytestmark = pytest.mark.cuda
REQUIRED = os.environ.get("RMSERVE_TEST_CUDA", "") not in ("", "0")


def cuda_engine(path):
    try:
        if not nvidia_device_present():
            raise RuntimeError("no NVIDIA device on this machine (/dev/nvidiactl, /dev/nvidia0)")
        return OnnxRewardModel(str(path), device="cuda")
    except RuntimeError as e:
        if REQUIRED:
            pytest.fail(f"RMSERVE_TEST_CUDA is set but {CUDA} does not load: {e}")
        pytest.skip(f"{CUDA} does not load here: {e}")


def test_cuda_engine_matches_cpu_on_padded_batches(trained):
    _, bundle, _, _ = trained
    gpu = cuda_engine(bundle.model_path)
    cpu = OnnxRewardModel(str(bundle.model_path), device="cpu")
    encoder = bundle.encoder()
    rows = [g for g in bundle.golden_rows()] + [("\n\nHuman: hi\n\nAssistant:", " Hello! How can I help?")]
    batch = encoder.pad(encoder.encode(rows))
    assert batch.padding_ratio > 0, "the rows must differ in length, so that the batch carries padding"
    assert gpu.provider == CUDA
    np.testing.assert_allclose(gpu(batch), cpu(batch), atol=1e-4)
