"""Chunk planning and the per-process settings of the replicate loop."""

from __future__ import annotations

import pytest

from theralens.planning import memory
from theralens.planning.execution import MAX_CHUNK, MIN_CHUNK, plan_chunks


@pytest.mark.parametrize(("n_cells", "nsim", "workers"), [(1, 1000, 2), (3, 500, 2), (1, 10, 2), (2, 7, 1),
                                                           (1, 1000, 8), (4, 1, 3)])
def test_chunks_cover_every_replicate_once(n_cells: int, nsim: int, workers: int) -> None:
    chunks = plan_chunks(n_cells, nsim, workers)
    for c in range(n_cells):
        reps = [r for cell, a, b in chunks if cell == c for r in range(a, b)]
        assert reps == list(range(nsim))
    sizes = [b - a for _, a, b in chunks]
    assert max(sizes) <= MAX_CHUNK
    # only the last chunk of a cell may be smaller than MIN_CHUNK
    ends = {c: max(b for cell, _, b in chunks if cell == c) for c in range(n_cells)}
    assert all(b - a >= MIN_CHUNK or b == ends[c] for c, a, b in chunks)


def test_chunks_shrink_towards_the_end() -> None:
    sizes = [b - a for _, a, b in plan_chunks(1, 1000, 2)]
    assert sizes[0] == MAX_CHUNK
    assert sizes == sorted(sizes, reverse=True)
    assert sizes[-2] <= MIN_CHUNK


def test_fixed_chunk_size() -> None:
    assert plan_chunks(2, 5, 4, chunk_size=2) == [(0, 0, 2), (0, 2, 4), (0, 4, 5), (1, 0, 2), (1, 2, 4),
                                                  (1, 4, 5)]


def test_reuse_freed_memory_nests_and_restores(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[int, int]] = []
    monkeypatch.setattr(memory, "_set", lambda mmap, trim: calls.append((mmap, trim)))
    monkeypatch.setattr(memory._setting, "pinned", False)
    raised = (memory.MMAP_THRESHOLD, memory.TRIM_THRESHOLD)
    with memory.reuse_freed_memory():
        with memory.reuse_freed_memory():
            pass
        assert calls == [raised]
    assert calls == [raised, (memory._DEFAULT, memory._DEFAULT)]
    assert memory._setting.users == 0


def test_reuse_freed_memory_is_harmless_for_real() -> None:
    """The real mallopt calls (or none, off glibc) leave numbers and the process intact."""
    import numpy as np

    with memory.reuse_freed_memory():
        a = np.ones((500, 500)) @ np.ones((500, 3))
    assert float(a[0, 0]) == 500.0


def test_single_thread_blas_nests_and_restores() -> None:
    """Replicates and the fits inside them share one count: inner blocks leave one thread,
    the last block out restores what there was (threadpoolctl, theralens.model.threads)."""
    from threadpoolctl import threadpool_limits

    from theralens.model import threads
    from theralens.planning import blas

    with threadpool_limits(2, user_api="blas"):
        before = threads.blas_threads()
        assert before and all(n == 2 for n in before)
        with blas.single_thread_blas():
            with threads.one_blas_thread():
                assert threads.blas_threads() == [1] * len(before)
            assert threads.blas_threads() == [1] * len(before)
        assert threads.blas_threads() == before
        assert threads._setting.users == 0
