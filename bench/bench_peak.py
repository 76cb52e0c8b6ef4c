"""This CPU's arithmetic ceiling: fp32 FMA, int8 VNNI and bf16 dot-product peaks, and what BERT-base needs.

Runs independent register-only chains (no memory traffic) of `vfma` (16 x fp32 FMA), `vdpbusd`
(64 u8 x s8 products into 16 x i32) and `vdpbf16ps` (32 bf16 products into 16 x fp32) on each
thread, through the same explicit-SIMD layer the kernels use, and prints the median rate per core
and for all threads together. Then the floor it puts under BERT-base (12 layers, hidden 768,
intermediate 3072) at batch x seq 128 and 2048: the time its matrix products take at 100 % of the
peak, which no kernel can beat without doing fewer operations.

    python -m bench.bench_peak [--threads 2] [--seconds 1.0]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
from numba import njit, prange

from sparsejit.kernels.simd import vbroadcast, vdpbf16ps, vdpbusd, vfma, vhsum, viadd, vibroadcast, vzero
from sparsejit.kernels.simd_int8 import vihsum, vload_bcast4
from sparsejit.kernels.threading import set_threads

_CHAINS = 12  # independent accumulators: enough to cover the instruction latency


@njit(parallel=True, cache=True)
def _fma_peak(n: int, threads: int) -> float:  # pragma: no cover - compiled
    total = 0.0
    for _t in prange(threads):
        x = vbroadcast(np.float32(1.0))
        c = vbroadcast(np.float32(0.999999))
        a0 = a1 = a2 = a3 = a4 = a5 = a6 = a7 = a8 = a9 = a10 = a11 = vzero()
        for _ in range(n):
            a0 = vfma(a0, c, x)
            a1 = vfma(a1, c, x)
            a2 = vfma(a2, c, x)
            a3 = vfma(a3, c, x)
            a4 = vfma(a4, c, x)
            a5 = vfma(a5, c, x)
            a6 = vfma(a6, c, x)
            a7 = vfma(a7, c, x)
            a8 = vfma(a8, c, x)
            a9 = vfma(a9, c, x)
            a10 = vfma(a10, c, x)
            a11 = vfma(a11, c, x)
        part = vhsum(a0) + vhsum(a1) + vhsum(a2) + vhsum(a3) + vhsum(a4) + vhsum(a5) + vhsum(a6)
        total += part + vhsum(a7) + vhsum(a8) + vhsum(a9) + vhsum(a10) + vhsum(a11)
    return total


@njit(parallel=True, cache=True)
def _vnni_peak(n: int, threads: int, ones: np.ndarray) -> int:  # pragma: no cover - compiled
    total = 0
    for _t in prange(threads):
        x = vload_bcast4(ones, 0)
        w = vibroadcast(1)
        a0 = a1 = a2 = a3 = a4 = a5 = a6 = a7 = a8 = a9 = a10 = a11 = vibroadcast(0)
        for _ in range(n):
            a0 = vdpbusd(a0, x, w)
            a1 = vdpbusd(a1, x, w)
            a2 = vdpbusd(a2, x, w)
            a3 = vdpbusd(a3, x, w)
            a4 = vdpbusd(a4, x, w)
            a5 = vdpbusd(a5, x, w)
            a6 = vdpbusd(a6, x, w)
            a7 = vdpbusd(a7, x, w)
            a8 = vdpbusd(a8, x, w)
            a9 = vdpbusd(a9, x, w)
            a10 = vdpbusd(a10, x, w)
            a11 = vdpbusd(a11, x, w)
        s = viadd(viadd(viadd(a0, a1), viadd(a2, a3)), viadd(viadd(a4, a5), viadd(a6, a7)))
        total += vihsum(viadd(s, viadd(viadd(a8, a9), viadd(a10, a11))))
    return total


@njit(parallel=True, cache=True)
def _bf16_peak(n: int, threads: int, ones: np.ndarray) -> float:  # pragma: no cover - compiled
    total = 0.0
    for _t in prange(threads):
        x = vibroadcast(ones[0])  # two bf16 values per 32-bit lane
        a0 = a1 = a2 = a3 = a4 = a5 = a6 = a7 = a8 = a9 = a10 = a11 = vzero()
        for _ in range(n):
            a0 = vdpbf16ps(a0, x, x)
            a1 = vdpbf16ps(a1, x, x)
            a2 = vdpbf16ps(a2, x, x)
            a3 = vdpbf16ps(a3, x, x)
            a4 = vdpbf16ps(a4, x, x)
            a5 = vdpbf16ps(a5, x, x)
            a6 = vdpbf16ps(a6, x, x)
            a7 = vdpbf16ps(a7, x, x)
            a8 = vdpbf16ps(a8, x, x)
            a9 = vdpbf16ps(a9, x, x)
            a10 = vdpbf16ps(a10, x, x)
            a11 = vdpbf16ps(a11, x, x)
        part = vhsum(a0) + vhsum(a1) + vhsum(a2) + vhsum(a3) + vhsum(a4) + vhsum(a5) + vhsum(a6)
        total += part + vhsum(a7) + vhsum(a8) + vhsum(a9) + vhsum(a10) + vhsum(a11)
    return total


def _rate(run, ops_per_iter: float, threads: int, seconds: float) -> float:  # type: ignore[no-untyped-def]
    """Median operations per second over repeated runs sized to ~0.1 s each."""
    run(1000, threads)
    n = 1_000_000
    while True:
        t0 = time.perf_counter()
        run(n, threads)
        dt = time.perf_counter() - t0
        if dt > 0.05:
            break
        n *= 4
    rates, end = [], time.perf_counter() + seconds
    while time.perf_counter() < end or len(rates) < 5:
        t0 = time.perf_counter()
        run(n, threads)
        rates.append(n * ops_per_iter * threads / (time.perf_counter() - t0))
    return statistics.median(rates)


def bert_base_ops(tokens: int) -> float:
    """Multiply-add operations x 2 of BERT-base's weight products and attention products for `tokens`."""
    hidden, inter, layers, seq = 768, 3072, 12, 128
    weights = layers * (4 * hidden * hidden + 2 * hidden * inter)
    attention = layers * 2 * seq * hidden  # Q·Kᵀ and P·V per token
    return 2.0 * tokens * (weights + attention)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=1.0, help="measured seconds per kind")
    args = parser.parse_args()
    ones = np.ones(64, np.uint8)
    bf16_ones = np.full(1, 0x3F803F80, np.int32)  # (1.0, 1.0) as a bf16 pair
    kinds = {
        "fp32 FMA (GFLOP/s)": (lambda n, t: _fma_peak(n, t), _CHAINS * 16 * 2),
        "int8 VNNI (GOP/s)": (lambda n, t: _vnni_peak(n, t, ones), _CHAINS * 64 * 2),
        "bf16 dot (GFLOP/s)": (lambda n, t: _bf16_peak(n, t, bf16_ones), _CHAINS * 32 * 2),
    }
    print(f"{'kind':<20} {'1 thread':>10} {f'{args.threads} threads':>11}")
    peaks = {}
    for name, (run, ops) in kinds.items():
        set_threads(1)
        one = _rate(run, ops, 1, args.seconds) / 1e9
        set_threads(args.threads)
        many = _rate(run, ops, args.threads, args.seconds) / 1e9
        peaks[name] = many
        print(f"{name:<20} {one:10.1f} {many:11.1f}")
    fp32, int8 = peaks["fp32 FMA (GFLOP/s)"], peaks["int8 VNNI (GOP/s)"]
    print(f"\nBERT-base products at 100 % of the {args.threads}-thread peak (a floor no kernel beats):")
    for tokens, label in ((128, "batch 1 x seq 128"), (2048, "batch 16 x seq 128")):
        total, attention = bert_base_ops(tokens) / 1e9, bert_base_attention_ops(tokens) / 1e9
        int8_ms = ((total - attention) / int8 + attention / fp32) * 1e3
        print(f"  {label:<20} {total:6.1f} G ops: fp32 {total / fp32 * 1e3:7.1f} ms; int8 weights "
              f"(attention in fp32) {int8_ms:6.1f} ms")


def bert_base_attention_ops(tokens: int) -> float:
    """The attention products' part of `bert_base_ops` (they stay fp32 in weight-quantised models)."""
    return 2.0 * tokens * 12 * 2 * 128 * 768


if __name__ == "__main__":
    main()
