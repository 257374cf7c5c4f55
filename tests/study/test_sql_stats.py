"""One statistics pass for all of the study's models (study/sql_stats.py row_sums / derived_stats):
the statistics of every model of the study derived from the per-patient and per-therapist sums of
its row-level columns equal the model's own GROUP BY pass (sufficient_stats), in both designs, with
a service level and with moderators; relations or models outside the scheme are refused (None),
so that the caller makes the model's own pass."""

from __future__ import annotations

import duckdb
import numpy as np
import pandas as pd
import pytest

from theralens.data.config import config_from_dict
from theralens.data.decompose import patient_level, session_level
from theralens.data.validate import validate_sessions
from theralens.datasets import load_demo
from theralens.model.stats import SufficientStats
from theralens.study.aims import DesignTerms, design_terms
from theralens.study.sql_stats import derived_stats, row_sums, sufficient_stats


def _relation(design: str, service: bool, numeric_ids: bool = False
              ) -> tuple[duckdb.DuckDBPyConnection, DesignTerms, pd.DataFrame]:
    sessions, therapists = load_demo()
    config = config_from_dict({"design": {"level": design}})
    data = validate_sessions(sessions, config)
    table = (session_level if design == "session" else patient_level)(data, config)
    terms = design_terms(table)
    frame = table.table.astype({"therapist": str, "patient": str})
    if numeric_ids:  # numbers: groups are numbered by value (T2 before T10), not as text
        frame["therapist"] = frame["therapist"].str[1:].astype(int)
        frame["patient"] = frame["patient"].str[1:].astype(int) * 7 % 1000
    if service:
        codes = {t: f"S{k % 4}" for k, t in enumerate(sorted(frame["therapist"].unique()))}
        frame["service"] = frame["therapist"].map(codes)
        terms.service = True
    con = duckdb.connect()
    con.register("rows_frame", frame)
    con.execute("CREATE TABLE study_rows AS SELECT * FROM rows_frame")
    moderators = therapists[["therapist", "cbt"]].astype({"therapist": str}).iloc[3:].copy()  # 3 without a row
    if numeric_ids:
        moderators["therapist"] = moderators["therapist"].str[1:].astype(int).astype(str)
    moderators["cbt_c"] = moderators["cbt"] - moderators["cbt"].mean()
    con.register("mods", moderators)
    con.execute("""CREATE VIEW study_view AS SELECT r.*, m.cbt, m.cbt_c FROM study_rows r
                   JOIN mods m ON CAST(r.therapist AS VARCHAR) = m.therapist""")
    return con, terms, moderators


def _assert_same(a: SufficientStats, b: SufficientStats) -> None:
    assert a.fixed_names == b.fixed_names and a.n_dropped == b.n_dropped
    assert [lv.group for lv in a.levels] == [lv.group for lv in b.levels]
    for la, lb in zip(a.levels, b.levels, strict=True):
        np.testing.assert_array_equal(la.labels, lb.labels)
    for pa, pb in zip(a.parents, b.parents, strict=True):
        np.testing.assert_array_equal(pa, pb)
    np.testing.assert_array_equal(a.counts, b.counts)
    np.testing.assert_allclose(a.inner, b.inner, rtol=1e-12, atol=1e-9)
    for sa, sb in zip(a.sums, b.sums, strict=True):
        assert (sa is None) == (sb is None)
        if sa is not None:
            np.testing.assert_allclose(sa, sb, rtol=1e-12, atol=1e-9)
    np.testing.assert_allclose(a.total, b.total, rtol=1e-12, atol=1e-9)


@pytest.mark.parametrize(("service", "numeric_ids", "chunk"),
                         [(False, False, None), (True, False, None), (True, True, None), (False, False, 7)])
@pytest.mark.parametrize("design", ["patient", "session"])
def test_every_model_of_the_study_from_one_pass(design, service, numeric_ids, chunk, monkeypatch):
    """``chunk``: the per-patient blocks are made a few patients at a time (at scale: 2^18), so
    that chunk boundaries, with and without therapists left out, are crossed."""
    if chunk is not None:
        monkeypatch.setattr("theralens.study.sql_stats.PATIENT_CHUNK", chunk)
    con, terms, moderators = _relation(design, service, numeric_ids)
    main = terms.formula()
    base = row_sums(con, "study_rows", main, tuple(terms.between.values()))
    assert base is not None
    first = terms.processes[0]
    models = {
        "aim 1 and 2": ("study_rows", main, None),
        "aim 2 without a slope": ("study_rows", terms.formula(slopes=[terms.within[p] for p in terms.processes[1:]]),
                                  None),
        "ancillary": ("study_rows", terms.formula(extra=[f"{terms.within[p]}:{terms.between[p]}"
                                                         for p in terms.processes]), None),
        "aim 3": ("study_view", terms.formula(extra=["cbt_c", f"{terms.within[first]}:cbt_c",
                                                     f"{terms.between[first]}:cbt_c"]), moderators),
    }
    for name, (relation, formula, mods) in models.items():
        derived = derived_stats(con, relation, formula, base, mods)
        assert derived is not None, name
        _assert_same(derived, sufficient_stats(con, relation, formula))


def test_outside_the_scheme_is_none():
    """A missing value (models on fewer columns would keep the row) or a column that is not a
    row-level part times constants: no shared pass."""
    con, terms, _ = _relation("session", False)
    main = terms.formula()
    first = terms.processes[0]
    base = row_sums(con, "study_rows", main, tuple(terms.between.values()))
    # the product of two row-level columns is not one of the sums
    other = terms.formula(extra=[f"{terms.within[first]}:{terms.adjust[0]}"])
    assert derived_stats(con, "study_rows", other, base) is None
    con.execute(f"UPDATE study_rows SET {terms.adjust[0]} = NULL WHERE rowid = 3")
    assert row_sums(con, "study_rows", main, tuple(terms.between.values())) is None


@pytest.mark.parametrize("design", ["patient", "session"])
def test_the_study_on_duckdb_makes_one_pass(design, monkeypatch):
    """analyze on the DuckDB engine fits aims 1-3 and the ancillary model with no model's own pass."""
    from theralens.datasets import demo_paths
    from theralens.study import rows
    from theralens.study.analysis import analyze_files

    def own_pass(*args, **kwargs):
        raise AssertionError(f"a model's own statistics pass: {args[2]}")

    monkeypatch.setattr(rows, "sufficient_stats", own_pass)
    config = config_from_dict({"design": {"level": design}, "therapist_moderators": {"columns": ["cbt"]}})
    result = analyze_files(*demo_paths(), config, engine="duckdb")
    assert len(result.aim3.table) == 2 * len(result.aim1["process"].unique())
