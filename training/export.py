"""Export a training checkpoint to a bundle, and the steps every bundle writer shares (export, import).

Before a bundle is written, torch and ONNX Runtime must agree on a padded batch of real rows of mixed
lengths (max |diff| <= PARITY_TOLERANCE), or export fails with the figures. Normalization stats, the
calibration temperature and the golden set are computed with the ONNX Runtime engine, i.e. exactly what
the service will run. Large weights go to external data (training/onnx_graph.py); the bundle's manifest
hashes those files too.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rmserve.service.core.bundle import (
    MODEL_FILE,
    TOKENIZER_FILE,
    Bundle,
    Calibration,
    GoldenExample,
    Manifest,
    ModelInfo,
    Normalization,
    load_bundle,
    write_manifest,
)
from rmserve.service.core.engine import OnnxRewardModel, check_golden
from rmserve.service.core.inputs import Batch, InputEncoder
from rmserve.service.core.step_scores import StepRewards, activate, aggregate
from rmserve.training.data import load_pairs, shipped_data
from rmserve.training.evaluate import (
    bundle_calibration,
    fit_calibration,
    labels_of,
    pair_metrics,
    score_pairs,
)
from rmserve.training.model import load_checkpoint
from rmserve.training.onnx_graph import MAX_IR_VERSION, OPSET, data_file_of, export_onnx  # noqa: F401 (re-exported)
from rmserve.training.ratings import RatingOptions
from rmserve.training.records import PreferencePair, data_digest
from rmserve.training.step_model import PRM_KIND, checkpoint_kind

PARITY_TOLERANCE = 1e-4
GOLDEN_SIZE = 6


class ExportError(RuntimeError):
    pass


def parity_rows(pairs: list[PreferencePair], count: int = 8) -> list:
    """Real rows of clearly different lengths, so the parity batch carries real padding."""
    rows = [(p.prompt, p.chosen) for p in pairs] + [(p.prompt, p.rejected) for p in pairs]
    rows.sort(key=lambda r: len(str(r[0])) + len(r[1]))
    step = max(1, len(rows) // count)
    return rows[::step][:count]


@torch.no_grad()
def torch_rewards(model: torch.nn.Module, batch: Batch) -> np.ndarray:
    return model(torch.from_numpy(batch.input_ids), torch.from_numpy(batch.attention_mask)).float().numpy()


def compare_parity(expected: np.ndarray, actual: np.ndarray, batch: Batch) -> float:
    """max |torch - onnxruntime| on `batch`; ExportError with the figures above PARITY_TOLERANCE."""
    worst = float(np.max(np.abs(expected - actual)))
    lengths = batch.attention_mask.sum(axis=1).tolist()
    if not np.isfinite(worst) or worst > PARITY_TOLERANCE:
        raise ExportError(
            f"ONNX parity failed on a padded batch of {len(lengths)} rows (lengths {lengths}): "
            f"max |torch - onnxruntime| = {worst:.3e} > {PARITY_TOLERANCE:g}"
        )
    return worst


def check_parity(model: torch.nn.Module, engine: Callable[[Batch], np.ndarray], encoder: InputEncoder, rows: list) -> float:
    batch = encoder.pad(encoder.encode(rows))
    return compare_parity(torch_rewards(model, batch), engine(batch), batch)


def git_sha() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


@dataclass
class BundleContents:
    """What a bundle writer hands `assemble_bundle` besides the exported graph."""

    encoder: InputEncoder
    model: ModelInfo
    tokenizer_json: str
    golden_rows: list
    provenance: dict[str, Any] = field(default_factory=dict)
    dev_pairs: list[PreferencePair] | None = None  # None: identity normalization, temperature 1
    dev_name: str = ""
    dev_digest: str = ""
    training: dict[str, Any] | None = None  # the checkpoint's training options: where its calibration split is
    steps: StepRewards | None = None  # a process reward model: golden rows record their step scores


def golden_example(engine: OnnxRewardModel, encoder: InputEncoder, row: tuple, steps: StepRewards | None) -> GoldenExample:
    """A golden row with what the engine scores it: its reward, or a PRM's step scores and their aggregate."""
    prompt, response = row
    (out,) = engine(encoder.pad(encoder.encode([row])))
    if steps is None:
        return GoldenExample(prompt=prompt, response=response, score=float(out))
    return GoldenExample(prompt=prompt, response=response, score=aggregate(activate(out), steps.aggregate),
                         step_scores=[float(x) for x in out])


def _stats(engine: OnnxRewardModel, contents: BundleContents) -> tuple[Normalization, Calibration, dict | None]:
    pairs = contents.dev_pairs
    if not pairs:
        return (Normalization(computed_on="identity: no preference data given", version="identity"),
                Calibration(fitted_on="none: no preference data given"), None)
    chosen, rejected = score_pairs(engine, contents.encoder, pairs)
    labels = labels_of(pairs)
    rewards = np.concatenate([chosen, rejected])
    normalization = Normalization.over(rewards, contents.dev_name, contents.dev_digest, len(pairs))
    delta = chosen.astype(np.float64) - rejected
    calibration = (bundle_calibration(engine, contents.encoder, contents.training, delta, labels, contents.dev_name)
                   if contents.training is not None else fit_calibration(delta, labels, contents.dev_name))
    return normalization, calibration, pair_metrics(chosen, rejected, labels)


def assemble_bundle(staged_model: Path, output_dir: Path, contents: BundleContents) -> tuple[Bundle, dict | None]:
    """Score the golden set and the dev pairs with ONNX Runtime, move the exported graph (and its external
    data) into `output_dir`, write tokenizer and manifest, and prove the result loads and reproduces its
    golden set. One ONNX Runtime session at a time: a large model's weights are in memory once. Returns
    the bundle and the dev metrics (None without dev pairs)."""
    encoder = contents.encoder
    engine = OnnxRewardModel(str(staged_model), device="cpu", step_separator_id=encoder.spec.step_separator_id)
    normalization, calibration, metrics = _stats(engine, contents)
    golden = [golden_example(engine, encoder, row, contents.steps) for row in contents.golden_rows]
    del engine
    output_dir.mkdir(parents=True, exist_ok=True)
    staged_data, data = data_file_of(staged_model), data_file_of(output_dir / MODEL_FILE)
    if staged_data.exists():
        shutil.move(str(staged_data), str(data))
    elif data.exists():
        data.unlink()  # a stale file from an earlier bundle in this directory
    shutil.move(str(staged_model), str(output_dir / MODEL_FILE))
    (output_dir / TOKENIZER_FILE).write_text(contents.tokenizer_json, encoding="utf-8")
    provenance = {**contents.provenance, "git_sha": git_sha(), "torch": torch.__version__}
    if metrics is not None:
        provenance["dev_metrics_onnx"] = metrics
    manifest = Manifest(bundle_id="pending", input=encoder.spec, model=contents.model, normalization=normalization,
                        calibration=calibration, provenance=provenance, golden=golden, steps=contents.steps)
    manifest = write_manifest(output_dir, manifest)
    write_manifest(output_dir, manifest.model_copy(update={"bundle_id": f"rm-{manifest.model_sha256[:12]}"}))
    bundle = load_bundle(output_dir)
    check_golden(bundle, OnnxRewardModel.for_bundle(bundle, device="cpu"), bundle.encoder())
    return bundle, metrics


def export_bundle(checkpoint: str | Path, output_dir: str | Path, dev_data: str | None = None,
                  limit_dev: int | None = None, skip_bad_rows: bool = True, external_data: bool | None = None) -> Bundle:
    """Checkpoint -> verified bundle directory. Returns the loaded bundle. `external_data`: weights in
    model.onnx.data (None: when they are large)."""
    checkpoint, output_dir = Path(checkpoint), Path(output_dir)
    if checkpoint_kind(checkpoint) == PRM_KIND:
        raise ValueError(f"{checkpoint} is a process reward model checkpoint: export it with "
                         "rmserve.training.export_steps.export_step_bundle (`rmserve export` chooses by itself)")
    model, encoder, meta = load_checkpoint(checkpoint)
    dev_path = Path(dev_data) if dev_data else Path(meta.training.get("dev_data") or shipped_data("dev"))
    # A ratings dev file becomes pairs with the rating options training used, as training's own dev set did.
    dev_pairs = load_pairs(dev_path, limit_dev, skip_bad_rows, RatingOptions.from_checkpoint(meta.training)).pairs
    output_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=output_dir.parent) as tmp:
        onnx_path = Path(tmp) / MODEL_FILE
        export_onnx(model, onnx_path, external_data)
        worst = check_parity(model, OnnxRewardModel(str(onnx_path), device="cpu"), encoder, parity_rows(dev_pairs))
        print(f"parity: max |torch - onnxruntime| = {worst:.2e} on a padded mixed-length batch")
        contents = BundleContents(
            encoder=encoder,
            model=ModelInfo(
                # Llama-style configs do not set is_decoder; the model's structure says what it is.
                architecture="decoder" if model.is_decoder else "encoder",
                pooling="last_token" if model.is_decoder else "model_head",
                base_model=meta.base_model,
                vocab_size=int(model.hf_model.config.vocab_size),
                onnx_opset=OPSET,
            ),
            tokenizer_json=(checkpoint / TOKENIZER_FILE).read_text(encoding="utf-8"),
            golden_rows=parity_rows(dev_pairs, GOLDEN_SIZE),
            provenance={"checkpoint": str(checkpoint), "base_model": meta.base_model, "training": meta.training,
                        "train_metrics": meta.metrics, "dev_data": str(dev_path), "parity_max_abs_diff": worst},
            dev_pairs=dev_pairs, dev_name=dev_path.name, dev_digest=data_digest(dev_path), training=meta.training,
        )
        bundle, metrics = assemble_bundle(onnx_path, output_dir, contents)
    manifest = bundle.manifest
    print(f"bundle {manifest.bundle_id} written to {output_dir}: dev accuracy {metrics['accuracy']:.4f} "  # type: ignore[index]
          f"on {metrics['pairs']} pairs (onnxruntime), calibration temperature {manifest.calibration.temperature:.4g}")
    return bundle
