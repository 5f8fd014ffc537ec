"""Training on a tiny randomly initialised BERT: every parameter changes, and the checkpoint reloads."""

import json

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from rmserve.training.config import TrainConfig  # noqa: E402
from rmserve.training.model import load_checkpoint, load_hf_model  # noqa: E402
from rmserve.training.train import train  # noqa: E402
from tests.conftest import build_tiny_tokenizer  # noqa: E402


@pytest.fixture
def tiny_base(tmp_path):
    tokenizer = build_tiny_tokenizer()
    config = transformers.BertConfig(
        vocab_size=tokenizer.get_vocab_size(), hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=32, max_position_embeddings=64, num_labels=1, pad_token_id=0,
    )
    torch.manual_seed(0)
    model = transformers.BertForSequenceClassification(config)
    base = tmp_path / "base"
    model.save_pretrained(str(base))
    tokenizer.save(str(base / "tokenizer.json"))
    (base / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 512}))
    return base


def pairs_file(path, n=12):
    rows = [{"prompt": f"hello there {i % 3}", "chosen": "sure i am fine thanks", "rejected": "no"} for i in range(n)]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def test_training_changes_every_parameter_and_writes_a_checkpoint(tiny_base, tmp_path):
    data = pairs_file(tmp_path / "pairs.jsonl")
    before = {k: v.clone() for k, v in load_hf_model(tiny_base).state_dict().items()}
    metrics = train(TrainConfig(
        output_dir=str(tmp_path / "ckpt"), base_model=str(tiny_base), train_data=str(data), dev_data=str(data),
        max_length=32, batch_size=4, max_steps=3, learning_rate=1e-2, warmup_ratio=0.0, progress=False,
        center_rewards=0.01,  # the head's bias cancels in r_c - r_r: only centering gives it a gradient
    ))
    assert metrics["train_steps"] == 3 and metrics["dev_pairs"] == 12
    model, encoder, meta = load_checkpoint(tmp_path / "ckpt")
    after = dict(model.hf_model.named_parameters())
    unchanged = [name for name, value in after.items() if torch.equal(value.detach(), before[name])]
    assert not unchanged, f"parameters not updated by training: {unchanged}"
    assert meta.input_spec.max_length == 32 and encoder.spec.max_length == 32
    # The checkpoint is a complete model directory for other tools, at the length it was trained with.
    assert json.loads((tmp_path / "ckpt" / "tokenizer_config.json").read_text())["model_max_length"] == 32
    # The task is trivially learnable: after 3 large steps the chosen response must score higher.
    assert metrics["dev_accuracy"] == 1.0


def test_a_saved_dataset_as_train_and_dev_data_trains_and_exports(tiny_base, tmp_path):
    """docs/training.md lists a save_to_disk directory beside JSONL; export names the dev data by a digest of it."""
    datasets = pytest.importorskip("datasets")
    from rmserve.training.export import export_bundle

    rows = [{"prompt": f"hello there {i}", "chosen": "sure i am fine thanks", "rejected": "no"} for i in range(12)]
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "ds"))
    train(TrainConfig(output_dir=str(tmp_path / "ckpt"), base_model=str(tiny_base), train_data=str(tmp_path / "ds"),
                      dev_data=str(tmp_path / "ds"), max_length=32, batch_size=4, max_steps=1, progress=False,
                      tensorboard=False, threads=1))
    bundle = export_bundle(tmp_path / "ckpt", tmp_path / "bundle")  # was IsADirectoryError from its digest
    from rmserve.training.records import data_digest

    normalization = bundle.manifest.normalization
    assert normalization.computed_on == "ds: chosen+rejected of 12 pairs"
    assert normalization.version.startswith(data_digest(tmp_path / "ds") + "-")


def test_data_digest_of_a_directory_follows_its_files(tmp_path):
    from rmserve.service.core.bundle_files import file_digest
    from rmserve.training.records import data_digest

    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.arrow").write_bytes(b"one")
    first = data_digest(tmp_path / "d")
    assert len(first) == 12 and data_digest(tmp_path / "d") == first
    (tmp_path / "d" / "a.arrow").write_bytes(b"two")
    assert data_digest(tmp_path / "d") != first
    (tmp_path / "f.jsonl").write_text("{}\n")
    assert data_digest(tmp_path / "f.jsonl") == file_digest(tmp_path / "f.jsonl")
