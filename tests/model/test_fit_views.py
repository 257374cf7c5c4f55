"""How a fit shows itself and what a user does with it next (model/fit.py presentation):
repr and notebook HTML, the summary object, lme4's interval names, statsmodels' aliases and
predict(newdata) against fitted() and X beta."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

import theralens as tl
from theralens.model.fit import MixedResult

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


@pytest.fixture(scope="module")
def hsb() -> pd.DataFrame:
    return pd.read_csv(FIXTURES / "hsb82.csv")


@pytest.fixture(scope="module")
def slopes(hsb) -> MixedResult:
    return tl.fit_mixed("mAch ~ meanses*cses + catholic*cses + (cses | school)", hsb)


@pytest.fixture(scope="module")
def therapy() -> pd.DataFrame:
    return pd.read_csv(FIXTURES / "therapy3.csv")


@pytest.fixture(scope="module")
def nested(therapy) -> MixedResult:
    return tl.fit_mixed("outcome ~ alliance + (1 + alliance | therapist) + (1 | therapist:patient)", therapy)


def test_repr_is_a_few_readable_lines(slopes):
    text = repr(slopes)
    lines = text.splitlines()
    assert 3 <= len(lines) <= 6
    assert "Formula: mAch ~ meanses*cses + catholic*cses + (cses | school)" in lines
    assert f"{slopes.nobs} observations; groups: school 160" in text
    assert f"REML criterion {slopes.reml_criterion:.4f}" in text and "converged" in text and "singular" in text
    assert "array" not in text and "[" not in text and "theta" not in text  # no optimizer arrays


def test_repr_of_an_ml_fit_and_a_singular_fit():
    sing = tl.fit_mixed("y ~ x + (1 | g)", pd.read_csv(FIXTURES / "singular.csv"), reml=False)
    text = repr(sing)
    assert "fit by ML" in text and f"deviance {sing.deviance:.4f}" in text
    assert ("singular" in text.split(";")[-1]) and (", singular" in text) == sing.singular


def test_summary_object_text_tables_and_html(slopes):
    s = slopes.summary()
    assert str(s) == s.as_text() and repr(s) == s.as_text()
    assert "REML criterion at convergence" in s and "Fixed effects:" in s  # `in` searches the text
    assert set(s.tables) == {"fit", "groups", "random_effects", "fixed_effects"}
    coef = s.tables["fixed_effects"]
    pd.testing.assert_series_equal(coef["Estimate"], slopes.fixed_effects, check_names=False)
    pd.testing.assert_series_equal(coef["Pr(>|t|)"], slopes.p_values, check_names=False)
    assert coef.to_string(float_format=lambda v: f"{v:.4g}") in s.as_text()  # the text shows the table
    pd.testing.assert_frame_equal(s.tables["random_effects"], slopes.varcorr)
    fit = s.tables["fit"].set_index("statistic")["value"]
    assert fit["REML criterion"] == pytest.approx(slopes.reml_criterion) and fit["observations"] == slopes.nobs
    assert int(s.tables["groups"].loc["school", "groups"]) == 160
    html = s.as_html()
    assert html == s._repr_html_() == slopes._repr_html_()
    assert html.count("<table") == 4 and "meanses:cses" in html


def test_html_escapes_the_formula_and_names(hsb):
    m = tl.fit_mixed("mAch ~ I(ses > 0) + (1 | school)", hsb)
    html = m._repr_html_()
    assert "I(ses &gt; 0)" in html and "I(ses > 0)" not in html
    assert "<script" not in html


def test_conf_int_names_follow_lme4(slopes):
    for level, names in [(0.95, ["2.5 %", "97.5 %"]), (0.90, ["5 %", "95 %"]), (0.99, ["0.5 %", "99.5 %"])]:
        ci = slopes.conf_int(level)
        assert list(ci.columns) == names
        q = stats.t.ppf(0.5 + level / 2, slopes.df.to_numpy())
        np.testing.assert_allclose(ci[names[0]], slopes.fixed_effects - q * slopes.std_errors, rtol=1e-12)
        np.testing.assert_allclose(ci[names[1]], slopes.fixed_effects + q * slopes.std_errors, rtol=1e-12)
    narrow, wide = slopes.conf_int(0.5), slopes.conf_int(0.999)
    assert (narrow["25 %"] > wide["0.05 %"]).all() and (narrow["75 %"] < wide["99.95 %"]).all()
    for bad in (0.0, 1.0, 95):
        with pytest.raises(tl.InputError, match="level must lie between 0 and 1"):
            slopes.conf_int(bad)


def test_statsmodels_aliases_are_the_same_series_and_clash_with_nothing(slopes):
    pd.testing.assert_series_equal(slopes.params, slopes.fixed_effects)
    pd.testing.assert_series_equal(slopes.bse, slopes.std_errors)
    pd.testing.assert_series_equal(slopes.tvalues, slopes.t_values)
    pd.testing.assert_series_equal(slopes.pvalues, slopes.p_values)
    fields = {f.name for f in dataclasses.fields(MixedResult)}
    assert fields.isdisjoint({"params", "bse", "tvalues", "pvalues"})


def test_predict_on_the_fitted_data(slopes, hsb):
    fitted = slopes.fitted()
    xb = slopes.design.X @ slopes.solution.beta
    own = slopes.predict(hsb)
    assert own.index.equals(hsb.index) and own.attrs["new_levels"] == {"school": 0}
    np.testing.assert_allclose(own.loc[fitted.index], fitted, rtol=0, atol=1e-10)
    np.testing.assert_allclose(slopes.predict(hsb, include_random=False).loc[fitted.index], xb, rtol=0, atol=1e-10)
    np.testing.assert_allclose(slopes.predict(), fitted, rtol=0, atol=1e-12)
    np.testing.assert_allclose(slopes.predict(include_random=False), xb, rtol=0, atol=1e-12)
    assert not np.allclose(fitted, xb)  # the random part matters here


def test_predict_codes_factors_as_the_fit_did(hsb):
    """A subset with one level of a factor is coded with the fit's reference level."""
    m = tl.fit_mixed("mAch ~ ses + sx + minrty + (1 | school)", hsb)
    sub = hsb[(hsb["sx"] == "Male") & (hsb["minrty"] == "Yes")].head(7)
    assert len(sub) == 7
    np.testing.assert_allclose(m.predict(sub), m.fitted().loc[sub.index], rtol=0, atol=1e-10)


def test_predict_new_levels_get_zero_random_effects(nested, therapy):
    """lme4's allow.new.levels: an unseen therapist gets X beta; an unseen patient of a known
    therapist gets X beta plus that therapist's effects only."""
    rows = therapy.head(3).copy()
    xb = nested.predict(rows, include_random=False)
    new_t = rows.assign(therapist=rows["therapist"].astype(str) + "-new")
    got = nested.predict(new_t)
    np.testing.assert_allclose(got, xb, rtol=0, atol=1e-12)
    assert got.attrs["new_levels"] == {"therapist:patient": 3, "therapist": 3}
    new_p = rows.assign(patient=-1)
    re = nested.random_effects("therapist").set_index(["level", "term"])["estimate"]
    t = str(rows["therapist"].iloc[0])
    expect = xb + re[(t, "(Intercept)")] + re[(t, "alliance")] * rows["alliance"]
    got = nested.predict(new_p)
    np.testing.assert_allclose(got, expect, rtol=0, atol=1e-12)
    assert got.attrs["new_levels"] == {"therapist:patient": 3, "therapist": 0}
    fitted = nested.fitted()
    np.testing.assert_allclose(nested.predict(rows), fitted.loc[rows.index], rtol=0, atol=1e-10)


def test_predict_missing_values_and_bad_newdata(nested, therapy):
    rows = therapy.head(4).copy()
    rows.loc[rows.index[1], "alliance"] = np.nan
    got = nested.predict(rows)
    assert np.isnan(got.iloc[1]) and np.isfinite(got.drop(got.index[1])).all()
    with pytest.raises(tl.InputError, match="newdata has no column 'alliance'"):
        nested.predict(therapy.drop(columns="alliance"))
    with pytest.raises(tl.InputError, match="must be a pandas DataFrame"):
        nested.predict(therapy.to_numpy())


def test_population_prediction_needs_no_grouping_columns(nested, therapy):
    """As lme4's re.form = NA: X beta from the fixed part's columns alone."""
    rows = therapy.head(5)
    bare = rows[["alliance"]]
    np.testing.assert_allclose(nested.predict(bare, include_random=False),
                               nested.predict(rows, include_random=False), rtol=0, atol=1e-12)
    with pytest.raises(tl.InputError, match="newdata has no column 'therapist'"):
        nested.predict(bare)
