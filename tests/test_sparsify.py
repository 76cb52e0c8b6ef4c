"""`sparsejit sparsify`: target sparsity per layer, skipped embeddings / heads, valid ONNX out, OBS vs
magnitude (reconstruction error on synthetic data; accuracy on the real sentiment model), CLI."""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import numpy_helper

from sparsejit.graph.sparsity import block_density
from sparsejit.sparsify import (
    find_prunable,
    parse_structure,
    prune_magnitude,
    prune_obs,
    read_labelled_csv,
    sparsify,
)
from tests import zoo

ort = pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def small_model() -> Path:
    """distilbert, 3 layers, hidden 256, sequence classification (pre_classifier + classifier heads)."""
    return zoo.random_encoder("distilbert", head="sequence_classification")


def _weights(path: Path) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer}


def _run(path: Path) -> np.ndarray:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    ids = np.random.default_rng(0).integers(1000, 20000, (2, 12))
    feed = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
    return sess.run(None, {i.name: feed[i.name] for i in sess.get_inputs()})[0]


def test_find_prunable_skips_embeddings_and_heads(small_model: Path) -> None:
    model = onnx.load(str(small_model / "model.onnx"))
    prunable, skipped = find_prunable(model)
    assert len(prunable) == 3 * 6  # q, k, v, out, ffn1, ffn2 per layer
    assert sorted(skipped.values()).count("head") == 2  # pre_classifier, classifier
    everything, none_skipped = find_prunable(model, skip=[])
    assert len(everything) == 20 and not none_skipped
    by_regex, _ = find_prunable(model, skip=["embeddings", "heads", r"layer\.0\."])
    assert len(by_regex) in (12, 18)  # names may be anonymous (onnx::MatMul_*) in torchscript exports


@pytest.mark.parametrize("structure", ["unstructured", "1x16", "4x1"])
@pytest.mark.parametrize("sparsity", [0.5, 0.9])
def test_magnitude_sparsity_per_layer(small_model: Path, tmp_path: Path, structure: str,
                                      sparsity: float) -> None:
    src = small_model / "model.onnx"
    digest = hashlib.sha1(src.read_bytes()).hexdigest()
    report = sparsify(small_model, tmp_path / "out", sparsity=sparsity, structure=structure)
    assert hashlib.sha1(src.read_bytes()).hexdigest() == digest  # input untouched
    out = tmp_path / "out" / "model.onnx"
    assert (tmp_path / "out" / "config.json").is_file()
    before, after = _weights(src), _weights(out)
    pruned = [r for r in report.layers if not r.skipped]
    assert len(pruned) == 18
    for r in report.layers:
        w = after[r.name]
        if r.skipped:
            np.testing.assert_array_equal(w, before[r.name])
            continue
        assert abs(r.sparsity_after - sparsity) < 0.01, r
        assert r.sparsity_after == pytest.approx(1 - np.count_nonzero(w) / w.size)
        kept = w != 0
        np.testing.assert_array_equal(w[kept], before[r.name][kept])  # magnitude: survivors unchanged
        if structure != "unstructured":
            kn = w if w.shape == r.shape else w.T
            assert block_density(kn, parse_structure(structure)) == pytest.approx(1 - r.sparsity_after,
                                                                                   abs=0.01)
    assert np.isfinite(_run(out)).all()
    assert "overall sparsity" in report.format()


def test_global_scope_and_refuses_overwrite(small_model: Path, tmp_path: Path) -> None:
    report = sparsify(small_model / "model.onnx", tmp_path / "g.onnx", sparsity=0.7, scope="global")
    assert report.overall_sparsity == pytest.approx(0.7, abs=0.01)
    before, after = _weights(small_model / "model.onnx"), _weights(tmp_path / "g.onnx")
    names = [r.name for r in report.layers if not r.skipped]
    removed = max(np.abs(before[n][(after[n] == 0) & (before[n] != 0)]).max() for n in names)
    kept = min(np.abs(after[n][after[n] != 0]).min() for n in names)
    assert removed <= kept  # one threshold for all layers
    with pytest.raises(ValueError, match="overwrite"):
        sparsify(tmp_path / "g.onnx", tmp_path / "g.onnx")


def _correlated_inputs(rng: np.random.Generator, n: int, k: int) -> np.ndarray:
    mix = rng.standard_normal((k, k)) / np.sqrt(k)
    scale = np.exp(rng.standard_normal(k))
    return (rng.standard_normal((n, k)) @ mix) * scale + 0.3 * rng.standard_normal(k)


@pytest.mark.parametrize("structure", ["unstructured", "1x4", "4x1"])
@pytest.mark.parametrize("sparsity", [0.5, 0.8])
def test_obs_beats_magnitude_reconstruction(structure: str, sparsity: float) -> None:
    rng = np.random.default_rng(0)
    k, n = 96, 80
    x = _correlated_inputs(rng, 2000, k)
    w = rng.standard_normal((k, n))
    h = x.T @ x / len(x)
    w_mag = prune_magnitude([w], sparsity, structure)[0]
    w_obs = prune_obs(w, h, sparsity, structure, block_size=32)
    for pruned in (w_mag, w_obs):
        assert 1 - np.count_nonzero(pruned) / pruned.size == pytest.approx(sparsity, abs=0.02)
    r, c = parse_structure(structure)
    assert block_density(w_obs, (r, c)) == pytest.approx(1 - sparsity, abs=0.02)
    err_mag = np.linalg.norm(x @ (w - w_mag)) / np.linalg.norm(x @ w)
    err_obs = np.linalg.norm(x @ (w - w_obs)) / np.linalg.norm(x @ w)
    assert err_obs < 0.8 * err_mag, (err_obs, err_mag)


def test_quantize_dynamic(small_model: Path, tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime.quantization")
    report = sparsify(small_model, tmp_path / "q.onnx", sparsity=0.5, quantize="dynamic")
    assert report.quantized == tmp_path / "q.onnx" and (tmp_path / "q.fp32.onnx").is_file()
    ops = {node.op_type for node in onnx.load(str(tmp_path / "q.onnx")).graph.node}
    assert "MatMulInteger" in ops or "DynamicQuantizeLinear" in ops
    assert np.isfinite(_run(tmp_path / "q.onnx")).all()


def test_cli(small_model: Path, tmp_path: Path) -> None:
    from sparsejit.serve.cli import main

    result = CliRunner().invoke(main, ["sparsify", str(small_model), str(tmp_path / "c.onnx"), "--sparsity",
                                       "0.6", "--structure", "1x16"])
    assert result.exit_code == 0, result.output
    assert "overall sparsity of pruned weights: 0.6" in result.output
    assert "kept dense: head" in result.output
    bad = CliRunner().invoke(main, ["sparsify", str(small_model), str(tmp_path / "d.onnx"), "--structure",
                                    "diagonal"])
    assert bad.exit_code != 0 and "structure" in bad.output


@pytest.mark.slow
def test_obs_beats_magnitude_accuracy_on_sentiment(tmp_path: Path) -> None:
    """On the real fine-tuned sentiment model: 200 held-out rows, calibration on 96 other rows."""
    model = zoo.shared_model("minilm-sentiment")
    texts, labels = read_labelled_csv(zoo.SHARED_DIR / "models" / "minilm-sentiment" / "eval.csv")
    eval_csv = tmp_path / "eval.csv"
    with eval_csv.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["text", "label"])
        writer.writerows(zip(texts[:200], labels[:200], strict=True))
    calib = texts[-96:]
    acc = {}
    for method in ("magnitude", "obs"):
        rep = sparsify(model, tmp_path / f"{method}.onnx", sparsity=0.6, method=method, calibration_texts=calib,
                       eval_csv=eval_csv, layers_per_pass=8)
        assert rep.accuracy_before is not None and rep.accuracy_before > 0.8
        acc[method] = rep.accuracy_after
        if method == "obs":
            assert all(r.error is not None and r.error < 0.5 for r in rep.layers if not r.skipped)
    assert acc["obs"] >= acc["magnitude"], acc
