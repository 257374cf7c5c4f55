"""A process-wide setting held while work runs: :class:`ScopedSetting`.

Fits and power replicates run with settings that belong to the whole process (one BLAS
thread: :mod:`~theralens.model.threads`; glibc's malloc thresholds while replicates run:
:mod:`~theralens.planning.memory`). Blocks that need one may nest and may run in several
threads at once (Dask workers, a user's thread pool): the first to enter applies the setting,
the last to leave undoes it, and a pool worker that runs nothing else applies it for good
(:meth:`pin`).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator

__all__ = ["ScopedSetting"]


class ScopedSetting:
    """``apply()`` sets the setting and returns the function that undoes it.

    ``users``: blocks inside :meth:`held` now; ``pinned``: applied for good by :meth:`pin`.
    """

    def __init__(self, apply: Callable[[], Callable[[], None]]) -> None:
        self._apply = apply
        self._lock = threading.Lock()
        self._undo: Callable[[], None] | None = None
        self.users = 0
        self.pinned = False

    def pin(self) -> None:
        """Apply the setting for the rest of the process; later blocks cost nothing."""
        with self._lock:
            if not self.pinned:
                self._apply()
                self.pinned = True

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        """Run the body with the setting applied (nested and concurrent uses count)."""
        with self._lock:
            self.users += 1
            if self.users == 1 and not self.pinned:
                self._undo = self._apply()
        try:
            yield
        finally:
            with self._lock:
                self.users -= 1
                if self.users == 0:
                    undo, self._undo = self._undo, None
                    if undo is not None and not self.pinned:
                        undo()
