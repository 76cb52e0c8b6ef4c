"""The portable subset on an emulated AVX2-only CPU (`qemu-x86_64 -cpu Haswell-noTSX`): the default
embeddings pipeline, an fp32 and an int8 model against onnxruntime, and the server answering one
request, each within the native suites' bounds (see `bench.emulated_cpu`; aarch64:
tests/test_emulated_aarch64.py).

Skipped where `qemu-x86_64` is missing unless `SPARSEJIT_REQUIRE_QEMU=1`, which `.ci/run` sets after
installing Debian's `qemu-user`: in CI a missing emulator is a failure, not a skip."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from bench.emulated_cpu import FP32_BOUND, INT8_BOUND, run_subset, x86_emulator


@pytest.mark.slow
def test_portable_subset_on_an_emulated_avx2_cpu(tmp_path: Path) -> None:
    if shutil.which("qemu-x86_64") is None:
        if os.environ.get("SPARSEJIT_REQUIRE_QEMU") == "1":
            pytest.fail("SPARSEJIT_REQUIRE_QEMU=1 but qemu-x86_64 is not installed (apt-get install qemu-user)")
        pytest.skip("qemu-x86_64 is not installed (apt-get install qemu-user)")
    report = run_subset(x86_emulator("Haswell-noTSX"), tmp_path)
    assert report["kernels"].startswith("AVX2 + FMA"), report  # the emulated CPUID chose the AVX2 kernels
    assert report["fp32_vs_onnxruntime"] <= FP32_BOUND
    assert report["int8_vs_onnxruntime"] <= INT8_BOUND
    assert report["pipeline_vs_native"] <= INT8_BOUND and report["server_vs_native"] <= INT8_BOUND

