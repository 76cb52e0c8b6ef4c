"""``sparsejit benchmark``: sync / async scenarios, both engines interleaved, JSON export, errors; and the
CLI needs neither torch nor onnxruntime unless onnxruntime is asked for."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner
from zoo import shared_model

from sparsejit.serve.benchmark import BenchmarkError, parse_shapes
from sparsejit.serve.cli import main


@pytest.fixture(scope="module")
def model() -> Path:
    return shared_model("minilm-sentiment")


def test_both_engines_sync_with_export(model: Path, tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    out = tmp_path / "results" / "bench.json"
    result = CliRunner().invoke(main, ["benchmark", str(model), "-i", "[1,32]", "-t", "0.6", "-w", "0.1",
                                       "-e", "both", "-x", str(out), "-q"])
    assert result.exit_code == 0, result.output
    for text in ("throughput (items/sec)", "latency median", "latency 99th percentile", "iterations",
                 "throughput ratio sparsejit / onnxruntime"):
        assert text in result.output
    report = json.loads(out.read_text())
    assert set(report["engines"]) == {"sparsejit", "onnxruntime"}
    assert report["input_shapes"] == dict.fromkeys(["input_ids", "attention_mask", "token_type_ids"], [1, 32])
    for stats in report["engines"].values():
        assert stats["iterations"] >= 1 and stats["items_per_second"] > 0
        assert set(stats["latency_ms"]) >= {"mean", "median", "std", "p90", "p99"}
        assert stats["seconds"] >= 0.6
    ratio = report["ratio"]["throughput_sparsejit_over_onnxruntime"]
    sj, ort = report["engines"]["sparsejit"], report["engines"]["onnxruntime"]
    assert ratio == pytest.approx(sj["items_per_second"] / ort["items_per_second"])


def test_async_scenario(model: Path) -> None:
    result = CliRunner().invoke(main, ["benchmark", str(model), "-b", "2", "-i", "[1,32]", "-s", "async",
                                       "-nstreams", "2", "-ncores", "2", "-t", "0.5", "-w", "0", "-q"])
    assert result.exit_code == 0, result.output
    assert "streams: 2" in result.output and "batch size: 2" in result.output
    assert "[2, 32]" in result.output  # -b overrides the first dimension of -i


def test_bf16_precision(model: Path, tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    result = CliRunner().invoke(main, ["benchmark", str(model), "-i", "[1,32]", "-t", "0.3", "-w", "0",
                                       "--precision", "bf16", "-x", str(out), "-q"])
    assert result.exit_code == 0, result.output
    assert json.loads(out.read_text())["precision"] == "bf16"
    assert "sparsejit precision: bf16 (asked: bf16); float products: AVX512-BF16 vdpbf16ps" in result.output
    result = CliRunner().invoke(main, ["benchmark", str(model), "-i", "[1,32]", "-t", "0.3", "-w", "0",
                                       "--precision", "auto", "-x", str(out), "-q"])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert report["precision_requested"] == "auto" and report["precision"] in ("fp32", "bf16")
    result = CliRunner().invoke(main, ["benchmark", str(model), "--precision", "fp16", "-q"])
    assert result.exit_code == 2 and "fp16" in result.output


def test_missing_onnxruntime_is_a_clear_error(model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails as if it were not installed
    result = CliRunner().invoke(main, ["benchmark", str(model), "-i", "[1,16]", "-e", "onnxruntime",
                                       "-t", "0.1", "-w", "0", "-q"])
    assert result.exit_code != 0
    assert "onnxruntime is not installed" in result.output and "Traceback" not in result.output
    import sparsejit.serve.benchmark as bench

    monkeypatch.setattr(bench, "_sparsejit_runs", lambda *a, **k: pytest.fail("compiled before checking the peer"))
    result = CliRunner().invoke(main, ["benchmark", str(model), "-e", "both", "-t", "0.1", "-q"])
    assert result.exit_code != 0 and "onnxruntime is not installed" in result.output


def test_bad_arguments(model: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(main, ["benchmark", str(model), "-i", "[1,x]", "-q"])
    assert result.exit_code != 0 and "input shapes" in result.output
    result = runner.invoke(main, ["benchmark", str(model), "-i", "[1,16],[1,16]", "-q"])
    assert result.exit_code != 0 and "one shape for all" in result.output
    result = runner.invoke(main, ["benchmark", str(tmp_path), "-q"])
    assert result.exit_code != 0 and "no ONNX model" in result.output
    result = runner.invoke(main, ["benchmark", str(model), "-e", "tensorrt"])
    assert result.exit_code == 2
    assert parse_shapes("[1,128]") == [[1, 128]]
    assert parse_shapes("[1,128],[1,128]") == [[1, 128], [1, 128]]
    with pytest.raises(BenchmarkError):
        parse_shapes("[0,128]")


def test_cli_needs_neither_torch_nor_onnxruntime(model: Path) -> None:
    code = textwrap.dedent(f"""
        import sys
        sys.modules["torch"] = None          # any import of torch now fails
        sys.modules["onnxruntime"] = None
        from click.testing import CliRunner
        from sparsejit.serve.cli import main
        import sparsejit.serve.app, sparsejit.serve.benchmark  # the server imports cleanly too
        r = CliRunner().invoke(main, ["benchmark", {str(model)!r}, "-i", "[1,16]", "-t", "0.2", "-w", "0",
                                      "-q"])
        assert r.exit_code == 0, r.output
        print("ok")
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stdout + proc.stderr


def test_sequence_beyond_the_models_positions_is_refused_before_compiling(monkeypatch: pytest.MonkeyPatch) -> None:
    import sparsejit.serve.benchmark as bench
    from sparsejit.model_wheels import minilm_dir

    monkeypatch.setattr(bench, "_sparsejit_runs", lambda *a, **k: pytest.fail("compiled an impossible shape"))
    result = CliRunner().invoke(main, ["benchmark", str(minilm_dir()), "-i", "[1,5000]", "-q"])
    assert result.exit_code != 0
    assert "sequence length 5000 exceeds the model's 512 positions" in result.output
