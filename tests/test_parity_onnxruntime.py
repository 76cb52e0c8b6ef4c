"""Compiled models against onnxruntime on the same inputs.

Tolerance at fp32: logits (classification, token and span logits) max abs error ≤ 1e-4; hidden
states max abs error ≤ 3e-5 × max|reference| (they reach |6| or more, and the fused GELU's float32
erf approximation moves their last bits through every layer). Each model is
compiled once with batch 4 and buckets [16, 128, 384]; calls with batch 1 and shorter sequences go
through the engine's padding path, exact-size calls through the bucket directly. Inputs carry
attention masks with padded rows.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

import sparsejit
from tests import zoo

ATOL = 1e-4
HIDDEN_RTOL = 3e-5
SHAPES = [(1, 16), (4, 16), (1, 100), (4, 128), (1, 384), (4, 384)]
BUCKETS = [16, 128, 384]


def _ort(model_dir: Path) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    return ort.InferenceSession(str(model_dir / "model.onnx"), opts, providers=["CPUExecutionProvider"])


def _check(model_dir: Path, shapes=SHAPES, buckets=BUCKETS, batch=4, pad_id: int = 0) -> None:
    engine = sparsejit.compile(model_dir / "model.onnx", batch_size=batch, sequence_length=buckets,
                               pad_values={"input_ids": pad_id})
    session = _ort(model_dir)
    names = [o.name for o in session.get_outputs()]
    assert engine.output_names == names
    for b, s in shapes:
        feed = zoo.make_inputs(model_dir, b, s, seed=b * 1000 + s)
        want = session.run(None, feed)
        got = engine.run(feed)
        for name, ref in zip(names, want, strict=True):
            assert got[name].shape == ref.shape, (name, b, s)
            err = float(np.abs(got[name] - ref).max())
            bound = ATOL if "logits" in name else HIDDEN_RTOL * float(np.abs(ref).max())
            assert err <= bound, f"{model_dir.name} {name} batch {b} seq {s}: max abs error {err:.2e}"


def test_bert_base_random_torchscript() -> None:
    _check(zoo.random_encoder("bert-base", "torchscript"))


def test_bert_base_random_dynamo() -> None:
    _check(zoo.random_encoder("bert-base", "dynamo"), shapes=[(1, 16), (4, 128)], buckets=[16, 128])


@pytest.mark.parametrize("exporter", ["torchscript", "dynamo"])
@pytest.mark.parametrize("arch", ["distilbert", "roberta", "albert", "electra", "mpnet"])
def test_random_encoders(arch: str, exporter: str) -> None:
    pad = 1 if arch in ("roberta", "mpnet") else 0
    _check(zoo.random_encoder(arch, exporter), shapes=[(1, 16), (4, 100), (2, 384)], pad_id=pad)


@pytest.mark.parametrize("head", ["sequence_classification", "token_classification", "question_answering"])
def test_random_heads_distilbert(head: str) -> None:
    _check(zoo.random_encoder("distilbert", "torchscript", head), shapes=[(1, 16), (4, 128)],
           buckets=[16, 128])


def test_minilm_sentence_transformer() -> None:
    _check(zoo.minilm_sentence_transformer())


@pytest.mark.parametrize("name", ["minilm-sentiment", "minilm-squad"])
def test_shared_finetuned(name: str) -> None:
    _check(zoo.shared_model(name))


def test_shared_squad_dynamo() -> None:
    _check(zoo.shared_model("minilm-squad", "dynamo"), shapes=[(1, 384), (4, 128)])


def test_rampart_ner_fp32() -> None:
    _check(zoo.rampart_fp32())
