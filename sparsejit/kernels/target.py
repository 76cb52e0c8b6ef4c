"""The CPU the kernels are compiled for: its instruction-set features, read once, and the override.

Every kernel family asks `host_target()` which instructions it may emit: the AVX-512 intrinsics
(`vpdpbusd`, `vdpbf16ps`, `vscalefps`, the 512-bit packs) where the CPU has them, the same operation
in plain LLVM vector IR (which LLVM lowers for any x86 level, or for NEON) where it does not. No code
path emits an instruction the CPU lacks: that would abort the process inside LLVM.

`SPARSEJIT_TARGET` narrows the target for testing and comparison: `native` (default), `avx512`
(AVX-512 F/BW/VL/DQ and its extensions, no AMX), `avx2-vnni` (AVX2 + FMA + AVX-VNNI, as Intel's client
CPUs since Alder Lake: 256-bit `vpdpbusd`, no AVX-512), `avx2` (AVX2 + FMA, nothing of AVX-512 or AMX).
Asking for a level the CPU does not have is a `CPUFeatureError` naming the missing features. A
narrowed level also narrows Numba's LLVM target (`narrow_numba_codegen`), so every kernel, plain loops
included, is compiled as for such a CPU and runs at its speed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cache

from sparsejit.errors import CPUFeatureError

ENV_TARGET = "SPARSEJIT_TARGET"
LEVELS = ("native", "avx512", "avx2-vnni", "avx2")

_AVX512_BASE = frozenset({"avx512f", "avx512bw", "avx512vl", "avx512dq"})
_AVX2_BASE = frozenset({"avx2", "fma"})


@dataclass(frozen=True)
class Target:
    """The instruction-set features kernels may use (LLVM feature names, e.g. `avx512vnni`)."""

    cpu: str
    level: str
    features: frozenset[str]

    def has(self, *features: str) -> bool:
        return all(f in self.features for f in features)

    @property
    def avx512(self) -> bool:
        """AVX-512 F/BW/VL/DQ: the 512-bit kernels' own instructions."""
        return self.features >= _AVX512_BASE

    @property
    def avx512_vnni(self) -> bool:
        return self.avx512 and self.has("avx512vnni")

    @property
    def avx512_bf16(self) -> bool:
        return self.avx512 and self.has("avx512bf16")

    @property
    def avx_vnni(self) -> bool:
        """AVX-VNNI: `vpdpbusd` on 256-bit registers (VEX), without AVX-512."""
        return self.has("avxvnni", "avx2")

    @property
    def amx_int8(self) -> bool:
        return self.has("amx-tile", "amx-int8")

    @property
    def kernel_family(self) -> str:
        """What the kernels are built from here, for `describe()` and benchmark headers."""
        if self.avx512:
            extras = [name for name, ok in (("VNNI", self.avx512_vnni), ("BF16", self.avx512_bf16),
                                            ("AMX", self.amx_int8)) if ok]
            return "AVX-512" + (" + " + " + ".join(extras) if extras else "")
        if self.has(*_AVX2_BASE):
            vnni = " + AVX-VNNI" if self.avx_vnni else ""
            return f"AVX2 + FMA{vnni} (AVX-512 operations as portable vector IR)"
        return "portable vector IR"

    @property
    def cache_tag(self) -> str:
        """Part of every kernel cache key: kernels built for one level never load under another."""
        return f"{self.cpu}-{self.level}"


def narrow_numba_codegen() -> None:
    """Make Numba's LLVM target the narrowed level (`SPARSEJIT_TARGET` other than native), so the code
    really is what such a CPU runs: any instruction outside the level fails to compile here, natively,
    as it would abort on that CPU. Needs to run before Numba compiles anything; a user's own
    `NUMBA_CPU_NAME` / `NUMBA_CPU_FEATURES` win."""
    import numba
    from llvmlite import binding

    target = host_target()
    if target.level == "native" or numba.config.CPU_NAME or numba.config.CPU_FEATURES:
        return
    host = binding.get_host_cpu_features()
    # the CPU model only tunes scheduling; the feature list decides which instructions are legal
    numba.config.CPU_NAME = "haswell" if target.level.startswith("avx2") else target.cpu
    numba.config.CPU_FEATURES = ",".join(("+" if name in target.features else "-") + name for name in host)


def _host_features() -> tuple[str, frozenset[str]]:
    from llvmlite import binding

    features = binding.get_host_cpu_features()
    return binding.get_host_cpu_name(), frozenset(name for name, on in features.items() if on)


@cache
def host_target() -> Target:
    """The target of this process (the CPU's features, narrowed by `SPARSEJIT_TARGET`)."""
    cpu, features = _host_features()
    return make_target(cpu, features, os.environ.get(ENV_TARGET, "native"))


def make_target(cpu: str, features: frozenset[str], level: str) -> Target:
    """The target `level` on a CPU with `features` (`CPUFeatureError` if the CPU lacks what it needs)."""
    level = (level or "native").strip().lower()
    if level not in LEVELS:
        raise ValueError(f"{ENV_TARGET}={level!r}: expected one of {LEVELS}")
    if level == "native":
        return Target(cpu, level, features)
    need = _AVX512_BASE if level == "avx512" else _AVX2_BASE | ({"avxvnni"} if level == "avx2-vnni" else set())
    missing = sorted(need - features)
    if missing:
        raise CPUFeatureError(f"{ENV_TARGET}={level} needs CPU features {missing}, which this CPU ({cpu}) lacks")
    if level == "avx512":
        return Target(cpu, level, frozenset(f for f in features if not f.startswith("amx")))
    dropped = {f for f in features if f.startswith(("avx512", "amx", "avxvnni", "avxifma", "avxneconvert", "avx10"))}
    if level == "avx2-vnni":
        dropped.discard("avxvnni")
    return Target(cpu, level, features - dropped)
