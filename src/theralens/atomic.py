"""Write output files atomically: a temporary file in the same folder, then a rename.

A reader never sees a half-written file, and an interrupted run leaves the previous
version in place. :func:`write_staged` extends this to a whole run: every output is
written into a hidden folder inside the output folder first and moved into place only
when all of them were written, so a run that fails leaves no new ``results.json`` and no
mix of old and new files. Input files are never opened for writing anywhere in theralens.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from theralens.errors import InputError

STAGE_PREFIX = ".theralens-staging-"


def check_dir(path: str | Path) -> Path:
    """Say in one line why the output folder ``path`` cannot be created or written, without
    creating anything (called before the analysis, so that it fails fast)."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise InputError(f"output folder {p} is a file; choose another --out folder or remove the file")
    existing = p
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise InputError(f"cannot create output folder {p}: {existing} is a file, not a folder; "
                         "choose another --out folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        what = "output folder" if existing == p else "folder"
        raise InputError(f"{what} {existing} is not writable (permission denied); "
                         "choose an --out folder you can write to")
    return p


def prepare_dir(path: str | Path) -> Path:
    """Create the output folder ``path`` (and parents) or say in one line why it cannot be."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise InputError(f"output folder {p} is a file; choose another --out folder or remove the file")
    if not p.exists():
        check_dir(p)
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
    umask = os.umask(0)
    os.umask(umask)
    try:
        os.fchmod(fd, 0o666 & ~umask)  # mkstemp makes 0600; give the usual permissions of a new file
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


def write_staged(out: str | Path, write: Callable[[Path], list[Path]]) -> list[Path]:
    """Run ``write(folder)`` on a hidden staging folder inside ``out``, then move every file it
    wrote into ``out`` (each with an atomic rename); returns the final paths.

    If ``write`` fails, the staging folder is removed and ``out`` keeps exactly what it held
    before (an ``out`` folder this call created is removed again if it is empty). The pages
    of an earlier run in ``out/therapists`` are copied into the staging folder first, so that
    a writer that removes stale pages there (the report) removes them from ``out`` too.
    """
    out = Path(out)
    created = not out.exists()
    out = prepare_dir(out)
    stage = Path(tempfile.mkdtemp(prefix=STAGE_PREFIX, dir=out))
    try:
        carried = []
        if (out / "therapists").is_dir():
            (stage / "therapists").mkdir()
            for f in (out / "therapists").glob("*.html"):
                if f.is_file():
                    shutil.copy2(f, stage / "therapists" / f.name)
                    carried.append(f.name)
        written = list(dict.fromkeys(Path(f) for f in write(stage)))
        removed = [name for name in carried if not (stage / "therapists" / name).exists()]
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        if created and not any(out.iterdir()):
            out.rmdir()
        raise
    try:
        final = []
        for src in written:
            dst = out / src.relative_to(stage)
            dst.parent.mkdir(parents=True, exist_ok=True)
            os.replace(src, dst)
            final.append(dst)
        for name in removed:
            (out / "therapists" / name).unlink(missing_ok=True)
        return final
    finally:
        shutil.rmtree(stage, ignore_errors=True)
