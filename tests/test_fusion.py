"""Fusion passes recognise the blocks every exporter spells differently, and change no result."""

from __future__ import annotations

import collections

import numpy as np
import pytest

import sparsejit
from sparsejit.graph.onnx_import import load_onnx
from sparsejit.graph.passes import optimise
from sparsejit.graph.specialise import fold_constants, specialise
from sparsejit.plan.engine import pass_context
from tests import zoo

LAYERS = {"distilbert": 3, "roberta": 3, "albert": 3, "electra": 3, "mpnet": 3}
GELU = {"albert": "gelu_tanh"}  # albert's default hidden_act is gelu_new (tanh form)


def _fused_counts(model_dir):
    graph = load_onnx(model_dir / "model.onnx")
    graph = optimise(specialise(fold_constants(graph), {v.name: (2, 16) for v in graph.inputs}), pass_context())
    ops = collections.Counter(n.op_type for n in graph.nodes)
    acts = collections.Counter(n.attrs.get("activation") for n in graph.nodes if n.op_type == "FusedMatMul")
    return ops, acts


@pytest.mark.parametrize("exporter", ["torchscript", "dynamo"])
@pytest.mark.parametrize("arch", sorted(LAYERS))
def test_attention_gelu_and_residuals_are_fused(arch: str, exporter: str) -> None:
    ops, acts = _fused_counts(zoo.random_encoder(arch, exporter))
    layers = LAYERS[arch]
    assert ops["Attention"] == layers
    assert ops["Softmax"] == 0 and ops["Transpose"] == 0 and ops["MatMul"] == 0
    assert acts[GELU.get(arch, "gelu_erf")] == layers
    # Q, K, V, output and two FFN projections per layer all run as fused GEMMs
    assert ops["FusedMatMul"] >= 6 * layers


def test_fused_and_unfused_agree() -> None:
    model = zoo.random_encoder("roberta", "dynamo") / "model.onnx"
    feed = zoo.make_inputs(model.parent, 2, 40, seed=3)
    fused = sparsejit.compile(model, batch_size=2, sequence_length=64, pad_values={"input_ids": 1})
    plain = sparsejit.compile(model, batch_size=2, sequence_length=64, pad_values={"input_ids": 1},
                              optimize=False)
    a, b = fused.run(feed), plain.run(feed)
    for name in a:
        assert np.abs(a[name] - b[name]).max() <= 3e-5 * max(1.0, float(np.abs(b[name]).max()))
