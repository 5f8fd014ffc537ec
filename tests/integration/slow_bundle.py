"""A real bundle whose every batch keeps the engine busy for a while, whatever its rows: the tiny test
model plus a branch of matrix products that depends on the input (so ONNX Runtime cannot fold it away)
and adds exactly 0 to each reward. Tests of draining and reloading use it to keep work in flight; tests that
need work queued behind a busy engine hold it with the engine gate (engine_gate.py) instead of guessing how
long a batch takes.

`--engine-work` (pytest option, default 1) scales the work of every batch: those tests must pass with it
4x smaller and 4x larger (scripts/check-engine-speeds.sh)."""

from __future__ import annotations

import os
from pathlib import Path

from tests.conftest import make_tiny_bundle


def make_slow_bundle(directory: Path, size: int = 512, products: int = 160, bundle_id: str = "tiny-slow") -> Path:
    import onnx
    from onnx import TensorProto, helper

    from rmserve.service.core.bundle import load_bundle, write_manifest

    products = max(1, round(products * float(os.environ.get("RMSERVE_TEST_ENGINE_WORK", "1"))))
    make_tiny_bundle(directory)
    model = onnx.load(str(directory / "model.onnx"))
    graph = model.graph
    for node in graph.node:
        node.output[:] = ["fast_reward" if out == "reward" else out for out in node.output]
    nodes = [
        helper.make_node("Cast", ["input_ids"], ["ids_f"], to=TensorProto.FLOAT),
        helper.make_node("ReduceSum", ["ids_f"], ["ids_sum"], keepdims=0),
        helper.make_node("Mul", ["ids_sum", "slow_zero"], ["zero"]),
        helper.make_node("Expand", ["zero", "slow_shape"], ["m0"]),
    ]
    for i in range(products):
        nodes.append(helper.make_node("MatMul", [f"m{i}", "m0"], [f"m{i + 1}"]))
    nodes += [helper.make_node("ReduceSum", [f"m{products}"], ["slow_total"], keepdims=0),
              helper.make_node("Add", ["fast_reward", "slow_total"], ["reward"])]
    graph.node.extend(nodes)
    graph.initializer.extend([helper.make_tensor("slow_zero", TensorProto.FLOAT, [], [0.0]),
                              helper.make_tensor("slow_shape", TensorProto.INT64, [2], [size, size])])
    onnx.save(model, str(directory / "model.onnx"))
    manifest = load_bundle(directory, verify_hashes=False).manifest.model_copy(update={"bundle_id": bundle_id})
    write_manifest(directory, manifest)
    return directory
