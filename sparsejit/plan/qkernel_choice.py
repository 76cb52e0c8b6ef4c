"""Choose the kernel of each int8 weight (`sparsejit::QMatMul`) by timing the candidates at load.

Candidates: the dense GEMM (`gemm_int8.qgemm`: AMX where the CPU has it, else AVX-512 VNNI) and, for a
symmetric weight (zero point 0, so a pruned entry is exactly 0) at least `MIN_SPARSITY` sparse, the
block-sparse VNNI kernels whose block density leaves them a chance: 4 x BW blocks with lanes along N
(`sparse_gemm_int8`, ``qblock16/32/64``) and 4 x 1 blocks with lanes along M (`sparse_gemm_int8_4x1`,
``qblock1``). Each is run on the layer's real row count and the fastest wins, as for fp32 weights
(`kernel_choice`); decisions share its disk cache.

`SPARSEJIT_QMATMUL_KERNEL` = auto (default) | dense | qblock1 | qblock16 | qblock32 | qblock64 forces a
choice.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from numba import get_num_threads

from sparsejit.graph.sparsity import block_density
from sparsejit.kernels import sparse_gemm_int8 as sq
from sparsejit.kernels import sparse_gemm_int8_4x1 as sq1
from sparsejit.kernels.codegen import kernel_dir
from sparsejit.kernels.gemm_int8 import PackedInt8, epilogue_vectors, pad_columns, qgemm
from sparsejit.plan.kernel_choice import (
    MAX_BLOCK_DENSITY,
    MAX_TIMED_ROWS,
    MIN_SPARSITY,
    TimedChoice,
    time_candidates,
)

__all__ = ["QWeightKernels", "QKernel", "ENV_QPOLICY"]

ENV_QPOLICY = "SPARSEJIT_QMATMUL_KERNEL"
_BLOCK_WIDTHS = (1,) + sq.INT8_BLOCK_WIDTHS  # 4 x BW blocks; BW = 1 is the M-vectorised kernel
_POLICIES = ("auto", "dense") + tuple(f"qblock{bw}" for bw in _BLOCK_WIDTHS)
_SRC_HASH = hashlib.sha1(b"".join(p.read_bytes() for p in (
    Path(__file__), Path(sq.__file__), Path(sq1.__file__), Path(sq.__file__).with_name("gemm_int8.py"),
    Path(sq.__file__).with_name("gemm_amx.py"),
))).hexdigest()[:12]

# kernel(a_q, out, comp, scale, bias, residual, rowsum): float32 out = act(dequant(a_q @ W) + bias) + res
QKernel = Callable[..., None]


def _requested_policy() -> str:
    """SPARSEJIT_QMATMUL_KERNEL as given (normalised, not yet checked)."""
    return os.environ.get(ENV_QPOLICY, "auto").strip().lower() or "auto"


def _policy() -> str:
    value = _requested_policy()
    if value not in _POLICIES:
        raise ValueError(f"{ENV_QPOLICY}={value!r}: expected one of {_POLICIES}")
    return value


class QWeightKernels(TimedChoice):
    """The kernels of one packed int8 weight, shared by every bucket (one M each) that uses it."""

    def __init__(self, packed: PackedInt8) -> None:
        self.packed = packed
        self._w: np.ndarray | None = None
        self.sparsity = 0.0
        if not packed.has_zero:  # the packed bytes are the weight's, padded with zeros
            self.sparsity = float(1.0 - np.count_nonzero(packed.data) / max(1, packed.k * packed.n))
            forced = _requested_policy() != "auto"  # an unknown value is reported when a kernel is chosen
            if self.sparsity >= MIN_SPARSITY or forced:  # kept only for the sparse forms
                self._w = packed.unpack().astype(np.int8)
        self._forms: dict[str, Any] = {"dense": packed}
        self._chosen: set[str] = set()
        self._digest: str | None = None
        self.decisions: dict[tuple[int, str | None], dict[str, Any]] = {}

    def candidates(self) -> list[str]:
        policy = _policy()
        if self._w is None:  # asymmetric (zero entries are not zero products), or too dense for sparse forms
            return ["dense"]
        if policy != "auto":
            return [policy]
        return ["dense"] + [f"qblock{bw}" for bw in _BLOCK_WIDTHS
                            if block_density(self._w, (4, bw)) <= MAX_BLOCK_DENSITY]

    def _form(self, name: str) -> Any:
        form = self._forms.get(name)
        if form is None:
            assert self._w is not None, "the weight was released before every bucket chose its kernel"
            bw = int(name[len("qblock"):])
            form = sq1.ksparse_int8(self._w) if bw == 1 else sq.block_sparse_int8(self._w, bw)
            self._forms[name] = form
        return form

    def _kernel(self, name: str, activation: str | None, fake_quant: np.ndarray | None = None) -> QKernel:
        form = self._form(name)
        if name == "dense":
            def dense(a_q, out, comp, scale, bias=None, residual=None, rowsum=None):  # type: ignore[no-untyped-def]
                qgemm(a_q, form, out, comp, scale, bias, activation, residual, rowsum, fake_quant=fake_quant)
            return dense

        if name == "qblock1":
            scratch: list[np.ndarray] = []  # the activation in 16-row lanes, reused call after call

            def lanes(a_q, out, comp, scale, bias=None, residual=None, rowsum=None):  # type: ignore[no-untyped-def]
                size = sq1.lanes_scratch_size(a_q.shape[0], form.kp)
                if not scratch or scratch[0].size < size:
                    scratch[:] = [np.empty(size, np.int32)]
                sq1.ksparse_qgemm(a_q, form, out, comp, scale, bias, activation, residual, scratch[0], fake_quant)
            return lanes

        def block(a_q, out, comp, scale, bias=None, residual=None, rowsum=None):  # type: ignore[no-untyped-def]
            sq.block_qgemm(a_q, form, out, comp, scale, bias, activation, residual, fake_quant)
        return block

    def choose(self, m: int, activation: str | None,
               fake_quant: np.ndarray | None = None) -> tuple[str, QKernel]:
        """(name, kernel) of the fastest kernel for M rows (timed once, cached in memory and on disk);
        `fake_quant` (`simd_int8.fake_quant_params`): the kernel rounds its epilogue as a QDQ graph says
        (timed without: the roundings cost every candidate the same, once per output element)."""
        chosen = self._decide(m, activation)
        self._chosen.add(chosen)
        kernel = self._kernel(chosen, activation, fake_quant)
        self._forms = {n: f for n, f in self._forms.items() if n in self._chosen or n == "dense"}
        return chosen, kernel

    def release_weight(self) -> None:
        """Every bucket has its kernel: keep only the chosen forms (no dense copy of a weight run sparse)."""
        for name in list(self._forms):
            if name not in self._chosen and name != "dense":
                del self._forms[name]
        if "dense" not in self._chosen and self._chosen:
            # the epilogue vectors still need colsum/scale/zero, not the packed bytes
            self.packed = dataclasses.replace(self.packed, data=np.zeros(64, np.int8))
            self._forms.pop("dense", None)
        self._w = None

    def _describe(self) -> dict[str, Any]:
        return {"shape": [self.packed.k, self.packed.n], "sparsity": self.sparsity, "int8": True}

    def _time(self, names: list[str], m: int, activation: str | None) -> dict[str, float]:
        p = self.packed
        rows = max(1, min(m, MAX_TIMED_ROWS))
        rng = np.random.default_rng(0)
        a_q = rng.integers(0, 256, size=(rows, p.kp), dtype=np.uint8)
        out = np.empty((rows, p.n), dtype=np.float32)
        comp, scale = epilogue_vectors(p, 128, 0.01)
        bias = pad_columns(np.zeros(p.n, np.float32), p)
        kernels = {name: self._kernel(name, activation) for name in names}
        return time_candidates({name: functools.partial(kern, a_q, out, comp, scale, bias)
                                for name, kern in kernels.items()})

    def _cache_key(self, m: int, activation: str | None, names: list[str]) -> str:
        if self._digest is None:
            assert self._w is not None
            self._digest = hashlib.blake2b(self._w.view(np.uint8).reshape(-1), digest_size=16).hexdigest()
        parts = ["int8", self.packed.layout, self._digest, str(self._w.shape if self._w is not None else ""), str(m),
                 str(activation),
                 kernel_dir().name, str(get_num_threads()), _SRC_HASH, ",".join(names)]
        return hashlib.sha1("|".join(parts).encode()).hexdigest()
