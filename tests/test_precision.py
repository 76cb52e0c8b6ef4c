"""precision="auto" and the precision an engine reports (sparsejit.plan.precision)."""

from __future__ import annotations

import pytest

import sparsejit
from sparsejit.errors import CPUFeatureError
from sparsejit.kernels.target import host_target, make_target
from sparsejit.plan import precision as P
from tests import zoo

_AVX512 = frozenset({"avx512f", "avx512bw", "avx512vl", "avx512dq", "avx2", "fma"})
NO_BF16 = make_target("test-cpu", _AVX512, "native")
WITH_BF16 = make_target("test-cpu-bf16", _AVX512 | {"avx512bf16"}, "native")


def test_explicit_precisions_and_bad_values() -> None:
    assert P.resolve_precision("fp32", NO_BF16) == "fp32"
    assert P.resolve_precision("bf16", WITH_BF16) == "bf16"
    with pytest.raises(CPUFeatureError, match="AVX512-BF16"):
        P.resolve_precision("bf16", NO_BF16)
    with pytest.raises(ValueError, match="precision"):
        P.resolve_precision("fp16", WITH_BF16)


def test_auto_without_bf16_is_fp32_and_measures_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(P, "time_candidates", lambda runs: pytest.fail("timed on a CPU without bf16"))
    assert P.resolve_precision("auto", NO_BF16) == "fp32"


@pytest.mark.parametrize(("speedup", "expected"), [(1.8, "bf16"), (1.1, "fp32"), (0.5, "fp32")])
def test_auto_follows_the_measured_speedup(monkeypatch: pytest.MonkeyPatch, speedup: float, expected: str) -> None:
    monkeypatch.setattr(P, "bf16_speedup", lambda target: speedup)
    assert P.resolve_precision("auto", WITH_BF16) == expected


@pytest.mark.skipif(not host_target().avx512_bf16, reason="needs a CPU with AVX512-BF16")
def test_speedup_is_measured_once_then_cached(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    from sparsejit.plan import kernel_choice

    monkeypatch.setattr(kernel_choice, "_decision_dir", lambda: tmp_path)
    monkeypatch.setattr(P, "_measured", {})
    first = P.bf16_speedup(host_target())
    assert 0.1 < first < 20
    assert list(tmp_path.glob("*.json"))
    monkeypatch.setattr(P, "_measured", {})  # a new process: read from disk, not timed again
    monkeypatch.setattr(P, "time_candidates", lambda runs: pytest.fail("timed twice"))
    assert P.bf16_speedup(host_target()) == first


@pytest.mark.parametrize("speedup", [1.8, 1.0])
def test_engine_reports_what_ran(monkeypatch: pytest.MonkeyPatch, speedup: float) -> None:
    if not host_target().avx512_bf16 and speedup > 1:
        pytest.skip("needs a CPU with AVX512-BF16 to run bf16")
    monkeypatch.setattr(P, "bf16_speedup", lambda target: speedup)
    engine = sparsejit.compile(zoo.random_encoder("distilbert") / "model.onnx", batch_size=1, sequence_length=16,
                               precision="auto")
    info = engine.describe()
    expected = "bf16" if speedup > 1 else "fp32"
    assert (info["precision"], info["precision_requested"], engine.precision) == (expected, "auto", expected)
    assert ("vdpbf16ps" in info["float_products"]) == (expected == "bf16")
