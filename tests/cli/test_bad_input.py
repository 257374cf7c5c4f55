"""The catalogue of bad inputs: each is answered by the CLI with exit code
2 and ONE line on stderr that names the file and the column, row(s), therapist or key and
says how to fix it; no traceback; and no file of the user is changed, no output appears
(not even a half-written one: an earlier ``results.json`` in the output folder stays as it
was) and no temporary file is left behind.

Every case is a function ``(folder, sessions, therapists) -> (argv, parts)`` that writes its
files into ``folder`` (the working directory of the run) and returns the command line and
the pieces the error line must contain. ``sessions`` and ``therapists`` are copies of the
demo tables (42 therapists, 212 patients). The catalogue with causes and fixes is
``docs/troubleshooting.md``.

Every case runs through ``theralens.cli.main`` in this process (``clirun.run_main``), and a
sample of cases through the real command in a subprocess (``clirun.run_cli``), which is the
test that the entry point adds nothing to the line (no traceback, no warning, nothing on stdout).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from clirun import fingerprint, run_cli, run_main

Case = Callable[[Path, pd.DataFrame, pd.DataFrame], tuple[list[str], list[str]]]
CASES: dict[str, Case] = {}
MODERATOR_TOML = '[therapist_moderators]\ncolumns = ["cbt"]\n'


def case(fn: Case) -> Case:
    CASES[fn.__name__] = fn
    return fn


def csv(folder: Path, name: str, df: pd.DataFrame) -> str:
    df.to_csv(folder / name, index=False)
    return name


def text(folder: Path, name: str, content: str) -> str:
    (folder / name).write_text(content, encoding="utf-8")
    return name


# --------------------------------------------------------------------------- files


@case
def missing_file(d, s, t):
    return ["analyze", "sessons.csv"], ["sessons.csv", "does not exist", "check the path"]


@case
def folder_instead_of_file(d, s, t):
    (d / "sessions.csv").mkdir()
    return ["validate", "sessions.csv"], ["sessions.csv", "is a folder, not a file", "give the path of the data file"]


@case
def empty_file(d, s, t):
    (d / "sessions.csv").write_bytes(b"")
    return ["analyze", "sessions.csv"], ["sessions.csv", "is empty (0 bytes)", "export the data again"]


@case
def garbled_binary_csv(d, s, t):
    (d / "sessions.csv").write_bytes(np.random.default_rng(1).bytes(3000) + b"\x00")
    return ["analyze", "sessions.csv"], ["sessions.csv", "not a text table", "export it again as CSV"]


@case
def garbled_excel(d, s, t):
    (d / "sessions.xlsx").write_bytes(b"PK\x03\x04" + np.random.default_rng(2).bytes(2000))
    return ["validate", "sessions.xlsx"], ["sessions.xlsx", "not a readable Excel workbook", "save it again as .xlsx"]


@case
def header_only_csv(d, s, t):
    text(d, "sessions.csv", ",".join(s.columns) + "\n")
    return ["analyze", "sessions.csv"], ["sessions.csv", "header but no data rows", "export the data again"]


@case
def unsupported_extension(d, s, t):
    text(d, "sessions.json", s.head().to_json())
    return ["analyze", "sessions.json"], ["sessions.json", "unknown extension '.json'", "save it as .csv"]


@case
def ragged_csv(d, s, t):
    lines = s.head(20).to_csv(index=False).splitlines()
    lines[6] += ",7,8"
    text(d, "sessions.csv", "\n".join(lines) + "\n")
    return ["validate", "sessions.csv"], ["sessions.csv", "line 7", "same number of comma-separated fields"]


@case
def excel_with_several_sheets(d, s, t):
    with pd.ExcelWriter(d / "study.xlsx") as xw:
        s.to_excel(xw, sheet_name="Sessions", index=False)
        t.to_excel(xw, sheet_name="Therapists", index=False)
    return ["analyze", "study.xlsx"], ["study.xlsx", '2 sheets ("Sessions", "Therapists")', '--sheet "Sessions"']


@case
def excel_sheet_misspelt(d, s, t):
    with pd.ExcelWriter(d / "study.xlsx") as xw:
        s.to_excel(xw, sheet_name="Sessions", index=False)
        t.to_excel(xw, sheet_name="Therapists", index=False)
    return ["validate", "study.xlsx", "--sheet", "Session"], ["study.xlsx", 'no sheet "Session"',
                                                              'did you mean "Sessions"?']


@case
def therapist_workbook_with_several_sheets(d, s, t):
    with pd.ExcelWriter(d / "study.xlsx") as xw:
        s.to_excel(xw, sheet_name="Sessions", index=False)
        t.to_excel(xw, sheet_name="Therapists", index=False)
    text(d, "study.toml", MODERATOR_TOML)
    return (["analyze", "study.xlsx", "--sheet", "Sessions", "--therapists", "study.xlsx", "--config", "study.toml"],
            ["therapists file study.xlsx", '--therapists-sheet "Therapists"'])


@case
def spss_process_marked_nominal(d, s, t):
    import pyreadstat

    s = s.assign(therapist=s["therapist"].str[1:].astype(float), patient=s["patient"].str[1:].astype(float),
                 alliance=s["alliance"].round().clip(1, 7))
    labels = {float(k): f"level {k}" for k in range(1, 8)}
    pyreadstat.write_sav(s, str(d / "sessions.sav"), variable_value_labels={"alliance": labels},
                         variable_measure={"alliance": "nominal"})
    return ["validate", "sessions.sav"], ["sessions.sav", "'alliance'", "rows 1, 2, 3", "nominal",
                                          "set its measure to scale"]


# --------------------------------------------------------------------------- config


@case
def config_missing(d, s, t):
    return ["analyze", csv(d, "sessions.csv", s), "--config", "study.toml"], [
        "study.toml", "does not exist", "check the path"]


@case
def config_unknown_key(d, s, t):
    text(d, "study.toml", '[columns]\noutcom = "outcome"\n')
    return ["analyze", csv(d, "sessions.csv", s), "--config", "study.toml"], [
        "study.toml", "unknown key 'outcom' in [columns]", 'did you mean "outcome"?']


@case
def config_unknown_section(d, s, t):
    text(d, "study.toml", '[column]\noutcome = "outcome"\n')
    return ["validate", csv(d, "sessions.csv", s), "--config", "study.toml"], [
        "study.toml", "unknown section [column]", 'did you mean "columns"?']


@case
def config_value_not_allowed(d, s, t):
    text(d, "study.toml", '[design]\nlevel = "sessions"\n')
    return ["analyze", csv(d, "sessions.csv", s), "--config", "study.toml"], [
        "study.toml", "[design] level", 'use one of "patient", "session"']


@case
def toml_syntax_error(d, s, t):
    text(d, "study.toml", '[columns]\noutcome = "score\nprocess = ["alliance"]\n')
    return ["analyze", csv(d, "sessions.csv", s), "--config", "study.toml"], [
        "study.toml", "TOML syntax error at line 2, column 17", 'key = "value"']


@case
def config_not_utf8(d, s, t):
    (d / "study.toml").write_bytes('[columns]\noutcome = "Befinden_\u00e4"\n'.encode("utf-16"))
    return ["validate", csv(d, "sessions.csv", s), "--config", "study.toml"], [
        "study.toml", "not UTF-8", "save it as UTF-8"]


@case
def configured_column_missing(d, s, t):
    return ["analyze", csv(d, "sessions.csv", s.rename(columns={"outcome": "outcome_score"}))], [
        "sessions.csv", 'no column "outcome"', 'did you mean "outcome_score"?', "[columns] outcome"]


@case
def moderators_without_therapist_table(d, s, t):
    text(d, "study.toml", MODERATOR_TOML)
    return ["analyze", csv(d, "sessions.csv", s), "--config", "study.toml"], [
        "[therapist_moderators] columns", "no therapist table", "pass --therapists FILE"]


# --------------------------------------------------------------------------- values


@case
def outcome_not_numeric(d, s, t):
    s["outcome"] = s["outcome"].astype(object)
    s.loc[[2, 4, 8, 12], "outcome"] = ["bad", "n.a.", "3,4,5", "x"]
    return ["analyze", csv(d, "sessions.csv", s)], [
        "sessions.csv", "column 'outcome' (outcome) must hold numbers", "rows 4, 6, 10 and 1 more",
        "'bad', 'n.a.', '3,4,5'", "replace them by numbers"]


@case
def process_not_numeric(d, s, t):
    s["expectancy"] = s["expectancy"].astype(object)
    s.loc[[0, 1], "expectancy"] = ["high", "low"]
    return ["validate", csv(d, "sessions.csv", s)], [
        "sessions.csv", "column 'expectancy' (process)", "rows 2, 3", "'high', 'low'", "replace them by numbers"]


@case
def all_values_missing(d, s, t):
    s["outcome"] = np.nan
    return ["analyze", csv(d, "sessions.csv", s)], [
        "sessions.csv", "column 'outcome' has no values", "check that the config names the right column"]


@case
def infinite_values(d, s, t):
    s.loc[[3, 10], "alliance"] = np.inf
    return ["analyze", csv(d, "sessions.csv", s)], [
        "sessions.csv", "'alliance' (process) has infinite values in rows 5, 12", "replace them by the real values"]


@case
def constant_outcome(d, s, t):
    s["outcome"] = 1.0
    return ["validate", csv(d, "sessions.csv", s)], [
        "sessions.csv", "outcome column 'outcome' has the same value in every row", "check that the config"]


@case
def duplicated_patient_time_rows(d, s, t):
    s = pd.concat([s, s.iloc[[5]]], ignore_index=True)
    return ["analyze", csv(d, "sessions.csv", s)], [
        "sessions.csv", "patient P001 has 2 rows for session 6 (rows 7, 2331)", "keep one row per patient"]


@case
def patient_under_two_therapists(d, s, t):
    s.loc[1, "therapist"] = "T02"
    return ["analyze", csv(d, "sessions.csv", s)], [
        "sessions.csv", "patient P001 appears under therapists T01", "T02 (row 3)", "each patient must have one"]


@case
def unparseable_dates(d, s, t):
    s["session"] = "2021-03-" + s["session"].astype(str).str.zfill(2)
    s.loc[[4, 7], "session"] = ["yesterday", "32.13.2021"]
    return ["analyze", csv(d, "sessions.csv", s)], [
        "sessions.csv", "column 'session' (time)", "neither numbers nor dates in rows 6, 9", "'yesterday'",
        "dates like 2021-03-15"]


@case
def ambiguous_dates(d, s, t):
    s["session"] = "0" + (s["session"] % 9 + 1).astype(str) + "/02/2021"
    return ["validate", csv(d, "sessions.csv", s)], [
        "sessions.csv", "column 'session'", "could be day/month or month/day", "write them as YYYY-MM-DD"]


@case
def process_without_variance_within_therapists(d, s, t):
    s["alliance"] = s.groupby("therapist")["alliance"].transform("mean")
    return ["analyze", csv(d, "sessions.csv", s)], [
        "sessions.csv", "process column 'alliance' does not vary within therapists",
        "put it in the therapist table as a moderator"]


# --------------------------------------------------------------------------- design


@case
def fewer_than_three_therapists(d, s, t):
    return ["analyze", csv(d, "sessions.csv", s[s["therapist"].isin(["T01", "T02"])])], [
        "sessions.csv", "only 2 therapist(s) in column 'therapist'", "at least 3 therapists"]


@case
def too_few_therapists_for_slope_variances(d, s, t):
    return ["analyze", csv(d, "sessions.csv", s[s["therapist"].isin(["T01", "T02", "T03"])])], [
        "sessions.csv", "3 therapists, too few to estimate therapist slope variances for 2 process(es)",
        "at least 4 therapists", "add therapists or analyse fewer processes"]


@case
def fewer_patients_than_random_effects(d, s, t):
    first_two = s.groupby("therapist")["patient"].unique().map(lambda p: list(p[:2]))
    keep = [p for t_ in ["T01", "T02", "T03", "T04"] for p in first_two[t_]]
    return ["analyze", csv(d, "sessions.csv", s[s["patient"].isin(keep)])], [
        "sessions.csv", "8 analysed patients for 4 therapists with 3 random effects each (12 in all)",
        "add patients or analyse fewer processes"]


@case
def session_design_one_assessment_per_patient(d, s, t):
    s = s.dropna(subset=["outcome"]).groupby("patient").head(1)
    text(d, "study.toml", '[design]\nlevel = "session"\n')
    return ["analyze", csv(d, "sessions.csv", s), "--config", "study.toml"], [
        "sessions.csv", "every patient has at most one outcome assessment in column 'outcome'",
        "session-level (lagged) design needs at least two outcome assessments per patient"]


@case
def session_design_one_lag_per_patient(d, s, t):
    s = s.dropna(subset=["outcome"]).groupby("patient").head(2)
    text(d, "study.toml", '[design]\nlevel = "session"\n')
    return ["analyze", csv(d, "sessions.csv", s), "--config", "study.toml"], [
        "sessions.csv", "single lagged pair", "three or more outcome assessments", '[design] level = "patient"']


# --------------------------------------------------------------------------- therapist table


@case
def therapist_table_duplicate_ids(d, s, t):
    text(d, "study.toml", MODERATOR_TOML)
    return ["analyze", csv(d, "sessions.csv", s), "--therapists", csv(d, "therapists.csv", pd.concat([t, t.iloc[[2]]])),
            "--config", "study.toml"], ["therapists.csv", "therapist T03 is listed 2 times (rows 4, 44)",
                                        "keep one row per therapist"]


@case
def therapist_table_ids_not_in_data(d, s, t):
    t.loc[3, "therapist"] = "T99"
    text(d, "study.toml", MODERATOR_TOML)
    return ["analyze", csv(d, "sessions.csv", s), "--therapists", csv(d, "therapists.csv", t),
            "--config", "study.toml"], ["therapists.csv", "therapist(s) T99 are not in the sessions data",
                                        "write ids the same way in both files"]


@case
def therapist_table_moderator_column_missing(d, s, t):
    text(d, "study.toml", '[therapist_moderators]\ncolumns = ["self_rated_aliance_skill"]\n')
    return ["validate", csv(d, "sessions.csv", s), "--therapists", csv(d, "therapists.csv", t),
            "--config", "study.toml"], ["therapists.csv", 'no moderator column "self_rated_aliance_skill"',
                                        'did you mean "self_rated_alliance_skill"?', "[therapist_moderators]"]


@case
def moderator_known_for_too_few_therapists(d, s, t):
    t.loc[3:, "cbt"] = np.nan
    text(d, "study.toml", MODERATOR_TOML)
    return ["analyze", csv(d, "sessions.csv", s), "--therapists", csv(d, "therapists.csv", t),
            "--config", "study.toml"], ["therapists.csv", "moderator 'cbt' (therapists with a value) has 3 therapists",
                                        "add therapists"]


@case
def therapist_table_duplicate_ids_without_config(d, s, t):
    """No moderators configured: the table is still validated (it used to be read and ignored)."""
    return ["analyze", csv(d, "sessions.csv", s), "--therapists", csv(d, "therapists.csv", pd.concat([t, t.iloc[[2]]]))
            ], ["therapists.csv", "therapist T03 is listed 2 times (rows 4, 44)", "keep one row per therapist"]


@case
def therapist_table_free_text_column_without_config(d, s, t):
    """No moderators configured: every column is a moderator, so a column of names is refused, saying why."""
    t["name"] = [f"Dr {i}" for i in range(len(t))]
    return ["analyze", csv(d, "sessions.csv", s), "--therapists", csv(d, "therapists.csv", t)], [
        "therapists.csv", "'name'", "42 different text values", "every column of the therapist table is a moderator",
        "list the moderators in the config"]


# --------------------------------------------------------------------------- output and usage


@case
def output_folder_is_a_file(d, s, t):
    text(d, "results", "my notes\n")
    return ["analyze", csv(d, "sessions.csv", s), "--out", "results"], [
        "output folder results is a file", "choose another --out folder"]


@case
def output_folder_under_a_file(d, s, t):
    """The stand-in for "no write permission" that also holds for root: the folder cannot be made."""
    text(d, "notes.txt", "my notes\n")
    return ["analyze", csv(d, "sessions.csv", s), "--out", "notes.txt/results"], [
        "cannot create output folder notes.txt/results", "notes.txt is a file, not a folder",
        "choose another --out folder"]


@case
def output_folder_is_the_input(d, s, t):
    return ["analyze", csv(d, "sessions.csv", s), "--out", "sessions.csv"], [
        "output folder sessions.csv is one of the input files", "choose another --out folder"]


@case
def input_inside_the_output_tables(d, s, t):
    (d / "out" / "tables").mkdir(parents=True)
    return ["analyze", csv(d, "out/tables/therapists.csv", s), "--out", "out"], [
        "input file out/tables/therapists.csv lies where theralens writes its outputs", "choose another --out"]


@case
def unknown_option(d, s, t):
    return ["analyze", csv(d, "sessions.csv", s), "--bogus"], ["unrecognized arguments: --bogus", "--help"]


@case
def missing_argument(d, s, t):
    return ["analyze"], ["the following arguments are required: sessions", "--help"]


@case
def simulate_unsupported_extension(d, s, t):
    return ["simulate", "--out", "sim.json"], ["sim.json", "cannot write '.json' files", "use .csv or .parquet"]


# ------------------------------------------------------------- the training loop (issue #14)

LOOP_TOML = '[therapist_moderators]\ncolumns = ["cbt"]\n\n[training]\nstart = "start_date"\n'


def _training(d, s, t, row: int, column: str, value: str) -> list[str]:
    """theralens training on the demo with the training table's ``row`` (0-based) ``column`` set to ``value``."""
    from theralens.datasets import load_demo_training

    table = t.merge(load_demo_training(), on="therapist")
    table.loc[row, column] = value
    return ["training", csv(d, "sessions.csv", s), "--therapists", csv(d, "therapists.csv", table), "--config",
            text(d, "study.toml", LOOP_TOML), "--out", "out"]


@case
def training_date_unparseable(d, s, t):
    return _training(d, s, t, 0, "trained_on", "2025-02-30"), [
        "therapists.csv", "column 'trained_on' (training date)", "row 2", "2025-02-30",
        "write each training date like 2021-03-15"]


@case
def training_therapist_without_patients_after(d, s, t):
    return _training(d, s, t, 0, "trained_on", "2030-01-01"), [
        "therapists.csv", "therapist T01 was trained on 2030-01-01", "no analysed patient whose treatment started "
        "after it", "check the date (column 'trained_on')"]


@case
def training_target_not_a_process(d, s, t):
    return _training(d, s, t, 0, "trained_process", "empathy"), [
        "therapists.csv", "row 2", "training target 'empathy' of therapist T01", "is not a configured process",
        "'alliance', 'expectancy'"]


# --------------------------------------------------------------------------- the test


ENGINES = ("pandas", "duckdb")


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_one_clear_line(name, tmp_path, demo_frames):
    """Each case through both engines (analyze and validate take --engine): the same one line."""
    _check_case(name, tmp_path, demo_frames, run_main)


# a file error, a value error on both engines, a therapist-table error and a config error
THROUGH_THE_COMMAND = ("missing_file", "infinite_values", "therapist_table_duplicate_ids", "toml_syntax_error")


@pytest.mark.parametrize("name", THROUGH_THE_COMMAND)
def test_bad_input_through_the_real_command(name, tmp_path, demo_frames):
    """The same cases through ``python -m theralens.cli`` in a subprocess: still one line, exit 2."""
    _check_case(name, tmp_path, demo_frames, run_cli)


def _check_case(name, tmp_path, demo_frames, run):
    s, t = (f.copy() for f in demo_frames)
    argv, parts = CASES[name](tmp_path, s, t)
    if argv[0] == "analyze" and "--out" not in argv:
        # an earlier run's results: they must survive a failed run unchanged
        (tmp_path / "out" / "tables").mkdir(parents=True)
        (tmp_path / "out" / "results.json").write_text('{"from": "an earlier run"}\n')
        (tmp_path / "out" / "tables" / "aim1_effects.csv").write_text("process,estimate\nalliance,-0.1\n")
        argv += ["--out", "out"]
    engines = ENGINES if argv[0] in ("analyze", "validate") else ENGINES[:1]
    lines = {}
    for engine in engines:
        before = fingerprint(tmp_path)
        r = run(*argv, "--engine", engine, cwd=tmp_path) if len(engines) > 1 else run(*argv, cwd=tmp_path)
        assert r.returncode == 2, (engine, r.returncode, r.stderr)
        assert "Traceback" not in r.stderr + r.stdout
        out = r.stderr.splitlines()
        assert len(out) == 1, (engine, r.stderr)
        line = lines[engine] = out[0]
        assert line.startswith("theralens: ") and len(line) < 600, line
        for part in parts:
            assert part in line, f"{engine}: {part!r} not in {line!r}"
        assert r.stdout == ""
        assert fingerprint(tmp_path) == before  # inputs unchanged, no output, no temporary file
    assert len(set(lines.values())) == 1, lines


def test_catalogue_has_at_least_25_cases():
    assert len(CASES) >= 25


def test_failed_run_leaves_no_output_folder(tmp_path, demo_frames):
    s, _ = demo_frames
    s = s.copy()
    s.loc[3, "alliance"] = np.inf
    csv(tmp_path, "sessions.csv", s)
    r = run_cli("analyze", "sessions.csv", "--out", "new/results", cwd=tmp_path)
    assert r.returncode == 2 and len(r.stderr.splitlines()) == 1
    assert not (tmp_path / "new").exists()


def test_excel_sheet_option_works(tmp_path, demo_frames):
    s, t = demo_frames
    with pd.ExcelWriter(tmp_path / "study.xlsx") as xw:
        s.to_excel(xw, sheet_name="Sessions", index=False)
        t.to_excel(xw, sheet_name="Therapists", index=False)
    (tmp_path / "study.toml").write_text(MODERATOR_TOML)
    before = fingerprint(tmp_path)
    r = run_cli("validate", "study.xlsx", "--sheet", "Sessions", "--therapists", "study.xlsx",
                "--therapists-sheet", "Therapists", "--config", "study.toml", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "study.xlsx: OK - 42 therapists, 212 patients" in r.stdout
    assert "moderators: cbt" in r.stdout
    assert fingerprint(tmp_path) == before


def test_spss_value_labels_are_analysed_as_numbers(tmp_path, demo_frames):
    """A process with value labels on every code (no measurement level, as pyreadstat and
    many exports write it) is a rating scale: its codes are analysed, and the result says so."""
    import json

    import pyreadstat

    s, _ = demo_frames
    s = s.assign(therapist=s["therapist"].str[1:].astype(float), patient=s["patient"].str[1:].astype(float),
                 alliance=s["alliance"].round().clip(1, 7))
    names = ["not at all", "a little", "somewhat", "moderately", "quite", "very", "completely"]
    pyreadstat.write_sav(s, str(tmp_path / "sessions.sav"),
                         variable_value_labels={"alliance": {float(k): v for k, v in enumerate(names, 1)}})
    r = run_cli("analyze", "sessions.sav", "--out", "out", "--no-report", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    doc = json.loads((tmp_path / "out" / "results.json").read_text())
    assert any("'alliance' has a value label for every code (1 = not at all" in n and "analysed as the numbers" in n
               for n in doc["notes"])
    assert {row["process"] for row in doc["aim1"]} == {"alliance", "expectancy"}


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0,
                    reason="root writes into read-only folders; output_folder_under_a_file covers this case")
def test_output_folder_without_write_permission(tmp_path, demo_frames):
    s, _ = demo_frames
    csv(tmp_path, "sessions.csv", s)
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        r = run_cli("analyze", "sessions.csv", "--out", "locked/results", cwd=tmp_path)
    finally:
        locked.chmod(0o755)
    assert r.returncode == 2
    assert r.stderr.splitlines() == [r.stderr.strip()]
    assert "locked is not writable" in r.stderr and "choose an --out folder you can write to" in r.stderr
    assert not (locked / "results").exists()


@pytest.mark.parametrize(("name", "module", "extra"), [("sessions.xlsx", "openpyxl", "excel"),
                                                       ("sessions.sav", "pyreadstat", "spss")])
def test_missing_optional_reader_is_one_line_naming_the_extra(tmp_path, demo_frames, name, module, extra):
    """Excel and SPSS/Stata readers are extras: without them the command answers with the install line."""
    s, _ = demo_frames
    work = tmp_path / "work"
    work.mkdir()
    if module == "openpyxl":
        s.to_excel(work / name, index=False)
    else:
        import pyreadstat

        pyreadstat.write_sav(s.assign(therapist=s["therapist"].str[1:].astype(float),
                                      patient=s["patient"].str[1:].astype(float)), str(work / name))
    blocker = tmp_path / "blocked" / module
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text(f"raise ImportError('No module named {module}')\n")
    before = fingerprint(work)
    r = run_cli("validate", name, cwd=work, env={"PYTHONPATH": str(tmp_path / "blocked")})
    assert r.returncode == 2, r.stderr
    assert r.stderr.splitlines() == [r.stderr.strip()], r.stderr
    assert name in r.stderr and module in r.stderr and f"pip install 'theralens[{extra}]'" in r.stderr
    assert fingerprint(work) == before


def test_therapist_table_without_config_uses_its_columns(tmp_path, demo_frames):
    """--therapists without [therapist_moderators]: validate and analyze say which columns are the moderators."""
    s, t = demo_frames
    csv(tmp_path, "sessions.csv", s)
    csv(tmp_path, "therapists.csv", t[["therapist", "cbt", "self_rated_alliance_skill"]])
    r = run_cli("validate", "sessions.csv", "--therapists", "therapists.csv", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert ("therapists.csv: OK - 42 therapists, moderators: cbt, self_rated_alliance_skill "
            "(every column of the table: none configured)") in r.stdout
    r = run_cli("analyze", "sessions.csv", "--therapists", "therapists.csv", "--out", "out", "--no-report",
                cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "one at a time: 'cbt', 'self_rated_alliance_skill';" in " ".join(r.stdout.split())
    import json

    doc = json.loads((tmp_path / "out" / "results.json").read_text())
    assert {row["moderator"] for row in doc["aim3"]} == {"cbt", "self_rated_alliance_skill"}
