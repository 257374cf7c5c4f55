"""Batched Satterthwaite df equal the engine's; the fit then needs no more profiles."""

from __future__ import annotations

import numpy as np
import pytest

from theralens.model.design import build_design
from theralens.model.elimination import Elimination
from theralens.model.fit import fit_design
from theralens.model.satterthwaite import satterthwaite
from theralens.planning.analysis_table import analysis_table
from theralens.planning.designs import StudyModels, parsed_formula
from theralens.planning.replicate import PowerSpec
from theralens.planning.satterthwaite import batched_profiles, prime_satterthwaite, t_tests
from theralens.planning.table import patient_arrays
from theralens.simulation.generate import simulate


def _fits(seed: int):
    sim = simulate("coyne2022", seed=seed)
    a = patient_arrays(sim.sessions)
    sm = StudyModels()
    main = sm.main_design(a)
    w = sim.therapists["self_rated_alliance_skill"].to_numpy(float)
    return [fit_design(main, sm.main_formula),
            fit_design(sm.reduced_design(a, "alliance", main), sm.reduced_formula("alliance")),
            fit_design(sm.moderator_design(a, w, main), sm.moderator_formula)]


@pytest.mark.parametrize("seed", [1, 8])
def test_equal_to_engine(seed: int) -> None:
    for fit in _fits(seed):
        df, A, jac = satterthwaite(fit.criterion, fit.solution.theta, fit.sigma, fit.reml)
        before = fit.criterion.evaluations
        prime_satterthwaite(fit)
        mine = fit.df.to_numpy()
        assert fit.criterion.evaluations == before  # every profile came from the batch
        np.testing.assert_allclose(mine, df, rtol=1e-6)
        # A comes from second differences; for a variance on its boundary the steps are 1e-4 and
        # rounding shows at 1e-3 in both computations: compare the interior parameters
        inner = np.r_[np.abs(fit.solution.theta) > 1e-6, True]
        mine_A = fit.__dict__["_satterthwaite"][1]
        np.testing.assert_allclose(mine_A[np.ix_(inner, inner)], A[np.ix_(inner, inner)], rtol=1e-5,
                                   atol=1e-7 * np.abs(A).max())
        np.testing.assert_allclose(fit.__dict__["_satterthwaite"][2], jac, rtol=1e-6, atol=1e-12)


def test_batched_profiles_equal_engine_profiles() -> None:
    fit = _fits(3)[0]
    rng = np.random.default_rng(0)
    thetas = fit.solution.theta + 0.05 * rng.standard_normal((7, fit.solution.theta.size))
    thetas[:, 0] = np.abs(thetas[:, 0])
    batch = batched_profiles(fit.criterion, thetas)
    for t, th in enumerate(thetas):
        ref = fit.criterion.profile(th)
        got = batch[t]
        assert got.logdet == pytest.approx(ref.logdet, rel=1e-12)
        assert got.r2 == pytest.approx(ref.r2, rel=1e-10)
        np.testing.assert_allclose(got.RX, ref.RX, rtol=1e-10, atol=1e-12)


def test_t_tests_equal_the_fit_views() -> None:
    for fit in _fits(2):
        beta, se, df, p = t_tests(fit)
        np.testing.assert_allclose(beta, fit.fixed_effects.to_numpy(), rtol=1e-12)
        np.testing.assert_allclose(se, fit.std_errors.to_numpy(), rtol=1e-10)
        np.testing.assert_allclose(df, fit.df.to_numpy(), rtol=1e-12)
        np.testing.assert_allclose(p, fit.p_values.to_numpy(), rtol=1e-9, atol=1e-15)


@pytest.mark.parametrize("formula", [
    "final ~ alliance_within + baseline + (alliance_within + expectancy_within || therapist)",  # block-diagonal Lambda
    "final ~ baseline + (1 | therapist)",  # q = 1
])
def test_other_random_parts_equal_engine(formula: str) -> None:
    from theralens.model.fit import fit_mixed

    fit = fit_mixed(formula, patient_arrays(simulate("coyne2022", seed=4).sessions).frame())
    df, _, jac = satterthwaite(fit.criterion, fit.solution.theta, fit.sigma, fit.reml)
    before = fit.criterion.evaluations
    prime_satterthwaite(fit)
    assert fit.criterion.evaluations == before  # the batch, not the engine's fallback
    np.testing.assert_allclose(fit.df.to_numpy(), df, rtol=1e-6)
    np.testing.assert_allclose(fit.__dict__["_satterthwaite"][2], jac, rtol=1e-6, atol=1e-12)


def _session_fits(seed: int):
    """The main and moderator models of the session design (sessions in patients in therapists: a
    patient intercept nested in the therapist intercept and slopes), as a power replicate fits them."""
    spec = PowerSpec(overrides={"design": "session"})
    sim = simulate("coyne2022", seed=seed, design="session")
    at = analysis_table(sim.sessions, spec.analysis_config)
    terms = at.terms
    frame, column = at.with_moderator(sim.therapists, spec.moderator)
    extra = [column]
    for p in terms.processes:
        extra += [f"{terms.within[p]}:{column}", f"{terms.between[p]}:{column}"]
    out = []
    for formula, data in ((terms.formula(), at.frame), (terms.formula(extra=extra), frame)):
        out.append(fit_design(build_design(parsed_formula(formula), data), formula))
    return out


def test_nested_batch_equals_forward() -> None:
    """The batched elimination of two nested levels equals the one-point elimination at every point,
    both for points that share the innermost lambda (as the Satterthwaite differences do) and not."""
    fit = _session_fits(5)[0]
    crit = fit.criterion
    assert crit.D == 2 and crit.elimination.fast
    rng = np.random.default_rng(1)
    theta = fit.solution.theta
    thetas = theta + 0.05 * rng.standard_normal((12, theta.size))
    thetas[:6, 0] = theta[0]  # one innermost lambda shared by half the points
    thetas[6:9, 0] = theta[0] + 0.01
    logdet, top = crit.elimination.batch(thetas)
    for t, th in enumerate(thetas):
        fw = crit.elimination.forward(th)
        assert logdet[t] == pytest.approx(fw.logdet, rel=1e-12)
        np.testing.assert_allclose(top[t], fw.top, rtol=1e-10, atol=1e-10 * np.abs(fw.top).max())
    # without the closed-form innermost level there is no batch: the engine evaluates point by point
    assert Elimination(crit.stats, fast=False).batch(thetas) is None


@pytest.mark.parametrize("seed", [1, 3])
def test_session_design_equal_to_engine(seed: int) -> None:
    """Satterthwaite df of the session design's models from the batch equal the engine's point-by-point
    numbers. Tolerance 1e-5: numDeriv's second differences with steps down to h / 8 turn the rounding of
    the deviance (~1e-13) into ~1e-6 relative in a df; the engine's own two eliminations (closed form and
    general level step) differ from each other by as much."""
    for fit in _session_fits(seed):
        df, _, jac = satterthwaite(fit.criterion, fit.solution.theta, fit.sigma, fit.reml)
        before = fit.criterion.evaluations
        prime_satterthwaite(fit)
        assert fit.criterion.evaluations == before  # every profile came from the batch
        np.testing.assert_allclose(fit.df.to_numpy(), df, rtol=1e-5)
        np.testing.assert_allclose(fit.__dict__["_satterthwaite"][2], jac, rtol=1e-5, atol=1e-12)
