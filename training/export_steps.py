"""Export a process reward model checkpoint to a PRM bundle (`rmserve export` on a `--task prm` checkpoint).

The graph returns one score per position (`token_scores`, [batch, sequence]); the manifest's `steps`
says how to read it (sigmoid at each step separator, the default aggregate) and its input spec names the
separator and its id. Before the bundle is written, torch and ONNX Runtime must agree on the step scores
of a padded batch of real chains of mixed lengths (max |diff| <= PARITY_TOLERANCE on the scores at the
separators), or export fails with the figures. The golden set records each row's step scores. Step
rewards are probabilities: normalization is the identity and there is no preference temperature; the dev
chains' step figures, scored by ONNX Runtime, go into the provenance.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from rmserve.service.core.bundle import MODEL_FILE, TOKENIZER_FILE, Bundle, ModelInfo
from rmserve.service.core.engine import OnnxRewardModel
from rmserve.service.core.inputs import Batch, InputEncoder, join_steps
from rmserve.service.core.step_scores import STEP_OUTPUT, StepRewards, read_step_scores
from rmserve.training.evaluate_steps import score_chains, step_figures
from rmserve.training.export import (
    BundleContents,
    assemble_bundle,
    compare_parity,
    torch_rewards,
)
from rmserve.training.onnx_graph import OPSET, export_onnx
from rmserve.training.records import data_digest
from rmserve.training.step_model import StepRewardModel, load_step_checkpoint
from rmserve.training.steps import StepChain, load_steps

GOLDEN_SIZE = 6


def parity_chains(chains: list[StepChain], count: int = 8) -> list[StepChain]:
    """Chains of clearly different lengths (and step counts), so the parity batch carries real padding."""
    ordered = sorted(chains, key=lambda c: len(str(c.prompt)) + sum(len(s) for s in c.steps))
    step = max(1, len(ordered) // count)
    return ordered[::step][:count]


def step_parity(model: StepRewardModel, engine: OnnxRewardModel, encoder: InputEncoder,
                rows: list[tuple]) -> tuple[float, Batch]:
    """max |torch - onnxruntime| over the step scores of one padded batch of `rows`; ExportError above the
    tolerance (export.compare_parity)."""
    batch = encoder.pad(encoder.encode(rows))
    separator = encoder.spec.step_separator_id
    assert separator is not None
    expected = np.concatenate(read_step_scores(batch.input_ids, batch.attention_mask, torch_rewards(model, batch),
                                               separator))
    actual = np.concatenate(engine(batch))
    return compare_parity(expected, actual, batch), batch


def export_step_bundle(checkpoint: Path, output_dir: Path, dev_data: str | None = None, limit_dev: int | None = None,
                       external_data: bool | None = None) -> Bundle:
    """PRM checkpoint -> verified PRM bundle directory; returns the loaded bundle."""
    model, encoder, meta = load_step_checkpoint(checkpoint)
    separator = encoder.spec.step_separator
    assert separator is not None, f"{checkpoint}: a PRM checkpoint's input spec names its step separator"
    dev_path = Path(dev_data or meta.training["dev_data"])
    chains = load_steps(dev_path, limit_dev, skip_bad_rows=True).chains
    if not chains:
        raise ValueError(f"{dev_path} has no step-labelled chains to check the export on")
    rows = [(c.prompt, join_steps(c.steps, separator)) for c in parity_chains(chains)]
    steps = StepRewards(aggregate=meta.training.get("step_aggregate", "min"))
    output_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=output_dir.parent) as tmp:
        onnx_path = Path(tmp) / MODEL_FILE
        export_onnx(model, onnx_path, external_data, output=STEP_OUTPUT)
        engine = OnnxRewardModel(str(onnx_path), device="cpu", step_separator_id=encoder.spec.step_separator_id)
        worst, batch = step_parity(model, engine, encoder, rows)
        print(f"parity: max |torch - onnxruntime| = {worst:.2e} over the step scores of a padded batch of "
              f"{len(rows)} chains ({int(batch.attention_mask.sum(axis=1).min())}-{batch.input_ids.shape[1]} tokens)")
        dev_figures = {"chains": len(chains), **step_figures(score_chains(engine, encoder, chains))}
        del engine
        hf_config = model.hf_model.config
        contents = BundleContents(
            encoder=encoder,
            model=ModelInfo(architecture="decoder" if model.is_decoder else "encoder",
                            pooling="last_token" if model.is_decoder else "model_head", base_model=meta.base_model,
                            vocab_size=int(hf_config.vocab_size), onnx_opset=OPSET),
            tokenizer_json=(checkpoint / TOKENIZER_FILE).read_text(encoding="utf-8"),
            golden_rows=rows[:: max(1, len(rows) // GOLDEN_SIZE)][:GOLDEN_SIZE],
            provenance={"checkpoint": str(checkpoint), "base_model": meta.base_model, "training": meta.training,
                        "train_metrics": meta.metrics, "dev_data": str(dev_path), "dev_digest": data_digest(dev_path),
                        "parity_max_abs_diff": worst, "dev_step_metrics_onnx": dev_figures},
            steps=steps,
        )
        bundle, _ = assemble_bundle(onnx_path, output_dir, contents)
    auc = dev_figures["step_auc"]
    print(f"PRM bundle {bundle.manifest.bundle_id} written to {output_dir}: dev step AUC "
          f"{'n/a' if auc is None else f'{auc:.4f}'} on {len(chains)} chains (onnxruntime), default aggregate "
          f"{steps.aggregate}")
    return bundle
