"""The moment-based starting values (fit.moment_start) change where BFGS starts, not where it ends.

- on every lme4 fixture, REML and ML, the fit from the moment start reaches the criterion of the
  fit from lme4's start (theta = 1 on the diagonals) to 1e-9 relative, with the same fixed effects;
- the start is a diagonal Lambda within START_RANGE on the scaled parameters, and it is not
  used (None) when most groups are too small for a least-squares fit of their own.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from lme4ref import load_fixture

from theralens.model.criterion import NestedCriterion
from theralens.model.design import build_design
from theralens.model.fit import START_RANGE, fit_design, moment_start
from theralens.model.formula import parse_formula

FIXTURES = ["hsb82", "therapy3", "pastes", "sleep_uncorr", "singular", "growth3", "factors", "nonconverge"]


@pytest.mark.parametrize("reml", [True, False])
@pytest.mark.parametrize("name", FIXTURES)
def test_moment_start_reaches_the_same_optimum(name: str, reml: bool) -> None:
    ref, data = load_fixture(name)
    design = build_design(parse_formula(ref["formula"]), data)
    lme4_start = np.where(np.isfinite(design.theta_lower_bounds()), 1.0, 0.0) / design.theta_scale()
    ours = fit_design(design, ref["formula"], reml=reml)
    theirs = fit_design(design, ref["formula"], reml=reml, start=lme4_start)
    crit = (lambda m: m.reml_criterion) if reml else (lambda m: m.deviance)
    assert crit(ours) == pytest.approx(crit(theirs), rel=1e-9)
    assert ours.converged and theirs.converged
    np.testing.assert_allclose(ours.fixed_effects, theirs.fixed_effects, rtol=1e-5, atol=1e-8)


def test_moment_start_is_diagonal_and_bounded() -> None:
    ref, data = load_fixture("therapy3")
    design = build_design(parse_formula(ref["formula"]), data)
    scale = design.theta_scale()
    start = moment_start(NestedCriterion(design), scale)
    assert start is not None
    diag = np.isfinite(design.theta_lower_bounds())
    assert np.all(start[~diag] == 0.0)
    phi = start[diag] * scale[diag]
    assert np.all((phi >= START_RANGE[0]) & (phi <= START_RANGE[1]))


def test_no_moment_start_for_tiny_groups() -> None:
    """Two or three rows per group cannot fit a random intercept and slope on their own."""
    rng = np.random.default_rng(3)
    g = np.repeat(np.arange(30), rng.integers(2, 4, 30))
    x = rng.normal(size=len(g))
    data = pd.DataFrame({"g": g, "x": x, "y": x + rng.normal(size=30)[g] + rng.normal(size=len(g))})
    design = build_design(parse_formula("y ~ x + (1 + x | g)"), data)
    assert moment_start(NestedCriterion(design), design.theta_scale()) is None
