"""This CPU's arithmetic ceiling: fp32 FMA, int8 VNNI / AMX and bf16 dot-product peaks, and what BERT-base needs.

Runs independent register-only chains (no memory traffic) of `vfma` (16 x fp32 FMA), `vdpbusd`
(64 u8 x s8 products into 16 x i32) and `vdpbf16ps` (32 bf16 products into 16 x fp32) on each
thread, through the same explicit-SIMD layer the kernels use (and, where the CPU has AMX, `tdpbusd` on
tiles), and prints the median rate per core
and for all threads together. Then the floor it puts under BERT-base (12 layers, hidden 768,
intermediate 3072) at batch x seq 128 and 2048: the time its matrix products take at 100 % of the
peak, which no kernel can beat without doing fewer operations.

    python -m bench.bench_peak [--threads 2] [--seconds 1.0] [--no-narrower]

On an AVX-512 CPU it then measures the AVX2 level too (`SPARSEJIT_TARGET=avx2`, in a child process:
8-lane FMA, and the exact `vpmaddwd` form of the int8 dot product the AVX2 kernels use).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

import numpy as np

from sparsejit.kernels.codegen import load_generated
from sparsejit.kernels.simd_amx import amx_usable, require_amx, tile_config_bytes
from sparsejit.kernels.target import ENV_TARGET, host_target
from sparsejit.kernels.threading import set_threads

_CHAINS = 12  # independent accumulators: enough to cover the instruction latency
_CHAINS_AVX2 = 6  # each 16-lane chain is two ymm registers there: 12 of the 16 ymm, no spills
_AMX = "int8 AMX (GOP/s)"
_INT8 = "int8 VNNI (GOP/s)"
_BF16 = "bf16 dot (GFLOP/s)"

# kind: (setup lines, accumulator start, one chain step, accumulator -> float, ops per step)
_KINDS = {
    "fp32 FMA (GFLOP/s)": (["x = vbroadcast(np.float32(1.0))", "c = vbroadcast(np.float32(0.999999))"],
                           "vzero()", "vfma(a, c, x)", "vhsum", 16 * 2),
    _INT8: (["w = vload_bcast4(arg, 0)"],  # the chain is its own u8 operand: nothing to hoist
                          "vibroadcast(0)", "vdpbusd(a, a, w)", "vihsum", 64 * 2),
    _BF16: (["x = vibroadcast(np.int32(0x3F803F80))"],  # (1.0, 1.0) as a bf16 pair
                           "vzero()", "vdpbf16ps(a, x, x)", "vhsum", 32 * 2),
}


def _peak_source(setup: list[str], start: str, step: str, reduce: str, n_chains: int) -> str:
    """A parallel kernel running `n_chains` independent chains of `step` on every thread."""
    chains = range(n_chains)
    lines = ["import numpy as np",
             "from numba import njit, prange",
             "from sparsejit.kernels.simd import vbroadcast, vdpbf16ps, vdpbusd, vfma, vhsum, vibroadcast, vzero",
             "from sparsejit.kernels.simd_int8 import vihsum, vload_bcast4",
             "",
             "@njit(parallel=True, cache=True)",
             "def peak(n, threads, arg, out):",
             "    for t in prange(threads):"]
    lines += [f"        {line}" for line in setup]
    lines += [f"        a{i} = {start}" for i in chains]
    lines.append("        for _ in range(n):")
    lines += [f"            a{i} = {step.replace('a,', f'a{i},')}" for i in chains]
    lines.append("        out[t] = " + " + ".join(f"{reduce}(a{i})" for i in chains))
    return "\n".join(lines) + "\n"


def _amx_source() -> str:
    """Chains of AMX `tdpbusd` (16 x 16 x 64 u8 x s8 products into int32 tiles) on tiles 0-3, operands
    loaded once into tiles 4-7: register-only, as the other kinds."""
    lines = ["from numba import njit, prange",
             "from sparsejit.kernels.simd_amx import tile_config, tile_dpbusd, tile_load, tile_release, tile_store,"
             " tile_zero",
             "",
             "@njit(parallel=True, cache=True)",
             "def peak(n, threads, cfg, data, out):",
             "    for t in prange(threads):",
             "        tile_config(cfg, 0)"]
    lines += [f"        tile_zero({c})" for c in range(4)]
    lines += [f"        tile_load({a}, data, 0, 64)" for a in range(4, 8)]
    lines.append("        for _ in range(n):")
    lines += [f"            tile_dpbusd({c}, {4 + c // 2}, {6 + c % 2})" for c in range(4)]
    lines += ["        tile_store(0, out, t * 256, 64)", "        tile_release()"]
    return "\n".join(lines) + "\n"


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


def _measure(threads: int, seconds: float) -> dict[str, float]:
    """Print and return the `threads`-thread peak of each kind this process's target can run."""
    target = host_target()
    n_chains = _CHAINS if target.avx512 else _CHAINS_AVX2
    ones, sink = np.ones(64, np.uint8), np.zeros(64, np.float64)
    kinds = {}
    for name, (setup, start, step, reduce, ops) in _KINDS.items():
        if name == _BF16 and not target.avx512_bf16:
            continue
        if name == _INT8 and not target.avx512_vnni:
            name = "int8 vpmaddwd (GOP/s)"  # the exact AVX2 form of vpdpbusd the kernels use there
        kernel = load_generated(f"bench_peak_{reduce}_{step.split('(')[0]}_{n_chains}",
                                _peak_source(setup, start, step, reduce, n_chains)).peak
        kinds[name] = (lambda n, t, k=kernel: k(n, t, ones, sink), n_chains * ops)
    if amx_usable():
        require_amx()
        amx = load_generated("bench_peak_amx_tdpbusd", _amx_source()).peak
        cfg = tile_config_bytes({t: 16 for t in range(8)}, {t: 64 for t in range(8)})
        data, tiles_out = np.ones(1024, np.uint8), np.zeros(256 * 64, np.int32)
        kinds[_AMX] = (lambda n, t: amx(n, t, cfg, data, tiles_out), 4 * 16 * 16 * 64 * 2)
    print(f"{target.cpu}, kernels: {target.kernel_family} (SPARSEJIT_TARGET={target.level})")
    print(f"{'kind':<22} {'1 thread':>10} {f'{threads} threads':>11}")
    peaks = {}
    for name, (run, ops) in kinds.items():
        set_threads(1)
        one = _rate(run, ops, 1, seconds) / 1e9
        set_threads(threads)
        many = _rate(run, ops, threads, seconds) / 1e9
        peaks[name] = many
        print(f"{name:<22} {one:10.1f} {many:11.1f}")
    return peaks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=1.0, help="measured seconds per kind")
    parser.add_argument("--narrower", action=argparse.BooleanOptionalAction, default=True,
                        help="on an AVX-512 CPU, also measure the AVX2 level (in a child process)")
    args = parser.parse_args()
    peaks = _measure(args.threads, args.seconds)
    fp32 = peaks["fp32 FMA (GFLOP/s)"]
    int8_name = next(name for name in (_AMX, _INT8, "int8 vpmaddwd (GOP/s)") if name in peaks)
    int8 = peaks[int8_name]
    print(f"\nBERT-base products at 100 % of the {args.threads}-thread peak (a floor no kernel beats):")
    for tokens, label in ((128, "batch 1 x seq 128"), (2048, "batch 16 x seq 128")):
        total, attention = bert_base_ops(tokens) / 1e9, bert_base_attention_ops(tokens) / 1e9
        int8_ms = ((total - attention) / int8 + attention / fp32) * 1e3
        print(f"  {label:<20} {total:6.1f} G ops: fp32 {total / fp32 * 1e3:7.1f} ms; int8 weights "
              f"({int8_name.split(' (')[0]}; attention in fp32) {int8_ms:6.1f} ms")
    if args.narrower and host_target().level == "native" and host_target().avx512:
        print("\n--- the AVX2 level on this CPU (SPARSEJIT_TARGET=avx2) ---", flush=True)
        env = {**os.environ, ENV_TARGET: "avx2"}
        subprocess.run([sys.executable, "-m", "bench.bench_peak", "--threads", str(args.threads),
                        "--seconds", str(args.seconds), "--no-narrower"], env=env, check=True)


def bert_base_attention_ops(tokens: int) -> float:
    """The attention products' part of `bert_base_ops` (they stay fp32 in weight-quantised models)."""
    return 2.0 * tokens * 12 * 2 * 128 * 768


if __name__ == "__main__":
    main()
