"""The portable subset of tests/test_emulated_cpu.py on aarch64 (`qemu-aarch64`), in its own file so
that the two emulated runs go to different test workers."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from bench.emulated_cpu import FP32_BOUND, INT8_BOUND, aarch64_emulator, run_subset


@pytest.mark.slow
def test_portable_subset_on_an_emulated_aarch64_cpu(tmp_path: Path) -> None:
    """The same subset on aarch64 (`qemu-aarch64`, an aarch64 CPython and aarch64 wheels in a sysroot
    built on first use). Building the sysroot needs root, apt (arm64) and PyPI: where that
    infrastructure is missing the test skips, naming what failed; a failing emulated run fails it."""
    if shutil.which("qemu-aarch64") is None:
        if os.environ.get("SPARSEJIT_REQUIRE_QEMU") == "1":
            pytest.fail("SPARSEJIT_REQUIRE_QEMU=1 but qemu-aarch64 is not installed (apt-get install qemu-user)")
        pytest.skip("qemu-aarch64 is not installed (apt-get install qemu-user)")
    try:
        emulator = aarch64_emulator()
    except (subprocess.CalledProcessError, PermissionError, FileNotFoundError) as exc:
        pytest.skip(f"could not build the aarch64 sysroot here: {exc}")
    report = run_subset(emulator, tmp_path, timeout_s=2400.0)
    assert report["kernels"] == "portable vector IR", report
    assert report["fp32_vs_onnxruntime"] <= FP32_BOUND
    assert report["int8_vs_onnxruntime"] <= INT8_BOUND
    assert report["pipeline_vs_native"] <= INT8_BOUND and report["server_vs_native"] <= INT8_BOUND
