"""Block-sparse int8 (4 x BW blocks, VNNI; 4 x 1 blocks vectorised along M) kernels and their timed
choice for int8 weights.

The sparse kernel computes the same exact int32 products as the dense VNNI kernel and the same
epilogue, so the two must agree bit for bit (an independent reference: `qgemm`, itself checked
against float64 numpy in test_quantized). A model pruned in 4x16 blocks by `sparsify` and quantised by
onnxruntime's `quantize_dynamic` must match onnxruntime on that very file within the dynamic-int8
tolerance of test_quantized (2e-3 of the largest logit; argmax equal where not a near-tie), whichever
kernel runs it.
"""

from __future__ import annotations

import numpy as np
import pytest

from sparsejit.kernels import sparse_gemm_int8 as SQ
from sparsejit.kernels import sparse_gemm_int8_4x1 as SQ1
from sparsejit.kernels.gemm_int8 import epilogue_vectors, pack_b_int8, pad_columns, qgemm, quantize_rows
from sparsejit.plan import qkernel_choice as QC


def _pruned_int8(rng: np.random.Generator, k: int, n: int, sparsity: float, bw: int = 16) -> np.ndarray:
    w = rng.integers(-127, 128, (k, n)).astype(np.int8)
    keep = rng.random((-(-k // 4), -(-n // bw))) >= sparsity
    mask = np.repeat(np.repeat(keep, 4, axis=0), bw, axis=1)[:k, :n]
    return (w * mask).astype(np.int8)


def _operands(rng: np.random.Generator, m: int, w: np.ndarray):  # type: ignore[no-untyped-def]
    k, n = w.shape
    packed = pack_b_int8(w, (rng.random(n) * 0.01 + 1e-3).astype(np.float32))
    x = rng.standard_normal((m, k)).astype(np.float32)
    a_q = np.empty((m, packed.kp), np.uint8)
    quantize_rows(x, a_q, 0.02, 131)
    comp, scale = epilogue_vectors(packed, 131, 0.02)
    bias = pad_columns(rng.standard_normal(n).astype(np.float32), packed)
    res = rng.standard_normal((m, n)).astype(np.float32)
    return packed, a_q, comp, scale, bias, res


# each (K, N, activation) compiles a dense reference kernel: few shapes, every block width
CASES = [(128, 768, 768, None), (37, 770, 100, None), (5, 64, 48, None), (300, 256, 200, "gelu_erf")]


@pytest.mark.parametrize("bw", SQ.INT8_BLOCK_WIDTHS)
@pytest.mark.parametrize("m,k,n,act", CASES)
def test_block_qgemm_equals_dense_vnni(bw: int, m: int, k: int, n: int, act: str | None) -> None:
    rng = np.random.default_rng(m + k + n + bw)
    w = _pruned_int8(rng, k, n, 0.8, bw=16)
    packed, a_q, comp, scale, bias, res = _operands(rng, m, w)
    sparse = SQ.block_sparse_int8(w, bw)
    assert np.array_equal(sparse.to_dense(), w)
    for residual in (None, res):
        ref = np.empty((m, n), np.float32)
        qgemm(a_q, packed, ref, comp, scale, bias, act, residual)
        got = np.full((m, n), np.nan, np.float32)
        SQ.block_qgemm(a_q, sparse, got, comp, scale, bias, act, residual)
        np.testing.assert_array_equal(got, ref)


@pytest.mark.parametrize("m,k,n,act", CASES)
def test_4x1_qgemm_equals_dense_vnni(m: int, k: int, n: int, act: str | None) -> None:
    rng = np.random.default_rng(m + k + n + 1)
    w = _pruned_int8(rng, k, n, 0.8, bw=1)
    packed, a_q, comp, scale, bias, res = _operands(rng, m, w)
    sparse = SQ1.ksparse_int8(w)
    assert np.array_equal(sparse.to_dense(), w)
    scratch = np.empty(SQ1.lanes_scratch_size(m, packed.kp), np.int32)
    for residual, buf in ((None, None), (res, scratch)):
        ref = np.empty((m, n), np.float32)
        qgemm(a_q, packed, ref, comp, scale, bias, act, residual)
        got = np.full((m, n), np.nan, np.float32)
        SQ1.ksparse_qgemm(a_q, sparse, got, comp, scale, bias, act, residual, buf)
        np.testing.assert_array_equal(got, ref)


@pytest.mark.parametrize("points", ["all three", "no product rounding", "and the GELU's"])
def test_sparse_kernels_round_a_qdq_epilogue_as_the_dense_one(points: str) -> None:
    """Static QDQ graphs round the product, the biased sum, the residual sum and inside GELU (`fake_quant`): the sparse
    kernels take the same roundings as the dense VNNI kernel, bit for bit, and the roundings do change it."""
    from sparsejit.kernels.simd_int8 import fake_quant_params

    rng = np.random.default_rng(17)
    m, k, n, act = 37, 256, 96, "gelu_erf"
    product = None if points == "no product rounding" else [0.05, -128.0, 127.0]
    gelu = [[1 / 127, -128.0, 127.0], [2 / 255, 0.0, 255.0]] if points == "and the GELU's" else []
    fq = fake_quant_params([product, [0.04, 0.0, 255.0], [0.03, -128.0, 127.0], *gelu])
    for bw, w_bw in ((16, 16), (32, 16), (1, 1)):
        w = _pruned_int8(rng, k, n, 0.8, bw=w_bw)
        packed, a_q, comp, scale, bias, res = _operands(rng, m, w)
        for residual in (None, res):
            ref = np.empty((m, n), np.float32)
            qgemm(a_q, packed, ref, comp, scale, bias, act, residual, fake_quant=fq)
            plain = np.empty((m, n), np.float32)
            qgemm(a_q, packed, plain, comp, scale, bias, act, residual)
            assert not np.array_equal(ref, plain)
            got = np.full((m, n), np.nan, np.float32)
            if bw == 1:
                SQ1.ksparse_qgemm(a_q, SQ1.ksparse_int8(w), got, comp, scale, bias, act, residual, fake_quant=fq)
            else:
                SQ.block_qgemm(a_q, SQ.block_sparse_int8(w, bw), got, comp, scale, bias, act, residual, fake_quant=fq)
            np.testing.assert_array_equal(got, ref)


def test_4x1_storage_and_errors() -> None:
    rng = np.random.default_rng(3)
    w = _pruned_int8(rng, 768, 768, 0.9, bw=1)
    sparse = SQ1.ksparse_int8(w)
    assert abs(sparse.density - 0.1) < 0.02 and sparse.nbytes < 0.25 * w.nbytes
    zero = SQ1.ksparse_int8(np.zeros((10, 20), np.int8))
    assert zero.nnz_blocks == 0
    with pytest.raises(ValueError, match="int8"):
        SQ1.ksparse_int8(w.astype(np.int16))
    with pytest.raises(ValueError, match="a_q"):
        SQ1.ksparse_qgemm(np.zeros((4, 10), np.uint8), sparse, np.zeros((4, 768), np.float32),
                          np.zeros(768, np.int32), np.zeros(768, np.float32))
    with pytest.raises(ValueError, match="activation"):
        SQ1.ksparse_qgemm(np.zeros((4, 768), np.uint8), sparse, np.zeros((4, 768), np.float32),
                          np.zeros(768, np.int32), np.zeros(768, np.float32), activation="swish")


def test_all_zero_weight_gives_bias() -> None:
    rng = np.random.default_rng(0)
    w = np.zeros((40, 70), np.int8)
    packed, a_q, comp, scale, bias, _ = _operands(rng, 9, w)
    sparse = SQ.block_sparse_int8(w, 32)
    assert sparse.nnz_blocks == 0
    got = np.empty((9, 70), np.float32)
    SQ.block_qgemm(a_q, sparse, got, comp, scale, bias, "relu")
    np.testing.assert_array_equal(got, np.broadcast_to(np.maximum(bias[:70], 0), (9, 70)))


def test_storage_is_compressed_and_errors_are_typed() -> None:
    rng = np.random.default_rng(1)
    w = _pruned_int8(rng, 768, 3072, 0.9)
    sparse = SQ.block_sparse_int8(w, 16)
    assert sparse.nbytes < 0.2 * w.nbytes
    assert abs(sparse.density - 0.1) < 0.02
    with pytest.raises(ValueError, match="block width"):
        SQ.block_sparse_int8(w, 8)
    with pytest.raises(ValueError, match="int8"):
        SQ.block_sparse_int8(w.astype(np.float32), 16)
    with pytest.raises(ValueError, match="a_q"):
        SQ.block_qgemm(np.zeros((4, 10), np.uint8), sparse, np.zeros((4, 3072), np.float32),
                       np.zeros(3072, np.int32), np.zeros(3072, np.float32))


# --------------------------------------------------------------------------- kernel choice


def test_choice_asymmetric_weight_stays_dense(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(QC.ENV_QPOLICY, raising=False)
    w = np.zeros((64, 64), np.uint8)  # uint8 with zero point 0 -> shifted zero point -128: not symmetric
    kernels = QC.QWeightKernels(pack_b_int8(w, 0.1, 0))
    monkeypatch.setattr(QC.QWeightKernels, "_time", lambda *a, **k: pytest.fail("timed"))
    assert kernels.choose(16, None)[0] == "dense"


def test_choice_timed_once_and_dense_bytes_released(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    from sparsejit.plan import kernel_choice as KC

    monkeypatch.delenv(QC.ENV_QPOLICY, raising=False)
    monkeypatch.setattr(KC, "_decision_dir", lambda: tmp_path)
    rng = np.random.default_rng(2)
    w = _pruned_int8(rng, 768, 768, 0.9)
    kernels = QC.QWeightKernels(pack_b_int8(w, 0.01))
    assert kernels.candidates()[0] == "dense" and len(kernels.candidates()) > 1
    name, _ = kernels.choose(128, None)
    assert list(tmp_path.glob("*.json"))
    again = QC.QWeightKernels(pack_b_int8(w, 0.01))
    monkeypatch.setattr(QC.QWeightKernels, "_time", lambda *a, **k: pytest.fail("re-timed"))
    assert again.choose(128, None)[0] == name
    if name != "dense":
        again.release_weight()
        assert again.packed.data.nbytes < 1024 and set(again._forms) == {name}


def test_choice_bad_policy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(QC.ENV_QPOLICY, "fastest")
    kernels = QC.QWeightKernels(pack_b_int8(np.ones((8, 8), np.int8), 1.0))
    with pytest.raises(ValueError, match="SPARSEJIT_QMATMUL_KERNEL"):
        kernels.choose(4, None)


# --------------------------------------------------------------------------- pruned + int8 model vs onnxruntime


@pytest.fixture(scope="module")
def pruned_int8_model(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    pytest.importorskip("onnxruntime.quantization")
    from sparsejit.sparsify import sparsify
    from tests import zoo

    src = zoo.random_encoder("distilbert", head="sequence_classification")
    out = tmp_path_factory.mktemp("pruned-int8") / "model.onnx"
    sparsify(src, out, sparsity=0.9, structure="4x16", quantize="dynamic")
    return out


def _feed(sess) -> dict[str, np.ndarray]:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(0)
    ids = rng.integers(1000, 20000, (2, 37))
    mask = np.ones((2, 37), np.int64)
    mask[1, 30:] = 0
    feed = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
    names = {i.name for i in sess.get_inputs()}
    return {k: v for k, v in feed.items() if k in names}


def test_pruned_int8_model_matches_onnxruntime(monkeypatch: pytest.MonkeyPatch, pruned_int8_model) -> None:
    ort = pytest.importorskip("onnxruntime")
    import sparsejit
    from tests.test_quantized import DYNAMIC_REL, check_logits

    sess = ort.InferenceSession(str(pruned_int8_model), providers=["CPUExecutionProvider"])
    feed = _feed(sess)
    # The engine runs the 37 tokens in its 48 bucket, padded (id 0, mask 0). DynamicQuantizeLinear's
    # per-tensor range takes in the pad rows too, so onnxruntime is given the same padded batch: on the
    # unpadded one its own logits move by 6.0e-4 (0.6 % of max |logit| 0.099). Measured on AMD Zen 5
    # (VNNI, no AMX), every policy vs onnxruntime on the padded batch: 0 (bit-identical); onnxruntime's
    # own BASIC vs ALL optimisation levels: 7.5e-9.
    padded = {k: np.pad(v, ((0, 0), (0, 48 - v.shape[1]))) for k, v in feed.items()}
    ref = sess.run(None, padded)[0]
    outputs = {}
    for policy in ("dense", "qblock1", "qblock16", "qblock32", "auto"):
        monkeypatch.setenv(QC.ENV_QPOLICY, policy)
        engine = sparsejit.compile(pruned_int8_model, batch_size=2, sequence_length=[16, 48])
        assert engine.pad_values == {name: 0 for name in engine.input_names}
        got = engine.run(feed)[sess.get_outputs()[0].name]
        check_logits(got, ref, DYNAMIC_REL * float(np.abs(ref).max()))
        chosen = {n for key, wk in engine._weight_cache.items()
                  if key[0] == "weight_kernels" and isinstance(wk, QC.QWeightKernels) for n in wk._chosen}
        assert chosen and (policy == "auto" or chosen == {policy}), (policy, chosen)
        outputs[policy] = got
    # same integer products and epilogue whichever kernel runs: bit-identical outputs
    for policy in ("qblock1", "qblock16", "qblock32", "auto"):
        np.testing.assert_array_equal(outputs[policy], outputs["dense"])


@pytest.fixture(scope="module")
def pruned_static_qdq_model(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """The same pruned model quantised by `quantize_static` with its defaults (QDQ, every op type: the
    products' epilogues round where the Q -> DQ pairs after them say)."""
    pytest.importorskip("onnxruntime.quantization")
    from sparsejit.sparsify import sparsify
    from tests import zoo
    from tests.int8_exporters import quantize_as

    src = zoo.random_encoder("distilbert", head="sequence_classification")
    d = tmp_path_factory.mktemp("pruned-qdq")
    sparsify(src, d / "fp32.onnx", sparsity=0.9, structure="4x16")
    feeds = [zoo.make_inputs(src, 2, 48, seed=200 + i, padded=False) for i in range(2)]
    quantize_as("qdq", d / "fp32.onnx", d / "model.onnx", feeds)
    return d / "model.onnx"


def test_pruned_static_qdq_model_runs_sparse_with_the_graphs_roundings(monkeypatch: pytest.MonkeyPatch,
                                                                        pruned_static_qdq_model) -> None:
    """Every sparse kernel gives the dense kernel's outputs bit for bit (same integers, same roundings);
    the dense one is within the QDQ forms' distance of onnxruntime's literal run (test_int8_as_exported)."""
    ort = pytest.importorskip("onnxruntime")
    import sparsejit

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(str(pruned_static_qdq_model), so, providers=["CPUExecutionProvider"])
    feed = _feed(sess)
    padded = {k: np.pad(v, ((0, 0), (0, 48 - v.shape[1]))) for k, v in feed.items()}
    ref = sess.run(None, padded)[0]
    outputs = {}
    for policy in ("dense", "qblock1", "qblock16", "auto"):
        monkeypatch.setenv(QC.ENV_QPOLICY, policy)
        engine = sparsejit.compile(pruned_static_qdq_model, batch_size=2, sequence_length=48)
        plan = next(iter(engine._plans.values()))
        assert any(n.attrs.get("fake_quant") for n in plan.step_nodes if n.op_type == "QMatMul")
        chosen = {n for key, wk in engine._weight_cache.items()
                  if key[0] == "weight_kernels" and isinstance(wk, QC.QWeightKernels) for n in wk._chosen}
        assert chosen and (policy == "auto" or chosen == {policy}), (policy, chosen)
        outputs[policy] = engine.run(feed)[sess.get_outputs()[0].name]
    for policy in ("qblock1", "qblock16", "auto"):
        np.testing.assert_array_equal(outputs[policy], outputs["dense"])
    # a QDQ graph's roundings amplify one-ulp float differences into whole quantisation steps
    np.testing.assert_allclose(outputs["dense"], ref, atol=0.1 * float(np.abs(ref).max()))
