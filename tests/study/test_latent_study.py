"""The study under ``[design] decomposition`` = manifest / latent / both (issue #10)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import theralens as tl
from theralens.data.config import DesignConfig, config_from_dict
from theralens.errors import InputError
from theralens.simulation.generate import simulate_latent


@pytest.fixture(scope="module")
def sim():
    return simulate_latent(60, 5, icc=0.2, seed=21)


@pytest.fixture(scope="module")
def both(sim):
    return tl.analyze(sim.sessions, sim.therapists, sim.config())


def test_both_puts_latent_estimates_beside_the_manifest_ones(both) -> None:
    a1 = both.aim1.set_index("component")
    for col in ("latent_estimate", "latent_se", "latent_ci_low", "latent_ci_high", "reliability"):
        assert col in a1
    assert np.isfinite(a1[["latent_estimate", "latent_se"]].to_numpy(dtype=float)).all()
    # the manifest columns are the lmerTest fit, unchanged by the latent option
    assert a1.loc["within_therapist", "estimate"] == pytest.approx(
        float(both.main.fit.fixed_effects["alliance_within"]), rel=1e-12)
    # the within effect is not biased by the manifest decomposition: both agree closely
    w = a1.loc["within_therapist"]
    assert abs(w["latent_estimate"] - w["estimate"]) < 0.25 * w["se"]
    a3 = both.aim3.table
    assert {"latent_estimate", "latent_se"} <= set(a3.columns)
    assert set(a3["target"]) == {"within_slope", "between_association"}
    assert 0 < float(a1.loc["between_therapist", "reliability"]) < 1


def test_results_document_records_the_decomposition_and_the_latent_section(both) -> None:
    doc = both.to_dict()
    assert doc["decomposition"] == "both"
    lat = doc["latent"]
    assert lat["estimator"] == "ml"
    assert {r["component"] for r in lat["aim1"]} == {"within_therapist", "between_therapist", "contextual"}
    main = next(f for f in lat["fits"] if f["role"] == "main")
    assert main["converged"] and main["quadrature_change"] < 1e-6
    assert any("side by side" in n for n in doc["notes"])
    assert any("within x between" in n for n in doc["notes"])


def test_manifest_default_recommends_latent_when_caseload_means_are_unreliable(sim) -> None:
    cfg = dataclasses.replace(sim.config(), design=DesignConfig())
    r = tl.analyze(sim.sessions, sim.therapists, cfg)
    assert r.latent is None
    assert "latent_estimate" not in r.aim1
    assert any(w.startswith("Recommended: [design] decomposition") for w in r.warnings)


def test_decomposition_key_is_checked() -> None:
    assert config_from_dict({"design": {"decomposition": "latent"}}).design.decomposition == "latent"
    with pytest.raises(InputError, match='decomposition = "observed" is not allowed'):
        config_from_dict({"design": {"decomposition": "observed"}})


def test_latent_profiles_use_the_latent_therapist_slopes(sim) -> None:
    cfg = dataclasses.replace(sim.config(), design=DesignConfig(decomposition="latent"))
    r = tl.analyze(sim.sessions, sim.therapists, cfg)
    t = r.aim2.therapists
    lat = r.latent.therapists.set_index(["therapist", "process"])
    ok = t[t["estimable"]]
    assert len(ok) > 0
    for row in ok.head(10).itertuples():
        assert row.slope == pytest.approx(lat.loc[(row.therapist, row.process), "slope"], rel=1e-12)
        assert 0.0 <= row.prob_stronger_than_average <= 1.0
    assert any("profiles come from the latent model" in n for n in r.notes)
    # the profile pages are drawn from these slopes
    assert len(r.therapists()) == r.table.counts["therapists"]


def _fake_bayes(converged: bool):
    """A stand-in for theralens.latent.bayes.fit_bayes with the fields the adapter reads."""
    import types

    import pandas as pd

    def fit(table, moderators=None, *, seed=1, **sampler):
        p = table.processes[0]
        label = table.labels.get(p, p)
        effects = pd.DataFrame([{"process": label, "component": c, "estimate": 0.1 * k, "se": 0.05,
                                 "ci_low": 0.0, "ci_high": 0.2} for k, c in
                                enumerate(("within_patient", "between_patient", "between_therapist"))])
        contextual = pd.DataFrame([{"process": label, "component": "between_therapist", "versus": "within_patient",
                                    "estimate": 0.2, "se": 0.06, "ci_low": 0.1, "ci_high": 0.3}])
        ther = pd.DataFrame([{"process": label, "therapist": "T01", "slope": 0.1, "n_patients": 3}])
        return types.SimpleNamespace(
            effects=effects, contextual=contextual, moderators=pd.DataFrame(columns=["process", "moderator",
                                                                                      "column", "target"]),
            therapists=ther, slope_sd=pd.DataFrame([{"process": label, "estimate": 0.1}]), converged=converged,
            messages=["converged" if converged else "did not converge: R-hat 1.3"], chains=2, draws=sampler.get(
                "draws", 1000), warmup=1000, seed=seed, max_r_hat=1.0 if converged else 1.3, min_ess_bulk=800.0,
            divergences=0, priors=["b ~ Normal(0, 2.5 sd_y / sd_x)"])
    return fit


@pytest.mark.parametrize("converged", [True, False])
def test_session_design_latent_is_bayesian_and_an_unconverged_run_adds_nothing(monkeypatch, converged) -> None:
    import theralens.latent.bayes as bayes
    from theralens.data.decompose import session_level
    from theralens.data.validate import validate_sessions
    from theralens.study.latent import latent_session_aims

    monkeypatch.setattr(bayes, "fit_bayes", _fake_bayes(converged))
    sim = tl.simulate("coyne2022", seed=4, design="session", n_therapists=12, n_patients=48)
    cfg = dataclasses.replace(sim.config(moderators=()), design=DesignConfig(level="session"))
    table = session_level(validate_sessions(sim.sessions, cfg), cfg)
    res = latent_session_aims(table, None, table.labels, seed=3, draws=50)
    assert res.estimator == "bayes" and res.fits["main"].draws == 50
    assert len(res.therapists) == 1 and bool(res.therapists["estimable"].iloc[0])
    if converged:
        assert set(res.aim1["component"]) == {"within_patient", "between_patient", "between_therapist"}
        assert set(res.aim1["process"]) == {table.processes[0]}  # stable name, label beside it
        assert not res.warnings
    else:
        assert res.aim1.empty and any("not added to the aim tables" in w for w in res.warnings)


def test_jackknife_bias_correction_replaces_the_latent_estimates_and_says_so(sim, both, tmp_path) -> None:
    from theralens.data.config import InferenceConfig

    cfg = dataclasses.replace(sim.config(), inference=InferenceConfig(latent_bias_correction="jackknife"))
    r = tl.analyze(sim.sessions, sim.therapists, cfg)
    assert r.latent.bias_correction == "jackknife"
    jk = r.latent.fits["main"].jackknife().set_index("component")
    a1 = r.latent.aim1.set_index("component")
    ml = both.latent.aim1.set_index("component")  # the same study without the correction
    J = r.latent.fits["main"].stats.J
    for comp in ("within_therapist", "between_therapist", "contextual"):
        row = a1.loc[comp]
        assert row["estimate"] == pytest.approx(jk.loc[comp, "jackknife_estimate"], rel=1e-12)
        assert row["se"] == pytest.approx(jk.loc[comp, "se"], rel=1e-12)
        assert row["ml_estimate"] == pytest.approx(ml.loc[comp, "estimate"], rel=1e-10)
        assert row["ml_estimate"] - row["estimate"] == pytest.approx(row["jackknife_bias"], abs=1e-12)
        assert row["df"] == J - 1
        assert row["p"] == pytest.approx(2 * __import__("scipy").stats.t.sf(abs(row["t"]), J - 1), rel=1e-12)
    # aim 3's moderator fits are corrected by their own jackknife
    a3 = r.latent.aim3
    assert {"ml_estimate", "jackknife_bias", "df"} <= set(a3.columns)
    assert np.isfinite(a3["estimate"].to_numpy(dtype=float)).all()
    assert (a3["estimate"] != a3["ml_estimate"]).all()
    # the side-by-side columns carry the corrected estimate; results.json and the notes say which
    assert r.aim1.set_index("component").loc["between_therapist", "latent_estimate"] == pytest.approx(
        a1.loc["between_therapist", "estimate"], rel=1e-12)
    doc = r.to_dict()
    assert doc["latent"]["bias_correction"] == "jackknife" and both.to_dict()["latent"]["bias_correction"] == "none"
    assert any("delete-one-therapist jackknife" in n for n in doc["notes"])
    # the report's tables and methods paragraph name the estimator
    from theralens.report.html import write_report

    write_report(r, tmp_path / "report")
    html = (tmp_path / "report" / "report.html").read_text(encoding="utf-8")
    assert "ML, jackknife bias-corrected, jackknife SE and t interval" in html
    assert "bias-corrected by the delete-one-therapist jackknife (Quenouille, 1956" in html
    assert "Quenouille, M. H. (1956)" in html


def test_latent_bias_correction_key_is_checked() -> None:
    assert config_from_dict({"inference": {"latent_bias_correction": "jackknife"}}).inference.latent_bias_correction \
        == "jackknife"
    with pytest.raises(InputError, match='latent_bias_correction = "bootstrap" is not allowed'):
        config_from_dict({"inference": {"latent_bias_correction": "bootstrap"}})
    with pytest.raises(InputError, match="the session design's latent model is Bayesian"):
        config_from_dict({"design": {"level": "session", "decomposition": "both"},
                          "inference": {"latent_bias_correction": "jackknife"}})
