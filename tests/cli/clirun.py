"""Run the real CLI (in a subprocess, or in this process) and fingerprint folders (imported by
the CLI tests).

``run_cli`` starts ``python -m theralens.cli`` as a user's shell would: it is the test of the
entry point itself (exit code, nothing but one line on stderr, no traceback). ``run_main``
calls the same ``theralens.cli.main`` in this process, with the working directory, stdout and
stderr redirected and warnings ignored as ``run_cli`` ignores them; it saves the 2-3 s of
imports per run, so catalogues of many cases use it. An exception that escapes ``main`` (which
in a subprocess would print a traceback) fails the calling test.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import subprocess
import sys
import warnings
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


def run_main(*args: str | Path, cwd: Path) -> Run:
    """``theralens.cli.main(ARGS)`` in this process with ``cwd`` as the working directory."""
    from theralens.cli import main

    out, err = io.StringIO(), io.StringIO()
    before = Path.cwd()
    os.chdir(cwd)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            warnings.simplefilter("ignore")
            try:
                code = main([str(a) for a in args])
            except SystemExit as exc:  # argparse's own errors
                code = exc.code if isinstance(exc.code, int) else 2
    finally:
        os.chdir(before)
    return Run(code, out.getvalue(), err.getvalue())


def fingerprint(folder: Path) -> dict[str, str]:
    """{relative path: sha256 (or "dir")} of everything under ``folder``, hidden files included."""
    out = {}
    for p in sorted(folder.rglob("*")):
        rel = str(p.relative_to(folder))
        out[rel] = "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
    return out
