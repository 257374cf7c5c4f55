"""Likelihood-ratio tests against lme4's anova() (tests/fixtures/lrt.json) and the
chi-bar-square reference distributions."""

from __future__ import annotations

import json

import pytest
from lme4ref import FIXTURES, load_fixture
from scipy import stats

import theralens as tl
from theralens.errors import ModelSpecError
from theralens.model.chibar import independent_mixture, slope_mixture

LRT = json.loads((FIXTURES / "lrt.json").read_text())


@pytest.mark.parametrize("case", ["hsb82_random_slope", "therapy3_expectancy_slope"])
def test_random_slope_lrt_matches_anova_statistic(case: str) -> None:
    c = LRT[case]
    _, data = load_fixture(c["data"].removesuffix(".csv"))
    m0 = tl.fit_mixed(c["formula_reduced"], data)
    m1 = tl.fit_mixed(c["formula_full"], data)
    res = tl.lrt(m0, m1)
    assert res.statistic == pytest.approx(c["chisq"], abs=2e-3)
    assert res.df == c["df"]
    assert res.method == "REML"
    assert "chi-bar-square" in res.reference
    # boundary mixture 0.5 chi2(df-1) + 0.5 chi2(df): never larger than R's naive p
    expected = 0.5 * stats.chi2.sf(res.statistic, c["df"] - 1) + 0.5 * stats.chi2.sf(res.statistic, c["df"])
    assert res.p_value == pytest.approx(expected, rel=1e-10)
    assert res.p_value <= c["p"] + 1e-12


def test_fixed_effect_lrt_refits_by_ml() -> None:
    c = LRT["hsb82_fixed_catholic_cses"]
    _, data = load_fixture("hsb82")
    m0 = tl.fit_mixed(c["formula_reduced"], data)
    m1 = tl.fit_mixed(c["formula_full"], data)
    res = tl.lrt(m0, m1)
    assert res.refitted and res.method == "ML"
    assert res.statistic == pytest.approx(c["chisq"], abs=2e-3)
    assert res.df == c["df"]
    assert res.p_value == pytest.approx(c["p"], rel=1e-3)


def test_invalid_comparisons_are_refused() -> None:
    _, data = load_fixture("hsb82")
    a = tl.fit_mixed("mAch ~ ses + (1 | school)", data)
    b = tl.fit_mixed("mAch ~ cses + (cses | school)", data)
    with pytest.raises(ModelSpecError, match="both fixed and random"):
        tl.lrt(a, b)
    ml = tl.fit_mixed("mAch ~ ses + (ses | school)", data, reml=False)
    with pytest.raises(ModelSpecError, match="REML"):
        tl.lrt(a, ml)
    with pytest.raises(ModelSpecError, match="nothing to test"):
        tl.lrt(a, a)


def test_mixture_weights() -> None:
    assert slope_mixture(1).sf(0.0) == 1.0
    assert slope_mixture(1).sf(2.71) == pytest.approx(0.5 * stats.chi2.sf(2.71, 1))
    mix = independent_mixture(2)
    assert mix.weights == (0.25, 0.5, 0.25)
    assert mix.sf(3.0) == pytest.approx(0.5 * stats.chi2.sf(3, 1) + 0.25 * stats.chi2.sf(3, 2))
