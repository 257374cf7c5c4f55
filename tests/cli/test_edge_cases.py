"""Edge cases that are not errors: the analysis runs, and the result (warnings, notes and
``results.json`` fields) says what happened. Python API (``theralens.analyze``)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

import theralens as tl
from theralens.data.config import config_from_dict
from theralens.datasets import load_demo

ONE_PROCESS = config_from_dict({"columns": {"process": ["alliance"]}})


def _same_slope_data() -> pd.DataFrame:
    """12 therapists x 6 patients whose outcome depends on the within-therapist alliance with
    exactly the same slope for every therapist (residuals orthogonal to it in each caseload):
    the REML slope variance is zero, a boundary (singular) fit."""
    d = np.array([-2.5, -1.5, -0.5, 0.5, 1.5, 2.5])
    baseline = np.array([1.0, 2.0, 1.0, 2.0, 1.0, 2.0])
    a = np.column_stack([np.ones(6), d, baseline])
    v = np.array([1.0, -2.0, 0.5, 3.0, -1.0, 0.7])
    v -= a @ np.linalg.lstsq(a, v, rcond=None)[0]
    rng = np.random.default_rng(0)
    rows = []
    for j in range(12):
        level, shift, amp = rng.normal(4, 0.5), rng.normal(0, 0.4), rng.uniform(0.5, 1.5)
        final = 0.5 * baseline + 0.3 * d + shift + amp * v / np.abs(v).max()
        for i in range(6):
            for session, y in ((1, baseline[i]), (2, final[i])):
                rows.append({"therapist": f"T{j:02d}", "patient": f"P{j:02d}{i}", "session": session,
                             "outcome": y, "alliance": level + d[i]})
    return pd.DataFrame(rows)


def test_zero_slope_variance_and_singular_fit_are_reported():
    r = tl.analyze(_same_slope_data(), None, ONE_PROCESS)
    doc = json.loads(r.to_json())  # valid JSON, no NaN
    var = doc["aim2"][0]
    assert var["slope_variance"] <= 1e-10 and var["slope_sd"] <= 1e-5
    assert var["p"] == pytest.approx(1.0)
    main = next(m for m in doc["models"] if m["role"] == "main")
    assert main["singular"] is True and main["converged"] is True
    assert any("main model is a boundary (singular) fit" in w for w in doc["warnings"])
    assert any("slope variance of alliance is estimated at zero" in w for w in doc["warnings"])
    slopes = [t["slope"] for t in var["therapists"]]
    assert np.ptp(slopes) < 1e-6  # every therapist's slope is the average
    assert "Warnings:" in r.summary() and "estimated at zero" in r.summary()


@pytest.fixture(scope="module")
def demo_gaps() -> tl.StudyResult:
    """The demo study (5 therapists with one analysed patient) with moderators missing: three
    therapists without a skill rating and one (T20) absent from the therapist table."""
    s, t = load_demo()
    t = t.copy()
    t.loc[t["therapist"].isin(["T01", "T06", "T10"]), "self_rated_alliance_skill"] = np.nan
    t = t[t["therapist"] != "T20"]
    cfg = config_from_dict({"therapist_moderators": {"columns": ["self_rated_alliance_skill", "cbt"]}})
    return tl.analyze(s, t, cfg)


def test_therapists_with_one_patient_get_no_slope_but_count(demo_gaps):
    doc = demo_gaps.to_dict()
    singles = [t for t in doc["aim2"][0]["therapists"] if t["n_patients"] == 1]
    assert len(singles) == 5
    for t in singles:
        assert t["estimable"] is False
        assert t["slope"] is None and t["se"] is None and t["prob_stronger_than_average"] is None
    assert any(w.startswith("5 therapist(s) have a single analysed patient") for w in doc["warnings"])
    # they still count in the between-therapist part
    assert doc["n"]["therapists"] == 42
    table = demo_gaps.table.table
    ids = {t["therapist"] for t in singles}
    assert table.loc[table["therapist"].isin(ids), "alliance_between"].notna().all()
    assert (table.loc[table["therapist"].isin(ids), "alliance_within"] == 0).all()


def test_moderators_missing_for_some_therapists_are_counted(demo_gaps):
    doc = demo_gaps.to_dict()
    skill = [r for r in doc["aim3"] if r["moderator"] == "self_rated_alliance_skill"]
    cbt = [r for r in doc["aim3"] if r["moderator"] == "cbt"]
    assert skill and cbt
    assert {r["therapists_missing"] for r in skill} == {4} and {r["therapists"] for r in skill} == {38}
    assert {r["therapists_missing"] for r in cbt} == {1} and {r["therapists"] for r in cbt} == {41}
    assert any("Moderator 'self_rated_alliance_skill' is unknown for 4 therapist(s)" in w for w in doc["warnings"])
    assert any("1 therapist(s) are not in the therapist table" in w for w in doc["warnings"])
    assert any("'self_rated_alliance_skill' is missing for 3 therapist(s)" in n for n in doc["notes"])
    assert any("(T20)" in n for n in doc["notes"])


def test_therapist_table_without_moderators_is_reported():
    """No [therapist_moderators] columns: the table's columns are the moderators, and the result says so."""
    s, t = load_demo()
    r = tl.analyze(s, t[["therapist", "cbt"]])
    assert set(r.aim3.table["moderator"]) == {"cbt"}
    assert any("No moderators are configured" in w and "one at a time: 'cbt';" in w for w in r.warnings)


def test_excluded_rows_are_counted_and_patient_ids_stay_private(demo_gaps):
    s, _ = load_demo()
    s = s.copy()
    s.loc[[0, 1, 2], "therapist"] = np.nan  # three rows of P001 without a therapist id
    r = tl.analyze(s, None)
    doc = r.to_dict()
    reasons = {e["reason"]: e for e in doc["n"]["exclusions"]}
    assert reasons["no therapist id (column 'therapist')"]["rows"] == 3
    assert all("examples" not in e for e in doc["n"]["exclusions"])
    text = r.to_json() + demo_gaps.to_json()
    assert not any(pid in text for pid in s["patient"].unique())
    shown = tl.analyze(s, None, config_from_dict({"report": {"show_patient_ids": True}})).to_dict()
    assert any("examples" in e for e in shown["n"]["exclusions"])
