"""What every validation record states: the machine and commit it ran on, and its tables as
Markdown (shared by the scripts of this folder)."""

from __future__ import annotations

import platform
import subprocess
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
