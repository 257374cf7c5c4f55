"""The study end to end on the demo data: every number in results.json is reproducible
by fit_mixed on the decomposed data; small-sample honesty; both designs."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

import theralens as tl
from theralens.data.config import config_from_dict
from theralens.datasets import load_demo
from theralens.study.aims import coef_name
from theralens.study.analysis import analyze

MODS = ["self_rated_alliance_skill", "cbt"]


@pytest.fixture(scope="module")
def demo() -> tl.StudyResult:
    s, t = load_demo()
    return analyze(s, t, config_from_dict({"therapist_moderators": {"columns": MODS}}))


@pytest.fixture(scope="module")
def doc(demo) -> dict:
    return json.loads(demo.to_json())


def _frame(result) -> pd.DataFrame:
    f = result.table.table.copy()
    f["therapist"] = f["therapist"].astype(str)
    f["patient"] = f["patient"].astype(str)
    return f


def test_schema(doc: dict) -> None:
    for key in ["design", "n", "aim1", "aim2", "aim3", "ancillary", "models", "warnings", "options"]:
        assert key in doc
    assert doc["design"] == "patient"
    assert set(doc["n"]) >= {"therapists", "patients", "assessments", "exclusions"}
    assert {r["component"] for r in doc["aim1"]} == {"within_therapist", "between_therapist"}
    assert {r["target"] for r in doc["aim3"]} == {"within_slope", "between_association"}
    for r in doc["aim2"]:
        assert {"process", "component", "slope_variance", "lrt_statistic", "p", "therapists"} <= set(r)
        for t in r["therapists"]:
            assert {"therapist", "slope", "se", "ci_low", "ci_high", "prob_stronger_than_average",
                    "n_patients"} <= set(t)


def test_aim1_reproducible_with_fit_mixed(demo, doc: dict) -> None:
    f = _frame(demo)
    formula = next(m["formula"] for m in doc["models"] if m["role"] == "main")
    fit = tl.fit_mixed(formula, f)
    for row in doc["aim1"]:
        p = next(k for k, v in demo.table.labels.items() if v == row["process"]) \
            if row["process"] not in demo.terms.processes else row["process"]
        col = demo.terms.components[p][row["component"]]
        assert fit.fixed_effects[col] == pytest.approx(row["estimate"], rel=1e-10)
        assert fit.std_errors[col] == pytest.approx(row["se"], rel=1e-10)
        assert fit.df[col] == pytest.approx(row["df"], rel=1e-8)
        assert fit.p_values[col] == pytest.approx(row["p"], rel=1e-6)
        ci = fit.conf_int(0.95).loc[col]
        assert ci["2.5 %"] == pytest.approx(row["ci_low"], rel=1e-8)
        assert ci["97.5 %"] == pytest.approx(row["ci_high"], rel=1e-8)


def test_aim2_reproducible(demo, doc: dict) -> None:
    f = _frame(demo)
    main = tl.fit_mixed(demo.main.formula, f)
    vc = main.varcorr
    re = main.random_effects("therapist")
    for row in doc["aim2"]:
        col = f"{row['process']}_within"
        v = vc.loc[(vc.grp == "therapist") & (vc.var1 == col) & vc.var2.isna(), "vcov"].iloc[0]
        assert v == pytest.approx(row["slope_variance"], rel=1e-10)
        others = [c for c in demo.terms.within.values() if c != col]
        reduced = tl.fit_mixed(demo.terms.formula(slopes=others), f)
        test = tl.lrt(reduced, main)
        assert test.statistic == pytest.approx(row["lrt_statistic"], rel=1e-8, abs=1e-9)
        assert test.p_value == pytest.approx(row["p"], rel=1e-8)
        g10 = main.fixed_effects[col]
        mine = re[re.term == col].set_index("level")
        for t in row["therapists"]:
            if t["slope"] is None:
                continue
            assert t["slope"] == pytest.approx(g10 + mine.loc[t["therapist"], "estimate"], rel=1e-10)


def test_aim3_and_ancillary_reproducible(demo, doc: dict) -> None:
    f = _frame(demo)
    mods = demo.moderators.copy()
    mods["therapist"] = mods["therapist"].astype(str)
    for w in MODS:
        spec = next(m for m in doc["models"] if m["role"] == f"moderator:{w}")
        have = mods.dropna(subset=[w])
        d = f.merge(have[["therapist", w]], on="therapist")
        d[f"{w}_c"] = d[w] - have[w].mean()
        fit = tl.fit_mixed(spec["formula"], d)
        for row in (r for r in doc["aim3"] if r["moderator"] == w):
            comp = f"{row['process']}_within" if row["target"] == "within_slope" else f"{row['process']}_between"
            name = coef_name(fit, comp, f"{w}_c")
            assert fit.fixed_effects[name] == pytest.approx(row["estimate"], rel=1e-10)
            assert fit.df[name] == pytest.approx(row["df"], rel=1e-8)
    spec = next(m for m in doc["models"] if m["role"] == "ancillary")
    fit = tl.fit_mixed(spec["formula"], f)
    for row in doc["ancillary"]:
        name = coef_name(fit, f"{row['process']}_within", f"{row['process']}_between")
        assert fit.fixed_effects[name] == pytest.approx(row["estimate"], rel=1e-10)


def test_single_patient_therapist_has_no_slope_but_counts(demo, doc: dict) -> None:
    n = demo.table.table.groupby("therapist")["patient"].nunique()
    singles = set(n[n == 1].index.astype(str))
    assert singles, "the demo data have therapists with one patient"
    for row in doc["aim2"]:
        for t in row["therapists"]:
            if t["therapist"] in singles:
                assert t["slope"] is None and t["estimable"] is False
    assert doc["n"]["therapists"] == len(n)
    assert any("single analysed patient" in w for w in doc["warnings"])


def test_small_sample_honesty(doc: dict) -> None:
    text = " ".join(doc["warnings"])
    assert "reliability" in text
    assert "42 therapists" in text
    for r in doc["reliability"]:
        assert 0 <= r["mean_reliability"] <= 1
    for r in doc["aim2"]:
        assert r["mean_slope_reliability"] is None or 0 <= r["mean_slope_reliability"] <= 1


def test_no_patient_ids_in_outputs(demo, tmp_path) -> None:
    demo.write(tmp_path)
    patients = set(demo.table.table["patient"].astype(str))
    blob = "\n".join(p.read_text() for p in tmp_path.rglob("*") if p.is_file())
    assert not any(f'"{pid}"' in blob or f",{pid}," in blob for pid in patients)


def test_direction_setting_flips_stronger() -> None:
    s, t = load_demo()
    worse = analyze(s, t, config_from_dict({}))
    better = analyze(s, t, config_from_dict({"columns": {"higher_outcome_is": "better"}}))
    a = worse.aim2.therapists.dropna(subset=["prob_stronger_than_average"])
    b = better.aim2.therapists.dropna(subset=["prob_stronger_than_average"])
    assert np.allclose(a["prob_stronger_than_average"].to_numpy() + b["prob_stronger_than_average"].to_numpy(), 1.0)


def test_session_design_runs() -> None:
    s, t = load_demo()
    r = analyze(s, t, config_from_dict({"design": {"level": "session"}}))
    d = json.loads(r.to_json())
    assert d["design"] == "session"
    assert {x["component"] for x in d["aim1"]} == {"within_patient", "between_patient", "between_therapist"}
    assert all(x["component"] == "within_patient" for x in d["aim2"])
    main = next(m for m in d["models"] if m["role"] == "main")["formula"]
    assert "(1 | therapist:patient)" in main


def test_therapist_table_without_configured_moderators_uses_every_column() -> None:
    """A therapist table and no [therapist_moderators] columns: every column but the id is a
    moderator (one at a time), with the same estimates as when they are all listed, and the
    warnings say which columns were used."""
    s, t = load_demo()
    auto = analyze(s, t)
    columns = [c for c in t.columns if c != "therapist"]
    listed = analyze(s, t, config_from_dict({"therapist_moderators": {"columns": columns}}))
    assert list(auto.moderators.attrs["moderators"]) == columns
    assert len(auto.aim3.table) == len(listed.aim3.table) > 0
    pd.testing.assert_frame_equal(auto.aim3.table, listed.aim3.table)
    said = [w for w in auto.warnings if "No moderators are configured" in w]
    assert len(said) == 1 and all(repr(c) in said[0] for c in columns) and "one at a time" in said[0]
    assert not any("No moderators are configured" in w for w in listed.warnings)


def test_therapist_table_is_validated_without_configured_moderators() -> None:
    s, t = load_demo()
    dup = pd.concat([t, t.iloc[[3]]], ignore_index=True)
    with pytest.raises(tl.InputError, match="therapist T04 is listed 2 times"):
        analyze(s, dup, therapists_source="t.csv")
    ids = t[["therapist"]]
    with pytest.raises(tl.InputError, match="not in the sessions data"):
        analyze(s, pd.concat([ids, pd.DataFrame({"therapist": ["T99"]})], ignore_index=True))
    r = analyze(s, ids, therapists_source="t.csv")
    assert len(r.aim3.table) == 0 and r.moderators is None
    assert any("The therapist table (t.csv) has no column besides the therapist id" in w for w in r.warnings)


def test_notebook_views_of_a_study() -> None:
    """repr: a few lines without tables; _repr_html_: the aims' tables with every name escaped."""
    s, t = load_demo()
    process, moderator = "<b>alliance</b>", "<i onclick=x>cbt</i>"
    s = s.rename(columns={"alliance": process})
    t = t.rename(columns={"cbt": moderator})[["therapist", moderator]]
    r = analyze(s, t, config_from_dict({"columns": {"process": [process, "expectancy"]}}))
    text = repr(r)
    lines = text.splitlines()
    assert len(lines) == 3 and lines[0].startswith("<StudyResult: patient-level design; 42 therapists")
    assert f"Processes: {process}, expectancy; moderators: {moderator}" in text
    assert f"{len(r.models())} models fitted" in text and f"{len(r.warnings)} warning(s)" in text
    assert "estimate" not in text  # no tables in the repr
    html = r._repr_html_()
    assert html.count("<table") == 4  # aims 1, 2, 3 and the ancillary model
    assert "&lt;b&gt;alliance&lt;/b&gt;" in html and "&lt;i onclick=x&gt;cbt&lt;/i&gt;" in html
    assert "<b>" not in html and "<i " not in html
    assert html.count("<tr>") - 4 == len(r.aim1) + len(r.aim2.variance) + len(r.aim3.table) + len(r.ancillary)
