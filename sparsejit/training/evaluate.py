"""Scores of exported ONNX models on held-out data, run by sparsejit (the engine that ships them):
accuracy (text classification), entity F1 (token classification), SQuAD F1 of the answerable questions
(question answering, through the QA pipeline's own windowing and span search)."""

from __future__ import annotations

import shutil
import statistics
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sparsejit.training.data import Example, Feature
from sparsejit.training.export import copy_tokenizer_files
from sparsejit.training.metrics import feature_logits, padded_batch, task_score

__all__ = ["METRIC_NAMES", "EvalSet", "score_onnx", "time_engines"]

METRIC_NAMES = {"text_classification": "accuracy", "token_classification": "entity F1",
                "question_answering": "F1 (answerable)"}


@dataclass
class EvalSet:
    """Held-out examples, their features, and what is needed to read predictions back."""

    task: str
    examples: list[Example]
    features: list[Feature]
    id2label: Mapping[int, str]
    pad_id: int
    max_length: int
    source_dir: Path  # config.json and tokenizer files for a model directory


def _buckets(max_length: int) -> list[int]:
    lengths = [n for n in (32, 64, 128, 256, 384, 512) if n < max_length]
    return [*lengths, max_length]


def score_onnx(path: Path, data: EvalSet, work_dir: Path, num_threads: int | None = None) -> float:
    """The task metric of the ONNX model at `path` on `data`, run by sparsejit."""
    import sparsejit

    if data.task == "question_answering":
        return _qa_f1(path, data, work_dir, num_threads)
    engine = sparsejit.compile(str(path), batch_size=32, sequence_length=_buckets(data.max_length),
                               num_threads=num_threads)
    out_name = engine.output_names[0]

    def run(feed: dict[str, np.ndarray]) -> np.ndarray:
        return engine.run({k: feed[k] for k in engine.input_names})[out_name]

    return task_score(data.task, feature_logits(run, data.features, data.pad_id), data.features, data.examples,
                      data.id2label)


def _qa_f1(path: Path, data: EvalSet, work_dir: Path, num_threads: int | None) -> float:
    import sparsejit
    from sparsejit.tasks.squad_metrics import f1_score

    model_dir = work_dir / f"eval-{path.stem}"
    model_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy2(path, model_dir / "model.onnx")
    shutil.copy2(data.source_dir / "config.json", model_dir / "config.json")
    copy_tokenizer_files(data.source_dir, model_dir)
    pipe = sparsejit.Pipeline.create("question_answering", model_dir, batch_size=8,
                                     sequence_length=data.max_length, num_threads=num_threads)
    answerable = [e for e in data.examples if e.label]
    scores = []
    for start in range(0, len(answerable), 16):
        chunk = answerable[start:start + 16]
        answers = pipe(question=[e.text for e in chunk], context=[e.context for e in chunk])
        answers = answers if isinstance(answers, list) else [answers]
        for e, a in zip(chunk, answers, strict=True):
            scores.append(max(f1_score(a["answer"], g["text"]) for g in e.label))
    shutil.rmtree(model_dir, ignore_errors=True)
    return float(np.mean(scores)) if scores else float("nan")


def time_engines(paths: Mapping[str, Path], configs: Sequence[tuple[int, int]], seconds: float = 2.0,
                 num_threads: int | None = None, vocab_size: int = 1000) -> dict[tuple[int, int], dict[str, float]]:
    """Median ms per batch of each model at each (batch, sequence) config, engines alternating in blocks."""
    import sparsejit

    results: dict[tuple[int, int], dict[str, float]] = {}
    rng = np.random.default_rng(0)
    for batch, seq in configs:
        engines = {name: sparsejit.compile(str(p), batch_size=batch, sequence_length=seq, num_threads=num_threads)
                   for name, p in paths.items()}
        low = 1000 if vocab_size > 2000 else 5  # past the special tokens
        feed = padded_batch([Feature(rng.integers(low, vocab_size, seq), np.zeros(seq, np.int64), 0)
                             for _ in range(batch)], 0)
        feeds = {name: {k: feed[k] for k in e.input_names} for name, e in engines.items()}
        times: dict[str, list[float]] = {name: [] for name in engines}
        deadline = time.perf_counter() + seconds * len(engines)
        while time.perf_counter() < deadline or min(len(t) for t in times.values()) < 5:
            for name, e in engines.items():  # blocks of ~0.25 s; the first run of a block pays for the
                e.run(feeds[name])             # other engine's threads still spinning: not counted
                block_end = time.perf_counter() + 0.25
                while True:
                    t0 = time.perf_counter()
                    e.run(feeds[name])
                    times[name].append((time.perf_counter() - t0) * 1000)
                    if t0 >= block_end:
                        break
        results[(batch, seq)] = {name: statistics.median(t) for name, t in times.items()}
    return results
