"""The ddf choice of fit_mixed / fit_design / fit_stats (theralens.model.ddf)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from lme4ref import FIXTURES, load_fixture
from scipy import stats

from theralens.errors import InputError
from theralens.model.ddf import DDF_METHODS, check_ddf, ddf_reference
from theralens.model.fit import fit_mixed, fit_stats
from theralens.model.stats import SufficientStats


@pytest.fixture(scope="module")
def sleep():
    ref, data = load_fixture("sleep_uncorr")
    return ref, data, fit_mixed(ref["formula"], data)


def test_default_is_satterthwaite_as_lmertest(sleep):
    ref, _, fit = sleep
    assert fit.ddf == "satterthwaite"
    df_ref = np.array([ref["REML"]["satterthwaite_df"][n] for n in fit.fixed_names])
    assert np.allclose(fit.df.to_numpy(), df_ref, rtol=1e-4)
    assert "t-tests use Satterthwaite's method" in str(fit.summary()).splitlines()[0]


def test_residual_and_asymptotic(sleep):
    _, _, fit = sleep
    res = fit.with_ddf("residual")
    k = len(fit.fixed_names)
    assert np.all(res.df.to_numpy() == fit.nobs - k)
    assert np.array_equal(res.std_errors.to_numpy(), fit.std_errors.to_numpy())  # unadjusted
    t = res.t_values.to_numpy()
    assert np.allclose(res.p_values.to_numpy(), 2 * stats.t.sf(np.abs(t), fit.nobs - k), rtol=1e-12)
    asy = fit.with_ddf("asymptotic")
    assert np.all(np.isinf(asy.df.to_numpy()))
    assert np.allclose(asy.p_values.to_numpy(), 2 * stats.norm.sf(np.abs(t)), rtol=1e-12)
    ci = asy.conf_int(0.95)
    z = stats.norm.ppf(0.975)
    assert np.allclose(ci["97.5 %"].to_numpy(), fit.fixed_effects.to_numpy() + z * fit.std_errors.to_numpy())
    assert asy.contrast(np.eye(k)[1])["df"] == np.inf
    assert res.contrast(np.eye(k)[1])["df"] == fit.nobs - k
    assert "residual" in str(res.summary()).splitlines()[0]


def test_with_ddf_does_not_refit_and_equals_a_fit_with_that_ddf(sleep):
    ref, data, fit = sleep
    kr = fit.with_ddf("Kenward-Roger")  # lmerTest's spelling
    assert kr.ddf == "kenward-roger" and fit.ddf == "satterthwaite"
    assert kr.solution is fit.solution and kr.criterion is fit.criterion
    direct = fit_mixed(ref["formula"], data, ddf="kenward-roger")
    assert np.allclose(kr.df.to_numpy(), direct.df.to_numpy(), rtol=1e-8)
    assert np.allclose(kr.std_errors.to_numpy(), direct.std_errors.to_numpy(), rtol=1e-8)
    # the SEs are pbkrtest's adjusted ones (in this balanced design equal to the unadjusted, as
    # pbkrtest's documentation notes for sleepstudy) and vcov is unchanged
    kr_ref = json.loads((FIXTURES / "kr" / "sleep_uncorr.json").read_text())
    se_ref = np.array([kr_ref["adjusted_std_errors"][n] for n in fit.fixed_names])
    assert np.allclose(kr.std_errors.to_numpy(), se_ref, rtol=1e-4)
    assert np.array_equal(kr.vcov.to_numpy(), fit.vcov.to_numpy())
    ci = kr.conf_int(0.9)
    q = stats.t.ppf(0.95, kr.df.to_numpy())
    assert np.allclose(ci["5 %"].to_numpy(), kr.fixed_effects.to_numpy() - q * kr.std_errors.to_numpy())


def test_unknown_ddf_is_one_line_with_a_suggestion(sleep):
    ref, data, fit = sleep
    with pytest.raises(InputError) as err:
        fit_mixed(ref["formula"], data, ddf="kenward")
    msg = str(err.value)
    assert "\n" not in msg and 'did you mean "kenward-roger"' in msg
    assert all(m in msg for m in DDF_METHODS)
    with pytest.raises(InputError, match="satterthwaite"):
        fit.with_ddf("lme4")
    with pytest.raises(InputError):
        check_ddf(None)
    assert check_ddf("Kenward_Roger") == "kenward-roger"
    assert ddf_reference("kenward-roger") == "Kenward-Roger (Kenward & Roger, 1997)"


def test_kenward_roger_is_refused_for_ml_fits_as_lmertest(sleep):
    ref, data, _ = sleep
    with pytest.raises(InputError, match="REML") as err:
        fit_mixed(ref["formula"], data, reml=False, ddf="kenward-roger")
    assert "\n" not in str(err.value)
    ml = fit_mixed(ref["formula"], data, reml=False)
    with pytest.raises(InputError, match="REML"):
        ml.with_ddf("kenward-roger")
    with pytest.raises(InputError, match="REML"):
        _ = ml.vcov_adjusted


def test_fit_stats_takes_ddf():
    ref = json.loads((FIXTURES / "kr" / "factors.json").read_text())
    _, data = load_fixture("factors")
    fit = fit_stats(SufficientStats.from_frame(ref["formula"], data), ddf="kenward-roger")
    df_ref = np.array([ref["kenward_roger_df"][n] for n in fit.fixed_names])
    assert np.allclose(fit.df.to_numpy(), df_ref, rtol=1e-6)


def test_a_kenward_roger_that_cannot_be_computed_is_nan_and_said(sleep, monkeypatch):
    import theralens.model.fit as fit_module

    def singular(*args, **kwargs):
        raise np.linalg.LinAlgError("Singular matrix")

    monkeypatch.setattr(fit_module, "kenward_roger", singular)
    _, _, fit = sleep
    kr = fit.with_ddf("kenward-roger")
    assert np.all(np.isnan(kr.df.to_numpy())) and np.all(np.isnan(kr.p_values.to_numpy()))
    assert np.all(np.isnan(kr.std_errors.to_numpy()))
    assert any("Kenward-Roger" in n and "NaN" in n for n in kr.notes)
    assert not any("Kenward-Roger" in n for n in fit.notes)  # the original fit is untouched
