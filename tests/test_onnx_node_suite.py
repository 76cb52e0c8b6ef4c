"""The ONNX project's own backend node tests (shipped inside the `onnx` package) run on sparsejit.

Every test case whose nodes are all operators sparsejit claims (has a lowering for) is compiled and
run; outputs are compared with the expected data at the case's own tolerances, as the ONNX backend
runner does. sparsejit specialises a graph at compile time, so inputs that are shape-like parameters
(a Reshape's shape, a Slice's starts, ...) are bound as constants, as they are in exported models
after folding; the data inputs go through the run-time kernels.

Every case either runs (and then at least one output must be computed by the compiled plan at run time,
not folded to a constant at specialisation) or is skipped for a reason named here, by case name: no
other case may skip. LayerNormalization cases run with their Mean / InvStdDev training outputs dropped
from the model (sparsejit computes output 0 only); output 0 is compared with the case's expected one.
"""

from __future__ import annotations

import warnings

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import sparsejit
from sparsejit.plan.lowering import LOWERINGS
from sparsejit.plan.plan import Plan  # noqa: F401  (registers every lowering)

# Inputs (by position) that must be compile-time constants in sparsejit.
PARAMETER_INPUTS = {
    "Reshape": {1}, "Expand": {1}, "Tile": {1}, "Unsqueeze": {1}, "Squeeze": {1}, "Split": {1},
    "Slice": {1, 2, 3, 4}, "CumSum": {1}, "ConstantOfShape": {0}, "Range": {0, 1, 2}, "TopK": {1},
    "Pad": {1, 2, 3}, "OneHot": {1}, "ReduceSum": {1}, "ReduceMean": {1}, "ReduceMax": {1},
    "ReduceMin": {1}, "ReduceProd": {1}, "ReduceSumSquare": {1}, "ReduceL1": {1}, "ReduceL2": {1},
    "ReduceLogSumExp": {1},
    "QLinearMatMul": {1, 2, 4, 5, 6, 7},  # quantisation parameters are constants in quantised exports
}

# Cases outside what sparsejit supports, each with the reason.
KNOWN_UNSUPPORTED = {
    "float16/bfloat16/float8/int4/string tensors are not supported": (
        "float16", "bfloat16", "_bf16", "fp16", "float8", "e4m3", "e5m2", "int4", "uint4", "string",
        "_FLOAT16", "FLOAT8", "BFLOAT16", "INT4", "UINT4", "STRING", "float4", "FLOAT4", "e2m1",
        "int2", "uint2", "INT2", "UINT2"),
    "blocked quantisation and 16-bit QuantizeLinear outputs are not supported": (
        "quantizelinear_blocked", "test_quantizelinear_uint16", "test_quantizelinear_int16"),
}

# Cases whose output shape is a function of input *values*, which sparsejit (static shapes only) cannot
# compile: compiling must fail with ShapeError "... has no static shape ...", and only these may.
_WINDOW = "the window length is the value of the `size` input, so the Range giving the sample indices " \
          "has a value-dependent length"
_CROP = "the crop/pad amounts come from the value of the `shape` input, so the Pad output has a " \
        "value-dependent shape"
_RUNTIME = "its shape-giving inputs are fed at run time (bound as constants the whole graph folds in " \
           "onnx.reference at specialisation and no sparsejit kernel runs), so the output shape is " \
           "value-dependent"
DATA_DEPENDENT_SHAPE = {
    "test_blackmanwindow_expanded": _WINDOW,
    "test_blackmanwindow_symmetric_expanded": _WINDOW,
    "test_hammingwindow_expanded": _WINDOW,
    "test_hammingwindow_symmetric_expanded": _WINDOW,
    "test_hannwindow_expanded": _WINDOW,
    "test_hannwindow_symmetric_expanded": _WINDOW,
    "test_center_crop_pad_crop_expanded": _CROP,
    "test_center_crop_pad_pad_expanded": _CROP,
    "test_center_crop_pad_crop_and_pad_expanded": _CROP,
    "test_center_crop_pad_crop_axes_hwc_expanded": _CROP,
    "test_center_crop_pad_crop_negative_axes_hwc_expanded": _CROP,
    "test_center_crop_pad_crop_axes_chw_expanded": _CROP,
    "test_range_float_type_positive_delta": _RUNTIME,
    "test_range_int32_type_negative_delta": _RUNTIME,
    "test_constantofshape_float_ones": _RUNTIME,
    "test_constantofshape_int_zeros": _RUNTIME,
    "test_constantofshape_int_shape_zero": _RUNTIME,
}
# Whole-graph parameter cases: their PARAMETER_INPUTS are fed at run time instead of being bound.
FED_AT_RUN_TIME = {name for name, reason in DATA_DEPENDENT_SHAPE.items() if reason is _RUNTIME}


def _claimed(model: onnx.ModelProto) -> bool:
    ops = {(n.domain if n.domain != "ai.onnx" else "", n.op_type) for n in model.graph.node}
    ops.discard(("", "Constant"))
    ops -= {("", "Shape"), ("", "Size")}
    return bool(ops) and all(op in LOWERINGS for op in ops)


_SUPPORTED = {onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.INT64, onnx.TensorProto.INT32,
              onnx.TensorProto.INT16, onnx.TensorProto.INT8, onnx.TensorProto.UINT8, onnx.TensorProto.UINT16,
              onnx.TensorProto.UINT32, onnx.TensorProto.UINT64, onnx.TensorProto.BOOL}


def _unsupported_dtype(model: onnx.ModelProto) -> bool:
    g = model.graph
    types = [v.type.tensor_type.elem_type for v in list(g.input) + list(g.output) + list(g.value_info)]
    types += [t.data_type for t in g.initializer]
    types += [a.i for n in g.node for a in n.attribute if a.name in ("to", "dtype", "output_dtype")]
    return any(t not in _SUPPORTED for t in types if t)


def _skip_reason(case) -> str | None:
    """Why ``case`` is skipped (None: it runs). Decided from the case alone, before compiling."""
    for reason, markers in KNOWN_UNSUPPORTED.items():
        if any(m in case.name for m in markers):
            return reason
    if _unsupported_dtype(case.model):
        return "float16/bfloat16/float8/int4/string tensors are not supported"
    if case.name in DATA_DEPENDENT_SHAPE:
        return f"data-dependent output shape: {DATA_DEPENDENT_SHAPE[case.name]}"
    return None


def _drop_training_outputs(model: onnx.ModelProto) -> onnx.ModelProto:
    """LayerNormalization's optional Mean / InvStdDev outputs removed from its nodes and the graph outputs."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    dropped = set()
    for node in graph.node:
        if node.op_type == "LayerNormalization" and len(node.output) > 1:
            dropped.update(o for o in node.output[1:] if o)
            del node.output[1:]
    kept = [o for o in graph.output if o.name not in dropped]
    del graph.output[:]
    graph.output.extend(kept)
    return model


def _cases():
    from onnx.backend.test.case.node import collect_testcases

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cases = collect_testcases("")
    return [c for c in cases if c.model is not None and _claimed(c.model)]


CASES = _cases()


def _bind_parameters(model: onnx.ModelProto, inputs: list[np.ndarray]) -> tuple[onnx.ModelProto, list[str]]:
    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    values = dict(zip([i.name for i in graph.input], inputs, strict=False))
    bound = set()
    for node in graph.node:
        for pos in PARAMETER_INPUTS.get(node.op_type, ()):
            if pos < len(node.input) and node.input[pos] in values:
                bound.add(node.input[pos])
    for name in bound:
        graph.initializer.append(numpy_helper.from_array(np.asarray(values[name]), name))
    kept = [i for i in graph.input if i.name not in bound]
    del graph.input[:]
    graph.input.extend(kept)
    return model, [i.name for i in kept]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_onnx_node_case(case) -> None:
    reason = _skip_reason(case)
    if reason and case.name not in DATA_DEPENDENT_SHAPE:
        pytest.skip(reason)
    case_model = _drop_training_outputs(case.model)
    kept = {o.name for o in case_model.graph.output}
    for inputs, expected in case.data_sets:
        inputs = [numpy_helper.to_array(v) if isinstance(v, onnx.TensorProto) else v for v in inputs]
        expected = [numpy_helper.to_array(v) if isinstance(v, onnx.TensorProto) else v for v in expected]
        expected = [e for o, e in zip(case.model.graph.output, expected, strict=True) if o.name in kept]
        if case.name in FED_AT_RUN_TIME:
            model, names = case_model, [i.name for i in case_model.graph.input]
        else:
            model, names = _bind_parameters(case_model, inputs)
        feed = {i.name: np.asarray(v) for i, v in zip(case_model.graph.input, inputs, strict=False)
                if i.name in names}
        shapes = {name: arr.shape for name, arr in feed.items()}
        try:
            engine = sparsejit.compile(model, input_shapes=shapes)
        except sparsejit.ShapeError as exc:
            if case.name in DATA_DEPENDENT_SHAPE and "no static shape" in str(exc):
                pytest.skip(f"{reason} ({exc})")
            raise
        # The answer must come from the compiled plan, not from folding the whole graph at compile time.
        for plan in engine._plans.values():
            folded = [o.name for o in model.graph.output if o.name in plan.graph.initializers]
            assert len(folded) < len(model.graph.output), f"every output folded to a constant: {folded}"
        outputs = engine.run(feed)
        for out_info, want in zip(model.graph.output, expected, strict=True):
            got = outputs[out_info.name]
            want = np.asarray(want)
            assert got.dtype == want.dtype, f"{out_info.name}: dtype {got.dtype} != {want.dtype}"
            assert got.shape == want.shape, f"{out_info.name}: shape {got.shape} != {want.shape}"
            np.testing.assert_allclose(got, want, rtol=case.rtol, atol=case.atol)
    if case.name in DATA_DEPENDENT_SHAPE:
        pytest.fail(f"{case.name} now compiles and passes: remove it from DATA_DEPENDENT_SHAPE")


def test_suite_covers_the_claimed_operators() -> None:
    """Every operator family we claim has node cases here that run (guards against an empty selection
    and against an operator whose cases are all skipped)."""
    ops = {n.op_type for c in CASES if _skip_reason(c) is None for n in c.model.graph.node}
    missing = [op for op in ("MatMul", "Gemm", "Softmax", "Gather", "Transpose", "Where", "Erf", "Concat",
                             "Slice", "LayerNormalization", "ReduceMean", "CumSum", "Expand", "Cast", "Pow",
                             "Sqrt") if op not in ops]
    assert not missing, f"no node case that runs covers {missing}"
    assert set(DATA_DEPENDENT_SHAPE) <= {c.name for c in CASES}, "a pinned case no longer exists"
