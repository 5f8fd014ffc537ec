"""CUDA provider checks; they run only where ONNX Runtime's CUDA provider really loads (bench/gpu.sh)."""

from __future__ import annotations

import numpy as np
import pytest

from service.engine import OnnxRewardModel, nvidia_device_present

pytestmark = pytest.mark.cuda


def cuda_engine(path):
    if not nvidia_device_present():
        pytest.skip("no NVIDIA device on this machine")
    try:
        return OnnxRewardModel(str(path), device="cuda")
    except RuntimeError as e:
        pytest.skip(f"CUDA provider does not load here: {e}")


def test_cuda_engine_matches_cpu_on_padded_batches(trained):
    _, bundle, _, _ = trained
    gpu = cuda_engine(bundle.model_path)
    cpu = OnnxRewardModel(str(bundle.model_path), device="cpu")
    encoder = bundle.encoder()
    rows = [g for g in bundle.golden_rows()] + [("\n\nHuman: hi\n\nAssistant:", " Hello! How can I help?")]
    batch = encoder.pad(encoder.encode(rows))
    assert gpu.provider == "CUDAExecutionProvider"
    np.testing.assert_allclose(gpu(batch), cpu(batch), atol=1e-4)
