"""The simulator: reproducible, the published design, and truth that the decomposition
recovers exactly when the noise is switched off (simulation/generate.py)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from theralens.data.decompose import patient_level, session_level
from theralens.data.validate import validate_sessions, validate_therapists
from theralens.datasets import demo_from_simulator, load_demo
from theralens.errors import InputError
from theralens.simulation.generate import list_presets, simulate


def test_reproducible_with_seed():
    a, b = simulate(seed=11), simulate(seed=11)
    pd.testing.assert_frame_equal(a.sessions, b.sessions)
    pd.testing.assert_frame_equal(a.therapists, b.therapists)
    c = simulate(seed=12)
    assert not a.sessions["outcome"].equals(c.sessions["outcome"])


def test_coyne2022_design():
    s = simulate("coyne2022", seed=1)
    sess, th = s.sessions, s.therapists
    assert list(sess.columns) == ["therapist", "patient", "session", "outcome", "alliance", "expectancy"]
    assert list(th.columns) == [
        "therapist",
        "orientation",
        "cbt",
        "self_rated_alliance_skill",
        "self_rated_expectancy_skill",
    ]
    assert sess["therapist"].nunique() == 42 and len(th) == 42
    assert sess["patient"].nunique() == 212
    assert sess.groupby("patient")["therapist"].nunique().max() == 1
    assert sess["session"].between(1, 16).all()
    # outcome about every two weeks (odd sessions), process every session
    assert set(sess.loc[sess["outcome"].notna(), "session"]) <= set(range(1, 17, 2))
    assert sess["alliance"].notna().mean() > 0.9
    assert sess["alliance"].between(1, 7).all() or sess["alliance"].isna().any()
    # dropout: treatment lengths vary
    length = sess.groupby("patient")["session"].max()
    assert length.min() < 16 and length.max() == 16
    assert set(th["orientation"]) <= {"CBT", "psychodynamic", "integrative", "humanistic"}
    assert ((th["orientation"] == "CBT") == (th["cbt"] == 1)).all()


def test_caseloads_are_very_uneven():
    sizes = simulate(seed=3).sessions.groupby("therapist")["patient"].nunique()
    assert sizes.sum() == 212 and sizes.min() >= 1
    assert sizes.std() / sizes.mean() > 0.5
    assert sizes.max() >= 3 * sizes.median()


def test_large_preset_shapes():
    s = simulate("large", seed=1)
    sizes = s.sessions.groupby("therapist")["patient"].nunique()
    assert len(sizes) == 300 and (sizes == 10).all()


def test_truth_keys_both_designs():
    for design, components in [
        ("patient", {"within_therapist", "between_therapist"}),
        ("session", {"within_patient", "between_patient", "between_therapist"}),
    ]:
        truth = simulate(seed=1, design=design).truth
        assert truth["design"] == design
        for key in (
            "effects",
            "fixed",
            "slope_sd",
            "slope_sd_marginal",
            "therapist_intercept_sd",
            "residual_sd",
            "moderators",
            "moderator_centers",
            "within_x_between",
            "therapists",
            "parameters",
        ):
            assert key in truth, key
        assert {e["component"] for e in truth["effects"]} == components
        assert {m["target"] for m in truth["moderators"]} == {"within_slope", "between_association"}
        assert len(truth["therapists"]) == 42
    truth = simulate(seed=1).truth
    mods = {(m["moderator"], m["process"], m["target"]): m["estimate"] for m in truth["moderators"]}
    assert mods[("self_rated_alliance_skill", "alliance", "within_slope")] > 0  # humility
    assert mods[("cbt", "alliance", "between_association")] != 0
    assert truth["slope_sd_marginal"]["alliance"] > truth["slope_sd"]["alliance"]
    assert "lag" in simulate(seed=1, design="session").truth


def test_overrides_and_errors():
    s = simulate(seed=1, within={"alliance": -0.3}, n_therapists=10, n_patients=30)
    assert s.parameters.within == {"alliance": -0.3, "expectancy": -0.15}
    assert s.sessions["therapist"].nunique() == 10
    with pytest.raises(InputError, match='did you mean "n_therapists"'):
        simulate(n_therapist=5)
    with pytest.raises(InputError, match='did you mean "coyne2022"'):
        simulate("coyne2021")
    with pytest.raises(InputError, match="n_patients >= n_therapists"):
        simulate(n_therapists=10, n_patients=5)
    assert set(list_presets()) == {"coyne2022", "large"}


def test_patient_covariates():
    s = simulate(seed=2, patient_covariates=True, age_effect=0.01)
    assert "age" in s.sessions.columns
    assert s.config().columns.covariates == ("age",)


def _noiseless(design: str, **extra):
    zero = {"alliance": 0.0, "expectancy": 0.0}
    if design == "patient":
        noise = {"residual_sd": 0.0, "slope_sd": zero}
    else:
        noise = {"session_residual_sd": 0.0, "session_slope_sd": zero, "patient_intercept_sd": 0.0}
    return simulate(seed=5, design=design, therapist_intercept_sd=0.0, **noise, **extra)


def test_patient_design_truth_is_exact_for_the_decomposition():
    s = _noiseless("patient", within_x_between={"alliance": 0.2}, moderator_main={"cbt": 0.1})
    cfg = s.config(("cbt", "self_rated_alliance_skill"))
    data = validate_sessions(s.sessions, cfg, source="sim")
    th = validate_therapists(s.therapists, data, cfg, source="sim")
    t = patient_level(data, cfg).table.merge(th, on="therapist")
    p, c = s.parameters, s.truth["moderator_centers"]
    wa = t["self_rated_alliance_skill"] - c["self_rated_alliance_skill"]
    wc = t["cbt"] - c["cbt"]
    slope_a = p.within["alliance"] + 0.08 * wa + 0.2 * t["alliance_between"]
    expected = (
        p.intercept
        + p.baseline_coef * t["baseline"]
        + 0.1 * wc
        + slope_a * t["alliance_within"]
        + (p.between["alliance"] + 0.35 * wc) * t["alliance_between"]
        + p.within["expectancy"] * t["expectancy_within"]
        + p.between["expectancy"] * t["expectancy_between"]
    )
    np.testing.assert_allclose(t["final"], expected, atol=1e-9)
    assert len(t) == s.truth["n_analysed_patients"]


def test_session_design_truth_is_exact_for_the_decomposition():
    s = _noiseless("session", time_coef=-0.01)
    cfg = s.config(("cbt", "self_rated_alliance_skill"))
    data = validate_sessions(s.sessions, cfg, source="sim")
    th = validate_therapists(s.therapists, data, cfg, source="sim")
    t = session_level(data, cfg).table.merge(th, on="therapist")
    p, c = s.parameters, s.truth["moderator_centers"]
    wa = t["self_rated_alliance_skill"] - c["self_rated_alliance_skill"]
    wc = t["cbt"] - c["cbt"]
    expected = p.session_intercept + p.lag_coef * t["outcome"] - 0.01 * t["time"]
    for q in ("alliance", "expectancy"):
        slope = p.session_within_patient[q] + (0.03 * wa if q == "alliance" else 0.0)
        between_t = p.session_between_therapist[q] + (0.10 * wc if q == "alliance" else 0.0)
        expected = (
            expected
            + slope * t[f"{q}_within_patient"]
            + p.session_between_patient[q] * t[f"{q}_between_patient"]
            + between_t * t[f"{q}_between_therapist"]
        )
    np.testing.assert_allclose(t["outcome_next"], expected, atol=1e-9)
    assert t["patient"].nunique() == s.truth["n_analysed_patients"]



def test_shipped_demo_equals_simulator():
    shipped_sessions, shipped_therapists = load_demo()
    sessions, therapists = demo_from_simulator()
    pd.testing.assert_frame_equal(shipped_sessions, sessions, check_dtype=False, atol=1e-9)
    pd.testing.assert_frame_equal(shipped_therapists, therapists, check_dtype=False)


def test_coyne2022_parameters_are_the_published_defaults():
    from theralens.simulation.generate import MODERATORS, PROCESSES, Variable, resolve_parameters

    p = resolve_parameters("coyne2022")
    assert p.processes == PROCESSES and tuple(p.moderators) == MODERATORS
    assert p.moderators["cbt"] == Variable("binary", 0.4)
    assert p.covariates == {} and resolve_parameters(patient_covariates=True).covariates["age"].mean == 40.0


@pytest.mark.parametrize("processes", [("homework",), ("alliance", "empathy"), tuple(f"p{k}" for k in range(1, 6))])
@pytest.mark.parametrize("design", ["patient", "session"])
def test_any_processes_moderators_and_covariates(processes, design):
    """One, two or five processes (named freely), a binary and a continuous moderator with
    effects, two patient covariates: the data have those columns and analyze fits them all."""
    from theralens.simulation.generate import Variable
    from theralens.study.analysis import analyze

    first = processes[0]
    within = "session_within_patient" if design == "session" else "within"
    effects = "session_moderator_effects" if design == "session" else "moderator_effects"
    s = simulate(
        seed=3, design=design, processes=processes, n_therapists=30, n_patients=240, caseload_shape=None,
        moderators={"female": Variable("binary", 0.5), "experience": Variable("continuous", 10.0, 5.0, 0.0, 40.0, 0)},
        moderator_main={"experience": 0.01},
        **{effects: {("experience", first, "within_slope"): 0.01, ("female", first, "between_association"): 0.1}},
        **{within: {first: -0.3}},
        covariates={"age": Variable("continuous", 40, 12, 18, 80, 0), "employed": Variable("binary", 0.6)},
        covariate_effects={"employed": -0.2},
    )
    assert list(s.sessions.columns) == ["therapist", "patient", "session", "outcome", *processes, "age", "employed"]
    assert list(s.therapists.columns) == ["therapist", "female", "experience"]
    assert set(s.therapists["female"]) <= {0, 1} and s.therapists["experience"].between(0, 40).all()
    assert set(s.parameters.within) == set(processes) and set(s.parameters.session_slope_sd) == set(processes)
    assert getattr(s.parameters, within)[first] == -0.3
    assert s.parameters.within.get("empathy", 0.0) == 0.0  # a process the preset does not name: GENERIC_PROCESS
    t = s.truth
    assert t["processes"] == list(processes) and t["moderator_centers"] == {"female": 0.5, "experience": 10.0}
    assert {(m["moderator"], m["process"], m["target"]) for m in t["moderators"]} == {
        (m, q, g) for m in ("female", "experience") for q in processes for g in ("within_slope", "between_association")}
    # marginal slope SD: sqrt(sd^2 + g11^2 Var W), Var W = 5^2
    assert t["slope_sd_marginal"][first] == pytest.approx(np.sqrt(t["slope_sd"][first] ** 2 + 0.01**2 * 25))
    cfg = s.config()
    assert cfg.columns.process == processes and cfg.columns.covariates == ("age", "employed")
    assert cfg.therapist_moderators.columns == ("female", "experience")
    res = analyze(s.sessions, s.therapists, cfg)
    assert set(res.aim1["process"]) == set(processes) and len(res.aim2.variance) == len(processes)
    assert set(res.aim3.table["moderator"]) == {"female", "experience"}


def test_named_effects_must_be_simulated():
    from theralens.simulation.generate import Variable

    with pytest.raises(InputError, match="not simulated"):
        simulate(moderators={"female": Variable("binary", 0.5)}, moderator_main={"cbt": 0.1})
    # the preset's own effects on moderators not simulated are dropped
    assert simulate(seed=1, moderators={"female": Variable("binary", 0.5)}).parameters.moderator_effects == {}
    with pytest.raises(InputError, match="process in"):
        simulate(processes=("homework",), moderator_effects={("cbt", "alliance", "within_slope"): 0.1})
    with pytest.raises(InputError, match="reserved"):
        simulate(processes=("outcome",))
    with pytest.raises(InputError, match="3 x 3 matrix"):
        simulate(random_corr=((1.0, 0.2), (0.2, 1.0)))
