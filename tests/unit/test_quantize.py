"""Precision variants: written only when they keep the fp32 preferences, refused with the figure otherwise."""

import json

import pytest

pytest.importorskip("onnx")

from rmserve.service.core.bundle import load_bundle  # noqa: E402
from rmserve.training.quantize import VariantRefused, make_variant  # noqa: E402


@pytest.fixture
def dev_pairs(tmp_path):
    rows = [{"prompt": "hello there", "chosen": "i am fine thanks", "rejected": "no"},
            {"prompt": "how are you", "chosen": "sure one two three", "rejected": "cannot help with that"},
            {"prompt": "pick a lock", "chosen": "no", "rejected": "sure four five six"}]
    path = tmp_path / "dev.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def test_int8_variant_is_written_with_its_own_stats_and_golden_set(tiny_bundle, dev_pairs, tmp_path):
    bundle, report = make_variant(tiny_bundle, tmp_path / "int8", "int8", dev_pairs, min_agreement=0.0)
    assert bundle.manifest.model.precision == "int8" and bundle.manifest.bundle_id.endswith("-int8")
    assert report["pairs"] == 3 and 0.0 <= report["agreement_with_fp32"] <= 1.0
    assert bundle.manifest.provenance["variant_of"] == "tiny"
    normalization = bundle.manifest.normalization
    assert normalization.version.endswith("-int8")
    # Its stats are this model's on the dev file given here, and its version says so (not the source's).
    assert normalization.computed_on == "dev.jsonl: chosen+rejected of 3 pairs"
    source = load_bundle(tiny_bundle).manifest.normalization
    assert (normalization.mean, normalization.std) != (source.mean, source.std)
    assert normalization.version.removesuffix("-int8") not in (source.version, "")
    load_bundle(tmp_path / "int8")  # hashes and manifest verify


def test_variant_below_the_agreement_bar_is_refused_and_not_written(tiny_bundle, dev_pairs, tmp_path):
    with pytest.raises(VariantRefused, match=r"agrees with fp32 on .* of 3 dev pairs"):
        make_variant(tiny_bundle, tmp_path / "int8", "int8", dev_pairs, min_agreement=1.01)
    assert not (tmp_path / "int8").exists()


def test_without_dev_data_the_shipped_split_is_used_only_for_a_bundle_normalized_on_it(tiny_bundle, tmp_path):
    import shutil

    from rmserve.service.core.bundle import write_manifest
    from rmserve.service.core.bundle_files import file_digest
    from rmserve.training.data import shipped_data

    # The tiny bundle's stats come from its own reference set: quantizing it on HH would replace them.
    with pytest.raises(VariantRefused, match=r"computed on 'test'.*give --dev-data"):
        make_variant(tiny_bundle, tmp_path / "int8", "int8", min_agreement=0.0)
    assert not (tmp_path / "int8").exists()
    on_hh = tmp_path / "on-hh"
    shutil.copytree(tiny_bundle, on_hh)
    manifest = load_bundle(on_hh).manifest
    write_manifest(on_hh, manifest.model_copy(update={"normalization": manifest.normalization.model_copy(update={
        "computed_on": "dev.jsonl.gz: chosen+rejected of 203 pairs",
        "version": f"{file_digest(shipped_data('dev'))}-406"})}))
    bundle, report = make_variant(on_hh, tmp_path / "int8", "int8", min_agreement=0.0)
    assert report["pairs"] > 100 and bundle.manifest.normalization.computed_on.startswith("dev.jsonl.gz")
