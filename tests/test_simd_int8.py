"""The 8-bit SIMD stores and the AMX tile intrinsics, each against numpy."""

from __future__ import annotations

import numpy as np
import pytest
from numba import njit

from sparsejit.kernels.simd import vibroadcast, viload
from sparsejit.kernels.simd_int8 import vimax, vimin, vstore_bytes_mask


def _clamped_store(lanes: int):  # type: ignore[no-untyped-def]
    """A kernel storing `lanes` (a compile-time constant, as in the generated GEMMs) clamped bytes."""
    namespace = {"njit": njit, "vibroadcast": vibroadcast, "viload": viload, "vimax": vimax, "vimin": vimin,
                 "vstore_bytes_mask": vstore_bytes_mask}
    exec(f"""
@njit(fastmath=True)
def store(out, acc):
    q = vimin(vimax(viload(acc, 0), vibroadcast(-128)), vibroadcast(127))
    vstore_bytes_mask(out, 3, q, {lanes})
""", namespace)
    return namespace["store"]


@pytest.mark.parametrize("lanes", [1, 2, 7, 16])
def test_masked_byte_store_writes_exactly_its_lanes(lanes: int) -> None:
    """LLVM 22 turned a one-lane masked byte store of a clamped vector into a 4-byte store (3 bytes
    past the row: found by the AMX kernel's requantised outputs); nothing outside the lanes may change."""
    acc = (np.arange(16, dtype=np.int32) * 37) - 200
    out = np.full(24, 99, np.uint8)
    _clamped_store(lanes)(out, acc)
    expected = np.full(24, 99, np.uint8)
    expected[3:3 + lanes] = np.clip(acc[:lanes], -128, 127).astype(np.int8).view(np.uint8)
    np.testing.assert_array_equal(out, expected)


def test_amx_tile_product_matches_numpy() -> None:
    """One `tdpbusd` through the Numba intrinsics: uint8 [16, 64] x int8 (K in groups of 4) -> int32."""
    from sparsejit.kernels import simd_amx as amx

    if not amx.amx_usable():
        pytest.skip("no AMX on this CPU")
    amx.require_amx()

    @njit
    def product(cfg, a, b, c):  # type: ignore[no-untyped-def]
        amx.tile_config(cfg, 0)
        amx.tile_zero(0)
        amx.tile_load(1, a, 0, 64)
        amx.tile_load(2, b, 0, 64)
        amx.tile_dpbusd(0, 1, 2)
        amx.tile_dpbusd(0, 1, 2)  # accumulates
        amx.tile_store(0, c, 0, 64)
        amx.tile_release()

    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (16, 64), dtype=np.uint8)
    w = rng.integers(-128, 128, (64, 16), dtype=np.int8)
    b = np.ascontiguousarray(w.reshape(16, 4, 16).transpose(0, 2, 1))  # [K/4][N][4]
    c = np.zeros((16, 16), np.int32)
    cfg = amx.tile_config_bytes({0: 16, 1: 16, 2: 16}, {0: 64, 1: 64, 2: 64})
    product(cfg, a.reshape(-1), b.reshape(-1), c.reshape(-1))
    np.testing.assert_array_equal(c, 2 * (a.astype(np.int64) @ w.astype(np.int64)))
    with pytest.raises(ValueError, match="bad tile shape"):
        amx.tile_config_bytes({0: 17}, {0: 64})


def test_amx_off_switch_and_typed_refusal(monkeypatch: pytest.MonkeyPatch) -> None:
    """`SPARSEJIT_AMX=0` packs for the VNNI kernels; asking for AMX where it cannot run is a clear
    RuntimeError at packing, never an illegal instruction later."""
    from sparsejit.kernels import gemm_int8 as g
    from sparsejit.kernels import simd_amx

    w = np.ones((8, 8), np.int8)
    monkeypatch.setenv(simd_amx.ENV_AMX, "0")
    assert not simd_amx.amx_usable()
    assert g.pack_b_int8(w, 1.0).layout == "vnni"
    monkeypatch.delenv(simd_amx.ENV_AMX)
    monkeypatch.setattr(simd_amx, "_host_has_amx", lambda: False)
    assert not simd_amx.amx_usable()
    assert g.pack_b_int8(w, 1.0).layout == "vnni"
    with pytest.raises(RuntimeError, match="AMX int8 is not available"):
        g.pack_b_int8(w, 1.0, layout="amx")


def test_amx_check_asks_llvm_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Unbound int8 products ask `amx_usable()` per call (the load-time kernel timing runs them so):
    querying LLVM's host features each time cost ~400 us a call and made that timing pick 4x1-sparse
    kernels the model then ran slower than the dense AMX ones. The features are read once per process
    (`target.host_target`)."""
    from sparsejit.kernels import simd_amx, target

    calls: list[int] = []
    real = target._host_features
    monkeypatch.setattr(target, "_host_features", lambda: calls.append(1) or real())
    target.host_target.cache_clear()
    try:
        answers = {simd_amx._host_has_amx() for _ in range(5)}
    finally:
        target.host_target.cache_clear()
    assert len(answers) == 1 and len(calls) == 1
