"""Evaluate a bundle on preference pairs with the serving engine (ONNX Runtime), in numpy.

What is measured is exactly what the service computes: same bundle, same input formatting, same engine.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from service.bundle import load_bundle
from service.engine import OnnxRewardModel
from service.inputs import InputEncoder
from training.data import PreferencePair, load_pairs, shipped_data


def engine_scores(engine: OnnxRewardModel, encoder: InputEncoder, rows: list, batch_size: int = 16) -> np.ndarray:
    """Rewards for (prompt, response) rows, in sorted-by-length batches."""
    encoded = encoder.encode(rows)
    order = np.argsort([len(e.ids) for e in encoded], kind="stable")
    scores = np.zeros(len(encoded), dtype=np.float32)
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        scores[chunk] = engine(encoder.pad([encoded[i] for i in chunk]))
    return scores


def pair_metrics(chosen: np.ndarray, rejected: np.ndarray) -> dict[str, float]:
    margin = chosen.astype(np.float64) - rejected.astype(np.float64)
    return {
        "pairs": int(len(margin)),
        "accuracy": float(np.mean(margin > 0)),
        "loss": float(np.mean(np.logaddexp(0.0, -margin))),  # Bradley–Terry: -log sigmoid(margin)
        "mean_margin": float(np.mean(margin)),
    }


def score_pairs(engine: OnnxRewardModel, encoder: InputEncoder, pairs: list[PreferencePair]) -> tuple[np.ndarray, np.ndarray]:
    chosen = engine_scores(engine, encoder, [(p.prompt, p.chosen) for p in pairs])
    rejected = engine_scores(engine, encoder, [(p.prompt, p.rejected) for p in pairs])
    return chosen, rejected


def evaluate_bundle(bundle_dir: str | Path, data: str | Path | None = None, limit: int | None = None,
                    skip_bad_rows: bool = True, device: str = "auto") -> dict[str, float]:
    bundle = load_bundle(bundle_dir)
    path = Path(data) if data else shipped_data("dev")
    pairs = load_pairs(path, limit, skip_bad_rows).pairs
    engine = OnnxRewardModel(str(bundle.model_path), device=device)  # type: ignore[arg-type]
    metrics = pair_metrics(*score_pairs(engine, bundle.encoder(), pairs))
    return {"bundle_id": bundle.manifest.bundle_id, "data": str(path), **metrics}
