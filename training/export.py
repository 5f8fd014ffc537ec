"""Export a training checkpoint to a bundle: ONNX model, tokenizer, manifest.

The ONNX graph has dynamic batch and sequence axes and an IR version ONNX Runtime 1.31 reads. Before the
bundle is written, torch and ONNX Runtime must agree on a padded batch of real rows of mixed lengths
(max |diff| <= PARITY_TOLERANCE), or export fails with the figures. Normalization stats and the golden set
are computed with the ONNX Runtime engine, i.e. exactly what the service will run.
"""

from __future__ import annotations

import hashlib
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import onnx
import torch

from rmserve.service.core.bundle import (
    MODEL_FILE,
    TOKENIZER_FILE,
    Bundle,
    GoldenExample,
    Manifest,
    ModelInfo,
    Normalization,
    load_bundle,
    write_manifest,
)
from rmserve.service.core.engine import OnnxRewardModel, check_golden
from rmserve.service.core.inputs import InputEncoder
from rmserve.training.data import load_pairs, shipped_data
from rmserve.training.evaluate import bundle_calibration, labels_of, pair_metrics, score_pairs
from rmserve.training.model import RewardModel, load_checkpoint
from rmserve.training.ratings import RatingOptions
from rmserve.training.records import PreferencePair

PARITY_TOLERANCE = 1e-4
OPSET = 17
MAX_IR_VERSION = 10  # ONNX Runtime 1.31 rejects IR 14; 10 is what opset 17 needs at most
GOLDEN_SIZE = 6


class ExportError(RuntimeError):
    pass


def export_onnx(model: RewardModel, path: Path) -> None:
    model.eval()
    # Dummy dims >= 2 so the exporter does not specialise the dynamic axes to 1.
    ids = torch.ones((2, 16), dtype=torch.int64)
    mask = torch.ones((2, 16), dtype=torch.int64)
    with torch.no_grad():
        torch.onnx.export(
            model,
            (ids, mask),
            str(path),
            input_names=["input_ids", "attention_mask"],
            output_names=["reward"],
            dynamic_axes={"input_ids": {0: "batch", 1: "sequence"}, "attention_mask": {0: "batch", 1: "sequence"},
                          "reward": {0: "batch"}},
            opset_version=OPSET,
            dynamo=False,
        )
    proto = onnx.load(str(path))
    if proto.ir_version > MAX_IR_VERSION:
        proto.ir_version = MAX_IR_VERSION
        onnx.save(proto, str(path))
    onnx.checker.check_model(str(path))


def parity_rows(pairs: list[PreferencePair], count: int = 8) -> list:
    """Real rows of clearly different lengths, so the parity batch carries real padding."""
    rows = [(p.prompt, p.chosen) for p in pairs] + [(p.prompt, p.rejected) for p in pairs]
    rows.sort(key=lambda r: len(str(r[0])) + len(r[1]))
    step = max(1, len(rows) // count)
    return rows[::step][:count]


def check_parity(model: RewardModel, engine: OnnxRewardModel, encoder: InputEncoder, rows: list) -> float:
    batch = encoder.pad(encoder.encode(rows))
    with torch.no_grad():
        expected = model(torch.from_numpy(batch.input_ids), torch.from_numpy(batch.attention_mask)).numpy()
    actual = engine(batch)
    worst = float(np.max(np.abs(expected - actual)))
    lengths = batch.attention_mask.sum(axis=1).tolist()
    if not np.isfinite(worst) or worst > PARITY_TOLERANCE:
        raise ExportError(
            f"ONNX parity failed on a padded batch of {len(rows)} rows (lengths {lengths}): "
            f"max |torch - onnxruntime| = {worst:.3e} > {PARITY_TOLERANCE:g}"
        )
    return worst


def _git_sha() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def export_bundle(checkpoint: str | Path, output_dir: str | Path, dev_data: str | None = None,
                  limit_dev: int | None = None, skip_bad_rows: bool = True) -> Bundle:
    """Checkpoint -> verified bundle directory. Returns the loaded bundle."""
    checkpoint, output_dir = Path(checkpoint), Path(output_dir)
    model, encoder, meta = load_checkpoint(checkpoint)
    dev_path = Path(dev_data) if dev_data else Path(meta.training.get("dev_data") or shipped_data("dev"))
    # A ratings dev file becomes pairs with the rating options training used, as training's own dev set did.
    dev_pairs = load_pairs(dev_path, limit_dev, skip_bad_rows, RatingOptions.from_checkpoint(meta.training)).pairs
    output_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=output_dir.parent) as tmp:
        onnx_path = Path(tmp) / MODEL_FILE
        export_onnx(model, onnx_path)
        engine = OnnxRewardModel(str(onnx_path), device="cpu")
        worst = check_parity(model, engine, encoder, parity_rows(dev_pairs))
        print(f"parity: max |torch - onnxruntime| = {worst:.2e} on a padded mixed-length batch")
        chosen, rejected = score_pairs(engine, encoder, dev_pairs)
        labels = labels_of(dev_pairs)
        metrics, rewards = pair_metrics(chosen, rejected, labels), np.concatenate([chosen, rejected])
        calibration = bundle_calibration(engine, encoder, meta.training, chosen.astype(np.float64) - rejected,
                                         labels, dev_path.name)
        golden_rows = parity_rows(dev_pairs, GOLDEN_SIZE)
        golden = [
            GoldenExample(prompt=prompt, response=response, score=float(engine(encoder.pad(encoder.encode([(prompt, response)])))[0]))
            for prompt, response in golden_rows
        ]
        onnx_path.replace(output_dir / MODEL_FILE)
    (output_dir / TOKENIZER_FILE).write_bytes((checkpoint / TOKENIZER_FILE).read_bytes())

    reference = hashlib.sha256(dev_path.read_bytes()).hexdigest()[:12]
    spec = encoder.spec
    manifest = Manifest(
        bundle_id="pending",
        input=spec,
        model=ModelInfo(
            # Llama-style configs do not set is_decoder; the model's structure says what it is.
            architecture="decoder" if model.is_decoder else "encoder",
            pooling="last_token" if model.is_decoder else "model_head",
            base_model=meta.base_model,
            vocab_size=int(model.hf_model.config.vocab_size),
            onnx_opset=OPSET,
        ),
        normalization=Normalization(
            mean=float(rewards.mean()), std=float(max(rewards.std(), 1e-6)),
            computed_on=f"{dev_path.name}: chosen+rejected of {len(dev_pairs)} pairs",
            version=f"{reference}-{len(rewards)}",
        ),
        calibration=calibration,
        provenance={
            "checkpoint": str(checkpoint),
            "base_model": meta.base_model,
            "training": meta.training,
            "train_metrics": meta.metrics,
            "dev_metrics_onnx": metrics,
            "dev_data": str(dev_path),
            "parity_max_abs_diff": worst,
            "git_sha": _git_sha(),
            "torch": torch.__version__,
        },
        golden=golden,
    )
    manifest = write_manifest(output_dir, manifest)
    manifest = manifest.model_copy(update={"bundle_id": f"rm-{manifest.model_sha256[:12]}"})
    write_manifest(output_dir, manifest)
    bundle = load_bundle(output_dir)
    check_golden(bundle, OnnxRewardModel(str(bundle.model_path), device="cpu"), bundle.encoder())
    print(f"bundle {manifest.bundle_id} written to {output_dir}: dev accuracy {metrics['accuracy']:.4f} "
          f"on {metrics['pairs']} pairs (onnxruntime), calibration temperature {calibration.temperature:.4g}")
    return bundle
