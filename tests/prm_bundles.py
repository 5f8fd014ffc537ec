"""A tiny process reward model bundle for tests, built in milliseconds without torch: a real ONNX graph whose
score at each position is the running sum of a weight per token (so every step's score depends on the
steps before it), the tiny word-level tokenizer with the step separator added, and a manifest written by
rmserve.service.core.bundle with golden step scores from the real engine. Also what tests train a real PRM
from: a tiny random BERT base (torch, imported only there) and a step file it learns in seconds."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from tests.conftest import build_tiny_tokenizer

SEPARATOR = "<step>"


def build_tiny_prm_onnx(path: Path, vocab_size: int, seed: int = 1) -> None:
    import onnx
    from onnx import TensorProto, helper

    weights = np.random.default_rng(seed).normal(scale=0.5, size=(vocab_size, 1)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Gather", ["embedding", "input_ids"], ["emb"]),
            helper.make_node("Squeeze", ["emb", "axis2"], ["per_token"]),
            helper.make_node("Cast", ["attention_mask"], ["maskf"], to=TensorProto.FLOAT),
            helper.make_node("Mul", ["per_token", "maskf"], ["masked"]),
            helper.make_node("CumSum", ["masked", "axis1"], ["token_scores"]),
        ],
        "tiny_prm",
        [
            helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "sequence"]),
            helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "sequence"]),
        ],
        [helper.make_tensor_value_info("token_scores", TensorProto.FLOAT, ["batch", "sequence"])],
        initializer=[
            helper.make_tensor("embedding", TensorProto.FLOAT, weights.shape, weights.flatten()),
            helper.make_tensor("axis2", TensorProto.INT64, [1], [2]),
            helper.make_tensor("axis1", TensorProto.INT64, [], [1]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))


def make_tiny_prm_bundle(directory: Path, max_length: int = 32, aggregate: str = "min") -> Path:
    from tokenizers import AddedToken

    from rmserve.service.core.bundle import GoldenExample, Manifest, ModelInfo, load_bundle, write_manifest
    from rmserve.service.core.engine import OnnxRewardModel
    from rmserve.service.core.inputs import InputSpec, join_steps
    from rmserve.service.core.step_scores import StepRewards, activate
    from rmserve.service.core.step_scores import aggregate as aggregate_of

    directory.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tiny_tokenizer()
    tokenizer.add_special_tokens([AddedToken(SEPARATOR, special=True, normalized=False)])
    separator_id = tokenizer.token_to_id(SEPARATOR)
    tokenizer.save(str(directory / "tokenizer.json"))
    vocab = tokenizer.get_vocab_size()
    build_tiny_prm_onnx(directory / "model.onnx", vocab)
    steps = StepRewards(aggregate=aggregate)
    manifest = Manifest(
        bundle_id="tiny-prm",
        input=InputSpec(max_length=max_length, pad_id=0, step_separator=SEPARATOR, step_separator_id=separator_id),
        model=ModelInfo(base_model="tiny-test", vocab_size=vocab, onnx_opset=17),
        steps=steps,
    )
    write_manifest(directory, manifest)
    bundle = load_bundle(directory)
    engine = OnnxRewardModel.for_bundle(bundle, device="cpu")
    encoder = bundle.encoder()
    golden = []
    for prompt, chain in (("hello there", ["one two", "three four five"]), ("how are you", ["i am fine"])):
        response = join_steps(chain, SEPARATOR)
        (scores,) = engine(encoder.pad(encoder.encode([(prompt, response)])))
        golden.append(GoldenExample(prompt=prompt, response=response, score=aggregate_of(activate(scores), aggregate),
                                    step_scores=scores.tolist()))
    write_manifest(directory, manifest.model_copy(update={"golden": golden}))
    return directory


def tiny_encoder_base(directory: Path) -> Path:
    """A tiny randomly initialised BERT with the tiny word-level tokenizer, saved as a base model directory."""
    import torch
    import transformers

    tokenizer = build_tiny_tokenizer()
    config = transformers.BertConfig(vocab_size=tokenizer.get_vocab_size(), hidden_size=16, num_hidden_layers=2,
                                     num_attention_heads=2, intermediate_size=32, max_position_embeddings=128,
                                     num_labels=1, pad_token_id=0)
    torch.manual_seed(0)
    transformers.BertForSequenceClassification(config).save_pretrained(str(directory))
    tokenizer.save(str(directory / "tokenizer.json"))
    return directory


def step_file(path: Path, n: int = 48) -> Path:
    """Chains whose bad steps say "no": learnable by a tiny model in a few steps; every step from the
    first bad one on is bad, as in the generator."""
    words = ["one two", "three four", "five six seven", "eight nine", "ten"]
    rows = []
    for i in range(n):
        steps = [words[(i + k) % len(words)] for k in range(2 + i % 4)]
        labels = [True] * len(steps)
        if i % 2:
            first = (i // 2) % len(steps)
            steps[first] = "no " + steps[first]
            labels = [k < first for k in range(len(steps))]
        rows.append({"prompt": f"hello there {i % 7}", "completions": steps, "labels": labels, "problem": f"p{i // 2}"})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def train_tiny_prm(root: Path, epochs: int) -> tuple[Path, Path, Path]:
    """Train a tiny PRM with `rmserve train --task prm` on `step_file` from `tiny_encoder_base` and export it;
    returns (step file, checkpoint directory, bundle directory), all under `root`."""
    from rmserve.cli import main

    base = tiny_encoder_base(root / "base")
    data = step_file(root / "steps.jsonl")
    assert main(["train", "--task", "prm", "--base-model", str(base), "--train-data", str(data), "--dev-data",
                 str(data), "--output-dir", str(root / "ckpt"), "--batch-size", "8", "--epochs", str(epochs),
                 "--learning-rate", "3e-3", "--max-length", "48", "--no-progress", "--no-tensorboard",
                 "--export-to", str(root / "bundle")]) == 0
    return data, root / "ckpt", root / "bundle"
