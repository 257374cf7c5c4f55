"""Outputs are written atomically and inputs never written to.

- ``analyze`` on copies of the demo CSVs with ``--out`` next to them (a sibling folder, and
  the very folder that holds them): the inputs' bytes do not change and no temporary file
  or staging folder remains; a second run replaces the outputs the same way.
- No input file is ever opened for writing (every ``open``/``os.open`` is watched).
- A run that fails while writing (here: the report) leaves the output folder exactly as it
  was: no new ``results.json``, no staging folder.
- A single file write that fails keeps the previous version of the file.
"""

from __future__ import annotations

import builtins
import os
import shutil
from pathlib import Path

import pytest
from clirun import fingerprint, run_cli

from theralens.atomic import STAGE_PREFIX, write_text
from theralens.datasets import demo_paths

MODERATORS = '[therapist_moderators]\ncolumns = ["self_rated_alliance_skill", "cbt"]\n'


def _copy_demo(folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    sessions, therapists = demo_paths()
    paths = [Path(shutil.copy(sessions, folder / "sessions.csv")),
             Path(shutil.copy(therapists, folder / "therapists.csv"))]
    (folder / "study.toml").write_text(MODERATORS)
    return [*paths, folder / "study.toml"]


def _leftovers(folder: Path) -> list[str]:
    return [str(p) for p in folder.rglob("*") if p.name.startswith(STAGE_PREFIX) or p.name.endswith(".tmp")]


def test_analyze_next_to_the_inputs_changes_no_input_and_leaves_no_temp_files(tmp_path):
    data = tmp_path / "study"
    inputs = _copy_demo(data)
    before = {p.name: p.read_bytes() for p in inputs}
    args = ["analyze", "sessions.csv", "--therapists", "therapists.csv", "--config", "study.toml"]
    for out in ("results", "."):  # a sibling folder, then the inputs' own folder
        r = run_cli(*args, "--out", out, cwd=data)
        assert r.returncode == 0, r.stderr
        assert {p.name: p.read_bytes() for p in inputs} == before
        assert _leftovers(tmp_path) == []
        written = data / out
        assert (written / "results.json").is_file() and (written / "tables" / "aim1_effects.csv").is_file()
    assert sorted(p.name for p in data.iterdir() if p.is_file()) == sorted(
        [p.name for p in inputs] + ["report.html", "results.json"])


def test_inputs_are_never_opened_for_writing(tmp_path, monkeypatch, capsys):
    from theralens.cli import main

    inputs = {p.resolve() for p in _copy_demo(tmp_path / "in")}
    opened: list[tuple[Path, str]] = []
    real_open, real_os_open = builtins.open, os.open
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC

    def watch_open(file, mode="r", *args, **kwargs):
        if isinstance(file, (str, os.PathLike)) and any(c in mode for c in "wax+"):
            opened.append((Path(file).resolve(), mode))
        return real_open(file, mode, *args, **kwargs)

    def watch_os_open(path, flags, *args, **kwargs):
        if flags & write_flags:
            opened.append((Path(path).resolve(), f"flags {flags}"))
        return real_os_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", watch_open)
    monkeypatch.setattr(os, "open", watch_os_open)
    d = tmp_path / "in"
    rc = main(["analyze", str(d / "sessions.csv"), "--therapists", str(d / "therapists.csv"),
               "--config", str(d / "study.toml"), "--out", str(d)])
    capsys.readouterr()
    assert rc == 0
    assert opened, "the watch saw no write at all"
    assert not [p for p, _ in opened if p in inputs]


def test_failure_while_writing_leaves_the_output_folder_as_it_was(tmp_path, monkeypatch, capsys):
    pytest.importorskip("theralens.report.html")
    from theralens.cli import main

    data = tmp_path / "in"
    _copy_demo(data)
    out = tmp_path / "out"
    (out / "tables").mkdir(parents=True)
    (out / "results.json").write_text('{"from": "an earlier run"}\n')
    (out / "tables" / "aim1_effects.csv").write_text("old\n")
    before = fingerprint(tmp_path)

    def broken_report(result, folder, *args, **kwargs):
        (Path(folder) / "report.html").write_text("half")
        raise RuntimeError("the disk is full")

    monkeypatch.setattr("theralens.report.html.write_report", broken_report)
    rc = main(["analyze", str(data / "sessions.csv"), "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 1
    assert err.count("\n") == 1 and "internal error: RuntimeError: the disk is full" in err
    assert fingerprint(tmp_path) == before
    rc = main(["analyze", str(data / "sessions.csv"), "--out", str(tmp_path / "fresh")])
    capsys.readouterr()
    assert rc == 1 and not (tmp_path / "fresh").exists()

    # a run that succeeds replaces the earlier outputs, removes stale profile pages of the
    # report and keeps the user's own files
    monkeypatch.undo()
    (out / "therapists").mkdir()
    (out / "therapists" / "T99-0123456789.html").write_text("stale page of a therapist no longer in the data")
    (out / "therapists" / "notes.txt").write_text("mine")
    assert main(["analyze", str(data / "sessions.csv"), "--out", str(out)]) == 0
    capsys.readouterr()
    assert '"schema_version"' in (out / "results.json").read_text()
    assert (out / "tables" / "aim1_effects.csv").read_text() != "old\n"
    assert not (out / "therapists" / "T99-0123456789.html").exists()
    assert (out / "therapists" / "notes.txt").read_text() == "mine"
    assert len(list((out / "therapists").glob("*.html"))) == 42
    assert _leftovers(tmp_path) == []


def test_a_failed_file_write_keeps_the_previous_version(tmp_path, monkeypatch):
    target = tmp_path / "results.json"
    write_text(target, "old")

    def no_space(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", no_space)
    with pytest.raises(OSError):
        write_text(target, "new")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]
