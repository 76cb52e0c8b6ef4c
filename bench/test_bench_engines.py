"""pytest-benchmark suite: sparsejit and onnxruntime on the same models and shapes (outside the default
test run; `python -m pytest bench/test_bench_engines.py --benchmark-group-by=param:shape`).

Compare the two rows of each group; `python -m bench.compare` prints the ratio directly.
"""

from __future__ import annotations

import sys
from pathlib import Path

import onnxruntime as ort
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import sparsejit  # noqa: E402
from tests import zoo  # noqa: E402

SHAPES = {"bert-b1-s128": ("bert-base", 1, 128), "bert-b16-s128": ("bert-base", 16, 128),
          "minilm-b32-s128": ("minilm", 32, 128)}


def _model(kind: str) -> Path:
    return zoo.random_encoder("bert-base") if kind == "bert-base" else zoo.minilm_sentence_transformer()


@pytest.mark.parametrize("engine", ["sparsejit", "onnxruntime"])
@pytest.mark.parametrize("shape", list(SHAPES))
def test_inference(benchmark, engine: str, shape: str) -> None:
    kind, batch, seq = SHAPES[shape]
    directory = _model(kind)
    feed = zoo.make_inputs(directory, batch, seq, padded=False)
    if engine == "sparsejit":
        compiled = sparsejit.compile(directory / "model.onnx", batch_size=batch, sequence_length=seq, num_threads=2)
        run = lambda: compiled.run(feed)  # noqa: E731
    else:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 2
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        session = ort.InferenceSession(str(directory / "model.onnx"), opts, providers=["CPUExecutionProvider"])
        run = lambda: session.run(None, feed)  # noqa: E731
    run()
    benchmark.pedantic(run, rounds=10, warmup_rounds=2)
