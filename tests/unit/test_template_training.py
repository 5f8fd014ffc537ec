"""`rmserve train --base-model DIR` on a decoder whose tokenizer has a chat template trains on the template's
rendering; the checkpoint and its bundle carry the template; and the bundle `rmserve export` writes and the
one `rmserve import` makes of the same checkpoint are served the same way."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from rmserve.service.core.engine import OnnxRewardModel  # noqa: E402
from rmserve.training.config import TrainConfig  # noqa: E402
from rmserve.training.export import export_bundle  # noqa: E402
from rmserve.training.importer import import_model  # noqa: E402
from rmserve.training.model import load_checkpoint  # noqa: E402
from rmserve.training.train import train  # noqa: E402
from tests.chat_models import CONVERSATIONS, TRUNCATED, conversation, make_hub_model, write_chat_pairs  # noqa: E402


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("template-training")
    base = make_hub_model(root / "base", "qwen2", seed=8)
    pairs = write_chat_pairs(root / "pairs.jsonl", n=16)
    train(TrainConfig(output_dir=str(root / "ckpt"), base_model=str(base), train_data=str(pairs), dev_data=str(pairs),
                      max_length=96, batch_size=4, max_steps=2, learning_rate=1e-3, warmup_ratio=0.0, progress=False,
                      tensorboard=False))
    exported = export_bundle(root / "ckpt", root / "exported", dev_data=str(pairs))
    imported = import_model(root / "ckpt", root / "imported").bundle
    return root, base, exported, imported


def test_training_rows_are_the_templates_rendering(trained):
    root, base, _, _ = trained
    import transformers

    _, encoder, meta = load_checkpoint(root / "ckpt")
    assert meta.input_spec.chat_template is not None and meta.input_spec.eos_id is None
    assert (root / "ckpt" / "tokenizer_config.json").read_text().count("im_start") >= 1  # a complete model dir
    hf = transformers.AutoTokenizer.from_pretrained(str(base))
    for prompt, response in CONVERSATIONS[:8]:
        [row] = encoder.encode([(prompt, response)])
        assert row.ids == hf.apply_chat_template(conversation(prompt, response), tokenize=True, return_dict=False)


def test_exported_and_imported_bundles_of_a_checkpoint_serve_the_same(trained):
    _, _, exported, imported = trained
    assert exported.manifest.input == imported.manifest.input
    assert exported.manifest.input.chat_template is not None and exported.manifest.format_version == 2
    rows = CONVERSATIONS[:TRUNCATED]
    scores = []
    for bundle in (exported, imported):
        encoder = bundle.encoder()
        scores.append(OnnxRewardModel(str(bundle.model_path), device="cpu")(encoder.pad(encoder.encode(rows))))
    np.testing.assert_allclose(scores[0], scores[1], atol=1e-6, rtol=0)
    assert np.ptp(scores[0]) > 1e-3
