"""The study under ``[design] decomposition`` = manifest / latent / both (issue #10)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import theralens as tl
from theralens.data.config import DesignConfig, config_from_dict
from theralens.errors import InputError
from theralens.study.simulate import simulate_latent


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
