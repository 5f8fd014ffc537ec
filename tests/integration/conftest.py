"""Fixtures shared by the integration tests: one small real training run and its bundle per session."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    """Train a few steps on a small slice of the shipped data and export it: (root, bundle, model, encoder)."""
    pytest.importorskip("torch")
    from rmserve.training.config import TrainConfig
    from rmserve.training.export import export_bundle
    from rmserve.training.model import load_checkpoint
    from rmserve.training.train import train

    root = tmp_path_factory.mktemp("e2e")
    train(TrainConfig(output_dir=str(root / "ckpt"), limit_train=24, limit_dev=12, max_steps=3, batch_size=8,
                      max_length=128, skip_bad_rows=True, progress=False))
    bundle = export_bundle(root / "ckpt", root / "bundle", limit_dev=12)
    model, encoder, _ = load_checkpoint(root / "ckpt")
    return root, bundle, model, encoder
