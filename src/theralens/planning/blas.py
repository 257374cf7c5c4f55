"""One BLAS thread per process while power replicates run.

A power study runs one process per core on tiny matrices: extra BLAS threads only wait on each
other. Replicates run inside :func:`single_thread_blas` and pool workers, which run nothing
else, call :func:`pin` once. Both are the engine's own setting
(:mod:`theralens.model.threads`, through ``threadpoolctl``), so the fits inside a replicate,
which limit the threads themselves, share the same count: the first block in limits, the last
out restores. Results do not depend on it: the same seed gives the same numbers either way.
"""

from __future__ import annotations

import contextlib

from theralens.model import threads

__all__ = ["pin", "single_thread_blas"]


def pin() -> None:
    """One BLAS thread for the rest of the process (a pool worker's initializer)."""
    threads.pin()


def single_thread_blas() -> contextlib.AbstractContextManager[None]:
    """Run the body with one BLAS thread, then restore the previous counts (nested and
    concurrent uses count: the first in sets, the last out restores)."""
    return threads.one_blas_thread()
