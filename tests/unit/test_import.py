"""`rmserve import`: hub-style reward model directories (built here, no hub) become verified bundles whose
ONNX Runtime scores are transformers' own fp32 forward of the templated text; what cannot be imported is
refused with the reason. (Serving imported bundles over HTTP and gRPC: tests/integration/test_imported_serving.py.)"""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from rmserve.cli import main  # noqa: E402
from rmserve.service.core.bundle import load_bundle  # noqa: E402
from rmserve.service.core.engine import OnnxRewardModel, check_golden  # noqa: E402
from rmserve.service.core.inputs import RowError  # noqa: E402
from rmserve.training.hf_tokenizer import TokenizerMismatch  # noqa: E402
from rmserve.training.importer import ImportRefused, import_model, source_digest  # noqa: E402
from tests.chat_models import CONVERSATIONS, TRUNCATED, make_hub_model, transformers_scores  # noqa: E402

MAX_LENGTH = 256


@pytest.fixture(scope="module", params=["qwen3", "mistral", "mistral-pad-eos", "gemma2", "roberta", "deberta-v2"])
def imported(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(f"import-{request.param}")
    source = make_hub_model(root / "hub", request.param.removesuffix("-pad-eos"), seed=1)
    if request.param.endswith("-pad-eos"):
        # pad = EOS, as TRL's recipes set it, and Mistral's template ends the answer with EOS: transformers
        # reads the reward at the token before it, and so must the bundle.
        config, tokenizer_config = (json.loads((source / name).read_text())
                                    for name in ("config.json", "tokenizer_config.json"))
        config["pad_token_id"], tokenizer_config["pad_token"] = config["eos_token_id"], tokenizer_config["eos_token"]
        (source / "config.json").write_text(json.dumps(config))
        (source / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    report = import_model(source, root / "bundle", max_length=MAX_LENGTH)
    return request.param, source, report


def test_imported_bundle_scores_are_transformers_forward_of_the_templated_text(imported):
    name, source, report = imported
    bundle = report.bundle
    kind = bundle.manifest.model.architecture
    engine, encoder = OnnxRewardModel(str(bundle.model_path), device="cpu"), bundle.encoder()
    assert TRUNCATED == len(CONVERSATIONS) - 1
    expected = transformers_scores(source, CONVERSATIONS[:TRUNCATED], kind)  # the long one exceeds the model
    usable = [i for i, score in enumerate(expected) if score is not None]
    assert len(usable) >= 19
    rows = [CONVERSATIONS[i] for i in usable] + [CONVERSATIONS[TRUNCATED]]
    encoded = encoder.encode(rows)
    scores = engine(encoder.pad(encoded))  # one padded batch of mixed lengths
    for i, row, score in zip(usable, encoded, scores):
        assert not row.truncated
        assert score == pytest.approx(expected[i], abs=1e-4), f"{name} conversation {i}"
    assert encoded[-1].truncated and len(encoded[-1].ids) == MAX_LENGTH
    assert np.ptp(scores) > 1e-4  # the conversations score differently, so a mix-up would show
    for i in [i for i in range(TRUNCATED) if i not in usable]:  # Gemma refuses system messages; so do we
        with pytest.raises(RowError):
            encoder.encode([CONVERSATIONS[i]])


def test_imported_manifest_says_what_it_is_and_where_it_came_from(imported):
    name, source, report = imported
    manifest = report.bundle.manifest
    decoder = name not in ("roberta", "deberta-v2")
    assert manifest.model.architecture == ("decoder" if decoder else "encoder")
    assert (manifest.input.chat_template is not None) == decoder
    assert manifest.input.join == ("concat" if decoder else "pair") and manifest.input.eos_id is None
    assert manifest.provenance["imported_from"] == str(source.resolve())
    assert manifest.provenance["source"] == source_digest(source)
    assert manifest.provenance["parity_max_abs_diff"] <= 1e-4 and report.tokenizer_checks > 20
    # No preference file: the identity, and the manifest says so.
    assert (manifest.normalization.mean, manifest.normalization.std) == (0.0, 1.0)
    assert manifest.normalization.computed_on.startswith("identity")
    assert manifest.calibration.temperature == 1.0 and manifest.calibration.fitted_on.startswith("none")
    assert len(manifest.golden) >= 2 and manifest.format_version == (2 if decoder else 1)
    bundle = load_bundle(report.bundle.path)
    assert check_golden(bundle, OnnxRewardModel(str(bundle.model_path), device="cpu"), bundle.encoder()) <= 1e-3


def test_a_decoder_without_a_chat_template_scores_prompt_and_response_as_one_text(tmp_path):
    """Such a model's users tokenized prompt + response as one string (BOS first, from the tokenizer): the
    bundle does the same (join "text"), where tokenizing them apart changed Mistral's first response token."""
    source = make_hub_model(tmp_path / "hub", "mistral", seed=3)
    tokenizer_config = json.loads((source / "tokenizer_config.json").read_text())
    del tokenizer_config["chat_template"]
    (source / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    report = import_model(source, tmp_path / "bundle", max_length=MAX_LENGTH)
    spec = report.bundle.manifest.input
    assert (spec.join, spec.chat_template, spec.eos_id, report.bundle.manifest.format_version) == ("text", None, None, 2)
    assert "no chat template" in report.summary()
    rows = [("Human: can you help with a lock ?\n\nAssistant:", " sure , one two three ."),
            ("hello there , how are you ?", " i am fine thanks ."), ("hi", "no")]
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(str(source))
    model = transformers.AutoModelForSequenceClassification.from_pretrained(str(source), dtype=torch.float32).eval()
    with torch.no_grad():
        expected = [model(**hf_tokenizer(p + r, return_tensors="pt")).logits[0, 0].item() for p, r in rows]
    encoder = report.bundle.encoder()
    scores = OnnxRewardModel(str(report.bundle.model_path), device="cpu")(encoder.pad(encoder.encode(rows)))
    assert scores == pytest.approx(expected, abs=1e-4)


def test_the_source_digest_covers_config_and_weights(tmp_path):
    source = make_hub_model(tmp_path / "hub", "qwen2")
    before = source_digest(source)
    assert before["files"] == ["config.json", "model.safetensors"]
    (source / "config.json").write_text((source / "config.json").read_text() + " ")
    assert source_digest(source)["config_and_weights_sha256"] != before["config_and_weights_sha256"]


def test_preferences_give_normalization_and_calibration(tmp_path):
    from tests.chat_models import write_chat_pairs

    source = make_hub_model(tmp_path / "hub", "qwen2", seed=2)
    pairs = write_chat_pairs(tmp_path / "prefs.jsonl")
    report = import_model(source, tmp_path / "bundle", preferences=pairs, max_length=128)
    manifest = report.bundle.manifest
    assert manifest.normalization.computed_on == "prefs.jsonl: chosen+rejected of 24 pairs"
    assert manifest.normalization.std != 1.0 and manifest.calibration.fitted_on.startswith("prefs.jsonl: 24 pairs")
    assert report.dev_metrics["pairs"] == 24 and manifest.provenance["dev_metrics_onnx"] == report.dev_metrics


def _edit_config(directory, **changes):
    path = directory / "config.json"
    config = json.loads(path.read_text())
    config.update(changes)
    path.write_text(json.dumps(config))


@pytest.fixture(scope="module")
def hub_bert(tmp_path_factory):
    return make_hub_model(tmp_path_factory.mktemp("hub-bert") / "hub", "bert")


@pytest.mark.parametrize("change, reason", [
    ({"auto_map": {"AutoModelForSequenceClassification": "modeling_rm.RM"}}, "needs trust_remote_code"),
    ({"model_type": "mystery-rm"}, "model_type 'mystery-rm' is unknown to transformers"),
    ({"architectures": ["BertForMaskedLM"]}, "holds a BertForMaskedLM, not a ...ForSequenceClassification"),
    ({"id2label": {"0": "bad", "1": "good"}, "label2id": {"bad": 0, "good": 1}}, "num_labels = 2"),
])
def test_what_cannot_be_imported_is_refused_with_the_reason(hub_bert, tmp_path, change, reason):
    source = tmp_path / "hub"
    shutil.copytree(hub_bert, source)
    _edit_config(source, **change)
    with pytest.raises(ImportRefused, match=reason):
        import_model(source, tmp_path / "bundle")
    assert not (tmp_path / "bundle").exists()


def test_remote_code_in_the_tokenizer_config_is_refused_too(hub_bert, tmp_path):
    source = tmp_path / "hub"
    shutil.copytree(hub_bert, source)
    config = json.loads((source / "tokenizer_config.json").read_text())
    (source / "tokenizer_config.json").write_text(json.dumps({**config, "auto_map": {"AutoTokenizer": ["tok.T", None]}}))
    with pytest.raises(ImportRefused, match="tokenizer_config.json maps classes to code"):
        import_model(source, tmp_path / "bundle")


def test_an_architecture_the_exporter_was_not_checked_on_is_refused(tmp_path):
    from tests.chat_models import write_tokenizer

    tokenizer, _ = write_tokenizer(tmp_path / "hub", "qwen2")
    config = transformers.GPT2Config(vocab_size=tokenizer.get_vocab_size(), n_embd=16, n_layer=1, n_head=2, num_labels=1)
    transformers.GPT2ForSequenceClassification(config).save_pretrained(str(tmp_path / "hub"))
    with pytest.raises(ImportRefused, match="architecture 'gpt2' is not supported by the exporter; supported: bert"):
        import_model(tmp_path / "hub", tmp_path / "bundle")


def test_a_tokenizer_json_transformers_does_not_follow_is_refused_naming_the_text(tmp_path):
    """transformers 5 rebuilds Qwen2's pre-tokenizer in code: a tokenizer.json that splits otherwise
    gives other ids there, and the import must not guess which of the two the model was trained with."""
    from tokenizers import Tokenizer, pre_tokenizers

    source = make_hub_model(tmp_path / "hub", "qwen2")
    tokenizer = Tokenizer.from_file(str(source / "tokenizer.json"))
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(),
                                                       pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tokenizer.save(str(source / "tokenizer.json"))
    with pytest.raises(TokenizerMismatch, match=r"disagree on 'Hello, world! How are you doing today\?'"):
        import_model(source, tmp_path / "bundle")


def test_the_cli_prints_the_refusal_and_exits_2(hub_bert, tmp_path, capsys):
    source = tmp_path / "hub"
    shutil.copytree(hub_bert, source)
    _edit_config(source, id2label={"0": "a", "1": "b", "2": "c"}, label2id={"a": 0, "b": 1, "c": 2})
    assert main(["import", str(source), "--output", str(tmp_path / "bundle")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("rmserve import: ") and "num_labels = 3" in err


@pytest.fixture(scope="module")
def hub_qwen2(tmp_path_factory):
    return make_hub_model(tmp_path_factory.mktemp("hub-qwen2") / "hub", "qwen2", seed=4)


def _without_the_reward_head(source):
    from safetensors.torch import load_file, save_file

    weights = load_file(str(source / "model.safetensors"))
    save_file({k: v for k, v in weights.items() if not k.startswith("score.")}, str(source / "model.safetensors"),
              metadata={"format": "pt"})


def _a_base_model_without_architectures(source):
    """The backbone alone (as `AutoModel` saves it) with a config that names no class: only the weights
    show that the reward head is not there."""
    config = transformers.AutoConfig.from_pretrained(str(source))
    transformers.AutoModel.from_config(config).save_pretrained(str(source))
    raw = json.loads((source / "config.json").read_text())
    raw.pop("architectures", None)
    (source / "config.json").write_text(json.dumps(raw))


@pytest.mark.parametrize("damage", [_without_the_reward_head, _a_base_model_without_architectures])
def test_weights_without_the_reward_head_are_refused_not_initialised_at_random(hub_qwen2, tmp_path, damage):
    """transformers fills a head missing from the checkpoint with random weights (and says so only in a
    log line): imported, such a bundle would serve random rewards that pass every parity check."""
    source = tmp_path / "hub"
    shutil.copytree(hub_qwen2, source)
    damage(source)
    with pytest.raises(ImportRefused, match=r"lack score\.weight.*initialise.*at random"):
        import_model(source, tmp_path / "bundle")
    assert not (tmp_path / "bundle").exists()


@pytest.mark.parametrize("max_length, reason", [
    (1024, "max_length 1024 is more than the model's 512 positions"),
    (4, "max_length 4 is less than 8"),
    (0, "max_length 0 is less than 8"),
])
def test_a_max_length_the_model_cannot_read_is_refused(hub_qwen2, tmp_path, max_length, reason):
    with pytest.raises(ImportRefused, match=reason):
        import_model(hub_qwen2, tmp_path / "bundle", max_length=max_length)
    assert not (tmp_path / "bundle").exists()


def _remove(*names):
    def damage(source):
        for name in names:
            (source / name).unlink()
    return damage


def _garble(name):
    def damage(source):
        (source / name).write_text("{not json")
    return damage


@pytest.mark.parametrize("damage, reason", [
    (_remove("model.safetensors"), r"has no weights: none of model\.safetensors"),
    (_remove("tokenizer.json", "tokenizer_config.json"), r"has no tokenizer: none of tokenizer\.json"),
    (_garble("config.json"), r"config\.json is not valid JSON"),
    (_garble("tokenizer_config.json"), r"tokenizer_config\.json is not valid JSON"),
])
def test_a_directory_missing_its_files_is_refused_naming_them(hub_qwen2, tmp_path, capsys, damage, reason):
    source = tmp_path / "hub"
    shutil.copytree(hub_qwen2, source)
    damage(source)
    assert main(["import", str(source), "--output", str(tmp_path / "bundle")]) == 2  # a message, not a traceback
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith("rmserve import: ")
    assert re.search(reason, err), err
    assert not (tmp_path / "bundle").exists()
