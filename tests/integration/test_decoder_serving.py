"""A tiny decoder reward model (Llama), trained and exported by rmserve, served by the real server: the
scores it returns over HTTP for a request of very different lengths are the torch model's."""

from __future__ import annotations

import httpx
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from rmserve.training.config import TrainConfig  # noqa: E402
from rmserve.training.export import export_bundle  # noqa: E402
from rmserve.training.model import load_checkpoint, score_rows  # noqa: E402
from rmserve.training.train import train  # noqa: E402
from tests.integration.server import running_server  # noqa: E402
from tests.tiny_decoders import MIXED_ROWS, make_tiny_decoder, write_pairs  # noqa: E402


@pytest.fixture(scope="module")
def decoder(tmp_path_factory):
    root = tmp_path_factory.mktemp("decoder-serving")
    base = make_tiny_decoder(root / "base", "llama", seed=1)
    data = write_pairs(root / "pairs.jsonl")
    train(TrainConfig(output_dir=str(root / "ckpt"), base_model=str(base), train_data=str(data), dev_data=str(data),
                      max_length=48, batch_size=4, max_steps=2, learning_rate=1e-2, warmup_ratio=0.0,
                      progress=False, tensorboard=False))
    bundle = export_bundle(root / "ckpt", root / "bundle", dev_data=str(data))
    model, encoder, _ = load_checkpoint(root / "ckpt")
    with running_server(bundle.path) as running:
        yield running.url, bundle, model, encoder


def test_served_decoder_scores_match_torch(decoder):
    url, bundle, model, encoder = decoder
    expected = score_rows(model, encoder, MIXED_ROWS)
    items = [{"prompt": prompt, "response": response} for prompt, response in MIXED_ROWS]
    body = httpx.post(url + "/score", json={"items": items}).json()
    assert body["rewards"] == pytest.approx(expected, abs=1e-4)
    # One row at a time gives the same scores as the padded batch.
    for (prompt, response), score in zip(MIXED_ROWS, expected):
        single = httpx.post(url + "/score", json={"prompt": prompt, "response": response}).json()
        assert single["rewards"] == pytest.approx([score], abs=1e-4)
    manifest = httpx.get(url + "/v1/model").json()["manifest"]
    assert manifest["model"]["architecture"] == "decoder" and manifest["model"]["pooling"] == "last_token"
    assert bundle.manifest.input.eos_id is not None and manifest["input"]["eos_id"] == bundle.manifest.input.eos_id
