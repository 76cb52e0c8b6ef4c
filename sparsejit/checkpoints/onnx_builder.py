"""A small ONNX graph writer: nodes by `onnx.helper`, weights kept as numpy arrays beside the graph.

The graph is built without tensor data (a checkpoint's weights never pass through protobuf on the way to
the compiler); `attach_weights` puts them in when a standard, self-contained ONNX file is wanted.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from sparsejit.errors import CheckpointError

OPSET = 17  # LayerNormalization is a standard op from 17; onnxruntime and OpenVINO both run it
_FLOAT_MIN = float(np.finfo(np.float32).min)


class OnnxBuilder:
    """Appends nodes and initializers; every method returns the name of the value it produced."""

    def __init__(self, weights: Mapping[str, np.ndarray]) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: dict[str, np.ndarray] = {}
        self._weights = weights
        self._names: Counter[str] = Counter()

    def _unique(self, hint: str) -> str:
        self._names[hint] += 1
        n = self._names[hint]
        return hint if n == 1 else f"{hint}_{n - 1}"

    # ------------------------------------------------------------------ values

    def const(self, value: np.ndarray | float | int | Sequence[int], hint: str = "const") -> str:
        array = np.asarray(value)
        if array.dtype == np.float64:
            array = array.astype(np.float32)
        name = self._unique(f"/{hint}")
        self.initializers[name] = array
        return name

    def has(self, key: str) -> bool:
        return key in self._weights

    def checkpoint_array(self, key: str) -> np.ndarray:
        if key not in self._weights:
            raise CheckpointError(f"the checkpoint has no weight {key!r}, which this architecture and head "
                                  "need (was it saved from a different model class?)", key)
        return self._weights[key]

    def weight(self, key: str) -> str:
        """A checkpoint tensor as an initializer of the same name (shared when used twice)."""
        if key not in self.initializers:
            self.initializers[key] = self.checkpoint_array(key)
        return key

    def linear_weight(self, key: str) -> str:
        """torch.nn.Linear stores [out, in]; MatMul reads [in, out]."""
        name = f"{key}/transposed"
        if name not in self.initializers:
            self.initializers[name] = np.ascontiguousarray(self.checkpoint_array(key).T)
        return name

    # ------------------------------------------------------------------ nodes

    def op(self, op_type: str, inputs: Sequence[str], hint: str, outputs: int = 1,
           out_names: Sequence[str] | None = None, **attrs: object) -> str | list[str]:
        """Append one node; `out_names` names its outputs (a graph output's public name)."""
        node_name = self._unique(f"{hint}/{op_type}")
        out = list(out_names) if out_names else [f"{node_name}_output_{i}" for i in range(outputs)]
        self.nodes.append(helper.make_node(op_type, list(inputs), out, name=node_name, **attrs))
        return out[0] if outputs == 1 else out

    def linear(self, x: str, prefix: str, hint: str, out_name: str | None = None) -> str:
        y = self.op("MatMul", [x, self.linear_weight(f"{prefix}.weight")], hint)
        return self.op("Add", [y, self.weight(f"{prefix}.bias")], hint, out_names=[out_name] if out_name else None)

    def layer_norm(self, x: str, prefix: str, eps: float, hint: str) -> str:
        return self.op("LayerNormalization", [x, self.weight(f"{prefix}.weight"), self.weight(f"{prefix}.bias")],
                       hint, axis=-1, epsilon=eps)

    def activation(self, x: str, act: str, hint: str) -> str:
        """transformers' ACT2FN[act], spelled as its torch export spells it."""
        if act == "gelu":
            t = self.op("Div", [x, self.const(math.sqrt(2.0), "sqrt2")], hint)
            t = self.op("Add", [self.op("Erf", [t], hint), self.const(1.0, "one")], hint)
            return self.op("Mul", [self.op("Mul", [x, t], hint), self.const(0.5, "half")], hint)
        if act in ("gelu_new", "gelu_pytorch_tanh", "gelu_fast"):
            cube = self.op("Pow", [x, self.const(3.0, "three")], hint)
            t = self.op("Add", [x, self.op("Mul", [cube, self.const(0.044715, "gelu_coefficient")], hint)], hint)
            t = self.op("Tanh", [self.op("Mul", [t, self.const(math.sqrt(2.0 / math.pi), "gelu_scale")], hint)],
                        hint)
            t = self.op("Add", [t, self.const(1.0, "one")], hint)
            return self.op("Mul", [self.op("Mul", [x, self.const(0.5, "half")], hint), t], hint)
        if act == "quick_gelu":
            return self.op("Mul", [x, self.op("Sigmoid", [self.op("Mul", [x, self.const(1.702, "quick")], hint)],
                                               hint)], hint)
        if act in ("silu", "swish"):
            return self.op("Mul", [x, self.op("Sigmoid", [x], hint)], hint)
        if act == "relu":
            return self.op("Relu", [x], hint)
        if act == "tanh":
            return self.op("Tanh", [x], hint)
        raise CheckpointError(f"activation {act!r} has no ONNX spelling here", "hidden_act")

    def additive_mask(self, mask: str) -> str:
        """[b, s] 0/1 attention mask -> [b, 1, 1, s] term added to the scores (0 or float32 min)."""
        m = self.op("Cast", [self.op("Unsqueeze", [mask, self.const(np.array([1, 2], np.int64), "axes")],
                                     "/mask")], "/mask", to=TensorProto.FLOAT)
        inverted = self.op("Sub", [self.const(1.0, "one"), m], "/mask")
        return self.op("Mul", [inverted, self.const(_FLOAT_MIN, "float_min")], "/mask")

    # ------------------------------------------------------------------ model

    def model(self, inputs: Sequence[str], outputs: Mapping[str, int], doc: str) -> onnx.ModelProto:
        """The graph without tensor data: its initializers are `self.initializers` (see attach_weights).

        `outputs` maps each graph output (already produced under that name) to its rank."""
        dims = ["batch_size", "sequence_length"]
        graph_inputs = [helper.make_tensor_value_info(n, TensorProto.INT64, dims) for n in inputs]
        graph_outputs = [helper.make_tensor_value_info(name, TensorProto.FLOAT,
                                                       (dims + [f"{name}_dim_{i}" for i in range(2, rank)])[:rank])
                         for name, rank in outputs.items()]
        graph = helper.make_graph(self.nodes, "checkpoint", graph_inputs, graph_outputs)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                                  producer_name="sparsejit", doc_string=doc)
        model.ir_version = 8
        return model


def attach_weights(model: onnx.ModelProto, initializers: Mapping[str, np.ndarray]) -> onnx.ModelProto:
    """A copy of `model` holding its initializers: a standard, self-contained ONNX model."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    out.graph.initializer.extend(numpy_helper.from_array(np.asarray(v), name) for name, v in initializers.items())
    return out
