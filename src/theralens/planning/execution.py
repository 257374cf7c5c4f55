"""Where the replicates run: this process, a local process pool, or a Dask cluster.

The replicates of every design cell are cut into chunks that shrink towards the end of the
run (:func:`plan_chunks`); each chunk is one task
(:func:`theralens.planning.replicate.run_chunk`). Each replicate's seed depends on
(seed, cell, replicate index) only, and chunks are put back in their place whatever order
they finish in, so the result is the same with 1 worker, many, or a cluster.

- ``workers=1``: in this process.
- default: a :class:`concurrent.futures.ProcessPoolExecutor` with one process per core
  (forked on Linux, so workers start at once, unless this process runs other threads, e.g.
  a Dask client: then from a fork server; spawned elsewhere). Each worker starts with one
  BLAS thread, freed memory kept for reuse and the inherited objects frozen for the
  garbage collector (:func:`_init_worker`).
- ``scheduler``: the address of a ``dask.distributed`` scheduler (or a ``Client``); chunks
  are submitted to it and gathered as they finish.

A tqdm progress bar on stderr shows replicates done, the rate and the time left.
"""

from __future__ import annotations

import gc
import math
import multiprocessing as mp
import os
import sys
import threading
from collections.abc import Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from tqdm import tqdm

from theralens.errors import InputError
from theralens.planning import blas, memory
from theralens.planning.replicate import ChunkOutcome, PowerSpec, run_chunk
from theralens.planning.settings import Cell

__all__ = ["available_cores", "execute", "plan_chunks"]

Chunk = tuple[int, int, int]  # (cell index, first replicate, stop)


def available_cores() -> int:
    """Cores this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


#: Most and fewest replicates in one chunk when the size is chosen here.
MAX_CHUNK, MIN_CHUNK = 25, 2


def plan_chunks(n_cells: int, nsim: int, workers: int, chunk_size: int | None = None) -> list[Chunk]:
    """Chunks of replicates, cell by cell, ``chunk_size`` each if given.

    Otherwise the chunks shrink as the work runs out (guided scheduling): each holds about
    a quarter of a worker's share of the replicates still to plan, at most
    :data:`MAX_CHUNK` and at least :data:`MIN_CHUNK`. Large chunks keep the per-task cost
    low; small last ones keep every worker busy to the end (a worker left idle behind one
    large last chunk waits for as long as that chunk runs) and the progress bar moving.
    """
    if chunk_size is not None:
        size = max(1, int(chunk_size))
        return [(c, a, min(a + size, nsim)) for c in range(n_cells) for a in range(0, nsim, size)]
    out: list[Chunk] = []
    remaining = n_cells * nsim
    for c in range(n_cells):
        a = 0
        while a < nsim:
            size = max(MIN_CHUNK, min(MAX_CHUNK, math.ceil(remaining / (4 * max(1, workers)))))
            b = min(a + size, nsim)
            out.append((c, a, b))
            remaining -= b - a
            a = b
    return out


class _Bar(tqdm):
    """tqdm without its monitor thread (a thread would make forking workers unsafe)."""

    monitor_interval = 0


def _bar(total: int, progress: bool) -> tqdm:
    return _Bar(total=total, unit="rep", desc="power", file=sys.stderr, disable=not progress, dynamic_ncols=True,
                smoothing=0.1)


def _run_here(spec: PowerSpec, cells: Sequence[Cell], chunks: list[Chunk], progress: bool) -> list[ChunkOutcome]:
    out = []
    total = sum(b - a for _, a, b in chunks)
    # run_chunk's settings once for the whole run (its own blocks nest inside)
    with blas.single_thread_blas(), memory.reuse_freed_memory(), _bar(total, progress) as bar:
        for c, a, b in chunks:
            out.append(run_chunk(spec, cells, c, a, b))
            bar.update(b - a)
    return out


def _init_worker() -> None:
    """Set up a pool worker once (it runs only replicates): one BLAS thread and freed memory
    kept for reuse (:mod:`~theralens.planning.blas`, :mod:`~theralens.planning.memory`),
    and the objects inherited from the parent moved out of the garbage collector's way."""
    blas.pin()
    memory.pin()
    gc.freeze()


def _context() -> mp.context.BaseContext:
    """fork where it is safe (Linux, one thread, no JAX: JAX runs native threads that Python's
    ``threading`` does not count, and a fork of a process with them can deadlock), else
    forkserver or spawn."""
    methods = mp.get_all_start_methods()
    if (sys.platform.startswith("linux") and "fork" in methods and threading.active_count() == 1
            and "jax" not in sys.modules):
        return mp.get_context("fork")
    return mp.get_context("forkserver" if "forkserver" in methods else "spawn")


def _run_pool(spec: PowerSpec, cells: Sequence[Cell], chunks: list[Chunk], workers: int,
              progress: bool) -> list[ChunkOutcome]:
    out: list[ChunkOutcome] = []
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=_context(), initializer=_init_worker)
    try:
        pending = {pool.submit(run_chunk, spec, cells, c, a, b): b - a for c, a, b in chunks}
        with _bar(sum(pending.values()), progress) as bar:
            while pending:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for fut in done:
                    out.append(fut.result())
                    bar.update(pending.pop(fut))
    except BrokenProcessPool:
        raise RuntimeError("a power worker process died (out of memory?); run again with fewer --workers") from None
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return out


def _run_dask(spec: PowerSpec, cells: Sequence[Cell], chunks: list[Chunk], scheduler: Any,
              progress: bool) -> list[ChunkOutcome]:
    try:
        from distributed import Client, as_completed
    except ImportError:
        raise InputError("--scheduler needs dask.distributed: pip install 'dask[distributed]'") from None
    own = not isinstance(scheduler, Client)
    if own:
        try:
            client = Client(scheduler, timeout="10s")
        except (OSError, TimeoutError, ValueError) as exc:
            raise InputError(f"cannot connect to the Dask scheduler at {scheduler!r} ({type(exc).__name__}); "
                             "check the address (e.g. tcp://host:8786) or leave out --scheduler to use local "
                             "cores") from None
    else:
        client = scheduler
    out: list[ChunkOutcome] = []
    try:
        futures = {client.submit(run_chunk, spec, list(cells), c, a, b, pure=False): b - a for c, a, b in chunks}
        with _bar(sum(futures.values()), progress) as bar:
            for fut in as_completed(list(futures)):
                out.append(fut.result())
                bar.update(futures[fut])
    finally:
        if own:
            client.close()
    return out


def execute(spec: PowerSpec, cells: Sequence[Cell], nsim: int, workers: int | None = None,
            scheduler: Any = None, progress: bool = True,
            chunk_size: int | None = None) -> tuple[list[ChunkOutcome], dict[str, Any]]:
    """Run ``nsim`` replicates of every cell; returns the chunks sorted by (cell, first
    replicate) and how they ran (``executor``, ``workers`` or ``scheduler``, ``chunks``, and
    the wall and CPU seconds spent in replicates, summed over workers)."""
    if scheduler is not None:
        chunks = plan_chunks(len(cells), nsim, 8, chunk_size)
        out = _run_dask(spec, cells, chunks, scheduler, progress)
        info = {"executor": "dask", "scheduler": scheduler if isinstance(scheduler, str) else "dask client"}
    else:
        workers = available_cores() if workers is None else int(workers)
        if workers < 1:
            raise InputError(f"--workers {workers}: give 1 or more processes")
        chunks = plan_chunks(len(cells), nsim, workers, chunk_size)
        workers = min(workers, len(chunks))
        if workers == 1:
            out = _run_here(spec, cells, chunks, progress)
            info = {"executor": "this process"}
        else:
            out = _run_pool(spec, cells, chunks, workers, progress)
            info = {"executor": "local process pool"}
        info["workers"] = workers
    info["chunks"] = len(chunks)
    info["replicate_seconds"] = round(sum(ch.seconds for ch in out), 3)
    info["replicate_cpu_seconds"] = round(sum(ch.cpu_seconds for ch in out), 3)
    out.sort(key=lambda ch: (ch.cell, ch.start))
    return out, info
