"""Bundles with external data (what a model over 2 GB needs, forced here on a tiny one): the weights sit in
one model.onnx.data inside the bundle, hashed in the manifest and verified at load; a tampered file is
refused by name, and so is any external-data location outside the bundle directory."""

from __future__ import annotations

import hashlib
import json
import os

import numpy as np
import pytest

pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
pytest.importorskip("transformers")

from rmserve.service.core.bundle import BundleError, load_bundle  # noqa: E402
from rmserve.service.core.engine import OnnxRewardModel, check_golden  # noqa: E402
from rmserve.service.core.onnx_files import external_files  # noqa: E402
from rmserve.training.importer import import_model  # noqa: E402
from rmserve.training.onnx_graph import ALIGNMENT, pack_onnx  # noqa: E402
from tests.chat_models import CONVERSATIONS, make_hub_model  # noqa: E402


@pytest.fixture(scope="module")
def external_bundle(tmp_path_factory):
    root = tmp_path_factory.mktemp("external")
    source = make_hub_model(root / "hub", "qwen2", seed=3)
    import_model(source, root / "inline", max_length=128, external_data=False)
    import_model(source, root / "bundle", max_length=128, external_data=True)
    return root


def copy_bundle(external_bundle, tmp_path):
    import shutil

    return shutil.copytree(external_bundle / "bundle", tmp_path / "bundle")


def rewrite_location(bundle_dir, location: str) -> None:
    """Point every external tensor at `location` and re-hash model.onnx, so only the location is wrong."""
    model = onnx.load(str(bundle_dir / "model.onnx"), load_external_data=False)
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = location
    onnx.save(model, str(bundle_dir / "model.onnx"))
    manifest = json.loads((bundle_dir / "bundle.json").read_text())
    manifest["files"]["model.onnx"] = hashlib.sha256((bundle_dir / "model.onnx").read_bytes()).hexdigest()
    (bundle_dir / "bundle.json").write_text(json.dumps(manifest))


def test_weights_go_to_one_hashed_file_and_the_bundle_scores_as_the_inline_one(external_bundle):
    bundle = load_bundle(external_bundle / "bundle")
    inline = load_bundle(external_bundle / "inline")
    assert external_files(bundle.model_path) == ["model.onnx.data"] and external_files(inline.model_path) == []
    assert sorted(bundle.manifest.files) == ["model.onnx", "model.onnx.data", "tokenizer.json"]
    assert bundle.manifest.format_version == 2
    data = bundle.path / "model.onnx.data"
    moved = inline.model_path.stat().st_size - bundle.model_path.stat().st_size
    assert moved > 100_000 and data.stat().st_size >= moved  # the weights left the graph (aligned: padding)
    assert not (inline.path / "model.onnx.data").exists()
    model = onnx.load(str(bundle.model_path), load_external_data=False)
    offsets = [int(e.value) for t in model.graph.initializer for e in t.external_data if e.key == "offset"]
    assert offsets and all(o % ALIGNMENT == 0 for o in offsets)  # ONNX Runtime can map them
    encoder = bundle.encoder()
    batch = encoder.pad(encoder.encode(CONVERSATIONS[:6]))
    outside = OnnxRewardModel(str(bundle.model_path), device="cpu")(batch)
    within = OnnxRewardModel(str(inline.model_path), device="cpu")(batch)
    np.testing.assert_array_equal(outside, within)
    assert check_golden(bundle, OnnxRewardModel(str(bundle.model_path), device="cpu"), encoder) <= 1e-6


def test_a_tampered_external_file_is_refused_by_name(external_bundle, tmp_path):
    bundle_dir = copy_bundle(external_bundle, tmp_path)
    data = bundle_dir / "model.onnx.data"
    raw = bytearray(data.read_bytes())
    raw[ALIGNMENT + 3] ^= 0x40  # one bit of one weight
    data.write_bytes(bytes(raw))
    with pytest.raises(BundleError, match=r"bad hash: .*model\.onnx\.data has sha256"):
        load_bundle(bundle_dir)


def test_a_missing_external_file_is_refused_by_name(external_bundle, tmp_path):
    bundle_dir = copy_bundle(external_bundle, tmp_path)
    (bundle_dir / "model.onnx.data").unlink()
    with pytest.raises(BundleError, match=r"missing file: .*model\.onnx\.data"):
        load_bundle(bundle_dir)


@pytest.mark.parametrize("where", ["parent", "absolute", "symlink"])
def test_an_external_location_outside_the_bundle_is_refused(external_bundle, tmp_path, where):
    bundle_dir = copy_bundle(external_bundle, tmp_path)
    outside = tmp_path / "elsewhere.data"
    (bundle_dir / "model.onnx.data").rename(outside)
    if where == "parent":
        rewrite_location(bundle_dir, "../elsewhere.data")
    elif where == "absolute":
        rewrite_location(bundle_dir, str(outside))
    else:  # the name is inside, the file it leads to is not
        os.symlink(outside, bundle_dir / "model.onnx.data")
    with pytest.raises(BundleError, match="external data outside the bundle: model.onnx stores tensor"):
        load_bundle(bundle_dir)
    with pytest.raises(BundleError, match="external data outside the bundle"):
        load_bundle(bundle_dir, verify_hashes=False)


def test_loose_per_tensor_files_are_packed_into_one(external_bundle, tmp_path):
    """torch's exporter writes a large model as one file per tensor; packing gathers them."""
    from onnx.external_data_helper import convert_model_to_external_data

    model = onnx.load(str(external_bundle / "inline" / "model.onnx"))
    convert_model_to_external_data(model, all_tensors_to_one_file=False, size_threshold=256)
    (tmp_path / "loose").mkdir()
    onnx.save(model, str(tmp_path / "loose" / "model.onnx"))
    loose = [p for p in (tmp_path / "loose").iterdir() if p.name != "model.onnx"]
    assert len(loose) > 10
    pack_onnx(tmp_path / "loose" / "model.onnx", tmp_path / "model.onnx")  # external already: stays external
    assert external_files(tmp_path / "model.onnx") == ["model.onnx.data"]
    onnx.checker.check_model(str(tmp_path / "model.onnx"))
    rng = np.random.default_rng(0)
    from rmserve.service.core.inputs import Batch

    batch = Batch(rng.integers(3, 300, (3, 20)).astype(np.int64), np.ones((3, 20), dtype=np.int64))
    packed = OnnxRewardModel(str(tmp_path / "model.onnx"), device="cpu")(batch)
    original = OnnxRewardModel(str(external_bundle / "inline" / "model.onnx"), device="cpu")(batch)
    np.testing.assert_array_equal(packed, original)
