"""The kernels' target CPU: features read once, narrowed by SPARSEJIT_TARGET, and the portable vector IR
that replaces each AVX-512-only instruction where the target lacks it (so no CPU can meet an LLVM abort).

`SPARSEJIT_TARGET=avx2` also makes Numba's LLVM target an AVX2 CPU (Haswell model, no AVX-512 feature):
an AVX-512 instruction left anywhere would fail to compile (on a real AVX2 CPU: abort the process), so
compiling and running whole models that way here is the native stand-in for an AVX2 machine. The
portable forms compute exactly what the instructions compute; LLVM's AVX2 code orders some float32
reductions differently, so outputs agree with the native ones to float32 rounding, and both agree with
onnxruntime within the native suites' bounds.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import zoo
from test_quantized import quantized_model

import sparsejit
from sparsejit.errors import CPUFeatureError
from sparsejit.kernels import target as target_mod
from sparsejit.kernels.target import make_target

AVX512_HOST = frozenset({"avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512dq",
                         "avx512vnni", "avx512bf16", "amx-tile", "amx-int8", "avxvnni"})
HASWELL = frozenset({"avx", "avx2", "fma", "f16c"})


def test_levels_narrow_the_features_and_refuse_what_the_cpu_lacks() -> None:
    native = make_target("sapphirerapids", AVX512_HOST, "native")
    assert native.avx512_vnni and native.avx512_bf16 and native.amx_int8
    assert native.kernel_family == "AVX-512 + VNNI + BF16 + AMX"
    no_amx = make_target("sapphirerapids", AVX512_HOST, "avx512")
    assert no_amx.avx512_vnni and not no_amx.amx_int8
    avx2 = make_target("sapphirerapids", AVX512_HOST, "avx2")
    assert not (avx2.avx512 or avx2.avx512_vnni or avx2.amx_int8 or avx2.has("avxvnni"))
    assert avx2.has("avx2", "fma") and avx2.kernel_family.startswith("AVX2 + FMA")
    assert avx2.cache_tag != native.cache_tag
    client = make_target("sapphirerapids", AVX512_HOST, "avx2-vnni")  # as an Alder Lake: AVX-VNNI, no AVX-512
    assert client.avx_vnni and not (client.avx512 or client.amx_int8)
    assert client.kernel_family.startswith("AVX2 + FMA + AVX-VNNI") and client.cache_tag != avx2.cache_tag
    with pytest.raises(CPUFeatureError, match=r"avxvnni.*haswell"):
        make_target("haswell", HASWELL, "avx2-vnni")
    with pytest.raises(CPUFeatureError, match=r"avx512bw.*haswell"):
        make_target("haswell", HASWELL, "avx512")
    with pytest.raises(ValueError, match="expected one of"):
        make_target("haswell", HASWELL, "sse9")
    assert not make_target("haswell", HASWELL, "native").avx512


def test_bf16_on_a_cpu_without_it_is_a_typed_error_at_compile(monkeypatch: pytest.MonkeyPatch) -> None:
    haswell = make_target("haswell", HASWELL, "native")
    monkeypatch.setattr("sparsejit.plan.engine.host_target", lambda: haswell)
    with pytest.raises(CPUFeatureError, match="AVX512-BF16"):
        sparsejit.compile(zoo.random_encoder("distilbert") / "model.onnx", batch_size=1, sequence_length=16,
                          precision="bf16")


_SCRIPT = """
import json, sys
import numpy as np
import sparsejit
feed = dict(np.load(sys.argv[2]))
engine = sparsejit.compile(sys.argv[1], batch_size=2, sequence_length=32)
np.savez(sys.argv[3], **engine.run(feed))
print(json.dumps(engine.describe()["kernels"]))
"""


@pytest.mark.parametrize("form,level", [("fp32", "avx2"), ("dynamic", "avx2"), ("dynamic", "avx2-vnni")])
def test_models_compiled_for_avx2_match_onnxruntime(form: str, level: str, tmp_path: Path) -> None:
    """fp32 (softmax's exp through the portable scalef) and dynamic int8 (the portable dpbusd, packs,
    byte sums and conversions) compiled for an AVX2 CPU in a fresh process: against onnxruntime with
    the native suites' bounds (fp32: 1e-4 x max |output|, test_parity_onnxruntime; dynamic int8:
    2e-3 x max |output|, test_quantized), and against the native engine to float32 rounding (fp32)."""
    import onnxruntime as ort

    if not target_mod.host_target().avx512:
        pytest.skip("the native target here already is the portable one")
    if level == "avx2-vnni" and not target_mod.host_target().has("avxvnni"):
        pytest.skip("this CPU has no AVX-VNNI")
    base = zoo.random_encoder("distilbert")
    model = base / "model.onnx" if form == "fp32" else quantized_model(base, "dynamic") / "model.onnx"
    feed = zoo.make_inputs(base, 2, 32, seed=5)
    np.savez(tmp_path / "feed.npz", **feed)
    env = dict(os.environ, SPARSEJIT_TARGET=level)
    out = subprocess.run([sys.executable, "-c", _SCRIPT, str(model), str(tmp_path / "feed.npz"),
                          str(tmp_path / "out.npz")], env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]).startswith("AVX2 + FMA")
    portable = dict(np.load(tmp_path / "out.npz"))
    native = sparsejit.compile(model, batch_size=2, sequence_length=32).run(feed)
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    reference = dict(zip([o.name for o in session.get_outputs()], session.run(None, feed), strict=True))
    assert portable.keys() == native.keys() == reference.keys()
    bound = 1e-4 if form == "fp32" else 2e-3
    for name, ref in reference.items():
        scale = float(np.abs(ref).max())
        assert float(np.abs(portable[name] - ref).max()) <= bound * scale, name
        if form == "fp32":  # measured 7.2e-7 at max |output| ~4 (Zen 5)
            assert float(np.abs(portable[name] - native[name]).max()) <= 1e-6 * scale, name


_EXACT_INT8 = """
import numpy as np
from sparsejit.kernels import gemm_int8 as g
from sparsejit.kernels.target import host_target
assert not host_target().avx512_vnni
rng = np.random.default_rng(0)
m, k, n = 13, 100, 40
for wdt, lo, hi in ((np.int8, -128, 128), (np.uint8, 0, 256)):
    w = rng.integers(lo, hi, (k, n)).astype(wdt)
    w[:, 0], w[:4, 1] = lo, hi - 1  # the extremes: every product at its largest magnitude
    zw = np.arange(n) % 5 + 126 if wdt == np.uint8 else None
    a = rng.integers(0, 256, (m, k)).astype(np.uint8)
    a[0] = 255
    packed = g.pack_b_int8(w, 1.0, zw)
    aq = np.zeros((m, packed.kp), np.uint8)
    aq[:, :k] = a
    comp, scale = g.epilogue_vectors(packed, 0, 1.0)
    out = np.empty((m, n), np.float32)
    g.qgemm(aq, packed, out, comp, scale, rowsum=a.sum(1, dtype=np.int32))
    ref = a.astype(np.int64) @ (w.astype(np.int64) - (0 if zw is None else zw))
    assert np.abs(ref).max() < 2**24  # exact in float32
    np.testing.assert_array_equal(out, ref.astype(np.float32))
kernel = g._kernel(k, n, *g.default_tile_int8(), None, False)
asm = "".join(kernel.inspect_asm(sig) for sig in kernel.signatures)
print("vpdpbusd" in asm, "zmm" in asm)
print("exact")
"""


@pytest.mark.parametrize("level", ["avx2", "avx2-vnni"])
def test_portable_int8_dot_products_are_exact_at_the_extremes(level: str, tmp_path: Path) -> None:
    """The AVX2 forms of `vpdpbusd` — byte pairs split in place and two `vpmaddwd` (avx2), AVX-VNNI's
    256-bit `vpdpbusd` (avx2-vnni) — against integer arithmetic, with 255 x -128 products everywhere a
    saturating `vpmaddubsw` would clip: bit-exact; and only the AVX-VNNI level emits `vpdpbusd`, neither
    touches a zmm register."""
    need = {"avx2": ("avx2",), "avx2-vnni": ("avx2", "avxvnni")}[level]
    if not target_mod.host_target().has(*need):
        pytest.skip(f"this CPU lacks {need}")
    # an empty kernel cache: Numba cannot show the assembly of cached code
    env = dict(os.environ, SPARSEJIT_TARGET=level, SPARSEJIT_CACHE_DIR=str(tmp_path))
    out = subprocess.run([sys.executable, "-c", _EXACT_INT8], env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.strip().splitlines()
    assert lines[-1] == "exact"
    assert lines[-2] == f"{level == 'avx2-vnni'} False"
