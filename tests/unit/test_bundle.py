import json
import shutil

import numpy as np
import pytest

from rmserve.service.core.bundle import BundleError, Normalization, load_bundle
from rmserve.service.core.engine import OnnxRewardModel, check_golden
from tests.conftest import build_tiny_onnx


def edit_manifest(bundle_dir, **changes):
    path = bundle_dir / "bundle.json"
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def test_a_good_bundle_loads_and_reproduces_its_golden_set(tiny_bundle):
    bundle = load_bundle(tiny_bundle)
    assert bundle.manifest.bundle_id == "tiny" and len(bundle.manifest.golden) == 2
    engine = OnnxRewardModel(str(bundle.model_path), device="cpu")
    assert engine.provider == "CPUExecutionProvider"
    assert check_golden(bundle, engine, bundle.encoder()) == 0.0


def test_normalization_version_names_the_stats_not_only_the_reference_set():
    """Two models scored on the same reference file must not share a version: a client caching by it would
    mix their stats up."""
    one = Normalization.over(np.array([0.5, -0.5, 1.0, 0.0]), "dev.jsonl", "abc123", pairs=2)
    assert (one.mean, one.std) == (0.25, pytest.approx(0.5590169943749475))
    assert one.computed_on == "dev.jsonl: chosen+rejected of 2 pairs" and one.version.startswith("abc123-4-")
    assert Normalization.over(np.array([0.5, -0.5, 1.0, 0.0]), "dev.jsonl", "abc123", pairs=2).version == one.version
    other = Normalization.over(np.array([0.6, -0.5, 1.0, 0.0]), "dev.jsonl", "abc123", pairs=2)
    assert other.version != one.version


def test_missing_directory(tmp_path):
    with pytest.raises(BundleError, match="does not exist"):
        load_bundle(tmp_path / "nope")


def test_missing_manifest(tmp_path):
    (tmp_path / "b").mkdir()
    with pytest.raises(BundleError, match="missing file: .*bundle.json"):
        load_bundle(tmp_path / "b")


@pytest.mark.parametrize("name", ["model.onnx", "tokenizer.json"])
def test_missing_file(tiny_bundle, name):
    (tiny_bundle / name).unlink()
    with pytest.raises(BundleError, match=f"missing file: .*{name}"):
        load_bundle(tiny_bundle)


def test_bad_hash(tiny_bundle):
    build_tiny_onnx(tiny_bundle / "model.onnx", 40, seed=1)  # other weights, same shape
    with pytest.raises(BundleError, match="bad hash: .*model.onnx"):
        load_bundle(tiny_bundle)


def test_wrong_format_version(tiny_bundle):
    edit_manifest(tiny_bundle, format_version=99)
    with pytest.raises(BundleError, match="wrong format version: .* 99, this rmserve reads versions 1, 2"):
        load_bundle(tiny_bundle)


def test_invalid_manifest_names_the_field(tiny_bundle):
    path = tiny_bundle / "bundle.json"
    data = json.loads(path.read_text())
    data["input"]["max_length"] = "long"
    path.write_text(json.dumps(data))
    with pytest.raises(BundleError, match="field 'input.max_length'"):
        load_bundle(tiny_bundle)


def test_manifest_not_json(tiny_bundle):
    (tiny_bundle / "bundle.json").write_text("{")
    with pytest.raises(BundleError, match="not valid JSON"):
        load_bundle(tiny_bundle)


def test_tokenizer_model_mismatch(tiny_bundle):
    data = json.loads((tiny_bundle / "bundle.json").read_text())
    data["model"]["vocab_size"] = 5  # the tokenizer has more tokens than the model embeds
    (tiny_bundle / "bundle.json").write_text(json.dumps(data))
    with pytest.raises(BundleError, match="tokenizer/model mismatch"):
        load_bundle(tiny_bundle)


def test_golden_set_mismatch_is_refused(tiny_bundle):
    data = json.loads((tiny_bundle / "bundle.json").read_text())
    data["golden"][0]["score"] += 0.5
    (tiny_bundle / "bundle.json").write_text(json.dumps(data))
    bundle = load_bundle(tiny_bundle)
    engine = OnnxRewardModel(str(bundle.model_path), device="cpu")
    with pytest.raises(BundleError, match="golden-set parity failed"):
        check_golden(bundle, engine, bundle.encoder())


def test_engine_scores_do_not_depend_on_padding(tiny_bundle, tmp_path):
    bundle = load_bundle(shutil.copytree(tiny_bundle, tmp_path / "copy"))
    engine = OnnxRewardModel(str(bundle.model_path), device="cpu")
    encoder = bundle.encoder()
    rows = [("hello", "no"), ("hello there how are you doing today", "i am fine thanks")]
    together = engine(encoder.pad(encoder.encode(rows)))
    alone = np.concatenate([engine(encoder.pad(encoder.encode([r]))) for r in rows])
    np.testing.assert_allclose(together, alone, atol=1e-6)


def test_files_swapped_right_after_their_hash_are_never_served(tiny_bundle, tmp_path, monkeypatch):
    """The hash step is where a swap would slip in: here it replaces model.onnx (other weights) and
    tokenizer.json (the same words under other ids) on disk right after hashing their bytes. The service
    must load what it hashed: the golden set holds, and the scores are the original model's, not the
    files now on disk."""
    import rmserve.service.core.bundle as bundle_module
    from rmserve.service.core.metrics import Metrics
    from rmserve.service.core.scoring import Scorer
    from rmserve.service.settings import Settings

    original = load_bundle(shutil.copytree(tiny_bundle, tmp_path / "original"))
    model_bytes = (tiny_bundle / "model.onnx").read_bytes()
    tokenizer_bytes = (tiny_bundle / "tokenizer.json").read_bytes()
    tokenizer = json.loads(tokenizer_bytes)
    words = sorted((i, w) for w, i in tokenizer["model"]["vocab"].items() if i > 3)
    tokenizer["model"]["vocab"].update({w: j for (_, w), (j, _) in zip(words, reversed(words), strict=True)})
    swapped: list[str] = []
    real_hash = bundle_module.sha256_bytes

    def hash_then_swap(data):
        digest = real_hash(data)
        if bytes(data) == model_bytes:
            build_tiny_onnx(tiny_bundle / "model.onnx", original.manifest.model.vocab_size, seed=1)
            swapped.append("model.onnx")
        elif bytes(data) == tokenizer_bytes:
            (tiny_bundle / "tokenizer.json").write_text(json.dumps(tokenizer))
            swapped.append("tokenizer.json")
        return digest

    monkeypatch.setattr(bundle_module, "sha256_bytes", hash_then_swap)
    scorer = Scorer.load(Settings(bundle=tiny_bundle, device="cpu"), Metrics())  # the golden set is checked here
    try:
        assert swapped == ["model.onnx", "tokenizer.json"]
        rows = [("hello there how are you", "i am fine thanks"), ("what is this", "no")]
        served = scorer.engine(scorer.encoder.pad(scorer.encoder.encode(rows)))
        encoder = original.encoder()
        expected = OnnxRewardModel(str(original.model_path), device="cpu")(encoder.pad(encoder.encode(rows)))
        np.testing.assert_allclose(served, expected, atol=1e-6)
        on_disk = OnnxRewardModel(str(tiny_bundle / "model.onnx"), device="cpu")(encoder.pad(encoder.encode(rows)))
        assert not np.allclose(on_disk, expected, atol=1e-3)  # the swap would have shown
        assert scorer.encoder.encode(rows)[0].ids == encoder.encode(rows)[0].ids
        with pytest.raises(BundleError, match="bad hash"):  # and the files on disk are refused as they are now
            load_bundle(tiny_bundle)
    finally:
        scorer.close()


def test_manifest_and_tokenizer_past_their_size_caps_are_refused_before_parsing(tiny_bundle, monkeypatch):
    import rmserve.service.core.bundle as bundle_module

    size = (tiny_bundle / "bundle.json").stat().st_size
    monkeypatch.setattr(bundle_module, "MAX_MANIFEST_BYTES", size - 1)
    with pytest.raises(BundleError, match=f"bundle.json has {size} bytes; the manifest may have at most {size - 1}"):
        load_bundle(tiny_bundle)
    monkeypatch.setattr(bundle_module, "MAX_MANIFEST_BYTES", size)
    size = (tiny_bundle / "tokenizer.json").stat().st_size
    monkeypatch.setattr(bundle_module, "MAX_TOKENIZER_BYTES", size - 1)
    with pytest.raises(BundleError, match=f"tokenizer.json has {size} bytes"):
        load_bundle(tiny_bundle)


def test_a_golden_set_past_its_cap_is_refused_naming_the_field(tiny_bundle):
    from rmserve.service.core.bundle import MAX_GOLDEN_EXAMPLES

    golden = json.loads((tiny_bundle / "bundle.json").read_text())["golden"]
    edit_manifest(tiny_bundle, golden=golden * (MAX_GOLDEN_EXAMPLES // len(golden) + 1))
    with pytest.raises(BundleError, match=f"field 'golden': .*at most {MAX_GOLDEN_EXAMPLES}"):
        load_bundle(tiny_bundle)
