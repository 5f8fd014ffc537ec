"""An imported decoder's fp16 bundle on the CUDA provider, where it really computes in half precision: the
agreement check runs there (`--device cuda`), and the server started with --device cuda gives the fp32
bundle's preferences. Runs where ONNX Runtime's CUDA provider loads (bench/gpu.sh sets RMSERVE_TEST_CUDA=1,
and then a provider that does not load is a failure); skipped elsewhere with the reason."""

from __future__ import annotations

import os

import httpx
import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from rmserve.service.core.engine import CUDA, OnnxRewardModel, nvidia_device_present  # noqa: E402
from rmserve.training.importer import import_fp16, import_model  # noqa: E402
from tests.chat_models import CONVERSATIONS, TRUNCATED, make_hub_model, write_chat_pairs  # noqa: E402
from tests.integration.server import running_server  # noqa: E402

pytestmark = pytest.mark.cuda
REQUIRED = os.environ.get("RMSERVE_TEST_CUDA", "") not in ("", "0")


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    root = tmp_path_factory.mktemp("fp16-cuda")
    source = make_hub_model(root / "hub", "qwen2", seed=6)
    fp32 = import_model(source, root / "fp32", max_length=256).bundle
    try:
        if not nvidia_device_present():
            raise RuntimeError("no NVIDIA device on this machine")
        OnnxRewardModel(str(fp32.model_path), device="cuda")
    except RuntimeError as e:
        if REQUIRED:
            pytest.fail(f"RMSERVE_TEST_CUDA is set but {CUDA} does not load: {e}")
        pytest.skip(f"{CUDA} does not load here: {e}")
    fp16, report = import_fp16(source, root / "fp16", write_chat_pairs(root / "prefs.jsonl", n=48), device="cuda",
                               max_length=256)
    return fp32, fp16, report


def test_fp16_on_cuda_keeps_the_fp32_preferences_and_serves_them(bundles):
    fp32, fp16, report = bundles
    assert report["agreement_with_fp32"] >= 0.99 and report["max_abs_reward_diff"] < 0.05
    rows = CONVERSATIONS[:TRUNCATED]
    encoder = fp32.encoder()
    reference = OnnxRewardModel(str(fp32.model_path), device="cpu")(encoder.pad(encoder.encode(rows)))
    with running_server(fp16.path, device="cuda") as server:
        served = []
        for prompt, response in rows:
            body = httpx.post(server.url + "/score", json={"prompt": prompt, "responses": [response]}, timeout=30)
            served.append(body.json()["rewards"][0])
        model = httpx.get(server.url + "/v1/model", timeout=10).json()
    assert model["provider"] == CUDA and model["manifest"]["model"]["precision"] == "fp16"
    served = np.array(served)
    assert np.max(np.abs(served - reference)) < 0.05
    order = np.argsort(reference)
    assert np.mean(np.diff(served[order]) >= -1e-3) >= 0.9  # the ranking survives half precision
