"""Sparse fp32 kernels, weight analysis and the timed kernel choice.

Kernels are compared with a float64 numpy reference of out = act(a @ W + bias) + residual on pruned
weights, with the tolerance of test_gemm (1e-4 relative plus float32 accumulation error relative to
|a| @ |W|). A pruned model compiled by sparsejit (each kernel forced, and the timed choice) must match
onnxruntime running the same pruned file within 1e-4 on the logits.

Compile budget: the sparse kernels are generic in M, K, N, so only (form, tile, activation) modules are
compiled: about 15, 30-40 s cold, a few seconds warm.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from sparsejit.graph.sparsity import analyse_weight, block_density
from sparsejit.kernels import sparse_gemm as S
from sparsejit.plan import kernel_choice as KC

try:
    from scipy.special import erf as _erf
except ImportError:
    _erf = np.vectorize(math.erf, otypes=[np.float64])


def _prune(rng: np.random.Generator, w: np.ndarray, sparsity: float, bw: int | None) -> np.ndarray:
    """Zero a random `sparsity` fraction of elements (bw None) or of 1 x bw blocks along N."""
    w = w.copy()
    if bw is None:
        w[rng.random(w.shape) < sparsity] = 0
        return w
    k, n = w.shape
    keep = rng.random((k, -(-n // bw))) >= sparsity
    w[~np.repeat(keep, bw, axis=1)[:, :n]] = 0
    return w


def _reference(a, w, bias, act, res):  # type: ignore[no-untyped-def]
    a64, w64 = a.astype(np.float64), w.astype(np.float64)
    y = a64 @ w64
    mag = np.abs(a64) @ np.abs(w64)
    if bias is not None:
        y = y + bias
        mag = mag + np.abs(bias)
    if act == "relu":
        y = np.maximum(y, 0)
    elif act == "gelu_erf":
        y = 0.5 * y * (1 + _erf(y / math.sqrt(2)))
    elif act == "gelu_tanh":
        y = 0.5 * y * (1 + np.tanh(math.sqrt(2 / math.pi) * (y + 0.044715 * y ** 3)))
    if res is not None:
        y = y + res
    return y, mag


def _check(out, ref, mag):  # type: ignore[no-untyped-def]
    tol = 1e-4 * np.abs(ref) + 1e-5 * mag + 1e-6
    bad = np.abs(out - ref) > tol
    assert not bad.any(), f"max error {np.abs(out - ref).max()} at {np.argwhere(bad)[:3]}"


FORMS = ["block16", "block32", "block64", "csc"]


def _compress(w: np.ndarray, form: str):  # type: ignore[no-untyped-def]
    return S.csc_sparse(w) if form == "csc" else S.block_sparse(w, int(form[5:]))


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("m,k,n", [(1, 1, 1), (3, 5, 7), (17, 70, 33), (130, 64, 100), (40, 300, 1000)])
@pytest.mark.parametrize("sparsity", [0.5, 0.9, 0.99])
def test_sparse_gemm_plain(form: str, m: int, k: int, n: int, sparsity: float) -> None:
    rng = np.random.default_rng(m * 1000 + k + n)
    bw = None if form == "csc" else int(form[5:])
    w = _prune(rng, rng.standard_normal((k, n), dtype=np.float32), sparsity, bw)
    a = rng.standard_normal((m, k), dtype=np.float32)
    sp = _compress(w, form)
    assert np.array_equal(sp.to_dense(), w)
    out = np.full((m, n), np.nan, dtype=np.float32)
    S.sparse_gemm(a, sp, out)
    _check(out, *_reference(a, w, None, None, None))


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("act", [None, "relu", "gelu_erf", "gelu_tanh"])
def test_sparse_gemm_epilogues(form: str, act: str | None) -> None:
    rng = np.random.default_rng(7)
    m, k, n = 19, 96, 77
    bw = None if form == "csc" else int(form[5:])
    w = _prune(rng, rng.standard_normal((k, n), dtype=np.float32), 0.8, bw)
    a = rng.standard_normal((2, m, k), dtype=np.float32)  # leading dims are flattened to M rows
    bias = rng.standard_normal(n, dtype=np.float32)
    res = rng.standard_normal((2, m, n), dtype=np.float32)
    sp = _compress(w, form)
    for b, r in [(bias, None), (None, res), (bias, res)]:
        out = np.empty((2, m, n), dtype=np.float32)
        S.sparse_gemm(a, sp, out, bias=b, activation=act, residual=r)
        ref, mag = _reference(a.reshape(-1, k), w, b, act, None if r is None else r.reshape(-1, n))
        _check(out.reshape(-1, n), ref, mag)
    # residual aliasing out (out += ...), as the fused residual add of a transformer does
    out = res.copy()
    S.sparse_gemm(a, sp, out, bias=bias, activation=act, residual=out)
    _check(out.reshape(-1, n), *_reference(a.reshape(-1, k), w, bias, act, res.reshape(-1, n)))


@pytest.mark.parametrize("form", FORMS)
def test_all_zero_weight_and_column_tails(form: str) -> None:
    rng = np.random.default_rng(3)
    w = np.zeros((50, 45), dtype=np.float32)
    w[:, 44] = rng.standard_normal(50)  # only the last (partial) column block is non-zero
    for weight in (np.zeros_like(w), w):
        a = rng.standard_normal((9, 50), dtype=np.float32)
        bias = rng.standard_normal(45, dtype=np.float32)
        out = np.empty((9, 45), dtype=np.float32)
        S.sparse_gemm(a, _compress(weight, form), out, bias=bias, activation="relu")
        _check(out, *_reference(a, weight, bias, "relu", None))


def test_compressed_storage_is_small() -> None:
    rng = np.random.default_rng(0)
    w = rng.standard_normal((768, 768), dtype=np.float32)
    wb = _prune(rng, w, 0.9, 32)
    b = S.block_sparse(wb, 32)
    assert b.nbytes < 0.15 * w.nbytes and abs(b.density - 0.1) < 0.02
    wu = _prune(rng, w, 0.9, None)
    c = S.csc_sparse(wu)
    assert c.nnz == np.count_nonzero(wu) and c.nbytes < 0.25 * w.nbytes


def test_shape_errors() -> None:
    sp = S.csc_sparse(np.eye(4, dtype=np.float32))
    with pytest.raises(ValueError):
        S.sparse_gemm(np.ones((2, 5), np.float32), sp, np.empty((2, 4), np.float32))
    with pytest.raises(ValueError):
        S.sparse_gemm(np.ones((2, 4), np.float32), sp, np.empty((2, 4), np.float32), activation="swish")
    with pytest.raises(ValueError):
        S.block_sparse(np.eye(4, dtype=np.float32), 8)


# ------------------------------------------------------------------------------------------ analysis


def test_analyse_weight_block_structure() -> None:
    rng = np.random.default_rng(1)
    w = _prune(rng, rng.standard_normal((64, 128), dtype=np.float32), 0.75, 16)
    st = analyse_weight(w)
    assert abs(st.sparsity - 0.75) < 0.08
    assert st.block_density["1x16"] == pytest.approx(1 - st.sparsity, abs=1e-6)
    assert st.block_density["1x4"] == pytest.approx(1 - st.sparsity, abs=1e-6)
    assert st.block_density["1x32"] > st.block_density["1x16"]
    assert st.structure() == "1x16"
    u = _prune(rng, rng.standard_normal((64, 128), dtype=np.float32), 0.9, None)
    su = analyse_weight(u)
    assert su.structure() == "unstructured" and su.block_density["4x1"] > 0.3
    assert block_density(np.zeros((3, 5)), "1x4") == 0.0


# ------------------------------------------------------------------------------------- kernel choice


def test_choice_dense_weight_is_not_timed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(KC.ENV_POLICY, raising=False)
    monkeypatch.setattr(KC.WeightKernels, "_time", lambda *a, **k: pytest.fail("timed a dense weight"))
    w = np.random.default_rng(0).standard_normal((32, 48), dtype=np.float32)
    assert KC.choose_matmul_kernel(w, 8).name == "dense"


def test_choice_timed_once_cached_on_disk_losers_dropped(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.delenv(KC.ENV_POLICY, raising=False)
    monkeypatch.setattr(KC, "_decision_dir", lambda: tmp_path)
    rng = np.random.default_rng(0)
    w = _prune(rng, rng.standard_normal((256, 256), dtype=np.float32), 0.9, 32)
    wk = KC.WeightKernels(w)
    assert set(wk.candidates()) >= {"dense", "csc", "block32"}
    kern = wk.choose(64, "gelu_erf")
    assert set(wk._forms) == {kern.name}  # no dense (or other) copy kept for a sparse choice
    assert len(list(tmp_path.glob("*.json"))) == 1
    record = wk.decisions[(64, "gelu_erf")]
    assert record["kernel"] == kern.name and set(record["times"]) == set(wk.candidates())
    # a second compile reads the decision instead of timing again
    monkeypatch.setattr(KC.WeightKernels, "_time", lambda *a, **k: pytest.fail("re-timed"))
    again = KC.WeightKernels(w).choose(64, "gelu_erf")
    assert again.name == kern.name
    a = rng.standard_normal((64, 256), dtype=np.float32)
    out = np.empty((64, 256), dtype=np.float32)
    again(a, out)
    _check(out, *_reference(a, w, None, "gelu_erf", None))


@pytest.mark.parametrize("policy", ["dense", "csc", "block16", "block64"])
def test_choice_forced_policy(monkeypatch: pytest.MonkeyPatch, policy: str) -> None:
    monkeypatch.setenv(KC.ENV_POLICY, policy)
    w = np.random.default_rng(0).standard_normal((40, 50), dtype=np.float32)
    assert KC.choose_matmul_kernel(w, 5).name == policy


def test_choice_bad_policy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KC.ENV_POLICY, "fast")
    with pytest.raises(ValueError):
        KC.choose_matmul_kernel(np.ones((4, 4), np.float32), 2)


# --------------------------------------------------------------------------- pruned model vs onnxruntime


@pytest.fixture(scope="module")
def pruned_model(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    from sparsejit.sparsify import sparsify
    from tests import zoo

    src = zoo.random_encoder("distilbert", head="sequence_classification")
    out = tmp_path_factory.mktemp("pruned") / "model.onnx"
    sparsify(src, out, sparsity=0.85, structure="1x16")
    return out


@pytest.mark.parametrize("policy", ["auto", "csc", "block16", "block32"])
def test_pruned_model_matches_onnxruntime(monkeypatch: pytest.MonkeyPatch, pruned_model, policy: str) -> None:
    ort = pytest.importorskip("onnxruntime")
    import sparsejit

    monkeypatch.setenv(KC.ENV_POLICY, policy)
    rng = np.random.default_rng(0)
    ids = rng.integers(1000, 20000, (2, 37))
    mask = np.ones((2, 37), np.int64)
    mask[1, 30:] = 0
    sess = ort.InferenceSession(str(pruned_model), providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    feed = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
    feed = {k: v for k, v in feed.items() if k in names}
    ref = sess.run(None, feed)[0]
    engine = sparsejit.compile(pruned_model, batch_size=2, sequence_length=[16, 48])
    got = engine.run(feed)[sess.get_outputs()[0].name]
    assert np.abs(got - ref).max() <= 1e-4
    kinds = {k.name for key, wk in engine._weight_cache.items() if key[0] == "weight_kernels"
             for k in [wk._kernel(n, None) for n in wk._chosen]}
    if policy != "auto":
        assert kinds == {policy}
