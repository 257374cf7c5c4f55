"""Decomposition of a process and reliability of therapist means, checked by hand
(data/decompose.py; models.md "Decomposition of a process")."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from theralens.data.config import config_from_dict
from theralens.data.decompose import patient_level, reliability_table, session_level
from theralens.data.validate import validate_sessions
from theralens.errors import InputError

# therapist, patient, alliance ratings by session, outcome by session (None = not assessed)
CASES = [
    ("A", "a1", [4, 6], [2.0, 1.0]),
    ("A", "a2", [2, 4, 3, 3], [3.0, None, 2.0, 1.0]),
    ("A", "a3", [7, 7], [1.0, 1.5]),
    ("B", "b1", [6, 6], [0.5, 0.0]),
    ("B", "b2", [4, 4], [1.0, 1.0]),
    ("C", "c1", [2, 2], [2.0, 2.5]),
    ("C", "c2", [4, 4], [1.0, 0.5]),
    ("C", "c3", [3, 3], [0.0, 0.2]),
    ("C", "d1", [5, 5], [1.0, None]),  # one outcome assessment: left out
]


def table(cases=CASES, process="alliance") -> pd.DataFrame:
    rows = []
    for t, p, xs, ys in cases:
        for s, (x, y) in enumerate(zip(xs, ys, strict=True), start=1):
            rows.append({"therapist": t, "patient": p, "session": s, "outcome": y, process: x})
    return pd.DataFrame(rows)


def validated(config=None, cases=CASES, process="alliance"):
    cfg = config or config_from_dict({"columns": {"process": [process]}})
    return validate_sessions(table(cases, process), cfg, source="hand.csv"), cfg


def test_patient_scores_and_components_by_hand():
    data, cfg = validated()
    pt = patient_level(data, cfg)
    t = pt.table.set_index("patient")
    assert list(t.index) == ["a1", "a2", "a3", "b1", "b2", "c1", "c2", "c3"]
    assert t.loc[["a1", "a2", "a3"], "alliance"].tolist() == [5.0, 3.0, 7.0]
    # caseload means over patients (A: (5+3+7)/3 = 5, not the session mean 36/8 = 4.5)
    assert t.loc["a1", "alliance_caseload_mean"] == pytest.approx(5.0)
    assert t.loc["c1", "alliance_caseload_mean"] == pytest.approx(3.0)
    # grand mean over therapist means: (5 + 5 + 3) / 3
    grand = 13 / 3
    assert t.loc["a2", "alliance_within"] == pytest.approx(-2.0)
    assert t.loc["a3", "alliance_within"] == pytest.approx(2.0)
    assert t.loc["a1", "alliance_between"] == pytest.approx(5 - grand)
    assert t.loc["c3", "alliance_between"] == pytest.approx(3 - grand)
    recon = t["alliance_within"] + t["alliance_between"] + grand
    np.testing.assert_allclose(recon, t["alliance"])
    # within components average zero in each caseload
    np.testing.assert_allclose(t.groupby("therapist")["alliance_within"].mean(), 0, atol=1e-12)
    assert t["n_patients"].to_dict() == {"a1": 3, "a2": 3, "a3": 3, "b1": 2, "b2": 2, "c1": 3, "c2": 3, "c3": 3}
    assert pt.components("alliance") == ("alliance_within", "alliance_between")
    assert all(c.isidentifier() for c in pt.table.columns)


def test_change_measures_by_hand():
    data, cfg = validated()
    pt = patient_level(data, cfg)
    t = pt.table.set_index("patient")
    assert pt.response == "final" and pt.adjust_for == ("baseline",)
    assert t.loc["a2", ["baseline", "final", "change"]].tolist() == [3.0, 1.0, -2.0]
    assert t.loc["a2", "n_outcome"] == 3
    assert t.loc["a2", "slope"] == pytest.approx(-9 / 14)  # OLS on times 1, 3, 4
    assert t.loc["a1", "slope"] == pytest.approx(-1.0)
    assert pt.benefit_sign == -1
    cfg2 = config_from_dict({"columns": {"process": ["alliance"]}, "design": {"change": "slope"}})
    assert patient_level(data, cfg2).response == "slope"
    cfg3 = config_from_dict(
        {"columns": {"process": ["alliance"], "higher_outcome_is": "better"}, "design": {"change": "post_minus_pre"}}
    )
    pt3 = patient_level(data, cfg3)
    assert pt3.response == "change" and pt3.adjust_for == () and pt3.benefit_sign == 1


def test_exclusion_is_counted_not_silent():
    data, cfg = validated()
    pt = patient_level(data, cfg)
    assert "d1" not in set(pt.table["patient"])
    (exc,) = [e for e in pt.exclusions if "fewer than two outcome" in e.reason]
    assert exc.patients == 1 and exc.patients_removed == 1 and exc.rows == 2
    assert exc.examples == ("d1",)
    assert pt.counts["patients"] == data.counts["patients"] - 1


def test_session_weighting_and_first_k():
    cfg = config_from_dict({"columns": {"process": ["alliance"]}, "design": {"caseload_weighting": "session"}})
    data, _ = validated(cfg)
    t = patient_level(data, cfg).table.set_index("patient")
    assert t.loc["a1", "alliance_caseload_mean"] == pytest.approx(36 / 8)
    cfg = config_from_dict({"columns": {"process": ["alliance"]}, "design": {"process_sessions": 1}})
    t = patient_level(data, cfg).table.set_index("patient")
    assert t.loc[["a1", "a2", "a3"], "alliance"].tolist() == [4.0, 2.0, 7.0]
    assert (t["alliance_n"] == 1).all()


def test_reliability_formula_by_hand():
    data, cfg = validated()
    pt = patient_level(data, cfg)
    # scores A: 5, 3, 7; B: 6, 4; C: 2, 4, 3.  MSW = 12/5, MSB = 7.5/2, n0 = 2.625
    tau2 = (3.75 - 2.4) / 2.625
    rel = pt.reliability.set_index("therapist")
    assert rel.loc["A", "tau2"] == pytest.approx(tau2)
    assert rel.loc["A", "sigma2"] == pytest.approx(2.4)
    assert rel.loc["A", "reliability"] == pytest.approx(9 / 23)
    assert rel.loc["B", "reliability"] == pytest.approx(0.3)
    assert rel.loc["B", "n_patients"] == 2
    summ = pt.reliability_summary.iloc[0]
    assert summ["icc"] == pytest.approx(tau2 / (tau2 + 2.4))
    assert summ["mean_reliability"] == pytest.approx((9 / 23 * 2 + 0.3) / 3)
    assert any("low reliability" in w for w in pt.warnings)


def test_reliability_zero_between_variance():
    scores = pd.DataFrame({"therapist": list("AABBCC"), "x": [1.0, 3.0, 1.0, 3.0, 1.0, 3.0]})
    rel, summ, warn = reliability_table(scores, ["x"], {"x": "x"})
    assert (rel["reliability"] == 0).all() and summ["tau2"][0] == 0
    assert "no variance" in warn[0]


def test_single_patient_therapist_warned():
    cases = CASES + [("D", "e1", [3, 5], [1.0, 0.0])]
    data, cfg = validated(cases=cases)
    pt = patient_level(data, cfg)
    t = pt.table.set_index("patient")
    assert t.loc["e1", "alliance_within"] == 0.0
    assert t.loc["e1", "n_patients"] == 1
    assert any("single analysed patient" in w for w in pt.warnings)


def test_process_names_are_formula_safe():
    data, cfg = validated(process="Working Alliance")
    pt = patient_level(data, cfg)
    assert pt.processes == ("Working_Alliance",)
    assert pt.labels["Working_Alliance"] == "Working Alliance"
    assert {"Working_Alliance_within", "Working_Alliance_between"} <= set(pt.table.columns)
    assert all(c.isidentifier() for c in pt.table.columns)


def test_too_few_therapists_after_exclusions():
    cases = [c for c in CASES if c[0] != "C"] + [("C", "d1", [5, 5], [1.0, None])]
    data, cfg = validated(cases=cases)
    with pytest.raises(InputError, match="only 2 therapist"):
        patient_level(data, cfg)


def test_session_level_lags_and_components():
    data, cfg = validated()
    st = session_level(data, cfg)
    t = st.table
    a2 = t[t["patient"] == "a2"]
    # outcomes at sessions 1, 3, 4: pairs 1 -> 3 and 3 -> 4, process at sessions 1 and 3
    assert a2["time"].tolist() == [1.0, 3.0]
    assert a2["time_next"].tolist() == [3.0, 4.0]
    assert a2["gap"].tolist() == [2.0, 1.0]
    assert a2["outcome"].tolist() == [3.0, 2.0]
    assert a2["outcome_next"].tolist() == [2.0, 1.0]
    assert a2["alliance"].tolist() == [2.0, 3.0]
    assert a2["alliance_within_patient"].tolist() == [-0.5, 0.5]
    assert st.response == "outcome_next" and st.lagged_outcome == "outcome"
    # identities of the three-part decomposition
    w, bp, bt = st.components("alliance")
    grand = t.groupby("therapist")["alliance_caseload_mean"].first().mean()
    np.testing.assert_allclose(t[w] + t[bp] + t[bt] + grand, t["alliance"])
    np.testing.assert_allclose(t.groupby("patient")[w].mean(), 0, atol=1e-12)
    per_patient = t.groupby("patient").first()
    np.testing.assert_allclose(per_patient.groupby("therapist")[bp].mean(), 0, atol=1e-12)
    np.testing.assert_allclose(t.groupby("therapist")[bt].first().mean(), 0, atol=1e-12)
    assert "d1" not in set(t["patient"])
    assert any("no lagged pair" in e.reason for e in st.exclusions)
    assert set(st.reliability["process"]) == {"alliance"}
    assert all(c.isidentifier() for c in t.columns)


def test_session_level_missing_process_at_assessment_is_counted():
    df = table()
    df.loc[(df["patient"] == "a2") & (df["session"] == 3), "alliance"] = np.nan
    cfg = config_from_dict({"columns": {"process": ["alliance"]}})
    data = validate_sessions(df, cfg, source="hand.csv")
    st = session_level(data, cfg)
    (exc,) = [e for e in st.exclusions if "rating at the assessment" in e.reason]
    assert exc.rows == 1 and exc.patients == 1 and exc.patients_removed == 0
    assert len(st.table[st.table["patient"] == "a2"]) == 1


def test_row_order_does_not_matter():
    data, cfg = validated()
    shuffled = table().sample(frac=1.0, random_state=3).reset_index(drop=True)
    data2 = validate_sessions(shuffled, cfg, source="hand.csv")
    a = patient_level(data, cfg).table.drop(columns=[])
    b = patient_level(data2, cfg).table
    pd.testing.assert_frame_equal(a, b)
