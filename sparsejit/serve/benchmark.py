"""``sparsejit benchmark``: throughput and latency of a model on sparsejit and/or onnxruntime.

In the spirit of ``deepsparse.benchmark``. Inputs are random but valid (token ids below the vocabulary
size from ``config.json`` when present, attention masks of ones). Scenarios:

* ``sync``: one stream, one batch at a time; latency is per batch.
* ``async``: ``num_streams`` threads each run batches back to back (sparsejit: one engine per stream,
  onnxruntime: one session shared by the streams), cores split between the streams.

With ``engine="both"`` the engines alternate in time slices (up to 1 s; the first batch of each slice is
not measured) so that machine noise hits both alike, and the report carries the throughput ratio.
onnxruntime is imported only when asked for; it is a test extra, not a runtime dependency.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from sparsejit.checkpoints import export_checkpoint, is_checkpoint_dir
from sparsejit.errors import SparsejitError
from sparsejit.graph.onnx_import import read_model_proto
from sparsejit.kernels.target import host_target

__all__ = ["BenchmarkError", "format_report", "parse_shapes", "run_benchmark"]

Feed = dict[str, np.ndarray]
RunFn = Callable[[Feed], Any]

_NP_DTYPES = {1: np.float32, 6: np.int32, 7: np.int64, 9: np.bool_, 10: np.float16, 11: np.float64}


class BenchmarkError(Exception):
    """A benchmark that cannot run (bad shapes, missing onnxruntime, ...)."""


# ------------------------------------------------------------------------------------------------ inputs


def parse_shapes(text: str) -> list[list[int]]:
    """``"[1,128]"`` -> [[1, 128]]; ``"[1,128],[1,128]"`` -> [[1, 128], [1, 128]]."""
    try:
        value = json.loads(f"[{text.strip()}]")
    except json.JSONDecodeError:
        raise BenchmarkError(f'cannot parse input shapes {text!r}: expected e.g. "[1,128]"') from None
    if value and all(isinstance(v, int) for v in value):  # "1,128" without brackets
        value = [value]
    if not value or not all(isinstance(s, list) and s and all(isinstance(d, int) and d > 0 for d in s)
                            for s in value):
        raise BenchmarkError(f'input shapes {text!r} must be lists of positive ints, e.g. "[1,128]"')
    return value


def _model_file(model: str | os.PathLike) -> Path:
    """The ONNX file to measure; a checkpoint directory is exported to a temporary one (with its
    config.json), removed at exit: both engines then run the same graph."""
    path = Path(model)
    if is_checkpoint_dir(path):
        work = tempfile.mkdtemp(prefix="sparsejit-benchmark-")
        atexit.register(shutil.rmtree, work, True)
        shutil.copy(path / "config.json", work)
        try:
            return export_checkpoint(path, Path(work) / "model.onnx")
        except SparsejitError as exc:
            raise BenchmarkError(str(exc)) from None
    if path.is_dir():
        path = path / "model.onnx"
    if not path.is_file():
        raise BenchmarkError(f"{model}: no ONNX model (give an .onnx file or a directory with model.onnx)")
    return path


def _graph_inputs(path: Path) -> list[tuple[str, int, list[int | None]]]:
    """(name, ONNX elem type, shape with None for symbolic dims) of each real graph input."""
    proto = read_model_proto(path)
    inits = {t.name for t in proto.graph.initializer}
    out = []
    for value in proto.graph.input:
        if value.name in inits:
            continue
        tensor = value.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim]
        out.append((value.name, tensor.elem_type, dims))
    return out


def _resolve_shapes(inputs: list[tuple[str, int, list[int | None]]], batch_size: int,
                    shapes: list[list[int]] | None) -> dict[str, tuple[int, ...]]:
    if shapes is not None and len(shapes) not in (1, len(inputs)):
        raise BenchmarkError(f"{len(shapes)} input shapes given for {len(inputs)} inputs "
                             f"{[n for n, _, _ in inputs]}: give one shape for all, or one per input")
    resolved = {}
    for k, (name, _, dims) in enumerate(inputs):
        if shapes is not None:
            shape = list(shapes[0] if len(shapes) == 1 else shapes[k])
        else:
            shape = [d if d is not None else (128 if i == 1 else 1) for i, d in enumerate(dims)]
        if shape:
            shape[0] = batch_size  # -b wins over the first dimension, as in deepsparse.benchmark
        if len(shape) != len(dims):
            raise BenchmarkError(f"input {name!r} has rank {len(dims)}, shape {shape} given")
        resolved[name] = tuple(shape)
    return resolved


def _check_positions(path: Path, shapes: dict[str, tuple[int, ...]]) -> None:
    """A sequence longer than the model's position table (config.json beside it) is refused in the
    model's own terms before anything is compiled."""
    config = path.parent / "config.json"
    try:
        raw = json.loads(config.read_text()) if config.is_file() else {}
    except (OSError, ValueError):
        return
    from sparsejit.tasks.base import model_position_limit

    limit = model_position_limit(raw)
    longest = max((s[1] for s in shapes.values() if len(s) > 1), default=0)
    if limit is not None and longest > limit:
        raise BenchmarkError(f"sequence length {longest} exceeds the model's {limit} positions "
                             f"(config.json max_position_embeddings); give -i [batch,{limit}] or less")


def make_feed(path: Path, shapes: dict[str, tuple[int, ...]], seed: int = 0) -> Feed:
    """Random inputs: token ids below the vocabulary size, masks of ones, type ids of zeros."""
    vocab = 1000
    config = path.parent / "config.json"
    if config.is_file():
        try:
            vocab = int(json.loads(config.read_text()).get("vocab_size") or vocab)
        except (OSError, ValueError):
            pass
    rng = np.random.default_rng(seed)
    types = {name: elem for name, elem, _ in _graph_inputs(path)}
    feed = {}
    for name, shape in shapes.items():
        dtype = _NP_DTYPES.get(types.get(name, 7), np.float32)
        if "mask" in name:
            arr = np.ones(shape, dtype=dtype)
        elif "type" in name or "position" in name:
            arr = np.zeros(shape, dtype=dtype) if "type" in name else np.broadcast_to(
                np.arange(shape[-1]), shape).astype(dtype)
        elif np.issubdtype(dtype, np.integer):
            arr = rng.integers(min(100, vocab - 1), vocab, size=shape).astype(dtype)
        else:
            arr = rng.standard_normal(shape).astype(dtype)
        feed[name] = arr
    return feed


# ----------------------------------------------------------------------------------------------- engines


def _sparsejit_runs(path: Path, shapes: dict[str, tuple[int, ...]], streams: int,
                    threads: int | None, precision: str = "fp32",
                    described: dict[str, Any] | None = None) -> list[RunFn]:
    """One engine per stream; `described` receives the first engine's `describe()`."""
    import sparsejit

    dims = {len(s) for s in shapes.values()}
    seqs = {s[1] for s in shapes.values() if len(s) > 1}
    batch = next(iter(shapes.values()))[0] if shapes else 1
    runs = []
    for _ in range(streams):
        if dims == {2} and len(seqs) == 1:  # transformer-shaped: batch x sequence
            engine = sparsejit.compile(str(path), batch_size=batch, sequence_length=next(iter(seqs)),
                                       num_threads=threads, precision=precision)
        else:
            engine = sparsejit.compile(str(path), num_threads=threads, input_shapes=shapes, precision=precision)
        runs.append(engine.run)
        if described is not None and not described:
            described.update(engine.describe())
    return runs


def _require_onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError:
        raise BenchmarkError("onnxruntime is not installed: it is not a sparsejit runtime dependency. "
                             "Install it ('pip install onnxruntime' or 'pip install sparsejit[test]') "
                             "to benchmark against it, or use -e sparsejit") from None
    return onnxruntime


def _onnxruntime_runs(path: Path, streams: int, threads: int | None) -> list[RunFn]:
    ort = _require_onnxruntime()
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def run(feed: Feed) -> Any:
        return session.run(None, feed)

    return [run] * streams  # one session is safe to call from several threads


# --------------------------------------------------------------------------------------------- measuring


class _Progress:
    """A tqdm bar over a time budget, in seconds (silent when disabled or not on a terminal)."""

    def __init__(self, total_s: float, label: str, enabled: bool) -> None:
        from tqdm.auto import tqdm

        self.total = max(total_s, 1e-9)
        self.bar = tqdm(total=round(self.total, 1), desc=label, unit="s", file=sys.stderr, dynamic_ncols=True,
                        disable=None if enabled else True, bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f} s")

    def advance_to(self, seconds: float) -> None:
        target = min(self.total, seconds)
        if target > self.bar.n:
            self.bar.update(target - self.bar.n)

    def close(self) -> None:
        self.advance_to(self.total)
        self.bar.close()


def _warm(run: RunFn, feed: Feed, seconds: float) -> None:
    run(feed)  # at least once: first-call costs never reach the measurement
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        run(feed)


def _run_streams(runs: Sequence[RunFn], feed: Feed, seconds: float, latencies: list[float]) -> float:
    """Every stream runs back to back for ``seconds``; returns the wall time."""
    stop = time.perf_counter() + seconds
    lock = threading.Lock()
    errors: list[BaseException] = []

    def stream(run: RunFn) -> None:
        mine = []
        try:
            while time.perf_counter() < stop:
                t0 = time.perf_counter()
                run(feed)
                mine.append(time.perf_counter() - t0)
        except BaseException as exc:  # reported below, in the calling thread
            errors.append(exc)
        with lock:
            latencies.extend(mine)

    start = time.perf_counter()
    threads = [threading.Thread(target=stream, args=(r,), daemon=True) for r in runs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return time.perf_counter() - start


def _stats(latencies: list[float], wall: float, batch: int) -> dict[str, Any]:
    ms = np.asarray(latencies) * 1000.0
    if ms.size == 0:
        raise BenchmarkError("no iteration finished in the measured time: increase -t")
    return {
        "items_per_second": len(latencies) * batch / wall,
        "iterations": len(latencies),
        "seconds": wall,
        "latency_ms": {
            "mean": float(ms.mean()), "median": float(np.median(ms)),
            "std": float(ms.std(ddof=1)) if ms.size > 1 else 0.0,
            "p90": float(np.percentile(ms, 90)), "p99": float(np.percentile(ms, 99)),
            "min": float(ms.min()), "max": float(ms.max()),
        },
    }


def run_benchmark(model: str | os.PathLike, *, batch_size: int = 1,
                  input_shapes: list[list[int]] | None = None,
                  scenario: str = "sync", num_streams: int | None = None, seconds: float = 10.0,
                  warmup: float = 2.0, engine: str = "sparsejit", num_cores: int | None = None,
                  progress: bool = True, precision: str = "fp32") -> dict[str, Any]:
    """Run the benchmark; returns the report (also what ``-x`` writes as JSON)."""
    if scenario not in ("sync", "async"):
        raise BenchmarkError(f"scenario must be sync or async, got {scenario!r}")
    if engine not in ("sparsejit", "onnxruntime", "both"):
        raise BenchmarkError(f"engine must be sparsejit, onnxruntime or both, got {engine!r}")
    if precision not in ("fp32", "bf16", "auto"):
        raise BenchmarkError(f"precision must be fp32, bf16 or auto, got {precision!r}")
    if engine in ("onnxruntime", "both"):
        _require_onnxruntime()  # before any compile: a missing peer is known at once
    path = _model_file(model)
    cores = num_cores or os.cpu_count() or 1
    streams = 1 if scenario == "sync" else (num_streams or max(1, cores // 2))
    threads = max(1, cores // streams)
    shapes = _resolve_shapes(_graph_inputs(path), batch_size, input_shapes)
    _check_positions(path, shapes)
    feed = make_feed(path, shapes)
    names = ["sparsejit", "onnxruntime"] if engine == "both" else [engine]

    log = (lambda msg: print(msg, file=sys.stderr, flush=True)) if progress else (lambda msg: None)
    runs: dict[str, list[RunFn]] = {}
    described: dict[str, Any] = {}
    for name in names:
        log(f"{name}: preparing ({streams} stream(s), {threads} thread(s) each)...")
        t0 = time.perf_counter()
        runs[name] = (_sparsejit_runs(path, shapes, streams, threads, precision, described) if name == "sparsejit"
                      else _onnxruntime_runs(path, streams, threads))
        log(f"{name}: ready in {time.perf_counter() - t0:.1f} s; warming up {warmup:g} s")
        for run in runs[name]:
            _warm(run, feed, warmup / len(runs[name]))

    latencies: dict[str, list[float]] = {n: [] for n in names}
    walls: dict[str, float] = dict.fromkeys(names, 0.0)
    bar = _Progress(seconds * len(names), f"benchmarking {' vs '.join(names)}", progress)
    try:
        # Engines alternate in time slices (noise hits both alike); the first batch of a slice is not
        # measured: it pays for the other engine's threads still spinning, which no single-engine user sees.
        slice_s = seconds if len(names) == 1 else max(0.25, min(1.0, seconds / 5))
        while any(walls[n] < seconds - 1e-9 for n in names):
            for name in names:
                budget = min(slice_s, seconds - walls[name])
                if budget <= 1e-9:
                    continue
                if len(names) > 1:
                    for run in runs[name]:
                        run(feed)
                walls[name] += _run_streams(runs[name], feed, budget, latencies[name])
                bar.advance_to(sum(min(w, seconds) for w in walls.values()))
    finally:
        bar.close()

    report: dict[str, Any] = {
        "model": str(path), "scenario": scenario, "batch_size": batch_size, "num_streams": streams,
        "num_cores": cores, "threads_per_stream": threads, "precision": described.get("precision", precision),
        "precision_requested": precision, "float_products": described.get("float_products"),
        "input_shapes": {n: list(s) for n, s in shapes.items()}, "seconds": seconds, "warmup_seconds": warmup,
        "cpu": host_target().cpu, "kernels": host_target().kernel_family,
        "engines": {n: _stats(latencies[n], walls[n], batch_size) for n in names},
    }
    if engine == "both":
        sj, ort = report["engines"]["sparsejit"], report["engines"]["onnxruntime"]
        report["ratio"] = {
            "throughput_sparsejit_over_onnxruntime": sj["items_per_second"] / ort["items_per_second"],
            "median_latency_onnxruntime_over_sparsejit":
                ort["latency_ms"]["median"] / sj["latency_ms"]["median"],
        }
    return report


def format_report(report: dict[str, Any]) -> str:
    """Human-readable lines of a report."""
    lines = [f"model: {report['model']}",
             f"scenario: {report['scenario']}  batch size: {report['batch_size']}  "
             f"streams: {report['num_streams']}  cores: {report['num_cores']}  "
             f"input shapes: {report['input_shapes']}",
             f"cpu: {report.get('cpu', '?')}  sparsejit kernels: {report.get('kernels', '?')}"]
    if report.get("float_products"):
        lines.append(f"sparsejit precision: {report['precision']} (asked: {report['precision_requested']}); "
                     f"float products: {report['float_products']}")
    for name, r in report["engines"].items():
        lat = r["latency_ms"]
        lines += [f"[{name}]",
                  f"  throughput (items/sec): {r['items_per_second']:.2f}",
                  f"  latency mean (ms/batch): {lat['mean']:.3f}",
                  f"  latency median (ms/batch): {lat['median']:.3f}",
                  f"  latency std (ms/batch): {lat['std']:.3f}",
                  f"  latency 90th percentile (ms/batch): {lat['p90']:.3f}",
                  f"  latency 99th percentile (ms/batch): {lat['p99']:.3f}",
                  f"  iterations: {r['iterations']}"]
    if "ratio" in report:
        ratio = report["ratio"]["throughput_sparsejit_over_onnxruntime"]
        lines.append(f"throughput ratio sparsejit / onnxruntime: {ratio:.3f}x")
    return "\n".join(lines)
