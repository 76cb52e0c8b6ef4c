"""Choose the kernel of each constant-weight MatMul by timing the candidates at load.

For a weight at least `MIN_SPARSITY` sparse, the dense GEMM (`gemm.gemm` on packed panels), the
unstructured sparse kernel (CSC) and the 1 x BW block-sparse kernels (for block widths whose density
leaves them a chance) are each run for a few milliseconds on the layer's real row count M, and the
fastest wins: no sparsity threshold decides between them. Decisions are cached on disk under
``<cache root>/kernel-choices`` keyed by (weight hash, shape, M, activation, CPU, threads, kernel
source hash), so compiling the same model again does not re-time.

Only the chosen form is kept: forms built for timing and not chosen are dropped, so a weight run
sparse holds no packed dense copy.

`SPARSEJIT_MATMUL_KERNEL` = auto (default) | dense | csc | block16 | block32 | block64 forces a
choice (for tests and debugging; a forced sparse kernel applies to weights of any sparsity).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from numba import get_num_threads

from sparsejit.graph.sparsity import analyse_weight
from sparsejit.kernels import sparse_gemm as sg
from sparsejit.kernels.codegen import cache_root, kernel_dir
from sparsejit.kernels.gemm import PackedMatrix, bind_gemm, gemm, pack_b
from sparsejit.kernels.gemm_bf16 import PackedBF16, bgemm, pack_b_bf16

__all__ = ["MIN_SPARSITY", "MatMulKernel", "WeightKernels", "TimedChoice", "choose_matmul_kernel", "ENV_POLICY"]

MIN_SPARSITY = 0.5  # below this, sparse kernels are not even timed
MAX_BLOCK_DENSITY = 0.6  # block kernels storing more than this fraction of blocks are not timed
TIME_BUDGET_S = 0.004  # per candidate
MAX_TIMED_ROWS = 2048  # larger M is timed on this many rows (cost is linear in M by then)
ENV_POLICY = "SPARSEJIT_MATMUL_KERNEL"
_POLICIES = ("auto", "dense", "csc") + tuple(f"block{bw}" for bw in sg.BLOCK_WIDTHS)

_SRC_HASH = hashlib.sha1(b"".join(p.read_bytes() for p in (
    Path(__file__), Path(sg.__file__), Path(sg.__file__).with_name("gemm.py")))).hexdigest()[:12]

Shared = Callable[[Any, Callable[[], Any]], Any]


class MatMulKernel(Protocol):
    """``kernel(a, out, bias=None, residual=None)`` computes out = act(a @ W + bias) + residual."""

    name: str

    def __call__(self, a: np.ndarray, out: np.ndarray, bias: np.ndarray | None = None,
                 residual: np.ndarray | None = None) -> None: ...


@dataclass(frozen=True)
class DenseKernel:
    """Dense GEMM on packed panels."""

    packed: PackedMatrix
    activation: str | None
    name: str = "dense"

    def __call__(self, a: np.ndarray, out: np.ndarray, bias: np.ndarray | None = None,
                 residual: np.ndarray | None = None) -> None:
        gemm(a, self.packed, out, bias=bias, activation=self.activation, residual=residual)

    def bind(self, a: np.ndarray, out: np.ndarray, bias: np.ndarray | None = None,
             residual: np.ndarray | None = None) -> Callable[[], None]:
        """This product on fixed buffers, its operand checks done once (see `gemm.bind_gemm`)."""
        return bind_gemm(a, self.packed, out, bias, self.activation, residual)


@dataclass(frozen=True)
class BF16Kernel:
    """Dense GEMM on a bf16-rounded weight (precision="bf16")."""

    packed: PackedBF16
    activation: str | None
    name: str = "dense"
    # bf16 activations of the last row count; one instance serves one plan step (plans run one call
    # at a time), so the buffer is never shared between concurrent calls
    _scratch: list = field(default_factory=list, repr=False, compare=False)

    def __call__(self, a: np.ndarray, out: np.ndarray, bias: np.ndarray | None = None,
                 residual: np.ndarray | None = None) -> None:
        m = a.size // self.packed.k if self.packed.k else 0
        if not self._scratch or self._scratch[0].shape[0] != m:
            self._scratch[:] = [np.empty((m, self.packed.kp), np.uint16)]
        bgemm(a, self.packed, out, bias=bias, activation=self.activation, residual=residual,
              scratch=self._scratch[0])


@dataclass(frozen=True)
class SparseKernel:
    """Block-sparse or CSC sparse GEMM on a compressed weight."""

    weight: sg.BlockSparse | sg.CscSparse
    activation: str | None
    name: str

    def __call__(self, a: np.ndarray, out: np.ndarray, bias: np.ndarray | None = None,
                 residual: np.ndarray | None = None) -> None:
        sg.sparse_gemm(a, self.weight, out, bias=bias, activation=self.activation, residual=residual)


def _policy() -> str:
    value = os.environ.get(ENV_POLICY, "auto").strip().lower() or "auto"
    if value not in _POLICIES:
        raise ValueError(f"{ENV_POLICY}={value!r}: expected one of {_POLICIES}")
    return value


class TimedChoice:
    """The decision flow every per-weight kernel choice shares: list the candidates; with more than
    one, look the decision up in the disk cache or time them on M rows and record the fastest.

    Subclasses provide `candidates()`, `_time(names, m, activation)`, `_cache_key(m, activation,
    names)` and `_describe()` (fields saved with a decision), and keep `decisions`.
    """

    decisions: dict[tuple[int, str | None], dict[str, Any]]

    def candidates(self) -> list[str]:
        raise NotImplementedError

    def _time(self, names: list[str], m: int, activation: str | None) -> dict[str, float]:
        raise NotImplementedError

    def _cache_key(self, m: int, activation: str | None, names: list[str]) -> str:
        raise NotImplementedError

    def _describe(self) -> dict[str, Any]:
        raise NotImplementedError

    def _decide(self, m: int, activation: str | None) -> str:
        """The name of the fastest candidate for M rows (timed once, then cached in memory and on disk)."""
        names = self.candidates()
        if len(names) == 1:
            return names[0]
        key = self._cache_key(m, activation, names)
        record = read_decision(key)
        if record is None or record.get("kernel") not in names:
            times = self._time(names, m, activation)
            record = {"kernel": min(times, key=times.__getitem__), "times": times, "m": m,
                      "activation": activation, **self._describe()}
            write_decision(key, record)
        self.decisions[(m, activation)] = record
        return str(record["kernel"])


class WeightKernels(TimedChoice):
    """The kernels of one constant weight, shared by every bucket (one M each) that uses it."""

    def __init__(self, weight: np.ndarray, precision: str = "fp32") -> None:
        self.weight = weight
        self.precision = precision  # "bf16": the dense form is the bf16-rounded weight
        self.stats = analyse_weight(weight, shapes=tuple(f"1x{bw}" for bw in sg.BLOCK_WIDTHS),
                                    min_sparsity=MIN_SPARSITY)
        self._forms: dict[str, Any] = {}
        self._chosen: set[str] = set()
        self._digest: str | None = None
        self.decisions: dict[tuple[int, str | None], dict[str, Any]] = {}

    def release_weight(self) -> None:
        """Drop the fp32 weight once every bucket has its kernel: only the chosen forms stay."""
        for name in list(self._forms):
            if name not in self._chosen:
                del self._forms[name]
        self.weight = None

    # ---- forms --------------------------------------------------------------------------------
    def _form(self, name: str) -> Any:
        form = self._forms.get(name)
        if form is None:
            if name == "dense":
                form = pack_b_bf16(self.weight) if self.precision == "bf16" else pack_b(self.weight)
            elif name == "csc":
                form = sg.csc_sparse(self.weight)
            else:
                form = sg.block_sparse(self.weight, int(name[len("block"):]))
            self._forms[name] = form
        return form

    def _kernel(self, name: str, activation: str | None) -> MatMulKernel:
        form = self._form(name)
        if name == "dense":
            return BF16Kernel(form, activation) if self.precision == "bf16" else DenseKernel(form, activation)
        return SparseKernel(form, activation, name)

    def candidates(self) -> list[str]:
        policy = _policy()
        if policy != "auto":
            return [policy]
        if self.stats.sparsity < MIN_SPARSITY:
            return ["dense"]
        names = ["dense", "csc"]
        names += [f"block{bw}" for bw in sg.BLOCK_WIDTHS
                  if self.stats.block_density.get(f"1x{bw}", 1.0) <= MAX_BLOCK_DENSITY]
        return names

    # ---- choice -------------------------------------------------------------------------------
    def choose(self, m: int, activation: str | None) -> MatMulKernel:
        """The fastest kernel for M rows (timed once, then cached in memory and on disk)."""
        chosen = self._decide(m, activation)
        kernel = self._kernel(chosen, activation)
        self._chosen.add(chosen)
        self._forms = {n: f for n, f in self._forms.items() if n in self._chosen}  # drop the losers
        return kernel

    def _describe(self) -> dict[str, Any]:
        return {"shape": list(self.weight.shape), "sparsity": self.stats.sparsity}

    def _time(self, names: list[str], m: int, activation: str | None) -> dict[str, float]:
        k, n = self.weight.shape
        rows = max(1, min(m, MAX_TIMED_ROWS))
        rng = np.random.default_rng(0)
        a = rng.standard_normal((rows, k), dtype=np.float32)
        out = np.empty((rows, n), dtype=np.float32)
        kernels = {name: self._kernel(name, activation) for name in names}
        return time_candidates({name: functools.partial(kern, a, out) for name, kern in kernels.items()})

    def _cache_key(self, m: int, activation: str | None, names: list[str]) -> str:
        if self._digest is None:
            w = np.ascontiguousarray(self.weight)
            self._digest = hashlib.blake2b(w.view(np.uint8).reshape(-1), digest_size=16).hexdigest()
        parts = [self._digest, str(self.weight.shape), str(self.weight.dtype), self.precision, str(m), str(activation),
                 kernel_dir().name, str(get_num_threads()), _SRC_HASH, ",".join(names)]
        return hashlib.sha1("|".join(parts).encode()).hexdigest()


def time_candidates(runs: dict[str, Callable[[], object]]) -> dict[str, float]:
    """Best wall time of each candidate run: each is run once to compile and warm up, then all are run
    interleaved (a burst of load on the machine hits every candidate) within about `TIME_BUDGET_S`
    each; a candidate 3x slower than the best so far stops being run once it has been timed 3 times (one
    run preempted by another process must not rule a candidate out)."""
    best: dict[str, float] = {}
    timed: dict[str, int] = {}
    for name, run in runs.items():
        run()
        t0 = time.perf_counter()
        run()
        best[name], timed[name] = time.perf_counter() - t0, 1
    rounds = int(min(30, max(1, TIME_BUDGET_S / max(1e-7, min(best.values())))))
    for _ in range(rounds):
        for name, run in runs.items():
            if timed[name] >= 3 and best[name] > 3 * min(best.values()):
                continue
            t0 = time.perf_counter()
            run()
            best[name] = min(best[name], time.perf_counter() - t0)
            timed[name] += 1
    return best


def _decision_dir() -> Path:
    return cache_root() / "kernel-choices"


def read_decision(key: str) -> dict[str, Any] | None:
    path = _decision_dir() / f"{key}.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def write_decision(key: str, record: dict[str, Any]) -> None:
    directory = _decision_dir()
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=directory, suffix=".tmp")
        with os.fdopen(fd, "w") as fh:
            json.dump(record, fh)
        os.replace(tmp, directory / f"{key}.json")
    except OSError:  # a read-only cache only costs re-timing next time
        pass


def choose_matmul_kernel(weight: np.ndarray, m: int, activation: str | None = None, *,
                         shared: Shared | None = None, key: Any = None, precision: str = "fp32") -> MatMulKernel:
    """Kernel computing act(a @ weight + bias) + residual for `m` rows: dense, CSC or block-sparse.

    `shared(key, build)` memoises per-weight state across buckets (pass `LowerContext.shared` and the
    initializer name as `key`); without it the analysis is redone on every call. `precision="bf16"`
    makes the dense candidate the bf16-weight GEMM (sparse candidates stay exact fp32).
    """
    if weight.ndim != 2 or weight.dtype != np.float32:
        raise ValueError(f"expected a 2-D float32 weight, got {weight.dtype} {weight.shape}")
    if shared is None:
        kernels = WeightKernels(weight, precision)
    else:
        kernels = shared(("weight_kernels", key), lambda: WeightKernels(weight, precision))
    return kernels.choose(int(m), activation)
