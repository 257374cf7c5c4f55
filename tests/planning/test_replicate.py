"""A replicate reports what the study pipeline (analyze) reports on the same data."""

from __future__ import annotations

import numpy as np
import pytest

from theralens.planning.replicate import OK, PowerSpec, replicate_seed, run_replicate
from theralens.planning.settings import Cell
from theralens.simulation.generate import simulate
from theralens.study.analysis import analyze

CELL = Cell(n_therapists=42, patients_per_therapist=212 / 42, n_patients=212)


KIND = {"within_therapist": "within", "between_therapist": "between", "within_patient": "within",
        "between_patient": "between_patient"}


@pytest.mark.parametrize(("design", "replicate", "ddf"), [
    ("patient", 0, "satterthwaite"), ("patient", 5, "satterthwaite"), ("session", 0, "satterthwaite"),
    ("session", 3, "satterthwaite"), ("patient", 1, "kenward-roger"), ("session", 2, "kenward-roger"),
    ("patient", 2, "residual")])
def test_same_numbers_as_analyze(design: str, replicate: int, ddf: str) -> None:
    import dataclasses

    from theralens.data.config import InferenceConfig

    spec = PowerSpec(seed=11, overrides={"design": design}, ddf=ddf)
    rep = run_replicate(spec, CELL, replicate)
    p, est, status = rep.p, rep.estimate, rep.status
    sim = simulate("coyne2022", seed=replicate_seed(11, CELL, replicate), design=design)
    cfg = dataclasses.replace(sim.config(moderators=("self_rated_alliance_skill",)), inference=InferenceConfig(ddf))
    res = analyze(sim.sessions, sim.therapists, cfg)
    assert res.terms.level == design
    want = {}
    for _, row in res.aim2.variance.iterrows():
        want[("slope_variance", row["process"])] = (row["p"], row["slope_sd"], np.nan)
    for _, row in res.aim1.iterrows():
        want[(KIND[row["component"]], row["process"])] = (row["p"], row["estimate"], row["se"])
    row = res.aim3.table.query("process == 'alliance' and target == 'within_slope'").iloc[0]
    want[("moderator", "alliance")] = (row["p"], row["estimate"], row["se"])
    assert {(t.kind, t.process) for t in spec.tests} == set(want)
    for i, t in enumerate(spec.tests):
        if status[i] != OK:
            continue
        wp, we, wse = want[(t.kind, t.process)]
        assert p[i] == pytest.approx(wp, rel=1e-6, abs=1e-9), t.label
        assert est[i] == pytest.approx(we, rel=1e-6, abs=1e-9), t.label
        assert rep.se[i] == pytest.approx(wse, rel=1e-6, nan_ok=True), t.label
    assert (status == OK).sum() >= len(spec.tests) - 2


def test_session_slope_lrt_is_theralens_lrt() -> None:
    """The session design's main model has a patient intercept besides the therapist block:
    the mixture is that of the therapist block (q = 3), as theralens.lrt finds it."""
    from theralens import fit_mixed, lrt
    from theralens.planning.analysis_table import analysis_table
    from theralens.planning.replicate import slope_lrt

    spec = PowerSpec(overrides={"design": "session"})
    at = analysis_table(simulate("coyne2022", seed=2, design="session").sessions, spec.analysis_config)
    main = fit_mixed(at.terms.formula(), at.frame)
    reduced = fit_mixed(at.terms.formula(slopes=["expectancy_within_patient"]), at.frame)
    ref = lrt(reduced, main)
    assert "0.5 chi2(2) + 0.5 chi2(3)" in ref.reference
    assert slope_lrt(reduced, main) == pytest.approx(ref.p_value, rel=1e-12, abs=1e-300)


def test_slope_lrt_is_theralens_lrt() -> None:
    from theralens import lrt
    from theralens.model.fit import fit_design
    from theralens.planning.designs import StudyModels
    from theralens.planning.replicate import slope_lrt
    from theralens.planning.table import patient_arrays

    sm = StudyModels()
    for seed in (1, 2, 3):
        a = patient_arrays(simulate("coyne2022", seed=seed).sessions)
        main_design = sm.main_design(a)
        main = fit_design(main_design, sm.main_formula)
        for proc in ("alliance", "expectancy"):
            reduced = fit_design(sm.reduced_design(a, proc, main_design), sm.reduced_formula(proc))
            ref = lrt(reduced, main)
            assert "0.5 chi2(2) + 0.5 chi2(3)" in ref.reference
            assert slope_lrt(reduced, main) == pytest.approx(ref.p_value, rel=1e-12, abs=1e-300)


def test_seeds_depend_on_seed_cell_and_index_only() -> None:
    a = replicate_seed(1, CELL, 3)
    assert a == replicate_seed(1, CELL, 3)
    others = {replicate_seed(2, CELL, 3), replicate_seed(1, CELL, 4),
              replicate_seed(1, Cell(80, 5.0, 400), 3)}
    assert a not in others and len(others) == 3


def test_tests_follow_the_moderator_settings() -> None:
    kinds = [(t.kind, t.process) for t in PowerSpec(moderator=None).tests]
    assert ("moderator", "alliance") not in kinds and len(kinds) == 6
    t = PowerSpec(moderator="cbt", moderator_target="between_association").tests[-1]
    assert t.term == "alliance_between:cbt_c"
    rep = run_replicate(PowerSpec(moderator="cbt", moderator_target="between_association"), Cell(20, 5.0, 100), 0)
    assert rep.status[-1] != OK or (np.isfinite(rep.p[-1]) and np.isfinite(rep.se[-1]))


def test_mixture_sf_is_chibar_sf() -> None:
    from theralens.model.chibar import independent_mixture, slope_mixture
    from theralens.planning.replicate import _mixture_sf

    for mix in (slope_mixture(1), slope_mixture(2), slope_mixture(3), independent_mixture(3)):
        for x in (0.0, 1e-12, 0.3, 2.0, 7.5, 40.0, float("inf"), float("nan")):
            mine, ref = _mixture_sf(mix, x), mix.sf(x)
            assert mine == ref or (np.isnan(mine) and np.isnan(ref))
