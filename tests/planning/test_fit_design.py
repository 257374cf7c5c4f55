"""Designs built from arrays equal build_design's, and fit_design is fit_mixed's fit step."""

from __future__ import annotations

import numpy as np
import pytest

from theralens import fit_mixed
from theralens.data.decompose import patient_level
from theralens.data.validate import validate_sessions
from theralens.model.design import build_design
from theralens.model.fit import fit_design
from theralens.model.formula import parse_formula
from theralens.planning.designs import StudyModels
from theralens.planning.table import patient_arrays
from theralens.simulation.generate import simulate
from theralens.study.aims import design_terms


@pytest.fixture(scope="module")
def data():
    sim = simulate("coyne2022", seed=4)
    a = patient_arrays(sim.sessions)
    frame = a.frame()
    w = sim.therapists.set_index("therapist")["self_rated_alliance_skill"].reindex(a.all_therapist_ids)
    frame["self_rated_alliance_skill_c"] = frame["therapist"].map(w - w.mean())
    return sim, a, frame, w.to_numpy(float)


def test_formulas_are_the_studys(data) -> None:
    sim = data[0]
    cfg = sim.config(moderators=())
    terms = design_terms(patient_level(validate_sessions(sim.sessions, cfg), cfg))
    sm = StudyModels()
    assert sm.main_formula == terms.formula()
    assert sm.reduced_formula("alliance") == terms.formula(slopes=["expectancy_within"])


def test_session_terms_are_the_studys() -> None:
    from theralens.data.decompose import session_level
    from theralens.planning.designs import study_terms

    for covs in ((), ("age",)):
        sim = simulate("coyne2022", seed=4, design="session", patient_covariates=bool(covs))
        cfg = sim.config(moderators=())
        ref = design_terms(session_level(validate_sessions(sim.sessions, cfg), cfg))
        mine = study_terms("session", ("alliance", "expectancy"), covs)
        assert mine == ref
        assert StudyModels(level="session", covariates=covs).main_formula == ref.formula()


def test_designs_equal_build_design(data) -> None:
    _, a, frame, w = data
    sm = StudyModels()
    main = sm.main_design(a)
    cases = [(sm.main_formula, main), (sm.reduced_formula("expectancy"), sm.reduced_design(a, "expectancy", main)),
             (sm.moderator_formula, sm.moderator_design(a, w, main))]
    for formula, mine in cases:
        ref = build_design(parse_formula(formula), frame)
        assert mine.fixed_names == ref.fixed_names
        np.testing.assert_allclose(mine.X, ref.X, rtol=0, atol=1e-13)
        np.testing.assert_array_equal(mine.y, ref.y)
        assert [t.columns for t in mine.terms] == [t.columns for t in ref.terms]
        np.testing.assert_allclose(mine.terms[0].Z, ref.terms[0].Z, rtol=0, atol=1e-13)
        np.testing.assert_array_equal(mine.levels[0].codes, ref.levels[0].codes)
        assert list(mine.levels[0].labels) == list(ref.levels[0].labels)
        np.testing.assert_allclose(mine.theta_scale(), ref.theta_scale(), rtol=1e-13)


def test_fit_design_is_fit_mixed(data) -> None:
    _, a, frame, _ = data
    sm = StudyModels()
    main = sm.main_design(a)
    for formula, design in [(sm.main_formula, main), (sm.reduced_formula("alliance"),
                                                       sm.reduced_design(a, "alliance", main))]:
        ref = fit_mixed(formula, frame)
        mine = fit_design(design, formula)
        assert mine.optimizer.evaluations == ref.optimizer.evaluations  # same optimizer path
        assert mine.reml_criterion == pytest.approx(ref.reml_criterion, abs=1e-9)
        np.testing.assert_allclose(mine.fixed_effects, ref.fixed_effects, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(mine.solution.theta, ref.solution.theta, rtol=1e-8, atol=1e-10)
        assert mine.converged == ref.converged and mine.singular == ref.singular
