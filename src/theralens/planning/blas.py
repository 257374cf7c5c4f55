"""One BLAS thread per process while power replicates run.

numpy and scipy ship OpenBLAS with one thread per core. A power study already runs one
process per core, and its matrices are tiny: extra BLAS threads only wait on each other,
and on a busy machine that makes small solves many times slower. :func:`single_thread_blas`
sets every OpenBLAS library loaded in the process to one thread (through its
``*_set_num_threads`` entry point, found in ``/proc/self/maps``) and restores the previous
count afterwards; where that is not possible (another BLAS, another OS) it does nothing.
Results do not depend on it: the same seed gives the same numbers either way.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
from collections.abc import Iterator

__all__ = ["single_thread_blas"]

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


@contextlib.contextmanager
def single_thread_blas() -> Iterator[None]:
    """Run the body with one OpenBLAS thread, then restore the previous counts."""
    libs = _openblas()
    before = []
    for set_threads, get_threads in libs:
        before.append(int(get_threads()))
        set_threads(1)
    try:
        yield
    finally:
        for (set_threads, _), n in zip(libs, before):
            set_threads(n)
