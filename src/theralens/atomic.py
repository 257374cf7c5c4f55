"""Write output files atomically: a temporary file in the same folder, then a rename.

A reader never sees a half-written file, and an interrupted run leaves the previous
version in place. Input files are never opened for writing anywhere in theralens.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from theralens.errors import InputError


def prepare_dir(path: str | Path) -> Path:
    """Create the output folder ``path`` (and parents) or say in one line why it cannot be."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise InputError(f"output folder {p} is a file; choose another --out folder or remove the file")
    try:
        p.mkdir(parents=True, exist_ok=True)
    except PermissionError:
        raise InputError(
            f"cannot create output folder {p}: permission denied; choose a folder you can write to"
        ) from None
    except OSError as exc:
        raise InputError(f"cannot create output folder {p}: {exc.strerror}; choose another --out folder") from None
    if not os.access(p, os.W_OK):
        raise InputError(f"output folder {p} is not writable; choose a folder you can write to")
    return p


def write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (temporary file + ``os.replace``)."""
    p = Path(path)
    prepare_dir(p.parent)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return p


def write_text(path: str | Path, text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    return write_bytes(path, text.encode("utf-8"))
