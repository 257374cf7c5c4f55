"""The analytic gradient of the profiled criterion (gradient.py, eqs. G1-G5) and the BFGS fit.

- the gradient equals central finite differences of ``NestedCriterion.criterion`` (five-point
  stencil) on every fixture, REML and ML, at random theta, to 1e-5 relative; the closed form for
  a single innermost term (G5) equals the general path; also on three-level designs, without
  fixed effects, at a zero diagonal and with negative diagonals (column flips);
- the gradient fit ends at a criterion no higher than BOBYQA's on every fixture, and its record
  counts gradient evaluations and requires a small gradient for ``converged``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from lme4ref import load_fixture

import theralens as tl
from theralens.model import fit as fit_module
from theralens.model.criterion import NestedCriterion
from theralens.model.design import build_design
from theralens.model.formula import parse_formula
from theralens.model.gradient import ProfiledGradient
from theralens.model.optimize import GRADIENT_TOL, minimize_theta

FIXTURES = ["hsb82", "therapy3", "pastes", "sleep_uncorr", "singular", "growth3", "factors", "nonconverge"]


def _criterion(formula: str, data: pd.DataFrame) -> NestedCriterion:
    return NestedCriterion(build_design(parse_formula(formula), data))


def _random_theta(crit: NestedCriterion, rng: np.random.Generator) -> np.ndarray:
    """Diagonals in [0.2, 1.5], off-diagonals N(0, 0.5^2), on the scaled parameters phi."""
    lower = crit.design.theta_lower_bounds()
    phi = np.where(np.isfinite(lower), rng.uniform(0.2, 1.5, len(lower)), rng.normal(0.0, 0.5, len(lower)))
    return phi / crit.design.theta_scale()


def _fd_gradient(crit: NestedCriterion, theta: np.ndarray, reml: bool, h: float = 1e-3) -> np.ndarray:
    """Five-point central differences in phi = theta * scale, returned per theta."""
    scale = crit.design.theta_scale()
    phi = theta * scale
    g = np.empty(len(phi))
    for i in range(len(phi)):
        e = np.zeros(len(phi))
        e[i] = h
        f = [crit.criterion((phi + s * e) / scale, reml) for s in (2, 1, -1, -2)]
        g[i] = (-f[0] + 8 * f[1] - 8 * f[2] + f[3]) / (12 * h)
    return g * scale


def _assert_gradient(crit: NestedCriterion, theta: np.ndarray, reml: bool, fast: bool = True) -> np.ndarray:
    f, g = ProfiledGradient(crit, fast=fast)(theta, reml)
    assert f == pytest.approx(crit.criterion(theta, reml), rel=1e-12, abs=1e-9)
    fd = _fd_gradient(crit, theta, reml)
    scale = crit.design.theta_scale()
    # relative error per component, on phi (the optimizer's parameters), with a floor for
    # components near zero
    gp, fdp = g / scale, fd / scale
    err = np.abs(gp - fdp) / np.maximum(np.abs(fdp), 1e-3 * np.max(np.abs(fdp)) + 1e-8)
    assert err.max() < 1e-5, (gp, fdp, err)
    return g


@pytest.mark.parametrize("reml", [True, False])
@pytest.mark.parametrize("name", FIXTURES)
def test_gradient_matches_finite_differences(name: str, reml: bool) -> None:
    ref, data = load_fixture(name)
    crit = _criterion(ref["formula"], data)
    rng = np.random.default_rng(sum(map(ord, name)) + reml)
    for _ in range(2):
        theta = _random_theta(crit, rng)
        g = _assert_gradient(crit, theta, reml)
        if crit.q[0] == 1:  # closed form (G5) = general path
            _, g_general = ProfiledGradient(crit, fast=False)(theta, reml)
            np.testing.assert_allclose(g, g_general, rtol=1e-8, atol=1e-8 * np.abs(g).max())


def _three_level(slope_at_patient: bool, seed: int = 11) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for c in range(5):
        uc = rng.normal(scale=0.7)
        for t in range(4):
            ut = rng.normal(scale=[0.8, 0.3])
            for p in range(int(rng.integers(2, 5))):
                up = rng.normal(scale=[0.9, 0.2])
                for s in range(int(rng.integers(3, 7))):
                    x = rng.normal()
                    y = 1 + uc + ut[0] + up[0] + (0.5 + ut[1] + slope_at_patient * up[1]) * x - 0.1 * s + rng.normal()
                    rows.append((f"c{c}", f"t{t}", f"p{p}", s, x, y))
    return pd.DataFrame(rows, columns=["clinic", "therapist", "patient", "session", "x", "y"])


@pytest.mark.parametrize("reml", [True, False])
@pytest.mark.parametrize("formula", [
    "y ~ x + session + (1 | clinic) + (1 + x | clinic:therapist) + (1 | clinic:therapist:patient)",
    "y ~ x + (1 + x | clinic) + (1 + x | clinic:therapist) + (1 + x | clinic:therapist:patient)",
    "y ~ 0 + x + (1 | clinic) + (x || clinic:therapist) + (1 | clinic:therapist:patient)",
    "y ~ 0 + (1 | clinic/therapist)",
])
def test_gradient_three_levels_and_no_intercept(formula: str, reml: bool) -> None:
    crit = _criterion(formula, _three_level(slope_at_patient="x | clinic:therapist:patient" in formula))
    rng = np.random.default_rng(5)
    theta = _random_theta(crit, rng)
    g = _assert_gradient(crit, theta, reml)
    if crit.q[0] == 1:
        _, g_general = ProfiledGradient(crit, fast=False)(theta, reml)
        np.testing.assert_allclose(g, g_general, rtol=1e-8, atol=1e-8 * np.abs(g).max())


@pytest.mark.parametrize("reml", [True, False])
def test_gradient_at_zero_and_negative_diagonals(reml: bool) -> None:
    ref, data = load_fixture("therapy3")
    crit = _criterion(ref["formula"], data)
    theta = _random_theta(crit, np.random.default_rng(2))
    lower = crit.design.theta_lower_bounds()
    diag = np.flatnonzero(np.isfinite(lower))
    at_zero = theta.copy()
    at_zero[diag[1]] = 0.0  # a therapist-level diagonal on its bound (not the first column)
    _assert_gradient(crit, at_zero, reml)
    # the criterion depends on Lambda Lambda' only: negating a column of Lambda changes nothing,
    # and the gradient of the negated entries changes sign
    cols = np.split(np.arange(len(theta)), diag[1:])
    flipped = theta.copy()
    flipped[cols[1]] *= -1
    assert crit.criterion(flipped, reml) == pytest.approx(crit.criterion(theta, reml), rel=1e-12)
    g = _assert_gradient(crit, flipped, reml)
    _, g0 = crit.value_and_gradient(theta, reml)
    sign = np.ones(len(theta))
    sign[cols[1]] = -1
    np.testing.assert_allclose(g, sign * g0, rtol=1e-8, atol=1e-8 * np.abs(g0).max())


def _bobyqa_fit(formula: str, data: pd.DataFrame, reml: bool, monkeypatch: pytest.MonkeyPatch) -> tl.MixedResult:
    """The same fit with the derivative-free path (no gradient handed to the optimizer)."""

    def no_gradient(f, x0, lower, scale=None, max_restarts=4, fg=None):  # noqa: ANN001, ANN202
        return minimize_theta(f, x0, lower, scale=scale, max_restarts=max_restarts)

    with monkeypatch.context() as mp:
        mp.setattr(fit_module, "minimize_theta", no_gradient)
        return tl.fit_mixed(formula, data, reml=reml)


@pytest.mark.parametrize("reml", [True, False])
@pytest.mark.parametrize("name", FIXTURES)
def test_gradient_fit_is_no_worse_than_bobyqa(name: str, reml: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    ref, data = load_fixture(name)
    m = tl.fit_mixed(ref["formula"], data, reml=reml)
    b = _bobyqa_fit(ref["formula"], data, reml, monkeypatch)
    ours = m.reml_criterion if reml else m.deviance
    theirs = b.reml_criterion if reml else b.deviance
    assert ours <= theirs + 1e-8 * abs(theirs)
    rec = m.optimizer
    assert rec.method.startswith("BFGS")
    assert 0 < rec.gradient_evaluations <= rec.evaluations
    assert rec.evaluations < b.optimizer.evaluations
    assert rec.converged and rec.gradient_norm < GRADIENT_TOL
    assert b.optimizer.gradient_evaluations == 0
    np.testing.assert_allclose(m.fixed_effects, b.fixed_effects, rtol=1e-5, atol=1e-8)


def test_record_reports_the_analytic_gradient_at_the_end() -> None:
    ref, data = load_fixture("therapy3")
    crit = _criterion(ref["formula"], data)
    design = crit.design
    lower, scale = design.theta_lower_bounds(), design.theta_scale()
    x0 = np.where(np.isfinite(lower), 1.0, 0.0) / scale
    rec = minimize_theta(lambda th: crit.criterion(th), x0, lower, scale=scale, fg=crit.value_and_gradient)
    assert rec.converged == (rec.gradient_norm < GRADIENT_TOL) and rec.converged
    assert rec.gradient_norm == pytest.approx(np.max(np.abs(rec.gradient)))
    assert rec.criterion == pytest.approx(crit.criterion(rec.final), rel=1e-12)
    assert np.all(rec.final[np.isfinite(lower)] >= 0)
    _, g = crit.value_and_gradient(rec.final)
    free = ~(np.isfinite(lower) & (rec.final * scale <= 1e-6))
    np.testing.assert_allclose(rec.gradient[free], (g / scale)[free], rtol=1e-6, atol=1e-9)


def test_degenerate_data_fall_back_to_bobyqa() -> None:
    """The criterion decreases towards an infinite variance ratio: BFGS hands over to BOBYQA."""
    data = pd.DataFrame({"g": [0, 1, 1, 2, 2], "x": [1.0, 0, 0, 1, 0], "y": [0.0, 0, 0, 1, 0]})
    m = tl.fit_mixed("y ~ x + (1 + x | g)", data)
    rec = m.optimizer
    assert "BOBYQA" in rec.method and "diverged" in rec.method
    assert rec.gradient_evaluations > 0 and rec.evaluations > rec.gradient_evaluations
    assert np.all(np.isfinite(m.solution.theta))
