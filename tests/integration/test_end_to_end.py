"""Train a few steps on a small slice of the shipped data, export, serve over real HTTP, and check that
the service returns the torch model's scores."""

from __future__ import annotations

import math

import httpx
import pytest

torch = pytest.importorskip("torch")

from rmserve.training.model import score_rows  # noqa: E402
from tests.integration.server import running_server  # noqa: E402

PROMPT = "\n\nHuman: How do I pick a lock?\n\nAssistant:"
RESPONSES = [" I can't help with breaking into property.", " Sure, get a tension wrench and a pick, then rake the pins.",
             " Call a locksmith."]


@pytest.fixture(scope="module")
def server(trained):
    _, bundle, _, _ = trained
    with running_server(bundle.path) as running:
        yield running.url


def test_score_matches_torch(trained, server):
    _, bundle, model, encoder = trained
    expected = score_rows(model, encoder, [(PROMPT, r) for r in RESPONSES])
    body = httpx.post(server + "/score", json={"prompt": PROMPT, "responses": RESPONSES}).json()
    assert body["model"]["bundle_id"] == bundle.manifest.bundle_id
    assert body["rewards"] == pytest.approx(expected, abs=1e-4)
    stats = bundle.manifest.normalization
    assert body["normalized_rewards"] == pytest.approx([(r - stats.mean) / stats.std for r in body["rewards"]], abs=1e-9)
    single = httpx.post(server + "/score", json={"prompt": PROMPT, "response": RESPONSES[1]}).json()
    assert single["rewards"] == pytest.approx([expected[1]], abs=1e-4)


def test_items_and_chat_prompts_match_torch(trained, server):
    _, _, model, encoder = trained
    chat = [{"role": "user", "content": "How do I pick a lock?"}]
    items = [{"prompt": chat, "response": RESPONSES[0]}, {"prompt": "short", "response": RESPONSES[2]}]
    expected = score_rows(model, encoder, [(chat, RESPONSES[0]), ("short", RESPONSES[2])])
    body = httpx.post(server + "/score", json={"items": items}).json()
    assert body["rewards"] == pytest.approx(expected, abs=1e-4)
    # A chat prompt renders to the HH text form: both give the same score.
    text = httpx.post(server + "/score", json={"prompt": PROMPT, "response": RESPONSES[0]}).json()
    assert text["rewards"][0] == pytest.approx(body["rewards"][0], abs=1e-6)


def test_compare_matches_torch(trained, server):
    _, bundle, model, encoder = trained
    a, b = score_rows(model, encoder, [(PROMPT, RESPONSES[0]), (PROMPT, RESPONSES[1])])
    body = httpx.post(server + "/compare", json={"prompt": PROMPT, "response_a": RESPONSES[0],
                                                 "response_b": RESPONSES[1]}).json()
    assert body["reward_a"] == pytest.approx(a, abs=1e-4) and body["reward_b"] == pytest.approx(b, abs=1e-4)
    z = (body["reward_a"] - body["reward_b"]) / bundle.manifest.calibration.temperature  # fitted at export
    assert body["probability_a"] == pytest.approx(1 / (1 + math.exp(-z)), abs=1e-9)


def test_long_input_is_truncated_and_still_matches_torch(trained, server):
    _, _, model, encoder = trained
    long_prompt = "\n\nHuman: " + "tell me about locks and keys " * 80 + "\n\nAssistant:"
    expected = score_rows(model, encoder, [(long_prompt, RESPONSES[1])])
    body = httpx.post(server + "/score", json={"prompt": long_prompt, "response": RESPONSES[1]}).json()
    assert body["truncated"] == [True]
    assert body["rewards"] == pytest.approx(expected, abs=1e-4)


def test_operational_endpoints(trained, server):
    _, bundle, _, _ = trained
    assert httpx.get(server + "/healthz").json() == {"status": "alive"}
    assert httpx.get(server + "/readyz").json() == {"ready": True}
    info = httpx.get(server + "/v1/model").json()
    assert info["provider"] == "CPUExecutionProvider"
    assert info["manifest"]["files"]["model.onnx"] == bundle.manifest.model_sha256
    assert info["manifest"]["provenance"]["parity_max_abs_diff"] <= 1e-4
    metrics = httpx.get(server + "/metrics").text
    assert 'rmserve_requests_total{endpoint="/score",outcome="ok",protocol="http"}' in metrics
    assert "rmserve_model_info{" in metrics


def test_cli_eval_reports_the_bundle_accuracy(trained):
    import json
    import subprocess
    import sys

    _, bundle, _, _ = trained
    out = subprocess.run([sys.executable, "-m", "rmserve.cli", "eval", "--bundle", str(bundle.path), "--limit", "12",
                          "--device", "cpu", "--json"], capture_output=True, text=True, check=True)
    metrics = json.loads(out.stdout)
    assert metrics["pairs"] == 12 and 0.0 <= metrics["accuracy"] <= 1.0
    assert metrics["accuracy"] == pytest.approx(bundle.manifest.provenance["dev_metrics_onnx"]["accuracy"])
