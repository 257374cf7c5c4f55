"""One BLAS thread per process while power replicates run.

numpy and scipy ship OpenBLAS with one thread per core. A power study already runs one
process per core, and its matrices are tiny: extra BLAS threads only wait on each other,
and on a busy machine that makes small solves many times slower. :func:`single_thread_blas`
sets every OpenBLAS library loaded in the process to one thread (through its
``*_set_num_threads`` entry point, found in ``/proc/self/maps``) and restores the previous
count afterwards; where that is not possible (another BLAS, another OS) it does nothing.
Pool workers, which run nothing else, set it once for good (:func:`pin`). Results do not
depend on it: the same seed gives the same numbers either way.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
from collections.abc import Callable

from theralens.planning.scoped import ScopedSetting

__all__ = ["pin", "single_thread_blas"]

_NAMES = [("scipy_openblas_set_num_threads64_", "scipy_openblas_get_num_threads64_"),
          ("scipy_openblas_set_num_threads", "scipy_openblas_get_num_threads"),
          ("openblas_set_num_threads64_", "openblas_get_num_threads64_"),
          ("openblas_set_num_threads", "openblas_get_num_threads")]


def _openblas() -> list[tuple[ctypes._CFuncPtr, ctypes._CFuncPtr]]:
    try:
        with open("/proc/self/maps") as fh:
            paths = {line.split()[-1] for line in fh if "openblas" in line.rsplit("/", 1)[-1].lower()}
    except OSError:
        return []
    out = []
    for path in sorted(paths):
        if not os.path.exists(path):
            continue
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for set_name, get_name in _NAMES:
            if hasattr(lib, set_name) and hasattr(lib, get_name):
                out.append((getattr(lib, set_name), getattr(lib, get_name)))
                break
    return out


def _one_thread() -> Callable[[], None]:
    """Set every OpenBLAS library to one thread; return what restores the previous counts."""
    saved = [(set_threads, int(get_threads())) for set_threads, get_threads in _openblas()]
    for set_threads, _ in saved:
        set_threads(1)

    def restore() -> None:
        for set_threads, n in saved:
            set_threads(n)

    return restore


_setting = ScopedSetting(_one_thread)


def pin() -> None:
    """One OpenBLAS thread for the rest of the process (a pool worker's initializer); later
    :func:`single_thread_blas` blocks then cost nothing."""
    _setting.pin()


def single_thread_blas() -> contextlib.AbstractContextManager[None]:
    """Run the body with one OpenBLAS thread, then restore the previous counts (nested and
    concurrent uses count: the first in sets, the last out restores)."""
    return _setting.held()
