"""Precision variants of a bundle: int8 (dynamic quantization, for CPU) and fp16 (for CUDA).

A variant is only written when it keeps the fp32 bundle's judgement: on the dev pairs, the share of
pairs whose preferred response is the same under both must reach `min_agreement` (default 0.99), else
the variant is refused with the figure; the report carries the largest reward difference. Normalization
stats and the golden set are recomputed with the variant's own engine, so the variant bundle is as
self-consistent as the fp32 one.

fp16 keeps norms, softmax and the reward head in fp32 (training/onnx_graph.py). ONNX Runtime's CPU provider
runs such a graph too (it computes the ops it has no fp16 kernel for in fp32), so the check can run here;
`--device cuda` checks it where it will be served, in half precision. Variants of a bundle with external
data get external data too.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Literal

import numpy as np
import onnx

from rmserve.service.core.bundle import (
    MODEL_FILE,
    TOKENIZER_FILE,
    Bundle,
    GoldenExample,
    Normalization,
    load_bundle,
    write_manifest,
)
from rmserve.service.core.engine import OnnxRewardModel, check_golden
from rmserve.training.data import load_pairs, shipped_data
from rmserve.training.evaluate import pair_metrics, score_pairs
from rmserve.training.onnx_graph import convert_fp16, data_file_of, pack_onnx
from rmserve.training.ratings import RatingOptions
from rmserve.training.records import data_digest

Precision = Literal["int8", "fp16"]


class VariantRefused(RuntimeError):
    pass


def _quantize_int8(source: Path, target: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    raw = target.with_name("quantized.onnx")
    quantize_dynamic(
        str(source), str(raw), weight_type=QuantType.QInt8, use_external_data_format=data_file_of(source).exists(),
        extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
    )
    pack_onnx(raw, target)


def default_dev_data(normalization: Normalization) -> Path:
    """The shipped dev split, where the source bundle's normalization came from it or it has none: a variant's
    stats are recomputed on its dev pairs, so a bundle normalized on other data would silently change the
    reference its normalized rewards are measured against."""
    shipped = shipped_data("dev")
    if normalization.computed_on != "none" and not normalization.version.startswith(data_digest(shipped)):
        raise VariantRefused(f"this bundle's normalization was computed on {normalization.computed_on!r}, not on "
                             "the shipped dev split; give --dev-data (that file keeps the reference its normalized "
                             "rewards are measured against)")
    return shipped


def make_variant(bundle_dir: str | Path, output_dir: str | Path, precision: Precision,
                 dev_data: str | Path | None = None, min_agreement: float = 0.99, device: str = "cpu",
                 ratings: RatingOptions | None = None) -> tuple[Bundle, dict]:
    """Write a `precision` variant of an fp32 bundle; returns it and the agreement report. A ratings dev
    file becomes pairs with `ratings`."""
    source = load_bundle(bundle_dir)
    output_dir = Path(output_dir)
    dev_path = Path(dev_data) if dev_data else default_dev_data(source.manifest.normalization)
    pairs = load_pairs(dev_path, skip_bad_rows=True, ratings=ratings).pairs
    encoder = source.encoder()
    reference = OnnxRewardModel(str(source.model_path), device=device)  # type: ignore[arg-type]
    ref_chosen, ref_rejected = score_pairs(reference, encoder, pairs)

    with tempfile.TemporaryDirectory() as tmp:
        candidate_path = Path(tmp) / MODEL_FILE
        (_quantize_int8 if precision == "int8" else convert_fp16)(source.model_path, candidate_path)
        candidate = OnnxRewardModel(str(candidate_path), device=device)  # type: ignore[arg-type]
        chosen, rejected = score_pairs(candidate, encoder, pairs)
        agreement = float(np.mean(np.sign(chosen - rejected) == np.sign(ref_chosen - ref_rejected)))
        report = {
            "precision": precision,
            "pairs": len(pairs),
            "agreement_with_fp32": agreement,
            "max_abs_reward_diff": float(np.max(np.abs(np.concatenate([chosen - ref_chosen, rejected - ref_rejected])))),
            "accuracy_fp32": pair_metrics(ref_chosen, ref_rejected)["accuracy"],
            "accuracy_variant": pair_metrics(chosen, rejected)["accuracy"],
        }
        if agreement < min_agreement:
            raise VariantRefused(
                f"{precision} variant refused: it agrees with fp32 on {agreement:.2%} of {len(pairs)} dev pairs' "
                f"preferences (needs {min_agreement:.0%}); max |reward diff| {report['max_abs_reward_diff']:.3g}"
            )
        output_dir.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(candidate_path, output_dir / MODEL_FILE)
        if data_file_of(candidate_path).exists():
            shutil.copyfile(data_file_of(candidate_path), data_file_of(output_dir / MODEL_FILE))
        elif data_file_of(output_dir / MODEL_FILE).exists():
            data_file_of(output_dir / MODEL_FILE).unlink()
    shutil.copyfile(source.tokenizer_path, output_dir / TOKENIZER_FILE)

    rewards = np.concatenate([chosen, rejected])
    normalization = Normalization.over(rewards, dev_path.name, data_digest(dev_path), len(pairs))  # this model's stats
    manifest = source.manifest
    golden = [
        GoldenExample(prompt=g.prompt, response=g.response,
                      score=float(candidate(encoder.pad(encoder.encode([(g.prompt, g.response)])))[0]))
        for g in manifest.golden
    ]
    variant = manifest.model_copy(update={
        "bundle_id": "pending",
        "model": manifest.model.model_copy(update={"precision": precision}),
        "normalization": normalization.model_copy(update={"version": f"{normalization.version}-{precision}"}),
        "golden": golden,
        "provenance": {**manifest.provenance, "variant_of": manifest.bundle_id, "variant_report": report},
    })
    written = write_manifest(output_dir, variant)
    write_manifest(output_dir, written.model_copy(update={"bundle_id": f"rm-{written.model_sha256[:12]}-{precision}"}))
    bundle = load_bundle(output_dir)
    check_golden(bundle, OnnxRewardModel(str(bundle.model_path), device=device), bundle.encoder())  # type: ignore[arg-type]
    return bundle, report
