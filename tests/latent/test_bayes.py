"""Bayesian latent decomposition (theralens.latent.bayes): recovery of known truth in the
patient design, a converging session-design fit with its diagnostics and a too-short run of it
that says it did not converge, and the one-line error without the optional extra.

The fits need the optional extra (numpyro, jax, arviz: ``pip install 'theralens[bayes]'``);
without it those tests skip with the reason. ``make test`` installs it.
"""

from __future__ import annotations

import sys

import numpy as np
import pandas as pd
import pytest

from theralens.data.config import ColumnsConfig, DesignConfig, StudyConfig
from theralens.data.decompose import patient_level, session_level
from theralens.data.validate import validate_sessions
from theralens.errors import InputError
from theralens.latent.bayes import fit_bayes
from theralens.simulation.generate import simulate

ONE_PROCESS = ColumnsConfig(process=("alliance",))


def _needs_extra() -> None:
    for name in ("numpyro", "jax", "arviz"):
        pytest.importorskip(name, reason=f"{name} is not installed (optional extra: pip install 'theralens[bayes]')")


def _latent_patient_study(seed: int, J: int = 150) -> tuple[pd.DataFrame, dict[str, float]]:
    """Sessions of the latent patient-design model (bayes module docstring) with one process.

    Each patient has two outcome assessments (baseline, final) and one process rating, so
    the patient's process score X_ij is that rating. Truth on the latent scale."""
    rng = np.random.default_rng(seed)
    truth = {"kappa": 4.0, "tau_x": 0.6, "sigma_x": 0.7, "within": -0.30, "between": -0.80, "slope_sd": 0.30,
             "intercept_sd": 0.25, "corr": 0.2, "baseline": 0.5, "g00": 1.0, "residual_sd": 0.4}
    n = rng.integers(5, 9, J)
    tj = np.repeat(np.arange(J), n)
    mu = rng.normal(0.0, truth["tau_x"], J)
    cov = np.array([[1.0, truth["corr"]], [truth["corr"], 1.0]]) * np.outer(
        [truth["intercept_sd"], truth["slope_sd"]], [truth["intercept_sd"], truth["slope_sd"]])
    u = rng.multivariate_normal(np.zeros(2), cov, J)
    w = rng.normal(0.0, truth["sigma_x"], len(tj))
    x = truth["kappa"] + mu[tj] + w
    y0 = rng.normal(0.0, 1.0, len(tj))
    y1 = (truth["g00"] + truth["baseline"] * y0 + truth["between"] * mu[tj] + (truth["within"] + u[tj, 1]) * w
          + u[tj, 0] + rng.normal(0.0, truth["residual_sd"], len(tj)))
    ids = [f"P{i:05d}" for i in range(len(tj))]
    ther = [f"T{j:03d}" for j in tj]
    rows = pd.DataFrame({"therapist": ther * 2, "patient": ids * 2, "session": [1] * len(tj) + [2] * len(tj),
                         "outcome": np.r_[y0, y1], "alliance": np.r_[x, np.full(len(tj), np.nan)]})
    return rows, truth


def test_patient_design_recovers_latent_truth():
    """~150 therapists x 5-8 patients: b_within, b_between and the slope SD lie in their 95%
    intervals, while the observed caseload means attenuate the between effect (Luedtke et al. 2008)."""
    _needs_extra()
    # seed 12: a sample whose ML estimates (theralens.latent.ml) lie within 1.4 SE of the truth
    # (with seed 11 the sample's between effect is 2.2 SE away, and ML and Bayes agree on it)
    sessions, truth = _latent_patient_study(seed=12)
    config = StudyConfig(columns=ONE_PROCESS)
    table = patient_level(validate_sessions(sessions, config), config)
    fit = fit_bayes(table, seed=3, chains=2, warmup=1000, draws=1000)
    assert fit.converged, fit.messages
    eff = fit.effects.set_index("component")
    for comp, true in (("within_therapist", truth["within"]), ("between_therapist", truth["between"])):
        assert eff.loc[comp, "ci_low"] < true < eff.loc[comp, "ci_high"], (comp, eff.loc[comp].to_dict())
    sd = fit.slope_sd.iloc[0]
    assert sd["ci_low"] < truth["slope_sd"] < sd["ci_high"]
    assert sd["ci_low"] > 0.05  # the slope variance is detected, not just covered by a wide interval
    # the manifest between coefficient is attenuated toward the within effect; the latent one is not
    lam = float(table.reliability_summary["mean_reliability"].iloc[0])
    manifest = lam * truth["between"] + (1 - lam) * truth["within"]
    assert abs(eff.loc["between_therapist", "estimate"] - truth["between"]) < abs(manifest - truth["between"])
    prior_text = " ".join(fit.priors)
    assert "Normal(0, 2.5" in prior_text and "LKJ(2)" in prior_text and "Half-Normal" in prior_text
    # therapist profiles from the draws
    ther = fit.therapists
    assert len(ther) == table.counts["therapists"]
    assert ((ther["prob_stronger_than_average"] >= 0) & (ther["prob_stronger_than_average"] <= 1)).all()
    assert (ther["rank_low"] <= ther["rank_median"]).all() and (ther["rank_median"] <= ther["rank_high"]).all()
    assert ther["rank_high"].max() <= len(ther) and ther["rank_low"].min() >= 1
    # benefit = a decrease (higher outcome is worse): the most negative slope is ranked near the top
    best = ther.loc[ther["slope"].idxmin()]
    assert best["prob_stronger_than_average"] > 0.5 and best["rank_median"] <= len(ther) / 4
    contextual = fit.contextual.iloc[0]
    assert contextual["estimate"] == pytest.approx(eff.loc["between_therapist", "estimate"]
                                                   - eff.loc["within_therapist", "estimate"], abs=1e-9)


def _session_table():
    study = simulate("coyne2022", seed=5, design="session", n_therapists=40, n_patients=240, caseload_shape=None)
    config = StudyConfig(columns=ONE_PROCESS, design=DesignConfig(level="session"))
    data = validate_sessions(study.sessions, config)
    return session_level(data, config), study


def test_session_design_converges_and_reports_diagnostics_and_a_short_run_does_not():
    _needs_extra()
    table, study = _session_table()
    moderators = study.therapists[["therapist", "self_rated_alliance_skill"]].copy()
    fit = fit_bayes(table, moderators, seed=2, chains=2, warmup=1000, draws=1000)
    assert fit.converged, fit.messages
    assert fit.messages[0].startswith("Converged")
    assert fit.divergences == 0 and fit.max_r_hat <= 1.01 and min(fit.min_ess_bulk, fit.min_ess_tail) >= 400
    assert set(fit.effects["component"]) == {"within_patient", "between_patient", "between_therapist"}
    assert {"r_hat", "ess_bulk", "ess_tail", "q2.5", "q97.5"} <= set(fit.summary.columns)
    assert fit.summary["r_hat"].max() == pytest.approx(fit.max_r_hat)
    assert set(fit.moderators["target"]) == {"within_slope", "between_association"}
    # the simulator's truth is that of the manifest decomposition, so only the lag's sign is checked
    lag = fit.adjustments.set_index("term").loc["outcome"]
    assert lag["ci_low"] > 0.5
    assert fit.therapists["therapist"].nunique() == table.counts["therapists"]
    assert any("patient intercept" in p for p in fit.priors)
    assert fit.seed == 2 and fit.chains == 2 and fit.draws == 1000 and fit.seconds > 0

    # the same model run far too short says that it did not converge and shows no table (in this
    # test, not its own: a fit's first run in a process costs about 20 s of compilation)
    short = fit_bayes(table, moderators, seed=1, chains=2, warmup=5, draws=5)
    assert not short.converged
    assert short.messages[0].startswith("The sampler did not converge:")
    assert "ESS" in short.messages[0] and "not an answer" in short.messages[0]
    assert "did not converge" in str(short) and "ci_low" not in str(short)  # no table behind which to hide


def test_missing_extra_is_one_line_with_the_install_command(monkeypatch):
    table, _ = _session_table()
    monkeypatch.setitem(sys.modules, "numpyro", None)  # import numpyro now raises ImportError
    with pytest.raises(InputError) as err:
        fit_bayes(table)
    message = str(err.value)
    assert "numpyro" in message and "pip install 'theralens[bayes]'" in message and "\n" not in message


def test_bad_sampler_settings_are_refused():
    table, _ = _session_table()
    with pytest.raises(InputError, match="draws must be a whole number of at least 2"):
        fit_bayes(table, draws=1)
