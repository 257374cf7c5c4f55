"""One BLAS thread while the engine works: :func:`one_blas_thread`.

numpy and scipy ship OpenBLAS with one thread per core. The engine's matrices are small
(batched blocks of a few rows, sums over clusters): extra BLAS threads only wait on each other,
and on a machine whose cores are busy (parallel fits, other jobs) a product of microseconds then
waits milliseconds for descheduled threads. A fit at 440,000 rows took 1.38 s with the library
defaults against 0.70 s with one thread. Users do not set thread variables, so every fit
(:func:`~theralens.model.fit.fit_mixed`, :func:`~theralens.model.fit.fit_stats`,
:func:`~theralens.model.fit.fit_design`) runs inside :func:`one_blas_thread`, which limits every
BLAS library loaded in the process to one thread through ``threadpoolctl`` and restores the
previous counts afterwards (nested and concurrent uses count: the first in limits, the last
out restores; :class:`~theralens.model.scoped.ScopedSetting`). A process that runs nothing else
(a power pool worker) calls :func:`pin` once. Results do not depend on it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

from theralens.model.scoped import ScopedSetting

__all__ = ["blas_threads", "one_blas_thread", "pin"]

_controller: Any = None


def _blas_controller() -> Any:
    """threadpoolctl's controller of the loaded BLAS libraries, built once: building it scans the
    process's shared libraries (half a millisecond), limiting through it costs microseconds.
    numpy's and scipy's OpenBLAS are loaded first (the engine uses both)."""
    global _controller
    if _controller is None:
        import numpy  # noqa: F401
        import scipy.linalg  # noqa: F401
        from threadpoolctl import ThreadpoolController

        _controller = ThreadpoolController().select(user_api="blas")
    return _controller


def _limit() -> Callable[[], None]:
    """Limit every BLAS library to one thread; return what restores the previous counts."""
    return _blas_controller().limit(limits=1, user_api="blas").restore_original_limits


_setting = ScopedSetting(_limit)


def one_blas_thread() -> contextlib.AbstractContextManager[None]:
    """Run the body with one thread in every loaded BLAS library, then restore the counts."""
    return _setting.held()


def pin() -> None:
    """One BLAS thread for the rest of the process (a pool worker's initializer); later
    :func:`one_blas_thread` blocks then cost nothing."""
    _setting.pin()


def blas_threads() -> list[int]:
    """The thread count of every loaded BLAS library now (for checks and reports)."""
    from threadpoolctl import threadpool_info

    return [int(info["num_threads"]) for info in threadpool_info() if info.get("user_api") == "blas"]
