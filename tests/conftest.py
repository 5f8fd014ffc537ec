"""Shared fixtures. Tests under tests/unit are marked `unit`, under tests/integration `integration`.

`tiny_bundle` builds a real bundle (real ONNX graph, real tokenizer.json, manifest written by
rmserve.service.core.bundle) in milliseconds and without torch: reward = sum of a learned-looking weight per token.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

WORDS = ("hello there how are you doing today my friend i am fine thanks sure no help with that "
         "lock pick a the cannot one two three four five six seven eight nine ten human assistant").split()


def pytest_addoption(parser):
    parser.addoption(
        "--engine-work", type=float, default=1.0,
        help="Scale of the work each batch of the slow test bundle does (tests/integration/slow_bundle.py). The "
        "tests that hold the engine must pass at 0.25 and at 4 (scripts/check-engine-speeds.sh runs both).")


def pytest_configure(config):
    # Read by slow_bundle.py; an environment variable, so that a helper process would see it too.
    os.environ["RMSERVE_TEST_ENGINE_WORK"] = str(config.getoption("--engine-work"))


def pytest_collection_modifyitems(items):
    for item in items:
        path = str(item.fspath)
        if f"{os.sep}integration{os.sep}" in path:
            item.add_marker(pytest.mark.integration)
        elif f"{os.sep}unit{os.sep}" in path:
            item.add_marker(pytest.mark.unit)


def build_tiny_tokenizer():
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

    vocab = {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3}
    for word in WORDS + [":", "?", ".", ","]:
        vocab.setdefault(word, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    return tok


def build_tiny_onnx(path: Path, vocab_size: int, seed: int = 0) -> None:
    import onnx
    from onnx import TensorProto, helper

    weights = np.random.default_rng(seed).normal(size=(vocab_size, 1)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Gather", ["embedding", "input_ids"], ["emb"]),
            helper.make_node("Squeeze", ["emb", "axis2"], ["per_token"]),
            helper.make_node("Cast", ["attention_mask"], ["maskf"], to=TensorProto.FLOAT),
            helper.make_node("Mul", ["per_token", "maskf"], ["masked"]),
            helper.make_node("ReduceSum", ["masked", "axis1"], ["reward"], keepdims=0),
        ],
        "tiny_reward",
        [
            helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "sequence"]),
            helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "sequence"]),
        ],
        [helper.make_tensor_value_info("reward", TensorProto.FLOAT, ["batch"])],
        initializer=[
            helper.make_tensor("embedding", TensorProto.FLOAT, weights.shape, weights.flatten()),
            helper.make_tensor("axis2", TensorProto.INT64, [1], [2]),
            helper.make_tensor("axis1", TensorProto.INT64, [1], [1]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))


def make_tiny_bundle(directory: Path, max_length: int = 24, golden: bool = True) -> Path:
    from rmserve.service.core.bundle import (
        GoldenExample,
        Manifest,
        ModelInfo,
        Normalization,
        load_bundle,
        write_manifest,
    )
    from rmserve.service.core.engine import OnnxRewardModel
    from rmserve.service.core.inputs import InputSpec

    directory.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tiny_tokenizer()
    tokenizer.save(str(directory / "tokenizer.json"))
    vocab = tokenizer.get_vocab_size()
    build_tiny_onnx(directory / "model.onnx", vocab)
    manifest = Manifest(
        bundle_id="tiny",
        input=InputSpec(max_length=max_length, pad_id=0),
        model=ModelInfo(base_model="tiny-test", vocab_size=vocab, onnx_opset=17),
        normalization=Normalization(mean=0.5, std=2.0, computed_on="test", version="test-1"),
    )
    write_manifest(directory, manifest)
    if golden:
        bundle = load_bundle(directory)
        engine = OnnxRewardModel(str(bundle.model_path), device="cpu")
        encoder = bundle.encoder()
        rows = [("hello there", "i am fine thanks"), ("how are you", "no")]
        examples = [GoldenExample(prompt=p, response=r, score=float(engine(encoder.pad(encoder.encode([(p, r)])))[0]))
                    for p, r in rows]
        write_manifest(directory, manifest.model_copy(update={"golden": examples}))
    return directory


@pytest.fixture
def tiny_bundle(tmp_path: Path) -> Path:
    return make_tiny_bundle(tmp_path / "bundle")


@pytest.fixture
def tiny_tokenizer():
    return build_tiny_tokenizer()
