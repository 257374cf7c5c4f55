"""The DuckDB adapter (data/scan.py) against the pandas one: the same checks, the same messages,
the same analysis tables (to 1e-10) and the same results.json (every number to 1e-8 relative)."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from results_compare import numbers_equal

from theralens.data.config import config_from_dict
from theralens.data.decompose import patient_level, session_level
from theralens.data.read import read_table
from theralens.data.scan import (
    choose_engine,
    decompose_scan,
    input_bytes,
    parse_memory,
    patient_aggregates,
    scan_files,
)
from theralens.data.validate import validate_sessions
from theralens.datasets import demo_paths
from theralens.errors import InputError
from theralens.simulation.generate import simulate
from theralens.study.analysis import analyze_files


@pytest.fixture(scope="module")
def demo() -> pd.DataFrame:
    return pd.read_csv(demo_paths()[0], dtype={"therapist": str, "patient": str})


def both(path: Path, config, source: str | None = None):
    """(pandas table, DuckDB table) of the configured design."""
    source = source or str(path)
    data = validate_sessions(read_table(path), config, source=source)
    pandas_table = patient_level(data, config) if config.design.level == "patient" else session_level(data, config)
    with scan_files(path, config, source=source) as scanned:
        duck_table = decompose_scan(scanned, config)
        if duck_table.relation is not None if hasattr(duck_table, "relation") else False:
            # the session design's rows stay in DuckDB (a relation, unordered): fetched here (small
            # data) in the pandas table's order to compare
            assert len(duck_table.table) == 0
            duck_table.table = scanned.con.execute(
                f"SELECT * FROM {duck_table.relation} ORDER BY therapist, patient, time").df()
        assert scanned.data.counts == data.counts
        assert scanned.data.notes == data.notes
        assert scanned.data.labels == data.labels
    return pandas_table, duck_table


def assert_same_table(a, b) -> None:
    pd.testing.assert_frame_equal(b.table, a.table, check_dtype=False, rtol=1e-10, atol=1e-12)
    pd.testing.assert_frame_equal(b.reliability, a.reliability, check_dtype=False, rtol=1e-10, atol=1e-12)
    pd.testing.assert_frame_equal(b.reliability_summary, a.reliability_summary, check_dtype=False, rtol=1e-10,
                                  atol=1e-12)
    assert b.exclusions == a.exclusions
    assert b.warnings == a.warnings
    assert b.counts == a.counts


def messy(demo: pd.DataFrame) -> pd.DataFrame:
    """The demo data with rows that validation drops: no therapist, no patient, no time, no value."""
    s = demo.copy()
    s.loc[[3, 40], "therapist"] = np.nan
    s.loc[[7], "patient"] = np.nan
    s.loc[[11, 12, 13], "session"] = np.nan
    s.loc[[20, 21], ["outcome", "alliance", "expectancy"]] = np.nan
    s.loc[s["patient"] == "P002", "alliance"] = np.nan  # a patient without a rating
    return s


@pytest.mark.parametrize("options", [
    {},
    {"design": {"process_sessions": 3}},
    {"design": {"caseload_weighting": "session", "change": "slope"}},
    {"design": {"change": "post_minus_pre"}, "columns": {"higher_outcome_is": "better"}},
])
def test_patient_table_is_the_same(tmp_path, demo, options):
    config = config_from_dict(options)
    for name, frame in [("demo", demo), ("messy", messy(demo))]:
        csv = tmp_path / f"{name}.csv"
        frame.to_csv(csv, index=False)
        assert_same_table(*both(csv, config))
        parquet = tmp_path / f"{name}.parquet"
        frame.to_parquet(parquet, index=False)
        assert_same_table(*both(parquet, config))


@pytest.mark.parametrize("weighting", ["patient", "session"])
def test_session_table_is_the_same(tmp_path, demo, weighting):
    config = config_from_dict({"design": {"level": "session", "caseload_weighting": weighting}})
    for name, frame in [("demo", demo), ("messy", messy(demo))]:
        parquet = tmp_path / f"{name}.parquet"
        frame.to_parquet(parquet, index=False)
        assert_same_table(*both(parquet, config))


@pytest.mark.parametrize("design", ["patient", "session"])
def test_simulated_recovery_data_are_the_same(tmp_path, design):
    sim = simulate("coyne2022", seed=7, design=design)
    path = tmp_path / "sim.parquet"
    sim.sessions.to_parquet(path, index=False)
    assert_same_table(*both(path, config_from_dict({"design": {"level": design}})))


def test_dates_and_covariates(tmp_path, demo):
    s = demo.copy()
    s["session"] = (pd.Timestamp("2021-01-04") + pd.to_timedelta(s["session"] * 9, unit="D")).dt.strftime("%d.%m.%Y")
    rng = np.random.default_rng(3)
    first = s.groupby("patient")["patient"].transform(lambda p: rng.integers(0, 3))
    s["site"] = np.array(["north", "south", "east"])[first.to_numpy()]
    s["age"] = s.groupby("patient")["outcome"].transform("size") * 3.0 + 20
    path = tmp_path / "dated.csv"
    s.to_csv(path, index=False)
    config = config_from_dict({"columns": {"covariates": ["site", "age"]}})
    a, b = both(path, config)
    assert_same_table(a, b)
    assert len(b.covariates) == 3 and "age" in b.covariates  # site: two dummies against the most frequent level


def test_folder_and_glob_equal_one_file(tmp_path, demo):
    config = config_from_dict({})
    whole = tmp_path / "all.parquet"
    demo.to_parquet(whole, index=False)
    parts = tmp_path / "parts"
    parts.mkdir()
    for k, chunk in enumerate(np.array_split(np.arange(len(demo)), 4)):
        demo.iloc[chunk].to_parquet(parts / f"part-{k}.parquet", index=False)
    with scan_files(whole, config) as one:
        expected = patient_aggregates(one)
    for path in (parts, str(parts / "part-*.parquet")):
        with scan_files(path, config) as many:
            cols, rows = patient_aggregates(many)
            temp = many.temp_dir
            assert temp.exists() and not str(temp).startswith(str(tmp_path))
        assert not temp.exists()  # the spill folder goes with the scan
        np.testing.assert_array_equal(rows, expected[1])
        for name, values in expected[0].items():  # sums may add in another order: to rounding
            if values.dtype.kind == "f":
                np.testing.assert_allclose(cols[name], values, rtol=1e-12, atol=1e-15)
            else:
                np.testing.assert_array_equal(cols[name], values)


def test_row_messages_name_the_part_file(tmp_path, demo):
    parts = tmp_path / "parts"
    parts.mkdir()
    s = demo.copy()
    s.loc[[1500, 1510], "alliance"] = np.inf
    s.iloc[:1000].to_parquet(parts / "a.parquet", index=False)
    s.iloc[1000:].to_parquet(parts / "b.parquet", index=False)
    with pytest.raises(InputError) as info:
        scan_files(parts, config_from_dict({}))
    # case numbers of b.parquet (counted from 1), as read_table + validate_sessions would say for that file
    with pytest.raises(InputError) as single:
        validate_sessions(read_table(parts / "b.parquet"), source=str(parts / "b.parquet"))
    assert str(info.value) == str(single.value)
    assert "rows 501, 511" in str(info.value)


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_messages_are_the_same(tmp_path, demo, fmt):
    """A few of the catalogue's value errors, on Parquet too (case numbers) and on both formats."""
    def bad_outcome(s):
        s["outcome"] = s["outcome"].astype(object)
        s.loc[[2, 4, 8, 12], "outcome"] = ["bad", "n.a.", "3,4,5", "x"]

    def decimal_comma_only(s):
        s["alliance"] = s["alliance"].map(lambda v: "" if pd.isna(v) else f"{v:.2f}".replace(".", ","))

    def duplicate(s):
        s.loc[len(s)] = s.loc[5]

    def moved(s):
        s.loc[[1, 30], "therapist"] = "T02"

    def constant_process(s):
        s["expectancy"] = s.groupby("therapist")["expectancy"].transform("mean")

    for change in (bad_outcome, decimal_comma_only, duplicate, moved, constant_process):
        s = demo.copy()
        change(s)
        path = tmp_path / f"s.{fmt}"
        if fmt == "csv":
            s.to_csv(path, index=False)
        else:  # a text column of Parquet holds text
            s.astype({c: "string" for c in s.columns if s[c].dtype == object}).to_parquet(path, index=False)
        try:
            expected = validate_sessions(read_table(path), source=str(path))
        except InputError as exc:
            with pytest.raises(InputError) as info:
                scan_files(path, source=str(path))
            assert str(info.value) == str(exc), change.__name__
        else:
            with scan_files(path, source=str(path)) as scanned:
                assert scanned.data.notes == expected.notes and scanned.data.counts == expected.counts


def test_memory_sizes_and_engine_choice(tmp_path, demo):
    assert parse_memory("8GB") == 8 * 10**9 and parse_memory("2GiB") == 2 * 2**30 and parse_memory(512) == 512
    with pytest.raises(InputError, match="--memory-limit 'lots' is not a memory size"):
        parse_memory("lots")
    path = tmp_path / "s.csv"
    demo.to_csv(path, index=False)
    size = path.stat().st_size
    assert choose_engine(path, "auto", size + 1)[0] == "pandas"
    assert choose_engine(path, "auto", size - 1)[0] == "duckdb"
    assert choose_engine(tmp_path / "s.xlsx", "duckdb")[0] == "pandas"  # DuckDB scans CSV and Parquet only
    demo.to_parquet(tmp_path / "s.parquet", index=False)  # compressed on disk: counted as 8 bytes a value
    assert input_bytes(tmp_path / "s.parquet") == 8 * demo.shape[0] * demo.shape[1]
    assert choose_engine(tmp_path / "s.parquet", "auto", 8 * demo.size - 1)[0] == "duckdb"
    with scan_files(path, memory_limit="300MB") as scanned:
        limit = scanned.con.execute("SELECT current_setting('memory_limit')").fetchone()[0]
    assert limit.replace(" ", "").upper() in {"286.1MIB", "300.0MB", "286.1MB"}


@pytest.mark.parametrize("data", ["demo", "simulated"])
@pytest.mark.parametrize("design", ["patient", "session"])
def test_results_json_is_the_same_through_both_engines(tmp_path, design, data, monkeypatch):
    """The demo data and a study simulated as the recovery check simulates them (other seed).
    The DuckDB path releases the statistics of the models it has used at any size here
    (RELEASE_BYTES 0; by default only from 32 MB per model), so that the document is shown not to
    need them."""
    monkeypatch.setattr("theralens.study.rows.RELEASE_BYTES", 0)
    sessions, therapists = demo_paths()
    if data == "simulated":
        sim = simulate("coyne2022", seed=11, design=design)
        sessions, therapists = tmp_path / "sim.parquet", tmp_path / "sim_therapists.csv"
        sim.sessions.to_parquet(sessions, index=False)
        sim.therapists.to_csv(therapists, index=False)
    config = config_from_dict({"design": {"level": design},
                               "therapist_moderators": {"columns": ["self_rated_alliance_skill", "cbt"]}})
    docs = {}
    for engine in ("pandas", "duckdb"):
        result = analyze_files(sessions, therapists, config, engine=engine)
        docs[engine] = json.loads(result.to_json())
        if engine == "duckdb":  # every model fitted from SQL statistics: no rows behind the fits
            for spec in result.models():
                with pytest.raises(InputError, match="sufficient statistics alone"):
                    spec.fit.fitted()
            # the models used once are released (memory at scale), the main model is kept whole, and the
            # document is the same as the pandas path's, whose fits are all kept
            released = {spec.role for spec in result.models() if spec.fit.design.inner.shape[0] == 0}
            assert released == {spec.role for spec in result.models()} - {"main"}
            innermost = result.main.fit.design.levels[0]
            assert len(result.main.fit.random_effects(innermost.group)) == innermost.ngroups * innermost.q
            if design == "session":
                assert result.table.relation == "lagged" and len(result.table.table) == 0
        else:
            for spec in result.models():
                assert len(spec.fit.random_effects("therapist")) > 0
        assert any(n.startswith("Engine: " + ("DuckDB" if engine == "duckdb" else "pandas")) for n in result.notes)
        assert set(result.timings) == {"statistics", "fits"}
    numbers_equal(docs["pandas"], docs["duckdb"])  # 1e-8 relative (results_compare.py)


@pytest.mark.parametrize("eol", ["\n", "\r\n"])
def test_csv_blank_lines_keep_row_numbers(tmp_path, demo, eol):
    """pandas counts a blank line inside a CSV as an (empty) row, DuckDB skips it: row numbers still agree."""
    lines = messy(demo).to_csv(index=False).splitlines()
    for at in (900, 300, 5, 5):  # blank lines before the rows that validation drops or reports
        lines.insert(at, "")
    path = tmp_path / "blank.csv"
    path.write_bytes((eol.join(lines) + eol + eol).encode())
    config = config_from_dict({})
    pandas_table, duck_table = both(path, config)
    assert_same_table(pandas_table, duck_table)
    assert [e.examples for e in duck_table.exclusions] == [e.examples for e in pandas_table.exclusions]
    fields = lines[1500].split(",")
    fields[list(demo.columns).index("expectancy")] = "inf"
    lines[1500] = ",".join(fields)
    path.write_bytes((eol.join(lines) + eol).encode())
    with pytest.raises(InputError) as expected:
        validate_sessions(read_table(path), source=str(path))
    with pytest.raises(InputError) as info:
        scan_files(path, source=str(path))
    assert str(info.value) == str(expected.value) and "row 1501" in str(info.value)


def test_sufficient_statistics_by_sql_equal_the_frames(tmp_path, demo):
    """SufficientStats by GROUP BY (SUM(a*b) per therapist, per patient its row of sums) equal
    those of the rows (model/stats.py), and a fit from them reaches the same REML criterion."""
    import duckdb

    from theralens.model.fit import fit_mixed, fit_stats
    from theralens.model.stats import SufficientStats
    from theralens.study.aims import design_terms
    from theralens.study.sql_stats import sufficient_stats

    path = tmp_path / "s.parquet"
    messy(demo).to_parquet(path, index=False)
    config = config_from_dict({"design": {"level": "session"}})
    with scan_files(path, config) as scanned:
        table = decompose_scan(scanned, config)
        frame = scanned.con.execute(f"SELECT * FROM {table.relation}").df()  # fetched to compare (small data)
    frame = frame.astype({"therapist": str, "patient": str})
    main = design_terms(table).formula()
    product = main.replace(" + time", " + time + alliance_within_patient:alliance_between_therapist")
    con = duckdb.connect()
    con.register("lagged", frame)
    for formula in (main, product):
        by_sql, by_rows = sufficient_stats(con, "lagged", formula, sample_groups=5), SufficientStats.from_frame(
            formula, frame)
        assert by_sql.fixed_names == by_rows.fixed_names
        np.testing.assert_array_equal(by_sql.counts, by_rows.counts)
        np.testing.assert_array_equal(by_sql.parents[0], by_rows.parents[0])
        for level_sql, level_rows in zip(by_sql.levels, by_rows.levels, strict=True):
            np.testing.assert_array_equal(level_sql.labels, level_rows.labels)
        for a, b in [(by_sql.inner, by_rows.inner), (by_sql.sums[1], by_rows.sums[1]), (by_sql.total, by_rows.total)]:
            np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-9)
    assert math.isclose(fit_stats(by_sql).reml_criterion, fit_mixed(product, frame).reml_criterion, rel_tol=1e-8)


@pytest.mark.parametrize("weighting", ["patient", "session"])
def test_lagged_table_in_sql_is_the_session_table(tmp_path, demo, weighting):
    """The session design's rows and three components computed in DuckDB (LEAD, GROUP BY means)
    equal decompose.session_level's table (fetched here on small data to compare)."""
    from theralens.data.scan import lagged_table

    s = messy(demo)
    s["age"] = s.groupby("patient")["outcome"].transform("size") * 2.0
    s.loc[s["patient"] == "P007", "age"] = np.nan  # a patient without the covariate
    path = tmp_path / "s.parquet"
    s.to_parquet(path, index=False)
    config = config_from_dict({"design": {"level": "session", "caseload_weighting": weighting},
                               "columns": {"covariates": ["age"]}})
    expected = session_level(validate_sessions(read_table(path), config, source=str(path)), config).table
    with scan_files(path, config) as scanned:
        got = scanned.con.execute(f"SELECT * FROM {lagged_table(scanned, config)} ORDER BY therapist, patient, time"
                                  ).df()
    assert list(got.columns) == list(expected.columns)
    pd.testing.assert_frame_equal(got, expected, check_dtype=False, rtol=1e-10, atol=1e-12)


def test_cli_analyzes_a_folder_of_parquet_files(tmp_path, demo, capsys):
    """theralens analyze on a folder (DuckDB) writes the results of the whole file through pandas."""
    from theralens.cli import main

    whole = tmp_path / "all.csv"
    demo.to_csv(whole, index=False)
    parts = tmp_path / "parts"
    parts.mkdir()
    for k, chunk in enumerate(np.array_split(np.arange(len(demo)), 3)):
        demo.iloc[chunk].to_parquet(parts / f"part-{k}.parquet", index=False)
    assert main(["analyze", str(parts), "--memory-limit", "500MB", "--no-report", "--out", str(tmp_path / "a")]) == 0
    printed = capsys.readouterr().out
    assert re.search(r"\(\d+\.\d s, statistics \d+\.\d s, fits \d+\.\d s\)", printed), printed
    assert main(["analyze", str(whole), "--engine", "pandas", "--no-report", "--out", str(tmp_path / "b")]) == 0
    docs = [json.loads((tmp_path / out / "results.json").read_text()) for out in ("a", "b")]
    assert any("Engine: DuckDB SQL (input" in n and "several files" in n for n in docs[0]["notes"])
    docs[0].pop("input", None), docs[1].pop("input", None)  # where the data came from differs
    numbers_equal(docs[1], docs[0])


@pytest.mark.parametrize("legacy_byte", [False, True])
def test_csv_that_is_not_utf8(tmp_path, demo, legacy_byte):
    """A Windows-1252 export (or latin-1, when a byte 1252 leaves undefined occurs) is decoded as
    read_table decodes it: the same ids, categories and note."""
    s = demo.copy()
    s["therapist"] = s["therapist"].str.replace("T0", "Ü")
    s["site"] = np.where(s["patient"].str[-1].isin(list("0123")), "St John’s", "Queen’s Park")
    if legacy_byte:
        s.loc[s["patient"] == "P001", "site"] = "Queen’s Park\x81"
    path = tmp_path / "export.csv"
    path.write_bytes(s.to_csv(index=False).encode("latin-1" if legacy_byte else "cp1252", errors="replace"))
    config = config_from_dict({"columns": {"covariates": ["site"]}})
    pandas_table, duck_table = both(path, config)  # also: the same notes (the encoding's included)
    assert_same_table(pandas_table, duck_table)
    assert duck_table.table["therapist"].str.startswith("Ü").any()
    with scan_files(path, config) as scanned:
        assert f"export.csv was read as {'latin-1' if legacy_byte else 'cp1252'} text" in scanned.data.notes[0]


def test_released_fits_still_give_the_whole_report(tmp_path, monkeypatch):
    """With every used model released (RELEASE_BYTES 0, as at millions of patients), the DuckDB
    path's report and profiles are written, and rebuilt from results.json byte for byte; at the
    default threshold the demo's fits stay whole (their summaries work)."""
    from theralens.cli import main

    sessions, therapists = demo_paths()
    config = tmp_path / "s.toml"
    config.write_text('[design]\nlevel = "session"\n[therapist_moderators]\ncolumns = ["cbt"]\n')
    monkeypatch.setattr("theralens.study.rows.RELEASE_BYTES", 0)
    out = tmp_path / "out"
    assert main(["analyze", str(sessions), "--therapists", str(therapists), "--config", str(config),
                 "--engine", "duckdb", "--out", str(out)]) == 0
    assert main(["report", str(out / "results.json"), "--out", str(tmp_path / "again")]) == 0
    assert (out / "report.html").read_bytes() == (tmp_path / "again" / "report.html").read_bytes()
    monkeypatch.undo()
    result = analyze_files(sessions, therapists, config_from_dict({"design": {"level": "session"}}), engine="duckdb")
    for spec in result.models():
        assert spec.fit.design.inner.shape[0] > 0
        assert "REML criterion" in str(spec.fit.summary())
