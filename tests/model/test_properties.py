"""Properties of the engine: invariance to row order and id relabelling, agreement with
statsmodels MixedLM on a random-intercept model, recovery of known truth."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from lme4ref import load_fixture

import theralens as tl

FORMULA = ("outcome ~ alliance + expectancy + session + (1 + alliance + expectancy | therapist)"
           " + (1 | therapist:patient)")


@pytest.fixture(scope="module")
def therapy() -> tuple[pd.DataFrame, tl.MixedResult]:
    _, data = load_fixture("therapy3")
    return data, tl.fit_mixed(FORMULA, data)


def test_row_order_invariance(therapy) -> None:
    data, base = therapy
    shuffled = data.sample(frac=1.0, random_state=7).reset_index(drop=True)
    m = tl.fit_mixed(FORMULA, shuffled)
    assert m.reml_criterion == pytest.approx(base.reml_criterion, abs=1e-7)
    assert np.allclose(m.fixed_effects, base.fixed_effects, rtol=1e-6, atol=1e-9)
    assert np.allclose(m.varcorr["vcov"], base.varcorr["vcov"], rtol=1e-5, atol=1e-9)


def test_id_relabelling_invariance(therapy) -> None:
    data, base = therapy
    relab = data.copy()
    rng = np.random.default_rng(3)
    ther = relab["therapist"].unique()
    mapping = dict(zip(ther, [f"x{v}" for v in rng.permutation(len(ther))]))
    relab["therapist"] = relab["therapist"].map(mapping)
    m = tl.fit_mixed(FORMULA, relab)
    assert m.reml_criterion == pytest.approx(base.reml_criterion, abs=1e-7)
    assert np.allclose(m.fixed_effects, base.fixed_effects, rtol=1e-6, atol=1e-9)
    a = base.random_effects("therapist").assign(level=lambda d: d["level"].map(mapping))
    b = m.random_effects("therapist")
    merged = a.merge(b, on=["level", "term"], suffixes=("_a", "_b"))
    assert len(merged) == len(a)
    # equal to the optimizer's precision: summation order changes rounding, hence its path
    scale = merged["estimate_a"].abs().max()
    assert np.allclose(merged["estimate_a"], merged["estimate_b"], rtol=0, atol=1e-5 * scale)


def test_random_intercept_equals_statsmodels() -> None:
    statsmodels = pytest.importorskip("statsmodels.formula.api", reason="statsmodels is a dev dependency")
    ref, data = load_fixture("hsb82")
    m = tl.fit_mixed("mAch ~ ses + catholic + (1 | school)", data)
    sm = statsmodels.mixedlm("mAch ~ ses + catholic", data, groups=data["school"]).fit(reml=True)
    assert np.allclose(m.fixed_effects.to_numpy(), sm.fe_params.to_numpy(), rtol=1e-4)
    # (statsmodels' bse_fe come from the joint Hessian of beta and the variance parameters,
    # lme4's and ours are conditional on theta, so standard errors are not compared here;
    # they are compared with lme4 in test_parity_lme4.py)
    assert m.sigma**2 == pytest.approx(sm.scale, rel=1e-4)
    assert m.varcorr["vcov"].iloc[0] == pytest.approx(float(sm.cov_re.iloc[0, 0]), rel=1e-3)
    # statsmodels' REML log-likelihood is lme4's up to nothing: -2 llf == REMLcrit
    assert -2 * sm.llf == pytest.approx(m.reml_criterion, abs=1e-3)


def test_recovers_known_truth() -> None:
    """200 therapists x 8 patients x 6 sessions: estimates near the generating values."""
    rng = np.random.default_rng(11)
    T, P, S = 200, 8, 6
    ther = np.repeat(np.arange(T), P * S)
    pat = np.repeat(np.arange(T * P), S)
    x = rng.normal(size=T * P * S)
    u0 = rng.normal(scale=0.8, size=T)
    u1 = rng.normal(scale=0.4, size=T)
    up = rng.normal(scale=0.6, size=T * P)
    y = 1.0 + 0.5 * x + u0[ther] + u1[ther] * x + up[pat] + rng.normal(scale=1.0, size=len(x))
    df = pd.DataFrame({"y": y, "x": x, "therapist": ther, "patient": pat})
    m = tl.fit_mixed("y ~ x + (1 + x | therapist) + (1 | patient)", df)
    fe = m.fixed_effects
    ci = m.conf_int(0.999)
    assert ci.loc["(Intercept)", "0.05 %"] < 1.0 < ci.loc["(Intercept)", "99.95 %"]
    assert ci.loc["x", "0.05 %"] < 0.5 < ci.loc["x", "99.95 %"]
    vc = m.varcorr.set_index(["grp", "var1"])
    assert np.sqrt(vc.loc[("therapist", "x"), "vcov"]) == pytest.approx(0.4, rel=0.2)
    assert np.sqrt(vc.loc[("patient", "(Intercept)"), "vcov"]) == pytest.approx(0.6, rel=0.2)
    assert m.sigma == pytest.approx(1.0, rel=0.05)
    assert abs(fe["x"] - 0.5) < 0.1
