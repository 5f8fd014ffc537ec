"""fp16 bundles: half-precision weights and matmuls, with every norm, softmax and the reward head kept in
fp32; accepted only when they keep the fp32 preference on the pairs, with the largest reward difference
reported. ONNX Runtime's CPU provider runs them (in fp32 where it lacks fp16 kernels); the CUDA check is
tests/integration/test_fp16_cuda.py, run by bench/gpu.sh."""

from __future__ import annotations

import pytest

pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
pytest.importorskip("transformers")

from rmserve.cli import main  # noqa: E402
from rmserve.service.core.bundle import load_bundle  # noqa: E402
from rmserve.training.importer import import_fp16  # noqa: E402
from rmserve.training.onnx_graph import _FP32_SCOPES  # noqa: E402
from rmserve.training.quantize import VariantRefused  # noqa: E402
from tests.chat_models import make_hub_model, write_chat_pairs  # noqa: E402

FLOAT, FLOAT16 = onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16


@pytest.fixture(scope="module", params=["qwen2", "roberta"])
def fp16(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(f"fp16-{request.param}")
    source = make_hub_model(root / "hub", request.param, seed=4)
    pairs = write_chat_pairs(root / "prefs.jsonl")
    bundle, report = import_fp16(source, root / "bundle", pairs, max_length=128)
    return request.param, bundle, report


def value_types(model: onnx.ModelProto) -> dict[str, int]:
    inferred = onnx.shape_inference.infer_shapes(model)
    graph = inferred.graph
    types = {v.name: v.type.tensor_type.elem_type for v in [*graph.value_info, *graph.input, *graph.output]}
    types.update({t.name: t.data_type for t in graph.initializer})
    return types


def test_fp16_variant_is_accepted_with_its_agreement_and_largest_difference(fp16):
    name, bundle, report = fp16
    assert bundle.manifest.model.precision == "fp16" and bundle.manifest.bundle_id.endswith("-fp16")
    assert report["pairs"] == 24 and report["agreement_with_fp32"] >= 0.99
    assert 0 < report["max_abs_reward_diff"] < 0.05, report  # half precision changes rewards, a little
    assert bundle.manifest.provenance["variant_report"] == report
    load_bundle(bundle.path)


def test_norms_softmax_and_head_stay_fp32_and_the_rest_is_fp16(fp16):
    name, bundle, _ = fp16
    model = onnx.load(str(bundle.model_path))
    types = value_types(model)
    kept, halved = 0, 0
    for node in model.graph.node:
        float_inputs = [types[i] for i in node.input if types.get(i) in (FLOAT, FLOAT16)]
        sensitive = node.op_type in ("Softmax", "LayerNormalization") or (
            node.op_type != "Cast" and _FP32_SCOPES.search(node.name.rsplit("/", 1)[0] + "/"))
        if sensitive:
            assert all(t == FLOAT for t in float_inputs), f"{name}: {node.op_type} {node.name} reads {float_inputs}"
            kept += 1
        elif node.op_type in ("MatMul", "Gemm") and float_inputs:
            halved += all(t == FLOAT16 for t in float_inputs)
    assert kept >= 10 and halved >= 8, (kept, halved)
    assert any(n.op_type == "Softmax" for n in model.graph.node)
    weights = [t for t in model.graph.initializer if t.data_type in (FLOAT, FLOAT16) and len(t.dims) == 2]
    assert sum(t.data_type == FLOAT16 for t in weights) > len(weights) / 2


def test_an_fp16_variant_below_the_bar_is_refused(tmp_path):
    source = make_hub_model(tmp_path / "hub", "qwen2", seed=5)
    pairs = write_chat_pairs(tmp_path / "prefs.jsonl", n=6)
    with pytest.raises(VariantRefused, match=r"fp16 variant refused: it agrees with fp32 on .* of 6 dev pairs"):
        import_fp16(source, tmp_path / "bundle", pairs, min_agreement=1.01, max_length=64)
    assert not (tmp_path / "bundle").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".rmserve-")]  # the fp32 reference is gone


def test_fp16_import_needs_preference_pairs(tmp_path, capsys):
    assert main(["import", str(tmp_path), "--output", str(tmp_path / "b"), "--precision", "fp16"]) == 2
    assert "--precision fp16 needs --preferences" in capsys.readouterr().err
