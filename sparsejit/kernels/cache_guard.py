"""Make a corrupt Numba cache entry a cache miss (rebuilt), never a crash.

Numba raises whatever unpickling raises when an index or data file in `__pycache__` is truncated or
overwritten (a killed process, a full disk, a copied cache). sparsejit treats such an entry as absent:
the kernel is compiled again and the entry rewritten.
"""

from __future__ import annotations

import functools
import logging

from numba.core import caching

log = logging.getLogger("sparsejit.cache")
_installed = False


def install() -> None:
    """Patch Numba's cache file reader once (idempotent)."""
    global _installed
    if _installed:
        return
    _installed = True
    cls = caching.IndexDataCacheFile
    load_index, load_data = cls._load_index, cls._load_data

    @functools.wraps(load_index)
    def safe_load_index(self):
        try:
            return load_index(self)
        except Exception as exc:  # corrupt index: behave as if there were none
            log.warning("sparsejit: ignoring corrupt kernel cache index %s (%s)", self._index_path, exc)
            return {}

    @functools.wraps(load_data)
    def safe_load_data(self, name):
        try:
            return load_data(self, name)
        except OSError:
            raise
        except Exception as exc:  # corrupt data file: Numba treats OSError as "missing"
            log.warning("sparsejit: ignoring corrupt kernel cache entry %s (%s)", name, exc)
            raise OSError(str(exc)) from exc

    cls._load_index = safe_load_index
    cls._load_data = safe_load_data
