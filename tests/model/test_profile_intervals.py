"""Profile-likelihood intervals of the variance components agree with lme4's
``confint(m, method = "profile")`` (fixtures: tests/fixtures/profile, made by
tests/fixtures/make_profile_fixtures.R with lme4 1.1-31); the parametric bootstrap is seeded."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from lme4ref import FIXTURES, load_fixture

from theralens import fit_mixed
from theralens.errors import InputError
from theralens.model.profile import boundary_cutoff, profile_zeta, varcorr_parameters

NAMES = ["sleep_uncorr", "pastes", "singular", "factors", "therapy3"]
PARITY = 1e-3  # relative agreement of the bounds with lme4 (issue #13)


def _profile_fixture(name: str) -> dict:
    return json.loads((FIXTURES / "profile" / f"{name}.json").read_text())


def _interpolated(ref: dict, level: str) -> set[str]:
    """lme4 rows whose bounds are a linear interpolation of its grid (it warns so)."""
    return {w.split(" for ", 1)[1].split(":")[0] for w in ref["warnings"][level] if "linear interpolation" in w}


@pytest.fixture(scope="module")
def fits() -> dict:
    out = {}
    for name in NAMES:
        _, data = load_fixture(name)
        out[name] = fit_mixed(_profile_fixture(name)["formula"], data)
    return out


@pytest.fixture(scope="module")
def intervals(fits: dict) -> dict:
    """Our profile intervals per fixture and level (computed once: therapy3 takes seconds)."""
    return {name: {level: fits[name].conf_int_varcorr(level=float(level))
                   for level in _profile_fixture(name)["intervals"]} for name in NAMES}


@pytest.mark.parametrize("name", NAMES)
def test_profile_bounds_match_lme4(fits: dict, intervals: dict, name: str) -> None:
    ref = _profile_fixture(name)
    fit = fits[name]
    checked = 0
    for level, block in ref["intervals"].items():
        ours = intervals[name][level]
        cols = block["columns"]
        assert list(ours.columns) == ["grp", "var1", "var2", "sdcor", *cols]
        skip = _interpolated(ref, level)
        assert len(ours) == len(block["varcorr"])
        np.testing.assert_array_equal(ours.sdcor.to_numpy(), fit.varcorr.sdcor.to_numpy())  # the fit's estimates
        for row, (_, mine) in zip(block["varcorr"], ours.iterrows()):
            assert (mine.grp, mine.var1, mine.var2) == (row["grp"], row["var1"], row["var2"])
            if row["lme4_name"] in skip:
                continue  # compared through the profile itself below
            for c in cols:
                want = row[c]
                assert want is not None
                assert mine[c] == pytest.approx(want, rel=PARITY, abs=1e-8), (name, level, row["lme4_name"], c)
                checked += 1
    assert checked >= 4


def test_singular_fit_bounds_at_the_edges(intervals: dict) -> None:
    """The singular fixture: the slope SD's lower bound is 0 and the correlation's interval is
    [-1, 1], as lme4 reports them (neither is reached inside the parameter space)."""
    ci = intervals["singular"]["0.95"]
    slope = ci[(ci.var1 == "x") & ci.var2.isna()].iloc[0]
    cor = ci[ci.var2.notna()].iloc[0]
    assert slope["2.5 %"] == 0.0 and slope["97.5 %"] > slope.sdcor
    assert (cor["2.5 %"], cor["97.5 %"]) == (-1.0, 1.0)


def test_profile_matches_lme4_grid_where_lme4_interpolates(fits: dict, intervals: dict) -> None:
    """Where lme4 falls back to linear interpolation (therapy3's correlations) its bounds are
    not the roots of the profile; the profile itself is compared: zeta at lme4's grid points."""
    ref = _profile_fixture("therapy3")
    skip = _interpolated(ref, "0.95")
    assert len(skip) == 3
    fit = fits["therapy3"]
    ml = fit_mixed(ref["formula"], load_fixture("therapy3")[1], reml=False)
    names = {r["lme4_name"]: (r["grp"], r["var1"], r["var2"]) for r in ref["row_names"]}
    params = {(p.grp, p.var1, p.var2): p for p in varcorr_parameters(fit.design)}
    for lme4_name in sorted(skip):
        grid = ref["profile_points"][lme4_name]
        focal, zeta = np.array(grid["focal"]), np.array(grid["zeta"])
        inside = np.abs(zeta) <= 2.2  # the stretch the 95% bounds come from
        ours = profile_zeta(ml.criterion, ml.solution.theta, ml.sigma, False, params[names[lme4_name]], focal[inside])
        np.testing.assert_allclose(ours, zeta[inside], atol=2e-4, err_msg=lme4_name)
        # and our bound is where the profile crosses the quantile, between lme4's grid points
        ci = intervals["therapy3"]["0.95"]
        g, v1, v2 = names[lme4_name]
        row = ci[(ci.grp == g) & (ci.var1 == v1) & (ci.var2 == v2)].iloc[0]
        for bound, z in ((row["2.5 %"], -1.959964), (row["97.5 %"], 1.959964)):
            at = profile_zeta(ml.criterion, ml.solution.theta, ml.sigma, False, params[names[lme4_name]],
                              np.array([bound]))[0]
            assert at == pytest.approx(z, abs=1e-5)


def test_one_row_and_errors(fits: dict) -> None:
    fit = fits["sleep_uncorr"]
    one = fit.conf_int_varcorr(rows=[("Subject.1", "Days", None)])
    full = fit.conf_int_varcorr()
    assert len(one) == 1
    assert one.iloc[0]["97.5 %"] == pytest.approx(full.iloc[1]["97.5 %"], rel=1e-7)
    with pytest.raises(InputError, match="no variance component"):
        fit.conf_int_varcorr(rows=[("Subject", "Days", None)])
    with pytest.raises(InputError, match="method must be one of"):
        fit.conf_int_varcorr(method="wald")
    with pytest.raises(InputError, match="level"):
        fit.conf_int_varcorr(level=95)


def test_bootstrap_seeded_and_sensible(fits: dict) -> None:
    fit = fits["sleep_uncorr"]
    a = fit.conf_int_varcorr(method="bootstrap", nsim=60, seed=7, progress=False)
    b = fit.conf_int_varcorr(method="bootstrap", nsim=60, seed=7, progress=False)
    c = fit.conf_int_varcorr(method="bootstrap", nsim=60, seed=8, progress=False)
    np.testing.assert_array_equal(a[["2.5 %", "97.5 %"]].to_numpy(), b[["2.5 %", "97.5 %"]].to_numpy())
    assert not np.allclose(a["2.5 %"].to_numpy(), c["2.5 %"].to_numpy())
    assert a.attrs["failed"] == 0 and a.attrs["nsim"] == 60
    prof = fit.conf_int_varcorr()
    # each bootstrap interval holds the estimate and overlaps the profile interval broadly
    assert np.all(a["2.5 %"] < a.sdcor) and np.all(a.sdcor < a["97.5 %"])
    for (_, x), (_, y) in zip(a.iterrows(), prof.iterrows()):
        width = y["97.5 %"] - y["2.5 %"]
        assert math.isclose(x["97.5 %"] - x["2.5 %"], width, rel_tol=0.6)


def test_bootstrap_needs_rows() -> None:
    from theralens import fit_stats
    from theralens.model.stats import SufficientStats

    _, data = load_fixture("sleep_uncorr")
    fit = fit_stats(SufficientStats.from_frame("Reaction ~ Days + (Days || Subject)", data))
    assert fit.conf_int_varcorr().shape[0] == 3  # the profile needs only the statistics
    with pytest.raises(InputError, match="rows of the data"):
        fit.conf_int_varcorr(method="bootstrap", nsim=5, progress=False)


@pytest.mark.parametrize("reml", [True, False])
def test_gradient_with_explicit_sigma_matches_differences(fits: dict, reml: bool) -> None:
    """The exact gradient the profiles use (deviance with sigma explicit) against central
    differences of the deviance itself, away from the optimum."""
    from theralens.model.satterthwaite import VarparFunctions

    fit = fits["therapy3"]
    crit = fit.criterion
    theta, sigma = fit.solution.theta * 1.1 + 0.01, 0.9 * fit.sigma
    dev, g_theta, g_sigma = crit.deviance_and_gradient_with_sigma(theta, sigma, reml)
    vf = VarparFunctions(crit, reml)
    x = np.r_[theta, sigma]
    assert dev == pytest.approx(vf.deviance(x), rel=1e-12)
    fd = np.empty(x.size)
    for i in range(x.size):
        e = np.zeros(x.size)
        e[i] = 1e-5 * max(1.0, abs(x[i]))
        fd[i] = (vf.deviance(x + e) - vf.deviance(x - e)) / (2 * e[i])
    np.testing.assert_allclose(np.r_[g_theta, g_sigma], fd, rtol=1e-5, atol=1e-5)


def test_reml_profile_option(fits: dict) -> None:
    """likelihood='reml' profiles the REML criterion around the REML estimates: the REML
    estimate lies inside, and the ML fit refuses it (one line)."""
    fit = fits["sleep_uncorr"]
    reml = fit.conf_int_varcorr(likelihood="reml")
    ml = fit.conf_int_varcorr()
    assert reml.attrs["likelihood"] == "REML" and ml.attrs["likelihood"] == "ML"
    assert np.all(reml["2.5 %"] < reml.sdcor) and np.all(reml.sdcor < reml["97.5 %"])
    # REML's SDs are larger than ML's, and so are its random-effect SD bounds
    assert np.all(reml["97.5 %"].to_numpy()[:2] > ml["97.5 %"].to_numpy()[:2])
    _, data = load_fixture("sleep_uncorr")
    with pytest.raises(InputError, match="likelihood must be"):
        fit_mixed("Reaction ~ Days + (Days || Subject)", data, reml=False).conf_int_varcorr(likelihood="reml")


def test_one_sided_boundary_rule(fits: dict, intervals: dict) -> None:
    """boundary='one-sided': an SD interval that reaches 0 gets the one-sided upper bound, where
    zeta = z_0.95 (the upper bound of the two-sided 90% interval); every other row is lme4's
    two-sided interval unchanged."""
    fit = fits["singular"]
    two = intervals["singular"]["0.95"]
    one = fit.conf_int_varcorr(boundary="one-sided")
    ninety = fit.conf_int_varcorr(level=0.90)
    at_zero = (two["2.5 %"] == 0.0) & two.var2.isna() & (two.grp != "Residual")
    assert at_zero.sum() == 1 and one.attrs["adjusted"] == list(np.flatnonzero(at_zero))
    np.testing.assert_array_equal(one["2.5 %"], two["2.5 %"])
    assert np.all(one.loc[at_zero, "97.5 %"] < two.loc[at_zero, "97.5 %"])
    np.testing.assert_allclose(one.loc[at_zero, "97.5 %"], ninety.loc[at_zero, "95 %"], rtol=1e-7)
    np.testing.assert_allclose(one.loc[~at_zero, "97.5 %"], two.loc[~at_zero, "97.5 %"], rtol=1e-7)
    # an interval away from 0 is left two-sided
    away = fits["sleep_uncorr"].conf_int_varcorr(boundary="one-sided")
    assert away.attrs["adjusted"] == []
    np.testing.assert_allclose(away["97.5 %"], intervals["sleep_uncorr"]["0.95"]["97.5 %"], rtol=1e-7)
    with pytest.raises(InputError, match="boundary must be"):
        fit.conf_int_varcorr(boundary="mixture")
    with pytest.raises(InputError, match="boundary must be"):
        fit.conf_int_varcorr(method="bootstrap", boundary="one-sided")


def test_boundary_cutoff_gives_nominal_coverage_in_the_local_model() -> None:
    """c(delta) of the boundary-aware rule: the chi-bar-square critical value z_0.95^2 at the
    boundary, chi-square(1)'s z_0.975^2 from delta = z_0.975 on, non-decreasing between; and the
    interval {v : LR(v) <= c(v / SE)} covers 95% in the model it is derived for (an estimate
    v + Z truncated at 0, SE = 1), where the two-sided interval covers up to 97.5%."""
    assert math.isclose(boundary_cutoff(0.0), 1.6448536269514722**2, rel_tol=1e-12)
    assert math.isclose(boundary_cutoff(2.5), 1.959963984540054**2, rel_tol=1e-12)
    cs = [boundary_cutoff(d) for d in np.linspace(0.01, 1.95, 40)]
    assert np.all(np.diff(cs) >= 0) and 2.70 < cs[0] < cs[-1] < 3.85
    rng = np.random.default_rng(5)
    Z = rng.standard_normal(400_000)
    for delta in (0.0, 0.3, 1.0, 1.8, 3.0):
        raw = delta + Z  # the unconstrained estimate; the ML estimate is max(raw, 0)
        lr = (delta - raw) ** 2 - (np.maximum(raw, 0.0) - raw) ** 2  # LR at the truth
        aware = float(np.mean(lr <= boundary_cutoff(delta)))
        two = float(np.mean(lr <= 1.959963984540054**2))
        assert abs(aware - 0.95) < 0.002, (delta, aware)
        if delta < 1.0:
            assert two > 0.965, (delta, two)


def _random_intercepts(seed: int) -> pd.DataFrame:
    """30 groups x 5 rows, a group SD of 0.35 against a residual SD of 1 (near the boundary)."""
    rng = np.random.default_rng(seed)
    g = np.repeat(np.arange(30), 5)
    y = 0.35 * rng.standard_normal(30)[g] + rng.standard_normal(150)
    return pd.DataFrame({"y": y, "g": [f"G{i:02d}" for i in g]})


@pytest.mark.parametrize("seed", [0, 3])
def test_boundary_aware_rule_near_the_boundary(seed: int) -> None:
    """boundary='boundary-aware' for an SD 1.7-2.5 standard errors from 0 (LR(0) = 3.04 and 6.08
    on these seeds): the lower bound solves zeta(L)^2 = c(L / SE) (SE from the profile's curvature
    at the two-sided upper bound), above lme4's (which, at LR(0) < 3.84, is 0); the upper bound,
    at which delta >= z, is lme4's."""
    data = _random_intercepts(seed)
    fit = fit_mixed("y ~ 1 + (1 | g)", data)
    two = fit.conf_int_varcorr()
    aware = fit.conf_int_varcorr(boundary="boundary-aware")
    assert aware.attrs["adjusted"] == [0]
    lo, hi = float(aware["2.5 %"].iloc[0]), float(aware["97.5 %"].iloc[0])
    assert float(two["2.5 %"].iloc[0]) < lo < float(aware["sdcor"].iloc[0])
    assert math.isclose(hi, float(two["97.5 %"].iloc[0]), rel_tol=1e-9)
    np.testing.assert_allclose(aware.iloc[1:, 4:6], two.iloc[1:, 4:6], rtol=1e-12)  # sigma: no boundary rule
    ml = fit_mixed("y ~ 1 + (1 | g)", data, reml=False)  # the profiled likelihood (as lme4's confint)
    p = varcorr_parameters(ml.design)[0]
    z0, zh, zt, zl = profile_zeta(ml.criterion, ml.solution.theta, ml.sigma, False, p, np.array([0.0, hi / 2, hi, lo]))
    assert abs(zt - 1.959963984540054) < 1e-5
    se = hi / math.sqrt(2 * (zt**2 - 2 * zh**2 + z0**2))
    assert 2.706 < z0**2 < 15.4 and lo / se < 1.96
    assert abs(zl**2 - boundary_cutoff(lo / se)) < 1e-5


def test_boundary_aware_rule_at_and_far_from_the_boundary(fits: dict, intervals: dict) -> None:
    """An SD estimated at (nearly) 0 keeps lme4's interval [0, U]: in the local model the unified
    interval of an estimate on the boundary is [0, z SE], as the two-sided one; so do SDs far
    from 0 (no row of the lme4 fixtures changes)."""
    for name in ("singular", "sleep_uncorr", "pastes"):
        aware = fits[name].conf_int_varcorr(boundary="boundary-aware")
        assert aware.attrs["adjusted"] == [], name
        np.testing.assert_allclose(aware[["2.5 %", "97.5 %"]], intervals[name]["0.95"][["2.5 %", "97.5 %"]],
                                   rtol=1e-9)


def test_a_far_trial_point_is_rejected_not_raised(fits: dict) -> None:
    """A line search of the profile may try a residual SD so large that sigma**2 overflows a
    Python float (OverflowError, seen in replicate 267 of validation/training_stability.py),
    and one so small that it underflows to 0 (ZeroDivisionError): such a point is
    'far' (deviance _FAR), as one where the criterion cannot be evaluated."""
    from theralens.model.profile import _FAR, _Profiler

    fit = fits[NAMES[0]]
    pr = _Profiler(fit.criterion, fit.solution.theta, fit.sigma, fit.reml)
    p = next(q for q in varcorr_parameters(pr.layout) if q.kind == "sd")
    x = pr.start(p)
    x[-1] = 460.0  # log sigma: sigma = 1e200, sigma**2 overflows
    dev, g = pr.deviance_and_gradient(p, x, pr.estimate(p))
    assert dev == _FAR and np.all(g == 0)
    assert pr.deviance(p, x, pr.estimate(p)) == _FAR
    x[-1] = -800.0  # sigma = exp(-800) underflows to 0 (replicate 531): v / sigma divides by zero
    dev, g = pr.deviance_and_gradient(p, x, pr.estimate(p))
    assert dev == _FAR and np.all(g == 0)
    assert pr.deviance(p, x, pr.estimate(p)) == _FAR
    x[-1] = float(np.log(fit.sigma))
    assert pr.deviance(p, x, pr.estimate(p)) < _FAR
