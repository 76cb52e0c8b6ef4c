"""Load generated kernel source as a real module so Numba's on-disk cache works for it.

Numba's `cache=True` refuses functions made with `exec()`; written to a `.py` file in the cache
directory and imported from there, they cache like any module. Files are keyed by a hash of their
source, which already spells out the shapes and dtypes they were generated for; the directory name
adds the library version, the Numba version and the CPU, so a changed machine or release starts clean.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import numba

import sparsejit
from sparsejit.kernels import cache_guard
from sparsejit.kernels.target import host_target

cache_guard.install()

_lock = threading.Lock()
_loaded: dict[str, ModuleType] = {}


def cache_root() -> Path:
    """Root of sparsejit's caches: `$SPARSEJIT_CACHE_DIR`, else `$XDG_CACHE_HOME/sparsejit`, else
    `~/.cache/sparsejit`."""
    env = os.environ.get("SPARSEJIT_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "sparsejit"


def kernel_dir() -> Path:
    """Directory of generated kernel modules for this library version, Numba version, CPU and target level."""
    from llvmlite import binding

    features = hashlib.sha1(binding.get_host_cpu_features().flatten().encode()).hexdigest()[:8]
    tag = f"sparsejit{sparsejit.__version__}-numba{numba.__version__}-py{sys.version_info[0]}{sys.version_info[1]}"
    return cache_root() / "kernels" / f"{tag}-{host_target().cache_tag}-{features}"


def load_generated(name: str, source: str) -> ModuleType:
    """Import generated `source` as a module named after `name` and the source's hash."""
    digest = hashlib.sha1(source.encode()).hexdigest()[:16]
    module_name = f"sparsejit_gen_{name}_{digest}"
    with _lock:
        module = _loaded.get(module_name)
        if module is not None:
            return module
        directory = kernel_dir()
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"{module_name}.py"
        if not path.is_file() or path.read_text() != source:
            fd, tmp = tempfile.mkstemp(dir=directory, suffix=".tmp")
            with os.fdopen(fd, "w") as fh:
                fh.write(source)
            os.replace(tmp, path)
        spec = importlib.util.spec_from_file_location(module_name, path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        spec.loader.exec_module(module)
        _loaded[module_name] = module
        return module


_by_name: dict[str, ModuleType] = {}
_by_name_lock = threading.Lock()


def load_generated_once(name: str, make_source: Callable[[], str]) -> ModuleType:
    """`load_generated(name, make_source())`, memoised by `name` (which must encode every parameter
    of the source), so the source is generated and hashed once per process."""
    module = _by_name.get(name)
    if module is None:
        with _by_name_lock:
            module = _by_name.get(name)
            if module is None:
                module = load_generated(name, make_source())
                _by_name[name] = module
    return module
