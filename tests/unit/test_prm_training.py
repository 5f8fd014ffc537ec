"""A process reward model trained, exported and evaluated end to end on tiny random encoders and decoders:
the separator is added to the tokenizer and the embedding, the loss falls, the ONNX graph's step scores match
torch's on padded mixed-length batches (right padding; left too for decoders) within 1e-4, the bundle verifies its
golden step scores, and `rmserve eval` reads it as a PRM."""

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from rmserve.cli import main  # noqa: E402
from rmserve.service.core.bundle import load_bundle  # noqa: E402
from rmserve.service.core.engine import OnnxRewardModel, check_golden  # noqa: E402
from rmserve.service.core.inputs import InputEncoder, join_steps  # noqa: E402
from rmserve.service.core.step_scores import read_step_scores  # noqa: E402
from rmserve.training.config import TrainConfig  # noqa: E402
from rmserve.training.log import read_log  # noqa: E402
from rmserve.training.step_model import load_step_checkpoint  # noqa: E402
from rmserve.training.train_steps import train_prm  # noqa: E402
from tests.prm_bundles import step_file, tiny_encoder_base, train_tiny_prm  # noqa: E402
from tests.tiny_decoders import make_tiny_decoder  # noqa: E402

SEP = "<step>"


@pytest.fixture(params=["encoder", "llama", "qwen2"])
def base(request, tmp_path):
    if request.param == "encoder":
        return tiny_encoder_base(tmp_path / "base")
    return make_tiny_decoder(tmp_path / "base", request.param)


def test_prm_trains_exports_and_matches_torch(base, tmp_path):
    data = step_file(tmp_path / "steps.jsonl")
    config = TrainConfig(task="prm", base_model=str(base), train_data=str(data), dev_data=str(data),
                         output_dir=str(tmp_path / "ckpt"), batch_size=8, epochs=4, learning_rate=3e-3,
                         max_length=48, progress=False, tensorboard=False)
    metrics = train_prm(config)
    losses = [r["loss"] for r in read_log(tmp_path / "ckpt" / "train_log.jsonl") if "loss" in r]
    assert np.mean(losses[-4:]) < np.mean(losses[:4])
    assert metrics["dev_chains"] == 48 and metrics["train_steps"] == 24

    model, encoder, meta = load_step_checkpoint(tmp_path / "ckpt")
    separator_id = encoder.step_id
    assert encoder.tokenizer.encode(SEP, add_special_tokens=False).ids == [separator_id]
    assert separator_id < model.hf_model.get_input_embeddings().num_embeddings

    assert main(["export", "--checkpoint", str(tmp_path / "ckpt"), "--output", str(tmp_path / "bundle")]) == 0
    bundle = load_bundle(tmp_path / "bundle")
    assert bundle.manifest.steps is not None and bundle.manifest.steps.aggregate == "min"
    assert bundle.manifest.format_version == 3 and bundle.manifest.input.step_separator_id == separator_id
    engine = OnnxRewardModel.for_bundle(bundle, device="cpu")
    assert check_golden(bundle, engine, bundle.encoder()) <= 1e-4

    chains = [["one two"], ["three four", "no five six seven", "eight nine", "ten"], ["ten", "one two three"]]
    rows = [(f"hello there {i}", join_steps(c, SEP)) for i, c in enumerate(chains)]
    # Encoders count positions from the row's start, so only a decoder may be left-padded (its position ids
    # come from the mask, in torch and in the graph alike).
    for side in ("right", "left") if model.is_decoder else ("right",):
        padded = InputEncoder(bundle.encoder().tokenizer, bundle.manifest.input.model_copy(update={"padding_side": side}))
        batch = padded.pad(padded.encode(rows))
        assert batch.attention_mask.min() == 0  # real padding in the batch
        with torch.no_grad():
            torch_scores = model(torch.from_numpy(batch.input_ids), torch.from_numpy(batch.attention_mask)).numpy()
        expected = read_step_scores(batch.input_ids, batch.attention_mask, torch_scores, separator_id)
        served = engine(batch)
        alone = [engine(padded.pad(padded.encode([row])))[0] for row in rows]
        for want, got, single, chain in zip(expected, served, alone, chains):
            assert len(got) == len(chain)
            np.testing.assert_allclose(got, want, rtol=0, atol=1e-4)
            np.testing.assert_allclose(got, single, rtol=0, atol=1e-4)  # padding changes no row's scores


def test_eval_on_a_prm_bundle_reports_step_figures(tmp_path, capsys):
    data, _, _ = train_tiny_prm(tmp_path, epochs=4)
    report = tmp_path / "report.html"
    assert main(["eval", "--bundle", str(tmp_path / "bundle"), "--data", str(data), "--best-of", str(data),
                 "--json", "--report", str(report)]) == 0
    metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert metrics["kind"] == "prm" and metrics["steps"] == sum(2 + i % 4 for i in range(48))
    for name in ("step_auc", "step_accuracy", "first_error_localisation"):
        lo, hi = metrics["intervals"][name]
        assert lo <= metrics[name] <= hi
    assert set(metrics["shortcut_baselines"]) == {"step_length", "step_position", "relative_position", "new_digit"}
    assert metrics["best_of"]["problems"] == 24
    page = report.read_text()
    assert "first-error localisation" in page and "best-of-2 selection" in page


def test_a_causal_encoder_scores_a_step_from_the_text_up_to_it(tmp_path):
    base = tiny_encoder_base(tmp_path / "base")
    data = step_file(tmp_path / "steps.jsonl")
    config = TrainConfig(task="prm", base_model=str(base), train_data=str(data), dev_data=str(data),
                         output_dir=str(tmp_path / "ckpt"), batch_size=8, epochs=1, learning_rate=3e-3,
                         max_length=48, progress=False, tensorboard=False, step_causal=True, base_layers=1)
    train_prm(config)
    model, _, _ = load_step_checkpoint(tmp_path / "ckpt")
    assert model.hf_model.config.is_decoder and model.hf_model.config.num_hidden_layers == 1
    assert main(["export", "--checkpoint", str(tmp_path / "ckpt"), "--output", str(tmp_path / "bundle")]) == 0
    bundle = load_bundle(tmp_path / "bundle")
    engine, encoder = OnnxRewardModel.for_bundle(bundle, device="cpu"), bundle.encoder()
    chains = [["one two", "three four"], ["one two", "no five six seven", "eight"], ["one two", "ten"]]
    batch = encoder.pad(encoder.encode([("hello there 1", join_steps(c, SEP)) for c in chains]))
    served = engine(batch)
    with torch.no_grad():
        scores = model(torch.from_numpy(batch.input_ids), torch.from_numpy(batch.attention_mask)).numpy()
    in_torch = read_step_scores(batch.input_ids, batch.attention_mask, scores, encoder.step_id)
    for rows in (served, in_torch):  # the first step's score does not see what follows it
        np.testing.assert_allclose([r[0] for r in rows], [rows[0][0]] * len(chains), rtol=0, atol=1e-5)
        assert abs(rows[0][1] - rows[1][1]) > 1e-4  # while a later step's score does depend on its own text
    with pytest.raises(ValueError, match="has 2 layers"):
        train_prm(TrainConfig(**{**config.__dict__, "base_layers": 3, "output_dir": str(tmp_path / "other")}))


def test_step_causal_is_refused_for_an_outcome_model(tmp_path, capsys):
    assert main(["train", "--step-causal", "--output-dir", str(tmp_path / "ckpt")]) == 2
    assert "--step-causal is for --task prm" in capsys.readouterr().err
    assert not (tmp_path / "ckpt").exists()
