"""ONNX file → sparsejit IR. Reads only; never writes to the user's model file."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from sparsejit.checkpoints import CheckpointSource, build_checkpoint, is_checkpoint_dir
from sparsejit.errors import ExternalDataError, ModelLoadError
from sparsejit.graph.ir import Graph, Node, Shape, Value
from sparsejit.graph.onnx_file import WeightSpan, read_model_file, read_span

ModelSource = str | os.PathLike | bytes | onnx.ModelProto | CheckpointSource


def load_onnx(source: ModelSource) -> Graph:
    """Load an ONNX model (path, serialized bytes or ModelProto) into a `Graph`.

    External-data tensors are read from files beside the model. Model-local functions are inlined. A
    Hugging Face checkpoint directory (config.json + safetensors, no model.onnx) or a `CheckpointSource`
    is built into its encoder's graph, its weights going straight to the IR.
    """
    if not isinstance(source, CheckpointSource | bytes | onnx.ModelProto) and is_checkpoint_dir(source):
        source = CheckpointSource(Path(source))
    if isinstance(source, CheckpointSource):
        built = build_checkpoint(source)
        return _convert(built.model, os.getcwd(), built.initializers)
    model, base_dir, spans = _read_model(source)
    if model.functions:
        from onnx import inliner

        if spans:  # inlining copies the graph: read the file whole, as onnx.load does
            model, base_dir, spans = _read_model(source, whole=True)
        model = inliner.inline_local_functions(model)
    return _convert(model, base_dir, spans=spans)


def read_model_proto(source: str | os.PathLike | bytes | onnx.ModelProto) -> onnx.ModelProto:
    """The ONNX model's structure (graph, inputs, outputs, initializers' names, types and shapes; the
    bytes of large initializers and external data are not read), or `ModelLoadError` saying why it
    is unusable."""
    return _read_model(source)[0]


def _read_model(source: ModelSource, whole: bool = False) -> tuple[onnx.ModelProto, str, dict[int, WeightSpan]]:
    """(model, directory of its external data, initializers left in the file: see `onnx_file`)."""
    if isinstance(source, onnx.ModelProto):
        return source, os.getcwd(), {}
    if isinstance(source, bytes):
        try:
            return onnx.load_from_string(source), os.getcwd(), {}
        except Exception as exc:  # protobuf raises DecodeError and friends
            raise ModelLoadError(f"the bytes given are not a valid ONNX model: {exc}") from exc
    path = Path(source)
    if path.is_dir():
        path = path / "model.onnx"
    if not path.is_file():
        if (path.parent / "config.json").is_file() and path.name == "model.onnx":
            raise ModelLoadError(f"{str(path.parent)!r} has config.json but neither model.onnx nor safetensors "
                                 "weights: save the checkpoint with safe_serialization=True (the default of "
                                 "transformers' save_pretrained) or export it to ONNX")
        raise ModelLoadError(f"no ONNX model file at {str(path)!r}: check the path")
    read = None if whole else read_model_file(str(path))
    if read is not None:
        model, spans = read
        if model.HasField("graph") and (model.graph.node or model.graph.output):
            return model, str(path.parent), spans
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        raise ModelLoadError(
            f"{str(path)!r} is not a readable ONNX model ({type(exc).__name__}: {exc}); "
            "re-export it or check that the file is complete"
        ) from exc
    if not model.HasField("graph") or (not model.graph.node and not model.graph.output):
        raise ModelLoadError(f"{str(path)!r} holds no ONNX graph: is it really an .onnx file?")
    return model, str(path.parent), {}


def _np_dtype(elem_type: int) -> np.dtype:
    try:
        return np.dtype(helper.tensor_dtype_to_np_dtype(elem_type))
    except Exception as exc:
        raise ModelLoadError(f"unsupported ONNX tensor element type {elem_type}") from exc


def _value_from_info(info: onnx.ValueInfoProto) -> Value:
    ttype = info.type.tensor_type
    shape: Shape | None = None
    if ttype.HasField("shape"):
        dims = []
        for d in ttype.shape.dim:
            if d.HasField("dim_value"):
                dims.append(int(d.dim_value))
            elif d.HasField("dim_param"):
                dims.append(d.dim_param)
            else:
                dims.append(None)
        shape = tuple(dims)
    return Value(info.name, _np_dtype(ttype.elem_type) if ttype.elem_type else np.dtype("float32"), shape)


def tensor_to_array(tensor: onnx.TensorProto, base_dir: str) -> np.ndarray:
    """Convert a TensorProto (possibly stored as external data) into a numpy array."""
    if tensor.data_location == onnx.TensorProto.EXTERNAL:
        info = {e.key: e.value for e in tensor.external_data}
        location = os.path.join(base_dir, info.get("location", ""))
        if not os.path.isfile(location):
            raise ExternalDataError(
                f"tensor {tensor.name!r} keeps its data in {location!r}, which does not exist: "
                "copy the external-data file next to the .onnx file"
            )
        return _read_external(tensor, location, info)
    try:
        return numpy_helper.to_array(tensor)
    except Exception as exc:
        raise ModelLoadError(f"cannot decode tensor {tensor.name!r}: {exc}") from exc


def _read_external(tensor: onnx.TensorProto, location: str, info: dict[str, str]) -> np.ndarray:
    dtype = _np_dtype(tensor.data_type)
    shape = tuple(tensor.dims)
    count = int(np.prod(shape)) if shape else 1
    offset = int(info.get("offset", 0))
    length = int(info.get("length", count * dtype.itemsize))
    size = os.path.getsize(location)
    if offset + length > size or length < count * dtype.itemsize:
        raise ExternalDataError(
            f"external data for tensor {tensor.name!r} in {location!r} is truncated "
            f"(needs bytes {offset}..{offset + length}, file has {size}): re-copy the file"
        )
    # Read (not memory-map) so the user's file is never held open or written.
    with open(location, "rb") as fh:
        fh.seek(offset)
        data = np.frombuffer(fh.read(count * dtype.itemsize), dtype=dtype)
    return data.reshape(shape).copy() if shape else data.reshape(()).copy()


def _attribute_value(attr: onnx.AttributeProto, base_dir: str):
    if attr.type == onnx.AttributeProto.TENSOR:
        return tensor_to_array(attr.t, base_dir)
    if attr.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS):
        return attr  # subgraphs are not compiled; the op registry rejects such nodes
    value = helper.get_attribute_value(attr)
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, list) and value and isinstance(value[0], bytes):
        return [v.decode("utf-8") for v in value]
    return value


def _constant_value(node: Node) -> np.ndarray:
    attrs = node.attrs
    if "value" in attrs:
        return np.asarray(attrs["value"])
    if "value_float" in attrs:
        return np.array(attrs["value_float"], dtype=np.float32)
    if "value_floats" in attrs:
        return np.array(attrs["value_floats"], dtype=np.float32)
    if "value_int" in attrs:
        return np.array(attrs["value_int"], dtype=np.int64)
    if "value_ints" in attrs:
        return np.array(attrs["value_ints"], dtype=np.int64)
    raise ModelLoadError(f"Constant node {node.name!r} has no value form sparsejit reads ({list(attrs)})")


def _convert(model: onnx.ModelProto, base_dir: str, arrays: dict[str, np.ndarray] | None = None,
             spans: dict[int, WeightSpan] | None = None) -> Graph:
    """`arrays`: initializers given beside the graph instead of inside it; `spans`: initializers (by
    index) whose bytes were left in the model file."""
    g = model.graph
    opsets = {imp.domain or "": int(imp.version) for imp in model.opset_import}
    if "ai.onnx" in opsets and "" not in opsets:
        opsets[""] = opsets.pop("ai.onnx")
    spans = spans or {}
    initializers = {t.name: read_span(spans[i]) if i in spans else tensor_to_array(t, base_dir)
                    for i, t in enumerate(g.initializer)}
    initializers.update(arrays or {})
    nodes: list[Node] = []
    for i, n in enumerate(g.node):
        node = Node(
            op_type=n.op_type,
            inputs=list(n.input),
            outputs=list(n.output),
            attrs={a.name: _attribute_value(a, base_dir) for a in n.attribute},
            domain="" if n.domain == "ai.onnx" else n.domain,
            name=n.name or f"{n.op_type}_{i}",
        )
        if node.op_type == "Constant" and node.domain == "":
            initializers[node.outputs[0]] = _constant_value(node)
            continue
        nodes.append(node)
    inputs = [_value_from_info(v) for v in g.input if v.name not in initializers]
    outputs = [_value_from_info(v) for v in g.output]
    value_info = {v.name: _value_from_info(v) for v in g.value_info}
    graph = Graph(inputs, outputs, _topological(nodes, inputs, initializers), initializers, opsets, value_info)
    return graph


def _topological(nodes: list[Node], inputs: list[Value], initializers: dict[str, np.ndarray]) -> list[Node]:
    available = {v.name for v in inputs} | set(initializers) | {""}
    ordered: list[Node] = []
    pending = list(nodes)
    while pending:
        still: list[Node] = []
        for node in pending:
            if all(name in available for name in node.inputs):
                ordered.append(node)
                available.update(node.outputs)
            else:
                still.append(node)
        if len(still) == len(pending):
            missing = sorted({i for n in still for i in n.inputs if i not in available})
            raise ModelLoadError(
                f"graph is not well formed: node {still[0].name!r} reads values no node produces: "
                f"{missing[:5]}"
            )
        pending = still
    return ordered
