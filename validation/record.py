"""What every validation record states: the machine and commit it ran on, and its tables as
Markdown (shared by the scripts of this folder)."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pandas as pd


def machine() -> str:
    """The CPU model (from /proc/cpuinfo; the platform's processor name elsewhere)."""
    info = Path("/proc/cpuinfo")
    lines = info.read_text().splitlines() if info.exists() else []
    return next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")), platform.processor())


def commit() -> str:
    """The short hash of the checked-out commit ("unknown" outside a git checkout)."""
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def markdown_table(df: pd.DataFrame) -> str:
    """A DataFrame as a Markdown table: floats to 4 significant digits, missing values empty."""
    def fmt(v: object) -> str:
        if isinstance(v, float):
            return "" if v != v else f"{v:.4g}"
        return str(v)

    head = "| " + " | ".join(map(str, df.columns)) + " |"
    sep = "|" + "---|" * len(df.columns)
    body = ["| " + " | ".join(fmt(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join([head, sep, *body])


def run_replicates(task: Callable[[tuple], list[dict]], tasks: list[tuple], workers: int) -> list[dict]:
    """The rows of every task, in order, from a pool of ``workers`` processes with one BLAS
    thread each; progress on stderr every 200 tasks."""
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    t0 = time.perf_counter()
    rows: list[dict] = []
    with ProcessPoolExecutor(max_workers=workers) as pool:
        for k, res in enumerate(pool.map(task, tasks, chunksize=4), 1):
            rows += res
            if k % 200 == 0:
                print(f"{k}/{len(tasks)} replicates, {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    return rows
