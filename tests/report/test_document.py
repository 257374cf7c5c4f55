"""The results document is the record: it matches the shipped schema in both designs, with and
without moderators; it holds what the report draws (variance components, fitted lines,
residual summaries, versions) under stable names; the report rebuilt from results.json alone
equals the one written with the analysis; a changed document is refused with one line."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from results_schema import check_documents_under
from studies import DEMO_MODERATORS, HOSTILE_PROCESS, Written, write_study

from theralens.data.config import config_from_dict
from theralens.datasets import load_demo
from theralens.errors import InputError
from theralens.report import render_report
from theralens.study.analysis import analyze
from theralens.study.document import (
    MAX_POINTS,
    SCHEMA_VERSION,
    json_ready,
    normal_qq,
    read_document,
    records,
    residual_summary,
    validate_document,
)


def _doc(w: Written) -> dict[str, Any]:
    return json.loads((w.out / "results.json").read_text())


def _outputs(folder: Path) -> dict[str, bytes]:
    files = [folder / "report.html", folder / "tables" / "therapist_profiles.csv",
             *sorted((folder / "therapists").glob("*.html"))]
    return {str(f.relative_to(folder)): f.read_bytes() for f in files}


@pytest.fixture(scope="module")
def session_study(tmp_path_factory: pytest.TempPathFactory) -> Written:
    """The session-level design without a therapist table (no moderators)."""
    sessions, _ = load_demo()
    result = analyze(sessions, None, config_from_dict({"design": {"level": "session"}}))
    return write_study(result, tmp_path_factory.mktemp("session"))


@pytest.fixture(scope="module")
def joint_study(tmp_path_factory: pytest.TempPathFactory) -> Written:
    """The demo study with all moderators in one model."""
    sessions, therapists = load_demo()
    cfg = config_from_dict({"therapist_moderators": {"columns": DEMO_MODERATORS, "joint": True}})
    return write_study(analyze(sessions, therapists, cfg), tmp_path_factory.mktemp("joint"))


def test_documents_of_both_designs_match_the_schema(demo: Written, hostile: Written, session_study: Written,
                                                     joint_study: Written) -> None:
    for w in (demo, hostile, session_study, joint_study):
        doc = validate_document(_doc(w))
        assert doc["schema_version"] == SCHEMA_VERSION
        assert check_documents_under(w.out) == 1
    assert _doc(session_study)["moderators"] == [] and _doc(session_study)["aim3"] == []
    assert _doc(session_study)["input"]["therapists"] is None
    assert {m["role"] for m in _doc(joint_study)["models"]} >= {"main", "joint_moderators", "ancillary"}


def test_document_holds_what_the_report_draws(demo: Written) -> None:
    doc, res = _doc(demo), demo.result
    for entry, spec in zip(doc["models"], res.models()):
        vc = spec.fit.varcorr
        assert entry["role"] == spec.role and len(entry["varcorr"]) == len(vc)
        assert [r["vcov"] for r in entry["varcorr"]] == vc["vcov"].tolist()
        assert [r["term"] for r in entry["fixed_effects"]] == spec.fit.fixed_names
        assert [r["estimate"] for r in entry["fixed_effects"]] == spec.fit.fixed_effects.tolist()
        assert entry["optimizer"]["theta_final"] == spec.fit.optimizer.final.tolist()
    # one moderator line per process and moderator, its intercept the within slope of that model
    lines = [x for x in doc["fitted_lines"] if x["figure"] == "moderator"]
    assert len(lines) == len(doc["processes"]) * len(doc["moderators"]) == 6
    fits = {m.role: m.fit for m in res.aim3.models}
    for x in lines:
        within = next(p["within"] for p in doc["processes"] if p["name"] == x["process"])
        assert x["intercept"] == fits[x["model"]].fixed_effects[within]
        values = res.moderators[x["moderator"]].dropna()
        assert x["centre"] == pytest.approx(values.mean(), rel=1e-12)
    anc = [x for x in doc["fitted_lines"] if x["figure"] == "ancillary"]
    assert [x["coefficient"] for x in anc] == [r["estimate"] for r in doc["ancillary"]]
    # residual summary: every row counted, the points drawn without any identifier
    diag = doc["diagnostics"]
    assert diag["n"] == res.main.fit.nobs == len(diag["fitted"]) == len(diag["residual"])
    assert np.allclose(sorted(diag["residual"]), sorted(res.main.fit.residuals().to_numpy()), rtol=0, atol=1e-12)
    assert diag["fitted"] == sorted(diag["fitted"])
    assert len(diag["intercept_qq"]["sample"]) == doc["n"]["therapists"]
    # versions and options come from the analysis, so the methods of a rebuilt report do not change
    assert {"theralens", "Python", "numpy", "scipy"} <= set(doc["software"]["versions"])
    assert doc["options"] == res.config.to_dict()


def test_tables_are_keyed_by_stable_names(hostile: Written) -> None:
    doc = _doc(hostile)
    names = {p["name"]: p["label"] for p in doc["processes"]}
    safe = next(n for n, lab in names.items() if lab == HOSTILE_PROCESS)
    assert safe.isidentifier() and safe != HOSTILE_PROCESS
    for section in ("aim1", "aim2", "aim3", "ancillary", "reliability"):
        assert {r["process"] for r in doc[section]} == set(names), section
        assert all(r["process_label"] == names[r["process"]] for r in doc[section]), section
    for m in doc["moderators"]:
        assert m["name"].isidentifier()
    assert {r["moderator"] for r in doc["aim3"]} == {m["name"] for m in doc["moderators"]}
    for t in doc["therapists"]:
        assert set(t["caseload_means"]) == set(t["caseload_reliability"]) == set(names)
    # labels are for display: the page shows the label and keys its numbers by the stable name
    report = (hostile.out / "report.html").read_text()
    assert f'data-key="aim1.{safe}.within_therapist.estimate"' in report
    assert "&lt;b&gt;alliance&lt;/b&gt;" in report


def test_new_table_columns_flow_into_the_document(demo: Written) -> None:
    """A column added to an aim table (a latent decomposition's, say) reaches results.json and
    the schema accepts it; a required column that goes missing is refused."""
    res = copy.copy(demo.result)
    res.aim1 = demo.result.aim1.assign(latent_estimate=np.arange(len(demo.result.aim1), dtype=float))
    doc = json.loads(res.to_json())
    assert [r["latent_estimate"] for r in doc["aim1"]] == list(range(len(res.aim1)))
    validate_document(doc)
    res.aim1 = demo.result.aim1.drop(columns="se")
    with pytest.raises(InputError, match=r"at aim1/0: 'se' is a required property"):
        validate_document(json.loads(res.to_json()))


def test_report_rebuilt_from_the_document_alone_is_identical(demo: Written, session_study: Written,
                                                            tmp_path: Path) -> None:
    for i, w in enumerate((demo, session_study)):
        folder = tmp_path / f"rebuilt{i}"
        folder.mkdir()
        shutil.copy(w.out / "results.json", folder / "results.json")
        render_report(read_document(folder / "results.json"), folder)
        assert _outputs(folder) == _outputs(w.out)
        assert len(_outputs(folder)) == 2 + len(_doc(w)["therapists"])


@pytest.mark.parametrize(("change", "message"), [
    (lambda d: d.pop("diagnostics"), r"at \(top level\): 'diagnostics' is a required property"),
    (lambda d: d["aim1"][0].update(estimate="-0.08"), r"at aim1/0/estimate: '-0\.08' is not of type 'number', 'null'"),
    (lambda d: d["aim2"][0]["therapists"][0].update(estimable="yes"),
     r"at aim2/0/therapists/0/estimable: 'yes' is not of type 'boolean'"),
    (lambda d: d["models"][0]["varcorr"][0].pop("vcov"), r"at models/0/varcorr/0: 'vcov' is a required property"),
    (lambda d: d.update(schema_version=1), r"has schema_version 1, but this theralens reads version 2"),
    (lambda d: d.update(notes="n" * 1000), r"at notes: 'n{150,}\.\.\.; give a results\.json written by"),
])
def test_a_changed_document_is_refused(demo: Written, tmp_path: Path, change, message: str) -> None:
    doc = _doc(demo)
    change(doc)
    path = tmp_path / "tampered.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(InputError, match=message) as info:
        read_document(path)
    assert "\n" not in str(info.value) and str(path) in str(info.value) and len(str(info.value)) < 400


def test_residual_summary_keeps_at_most_max_points() -> None:
    rng = np.random.default_rng(3)
    n = 5 * MAX_POINTS + 7
    fitted, resid = rng.normal(size=n), rng.normal(size=n)
    s = residual_summary(fitted, resid)
    assert s["n"] == n and len(s["fitted"]) == len(s["residual"]) == len(s["running_mean"]) <= MAX_POINTS
    assert s["fitted"][0] == fitted.min() and s["fitted"][-1] == fitted.max()
    # the running mean is taken over every row (window n / 10), then thinned with the points
    order = np.argsort(fitted, kind="stable")
    full = pd.Series(resid[order]).rolling(n // 10, center=True, min_periods=n // 20).mean().to_numpy()
    at = np.searchsorted(fitted[order], s["fitted"])
    assert np.allclose([v for v in s["running_mean"] if v is not None], full[at][~np.isnan(full[at])])
    q = normal_qq(resid)
    assert len(q["sample"]) <= MAX_POINTS and q["sample"][0] == resid.min() and q["sample"][-1] == resid.max()
    assert q["sd"] == pytest.approx(resid.std(ddof=1)) and q["theoretical"] == sorted(q["theoretical"])
    small = residual_summary([3.0, 1.0, 2.0], [0.3, 0.1, 0.2])
    assert small["fitted"] == [1.0, 2.0, 3.0] and small["residual"] == [0.1, 0.2, 0.3]
    assert small["running_mean"] == [None, None, None]


def test_records_are_json_ready_rows():
    """records() (column by column) gives what json_ready makes of every row: floats with NaN
    and infinities as null, numpy ints and bools as Python's, text, missing values and objects."""
    df = pd.DataFrame({
        "x": [1.5, np.nan, np.inf, -np.inf, 2.0 ** -1074],
        "n": np.array([1, 2, 3, 4, 5], dtype=np.int64),
        "u": np.array([0, 1, 2, 3, 2**63], dtype=np.uint64),
        "b": [True, False, True, True, False],
        "s": ["a", None, "c", "d", "e"],
        "nullable": pd.array([1, None, 3, 4, 5], dtype="Int64"),
        "obj": [np.float64(0.5), np.int32(3), float("nan"), (1, 2), {"k": np.nan}],
        7: [0.1, 0.2, 0.3, 0.4, 0.5],
    })
    expected = [json_ready(r) for r in df.to_dict(orient="records")]
    got = records(df)
    assert got == expected
    assert json.dumps(got, allow_nan=False) == json.dumps(expected, allow_nan=False)
    assert [type(v) for v in got[0].values()] == [type(v) for v in expected[0].values()]
    assert records(df.iloc[:0]) == [] and records(pd.DataFrame(index=range(2))) == [{}, {}]
