"""The files an ONNX model reads besides itself: the locations of its external data.

A model over 2 GB cannot live in one protobuf, so its weights sit in external-data files that model.onnx
names by relative path. The bundle hashes those files and refuses a location outside the bundle; this
module reads the locations without the `onnx` package (not a serving dependency), by parsing model.onnx
with a schema that declares only the ONNX fields on the way to a tensor's `external_data` (field numbers
from onnx/onnx.proto). Everything else in the file is skipped unread.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

_LABEL = descriptor_pb2.FieldDescriptorProto
# message -> [(field name, number, type or message name, repeated)]
_SCHEMA: dict[str, list[tuple[str, int, Any, bool]]] = {
    "Entry": [("key", 1, _LABEL.TYPE_STRING, False), ("value", 2, _LABEL.TYPE_STRING, False)],
    "Tensor": [("name", 8, _LABEL.TYPE_STRING, False), ("external_data", 13, "Entry", True),
               ("data_location", 14, _LABEL.TYPE_INT32, False)],
    "SparseTensor": [("values", 1, "Tensor", False), ("indices", 2, "Tensor", False)],
    "Attribute": [("t", 5, "Tensor", False), ("g", 6, "Graph", False), ("tensors", 10, "Tensor", True),
                  ("graphs", 11, "Graph", True), ("sparse_tensor", 22, "SparseTensor", False),
                  ("sparse_tensors", 23, "SparseTensor", True)],
    "Node": [("attribute", 5, "Attribute", True)],
    "Graph": [("node", 1, "Node", True), ("initializer", 5, "Tensor", True),
              ("sparse_initializer", 15, "SparseTensor", True)],
    "TrainingInfo": [("initialization", 1, "Graph", False), ("algorithm", 2, "Graph", False)],
    "Function": [("node", 7, "Node", True)],
    "Model": [("graph", 7, "Graph", False), ("training_info", 20, "TrainingInfo", True),
              ("functions", 25, "Function", True)],
}
_EXTERNAL = 1  # TensorProto.DataLocation.EXTERNAL


class OnnxFileError(ValueError):
    """model.onnx cannot be read as an ONNX model."""


@lru_cache(maxsize=1)
def _model_class() -> Any:
    file = descriptor_pb2.FileDescriptorProto(name="rmserve_onnx_refs.proto", package="rmserve_onnx_refs",
                                              syntax="proto2")
    for name, fields in _SCHEMA.items():
        message = file.message_type.add(name=name)
        for field_name, number, kind, repeated in fields:
            field = message.field.add(name=field_name, number=number,
                                      label=_LABEL.LABEL_REPEATED if repeated else _LABEL.LABEL_OPTIONAL)
            if isinstance(kind, str):
                field.type, field.type_name = _LABEL.TYPE_MESSAGE, f".rmserve_onnx_refs.{kind}"
            else:
                field.type = kind
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("rmserve_onnx_refs.Model"))


def _tensors_of_graph(graph: Any):
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices
    for node in graph.node:
        yield from _tensors_of_nodes([node])


def _tensors_of_nodes(nodes: Any):
    for node in nodes:
        for attribute in node.attribute:
            yield attribute.t
            yield from attribute.tensors
            for sparse in [attribute.sparse_tensor, *attribute.sparse_tensors]:
                yield sparse.values
                yield sparse.indices
            for graph in [attribute.g, *attribute.graphs]:
                yield from _tensors_of_graph(graph)


def external_locations(model: str | Path | bytes, name: str | None = None) -> list[tuple[str, str]]:
    """(tensor name, location) of every tensor stored outside model.onnx, in file order. `model` is the
    file's path or its bytes (`name` then names it in errors)."""
    name = name or str(model if not isinstance(model, bytes) else "model.onnx")
    parsed = _model_class()()
    try:
        parsed.ParseFromString(model if isinstance(model, bytes) else Path(model).read_bytes())
    except Exception as e:  # protobuf's DecodeError and friends: the file is not an ONNX model
        raise OnnxFileError(f"{name} is not a readable ONNX model: {e}") from e
    graphs = [parsed.graph] + [g for info in parsed.training_info for g in (info.initialization, info.algorithm)]
    tensors = [t for graph in graphs for t in _tensors_of_graph(graph)]
    tensors += list(_tensors_of_nodes(n for function in parsed.functions for n in function.node))
    found = []
    for tensor in tensors:
        if tensor.data_location != _EXTERNAL:
            continue
        location = next((entry.value for entry in tensor.external_data if entry.key == "location"), None)
        if not location:
            raise OnnxFileError(f"{name}: tensor {tensor.name!r} is stored outside the file but names no location")
        found.append((tensor.name, location))
    return found


def external_files(model_path: str | Path) -> list[str]:
    """The distinct external-data locations model.onnx names, as written (relative paths), in order."""
    return list(dict.fromkeys(location for _, location in external_locations(model_path)))
