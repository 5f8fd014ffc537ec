"""Writing model.onnx: torch export, external data for large weights, and the fp16 conversion.

The graph has dynamic batch and sequence axes, opset 17 and an IR version ONNX Runtime 1.31 reads.
Weights that do not fit in one protobuf (over 2 GB; here from `EXTERNAL_DATA_BYTES` on, or when asked) go
to one external-data file beside the graph, `model.onnx.data`, each tensor at a 4 KiB-aligned offset so
that ONNX Runtime can map it instead of copying it. torch's exporter writes a large model as one loose file
per tensor; `pack_onnx` gathers them into that one file a tensor at a time, so that packing needs no more
memory than the largest tensor, and rewrites the graph (now small) with the lowered IR version.

fp16 (`convert_fp16`, for CUDA) keeps in fp32 what half precision gets wrong: every LayerNorm/RMSNorm
(exported as the nodes under a module whose name ends in "norm", whatever ops they decompose into),
every Softmax, and the classification head, with casts inserted around them; inputs and the reward stay
int64 and float32.
"""

from __future__ import annotations

import re
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path

import onnx
import torch

OPSET = 17
MAX_IR_VERSION = 10  # ONNX Runtime 1.31 rejects IR 14; 10 is what opset 17 needs at most
EXTERNAL_DATA_BYTES = 1 << 30  # weights from 1 GiB on go to external data (a protobuf file stops at 2 GB)
ALIGNMENT = 4096
INLINE_BYTES = 1024  # smaller tensors stay in the graph: shapes, small constants


def data_file_of(model_path: Path) -> Path:
    return model_path.with_name(model_path.name + ".data")


def export_onnx(model: torch.nn.Module, path: Path, external: bool | None = None, output: str = "reward") -> None:
    """Export `model` (forward(input_ids, attention_mask) -> reward [batch]) to `path`; weights go to
    `path`.data when `external` is True, or when None and they are large. `output`: the graph output's name;
    any other than "reward" is a score per position, [batch, sequence] (a process reward model)."""
    model.eval()
    path = Path(path)
    # Dummy dims >= 2 so the exporter does not specialise the dynamic axes to 1.
    ids = torch.ones((2, 16), dtype=torch.int64)
    mask = torch.ones((2, 16), dtype=torch.int64)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".onnx-export-") as tmp:
        raw = Path(tmp) / "model.onnx"
        with torch.no_grad(), warnings.catch_warnings():
            # Tracing warns about every Python-level branch on shapes; parity on a padded batch of mixed
            # lengths is what proves the graph general.
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model, (ids, mask), str(raw), input_names=["input_ids", "attention_mask"], output_names=[output],
                dynamic_axes={"input_ids": {0: "batch", 1: "sequence"}, "attention_mask": {0: "batch", 1: "sequence"},
                              output: {0: "batch"} if output == "reward" else {0: "batch", 1: "sequence"}},
                opset_version=OPSET, dynamo=False,
            )
        pack_onnx(raw, path, external)
    onnx.checker.check_model(str(path))


def _graphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    yield graph
    for node in graph.node:
        for attribute in node.attribute:
            for sub in [attribute.g, *attribute.graphs] if attribute.type in (
                    onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) else []:
                yield from _graphs(sub)


def _tensors(model: onnx.ModelProto) -> Iterator[onnx.TensorProto]:
    for graph in _graphs(model.graph):
        yield from graph.initializer
        for node in graph.node:
            for attribute in node.attribute:
                if attribute.HasField("t"):
                    yield attribute.t


def _stored_bytes(tensor: onnx.TensorProto, base: Path) -> bytes | None:
    """The tensor's raw bytes, from its external file or from the graph; None if it holds typed fields."""
    if tensor.data_location == onnx.TensorProto.EXTERNAL:
        info = {entry.key: entry.value for entry in tensor.external_data}
        with open(base / info["location"], "rb") as f:
            f.seek(int(info.get("offset", 0)))
            return f.read(int(info["length"])) if "length" in info else f.read()
    return tensor.raw_data if tensor.HasField("raw_data") else None


def pack_onnx(source: Path, target: Path, external: bool | None = None) -> None:
    """Rewrite `source` (and any external files beside it) as `target`, with its large tensors in one
    external-data file when `external` (None: when the weights are large or already stored outside)."""
    model = onnx.load(str(source), load_external_data=False)
    tensors = list(_tensors(model))
    outside = [t for t in tensors if t.data_location == onnx.TensorProto.EXTERNAL]
    size = sum(len(t.raw_data) for t in tensors) + sum(
        int(next((e.value for e in t.external_data if e.key == "length"), 0)) for t in outside)
    if external is None:
        external = bool(outside) or size >= EXTERNAL_DATA_BYTES
    data_path = data_file_of(target)
    if external:
        with open(data_path, "wb") as data:
            for tensor in tensors:
                blob = _stored_bytes(tensor, source.parent)
                if blob is None or (len(blob) < INLINE_BYTES and tensor.data_location != onnx.TensorProto.EXTERNAL):
                    continue
                data.write(b"\0" * (-data.tell() % ALIGNMENT))
                offset = data.tell()
                data.write(blob)
                tensor.ClearField("raw_data")
                del tensor.external_data[:]
                for key, value in (("location", data_path.name), ("offset", str(offset)), ("length", str(len(blob)))):
                    tensor.external_data.add(key=key, value=value)
                tensor.data_location = onnx.TensorProto.EXTERNAL
                del blob
    elif data_path.exists():
        data_path.unlink()  # a stale file from an earlier export must not sit beside the new graph
    if model.ir_version > MAX_IR_VERSION:
        model.ir_version = MAX_IR_VERSION
    onnx.save(model, str(target))


# Modules whose nodes stay fp32: normalisation layers and the reward head (decoder `score`, encoder
# `classifier`/`pooler`), matched on the module path torch writes into node names ("/model/norm/Pow").
_FP32_SCOPES = re.compile(r"(^|/)([^/]*norm[^/]*|score|classifier|pooler)(/|$)", re.IGNORECASE)


def fp32_nodes(model: onnx.ModelProto) -> list[str]:
    """Names of the nodes `convert_fp16` keeps in fp32 (besides every Softmax)."""
    return [node.name for node in model.graph.node
            if node.op_type != "Cast" and _FP32_SCOPES.search(node.name.rsplit("/", 1)[0] + "/")]


def _drop_repeated_casts(graph: onnx.GraphProto) -> None:
    """The converter inserts one Cast per blocked consumer of a value, all with the same name and output:
    keep the first of each (they are identical), or ONNX Runtime refuses the repeated node name."""
    seen: set[str] = set()
    nodes = [n for n in graph.node if not (n.name in seen or seen.add(n.name))]  # type: ignore[func-returns-value]
    del graph.node[:]
    graph.node.extend(nodes)
    seen = set()
    infos = [v for v in graph.value_info if not (v.name in seen or seen.add(v.name))]  # type: ignore[func-returns-value]
    del graph.value_info[:]
    graph.value_info.extend(infos)


def convert_fp16(source: Path, target: Path) -> None:
    """fp16 copy of `source` with norms, softmax and the head kept in fp32; external data when large."""
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    # The converter needs every value's type; shape inference on a model over 2 GB fails, so it runs on
    # the graph without its weights and the types are copied over.
    inferred = onnx.shape_inference.infer_shapes(onnx.load(str(source), load_external_data=False))
    model = onnx.load(str(source))  # with its external data
    del model.graph.value_info[:]
    model.graph.value_info.extend(inferred.graph.value_info)
    converted = convert_float_to_float16(
        model, keep_io_types=True, disable_shape_infer=True,
        op_block_list=[*DEFAULT_OP_BLOCK_LIST, "Softmax", "LayerNormalization", "SimplifiedLayerNormalization"],
        node_block_list=fp32_nodes(model))
    del model
    _drop_repeated_casts(converted.graph)
    with tempfile.TemporaryDirectory(dir=Path(target).parent, prefix=".fp16-") as tmp:
        staged = Path(tmp) / "model.onnx"
        size = sum(len(t.raw_data) for t in _tensors(converted))
        if size >= EXTERNAL_DATA_BYTES:
            onnx.save(converted, str(staged), save_as_external_data=True, all_tensors_to_one_file=True,
                      location="model.onnx.data", size_threshold=INLINE_BYTES)
        else:
            onnx.save(converted, str(staged))
        del converted
        pack_onnx(staged, Path(target), external=None)
