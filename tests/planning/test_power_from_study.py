"""Power from a fitted study: the planned truth is the analysed study's estimates (round trip:
simulate from known parameters, analyse, plan from the result)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from theralens.cli import main
from theralens.errors import InputError
from theralens.planning import power
from theralens.planning.pilot import caseload_shape, dropout_hazard, study_parameters
from theralens.simulation.generate import Variable, simulate
from theralens.study.analysis import analyze


def _study(design: str):
    sim = simulate(seed=21, design=design, n_therapists=30, n_patients=240, patient_covariates=True,
                   age_effect=0.01, random_corr=0.0)
    return analyze(sim.sessions, sim.therapists, sim.config())


@pytest.fixture(scope="module", params=["patient", "session"])
def analysed(request):
    res = _study(request.param)
    doc = json.loads(res.to_json())
    plan = power(res, therapists=[30, 40], nsim=2, seed=3, workers=1, progress=False)
    return res, doc, plan


def _sd(varcorr, grp: str, var: str) -> float:
    return next(r["sdcor"] for r in varcorr if r["grp"] == grp and r["var1"] == var and r["var2"] is None)


def test_planned_truth_is_the_estimates(analysed) -> None:
    res, doc, plan = analysed
    t = plan.table[plan.table["n_therapists"] == 30].set_index(["test", "process"])
    comp = {"within_therapist": "within", "between_therapist": "between", "within_patient": "within",
            "between_patient": "between_patient"}
    for row in doc["aim1"]:  # fixed effects: every component of every process
        assert t.loc[(comp[row["component"]], row["process"]), "true_value"] == pytest.approx(row["estimate"],
                                                                                                rel=1e-12)
    for row in doc["aim2"]:  # the main model's slope SD is the simulated marginal slope SD
        assert t.loc[("slope_variance", row["process"]), "true_value"] == pytest.approx(row["slope_sd"], rel=1e-9)
    mod = plan.spec.moderator
    row = next(r for r in doc["aim3"] if r["moderator"] == mod and r["process"] == plan.spec.moderator_process
               and r["target"] == "within_slope")
    assert t.loc[("moderator", row["process"]), "true_value"] == pytest.approx(row["estimate"], rel=1e-12)
    # variance components, moderators, caseloads and covariates of the simulation
    p = plan.spec.parameters
    main_vc = next(m for m in doc["models"] if m["role"] == "main")["varcorr"]
    session = doc["design"] == "session"
    assert p.design == doc["design"] and p.processes == tuple(x["name"] for x in doc["processes"])
    assert p.therapist_intercept_sd == pytest.approx(_sd(main_vc, "therapist", "(Intercept)"), rel=1e-12)
    resid = p.session_residual_sd if session else p.residual_sd
    assert resid == pytest.approx(next(r["sdcor"] for r in main_vc if r["grp"] == "Residual"), rel=1e-12)
    if session:
        assert p.patient_intercept_sd == pytest.approx(_sd(main_vc, "therapist:patient", "(Intercept)"), rel=1e-12)
    fe = {r["term"]: r["estimate"] for r in next(m for m in doc["models"] if m["role"] == "main")["fixed_effects"]}
    age = doc["sample"]["covariates"]["age"]["mean"]
    intercept = p.session_intercept if session else p.intercept
    assert intercept - fe["age"] * age == pytest.approx(fe["(Intercept)"], rel=1e-9)  # centred covariate
    assert p.covariate_effects["age"] == fe["age"]
    assert (p.lag_coef if session else p.baseline_coef) == fe["outcome" if session else "baseline"]
    ther = doc["therapists"]
    for m in (x["name"] for x in doc["moderators"]):
        values = np.array([x["moderators"][m] for x in ther], dtype=float)
        assert p.moderators[m].mean == pytest.approx(values.mean(), rel=1e-12)
        centre = next(r["centre"] for r in doc["aim3"] if r["moderator"] == m)
        assert p.moderators[m].mean == pytest.approx(centre, rel=1e-12)  # the centre aim 3 used
    assert p.moderators["cbt"].kind == "binary" and p.moderators["self_rated_alliance_skill"].decimals == 2
    for r in doc["reliability"]:  # process ICCs: between- and within-therapist variance of the patient scores
        q = r["process"]
        assert p.process_sd_therapist[q] ** 2 == pytest.approx(r["tau2"], rel=1e-12)
        assert r["icc"] == pytest.approx(r["tau2"] / (r["tau2"] + r["sigma2"]), rel=1e-9)
    assert plan.cells[0].n_therapists == 30
    assert plan.cells[0].patients_per_therapist == pytest.approx(doc["n"]["patients"] / doc["n"]["therapists"])
    assert (plan.table["n_usable"] > 0).all()


def test_study_defaults_and_overrides(analysed) -> None:
    res, doc, _ = analysed
    own = power(doc, nsim=1, workers=1, progress=False,
                settings=["within.alliance=-0.05", "therapist_icc=0.1"])  # the smallest effect worth detecting
    (cell,) = own.cells
    assert (cell.n_therapists, cell.n_patients) == (doc["n"]["therapists"], doc["n"]["patients"])
    t = own.table.set_index(["test", "process"])
    assert t.loc[("within", "alliance"), "true_value"] == -0.05
    resid = own.spec.parameters.session_residual_sd if doc["design"] == "session" else own.spec.parameters.residual_sd
    assert own.spec.parameters.therapist_intercept_sd == pytest.approx(resid * np.sqrt(0.1 / 0.9))
    assert own.spec.config.design.level == doc["design"] and own.spec.analysis_config.design.level == doc["design"]
    assert "truth from a results document" in own.summary()
    other = "session" if doc["design"] == "patient" else "patient"
    with pytest.raises(InputError, match="analysed at the"):
        power(doc, nsim=1, progress=False, design=other)


def test_theralens_power_from_results_json(tmp_path, analysed) -> None:
    res, doc, _ = analysed
    path = tmp_path / "results.json"
    path.write_text(res.to_json())
    out = tmp_path / "plan"
    code = main(["power", "--from", str(path), "--therapists", "20", "--nsim", "2", "--workers", "1",
                 "--out", str(out), "--set", "between.expectancy=0.3"])
    assert code == 0
    written = json.loads((out / "power.json").read_text())
    assert written["meta"]["study"] == str(path) and written["meta"]["design"] == doc["design"]
    rows = {(r["test"], r["process"]): r for r in written["table"]}
    assert rows[("between", "expectancy")]["true_value"] == 0.3
    assert {r["n_therapists"] for r in written["table"]} == {20}


def test_caseload_shape_and_dropout_estimators() -> None:
    # Dirichlet-multinomial caseloads: the moment estimator recovers the concentration on average
    rng = np.random.default_rng(0)
    J, N, a = 200, 1200, 1.5
    est = [caseload_shape(1 + rng.multinomial(N - J, rng.dirichlet(np.full(J, a)))) for _ in range(50)]
    assert np.median(est) == pytest.approx(a, rel=0.15)
    assert caseload_shape(np.full(30, 5)) is None
    # censored geometric dropout: the simulator's own sessions
    sim = simulate(seed=2, n_therapists=100, n_patients=4000, dropout_hazard=0.1, min_sessions=3, max_sessions=16)
    k, n = np.unique(sim.sessions.groupby("patient").size().to_numpy(), return_counts=True)
    lo, hi, h = dropout_hazard([[int(a), int(b)] for a, b in zip(k, n)])
    assert (lo, hi) == (3, 16) and h == pytest.approx(0.1, abs=0.01)


def test_any_processes_from_a_study() -> None:
    sim = simulate(seed=4, processes=("empathy", "homework", "goals"), n_therapists=25, n_patients=150,
                   moderators={"experience": Variable("continuous", 10.0, 4.0, 0.0, 40.0, 0)},
                   moderator_effects={("experience", "goals", "within_slope"): 0.02})
    res = analyze(sim.sessions, sim.therapists, sim.config())
    truth = study_parameters(res)
    assert truth.overrides["processes"] == ("empathy", "homework", "goals")
    assert set(truth.overrides["moderators"]) == {"experience"}
    r = power(res, nsim=1, workers=1, progress=False)
    assert {t.process for t in r.tests} == {"empathy", "homework", "goals"}
    assert r.spec.moderator == "experience"


def test_a_document_without_the_sample_section(analysed) -> None:
    """A results.json written before the sample section: the schedule comes from the preset, and
    the notes say so."""
    _, doc, _ = analysed
    old = {k: v for k, v in doc.items() if k != "sample"}
    truth = study_parameters(old)
    assert any("no 'sample' section" in n for n in truth.notes)
    assert "max_sessions" not in truth.overrides and "dropout_hazard" not in truth.overrides
    assert truth.overrides["within" if doc["design"] == "patient" else "session_within_patient"] == \
        study_parameters(doc).overrides["within" if doc["design"] == "patient" else "session_within_patient"]
    with pytest.raises(InputError, match="results.json path"):
        study_parameters(42)
