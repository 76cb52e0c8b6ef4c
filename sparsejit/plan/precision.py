"""Which precision the float matrix products run in: "fp32", "bf16", or "auto" resolved per CPU.

"auto" means bf16 where this CPU's bf16 products are clearly faster than its fp32 ones — measured once
per CPU and kernel build (a BERT-shaped product in both precisions, cached on disk beside the kernel
choices), because the features alone do not tell: AVX512-BF16's `vdpbf16ps` runs at twice the fp32
FMA rate on AMD Zen 4 / Zen 5 but at half of it on Intel Sapphire Rapids.
"""

from __future__ import annotations

import hashlib

import numpy as np
from numba import get_num_threads

from sparsejit.errors import CPUFeatureError
from sparsejit.kernels.codegen import kernel_dir
from sparsejit.kernels.gemm import pack_b
from sparsejit.kernels.gemm_bf16 import pack_b_bf16
from sparsejit.kernels.target import Target
from sparsejit.plan.kernel_choice import BF16Kernel, DenseKernel, read_decision, time_candidates, write_decision

PRECISIONS = ("fp32", "bf16", "auto")
BF16_MIN_SPEEDUP = 1.2  # bf16 rounds activations and weights: chosen only when it pays clearly
_PROBE = (128, 768, 768)  # M, K, N: one BERT-base projection at sequence 128
_measured: dict[str, float] = {}


def bf16_speedup(target: Target) -> float:
    """fp32 time / bf16 time of a BERT-shaped product on this CPU (1.0 when it has no bf16 kernel)."""
    if not target.avx512_bf16:
        return 1.0
    key = hashlib.sha1("|".join(["bf16-speedup", target.cpu, target.level, kernel_dir().name,
                                 str(get_num_threads()), str(_PROBE)]).encode()).hexdigest()
    if key in _measured:
        return _measured[key]
    record = read_decision(key)
    if record is None:
        m, k, n = _PROBE
        rng = np.random.default_rng(0)
        a = rng.standard_normal((m, k), dtype=np.float32)
        w = rng.standard_normal((k, n), dtype=np.float32)
        out = np.empty((m, n), np.float32)
        fp32, bf16 = DenseKernel(pack_b(w), None), BF16Kernel(pack_b_bf16(w), None)
        times = time_candidates({"fp32": lambda: fp32(a, out), "bf16": lambda: bf16(a, out)})
        record = {"speedup": times["fp32"] / times["bf16"], "cpu": target.cpu, "threads": get_num_threads()}
        write_decision(key, record)
    _measured[key] = float(record["speedup"])
    return _measured[key]


def resolve_precision(requested: str, target: Target) -> str:
    """The precision that runs: `requested` checked against the CPU, "auto" decided by measurement."""
    if requested not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {requested!r}")
    if requested == "bf16" and not target.avx512_bf16:
        raise CPUFeatureError(f"precision='bf16' needs the CPU features AVX-512 F/BW/VL/DQ and AVX512-BF16 "
                              f"(vdpbf16ps), which this target lacks ({target.cpu}, {target.kernel_family}); "
                              f"use precision='fp32' or 'auto'")
    if requested == "auto":
        return "bf16" if bf16_speedup(target) >= BF16_MIN_SPEEDUP else "fp32"
    return requested


def product_kernels(precision: str, target: Target) -> str:
    """What the float matrix products run on, in words (for `describe()` and reports)."""
    if precision == "bf16":
        return "AVX512-BF16 vdpbf16ps: bf16 weights and activations, fp32 accumulation"
    return f"fp32 FMA ({target.kernel_family})"
