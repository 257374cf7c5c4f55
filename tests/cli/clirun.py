"""Run the real CLI in a subprocess and fingerprint folders (imported by the CLI tests)."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str


def run_cli(*args: str | Path, cwd: Path, env: dict[str, str] | None = None, timeout: float = 180) -> Run:
    """``python -m theralens.cli ARGS`` in ``cwd``; the result with decoded output."""
    full_env = {**os.environ, "PYTHONWARNINGS": "ignore", **(env or {})}
    done = subprocess.run([sys.executable, "-m", "theralens.cli", *map(str, args)], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout)
    return Run(done.returncode, done.stdout, done.stderr)


def fingerprint(folder: Path) -> dict[str, str]:
    """{relative path: sha256 (or "dir")} of everything under ``folder``, hidden files included."""
    out = {}
    for p in sorted(folder.rglob("*")):
        rel = str(p.relative_to(folder))
        out[rel] = "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
    return out
