"""Batched Satterthwaite df equal the engine's; the fit then needs no more profiles."""

from __future__ import annotations

import numpy as np
import pytest

from theralens.model.fit import fit_design
from theralens.model.satterthwaite import satterthwaite
from theralens.planning.designs import StudyModels
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
