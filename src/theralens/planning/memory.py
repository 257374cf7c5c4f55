"""Keep freed memory in the process while power replicates run.

A replicate allocates and frees many arrays of a few hundred kilobytes (the batched
Satterthwaite profiles, the criterion's stacks). With glibc's defaults every such array
above the mmap threshold (128 KiB, raised dynamically) is mapped and unmapped, and the top
of the heap is handed back to the system as soon as 128 KiB of it are free, so the next
allocation faults its pages in again: about 2,000 page faults and 4-5 ms of a 30 ms
replicate on one core. :func:`reuse_freed_memory` raises both thresholds
(``mallopt(M_MMAP_THRESHOLD)``, ``mallopt(M_TRIM_THRESHOLD)``) so freed blocks are reused;
the process keeps at most :data:`TRIM_THRESHOLD` of freed heap. On leaving, glibc's default
values are set back (the mmap threshold then stays at 128 KiB instead of adapting; nested
and concurrent uses count: the last to leave restores), except in worker processes that
called :func:`pin` (the process pool's workers, which run nothing else). Where the C
library is not glibc it does nothing. Results do not depend on it.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import sys
from collections.abc import Callable

from theralens.model.scoped import ScopedSetting

__all__ = ["pin", "reuse_freed_memory"]

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
#: Largest mmap threshold glibc accepts on 64-bit systems (32 MiB).
MMAP_THRESHOLD = 32 << 20
#: Free heap kept before glibc gives memory back.
TRIM_THRESHOLD = 64 << 20
_DEFAULT = 128 << 10  # glibc's default for both

_libc: ctypes.CDLL | None | bool = False  # False: not looked up yet


def _mallopt() -> ctypes._CFuncPtr | None:
    global _libc
    if _libc is False:
        _libc = None
        if sys.platform.startswith("linux"):
            try:
                lib = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
                if hasattr(lib, "mallopt") and hasattr(lib, "gnu_get_libc_version"):
                    _libc = lib
            except OSError:
                pass
    if not isinstance(_libc, ctypes.CDLL):
        return None
    fn = _libc.mallopt
    fn.argtypes, fn.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return fn


def _set(mmap: int, trim: int) -> None:
    mallopt = _mallopt()
    if mallopt is not None:
        mallopt(_M_MMAP_THRESHOLD, mmap)
        mallopt(_M_TRIM_THRESHOLD, trim)


def _raise_thresholds() -> Callable[[], None]:
    _set(MMAP_THRESHOLD, TRIM_THRESHOLD)
    return lambda: _set(_DEFAULT, _DEFAULT)


_setting = ScopedSetting(_raise_thresholds)


def pin() -> None:
    """Raise the thresholds for the rest of the process (a pool worker's initializer)."""
    _setting.pin()


def reuse_freed_memory() -> contextlib.AbstractContextManager[None]:
    """Run the body with freed memory kept for reuse, then restore glibc's defaults."""
    return _setting.held()
