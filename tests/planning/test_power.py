"""power(): reproducible whatever the workers, failures out of the denominator, MC SE."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import theralens.planning.replicate as replicate_module
from theralens.errors import InputError
from theralens.planning import PowerResult, power
from theralens.planning.result import mc_se, wilson_interval

SMALL = {"therapists": [10, 16], "patients_per_therapist": [4], "nsim": 10, "seed": 5, "progress": False}


@pytest.fixture(scope="module")
def one_worker() -> PowerResult:
    return power(workers=1, chunk_size=3, **SMALL)



def test_same_table_with_two_workers(one_worker: PowerResult) -> None:
    two = power(workers=2, chunk_size=2, **SMALL)
    pd.testing.assert_frame_equal(two.table, one_worker.table)
    pd.testing.assert_frame_equal(two.replicates, one_worker.replicates)


def test_same_table_on_a_dask_cluster(one_worker: PowerResult) -> None:
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cl:
        on_dask = power(scheduler=cl.scheduler_address, **SMALL)
    assert on_dask.execution["executor"] == "dask"
    pd.testing.assert_frame_equal(on_dask.table, one_worker.table)


def test_table_columns_and_mc_se(one_worker: PowerResult) -> None:
    t = one_worker.table
    assert len(t) == 2 * len(one_worker.tests)
    assert (t["n_usable"] + t["n_failed"] == t["nsim"]).all()
    ok = t["n_usable"] > 0
    np.testing.assert_allclose(t.loc[ok, "power"], t.loc[ok, "rejections"] / t.loc[ok, "n_usable"])
    np.testing.assert_allclose(t.loc[ok, "mc_se"],
                               np.sqrt(t.loc[ok, "power"] * (1 - t.loc[ok, "power"]) / t.loc[ok, "n_usable"]))
    assert mc_se(0.5, 100) == pytest.approx(0.05)
    assert mc_se(0.2, 400) == pytest.approx(0.02)
    assert mc_se(0.0, 10) == 0.0
    assert np.isnan(mc_se(0.3, 0))
    low, high = wilson_interval(t.loc[ok, "rejections"].to_numpy(), t.loc[ok, "n_usable"].to_numpy())
    np.testing.assert_allclose(t.loc[ok, "power_low"], low)
    np.testing.assert_allclose(t.loc[ok, "power_high"], high)
    assert ((t.loc[ok, "power_low"] <= t.loc[ok, "power"]) & (t.loc[ok, "power"] <= t.loc[ok, "power_high"])).all()
    assert "power [95% Wilson interval]" in one_worker.summary()
    first = t.iloc[0]
    assert f"{first['power']:.2f} [{first['power_low']:.2f}, {first['power_high']:.2f}]" in one_worker.summary()
    tables = one_worker.summary().tables  # the summary object: its tables as DataFrames, and HTML
    assert list(tables) == ["power", "95% Wilson interval", "usable share", "table"]
    assert tables["power"].shape == (len(one_worker.tests), len(one_worker.cells))
    assert "<table" in one_worker.summary().as_html()


def test_wilson_interval_at_zero_one_and_inside() -> None:
    z = 1.959963984540054
    # no rejection in 20: [0, z^2 / (n + z^2)], not the empty [0, 0] of power +- z MC SE
    assert wilson_interval(0, 20) == (0.0, pytest.approx(z**2 / (20 + z**2), rel=1e-12))
    # every replicate rejects: the mirror image
    assert wilson_interval(20, 20) == (pytest.approx(20 / (20 + z**2), rel=1e-12), 1.0)
    # interior: a textbook value (Newcombe 1998, Stat Med 17:857, table I: 81/263 -> 0.2553 to 0.3662)
    low, high = wilson_interval(81, 263)
    assert (round(low, 4), round(high, 4)) == (0.2553, 0.3662)
    # arrays, and nothing usable
    lo, hi = wilson_interval(np.array([0, 5, 10]), np.array([10, 10, 10]))
    np.testing.assert_allclose(lo[[0]], [0.0])
    np.testing.assert_allclose(hi[[2]], [1.0])
    assert lo[1] < 0.5 < hi[1] and hi[1] - 0.5 == pytest.approx(0.5 - lo[1])
    assert all(np.isnan(v) for v in wilson_interval(0, 0))


def test_failed_replicates_leave_the_denominator(monkeypatch: pytest.MonkeyPatch) -> None:
    real = replicate_module.fit_design
    calls = {"reduced": 0, "moderator": 0}

    def flaky(design, formula, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003
        if "self_rated_alliance_skill_c" in formula:
            calls["moderator"] += 1
            if calls["moderator"] % 3 == 0:
                raise np.linalg.LinAlgError("injected failure")
        fit = real(design, formula, *args, **kwargs)
        if formula.endswith("(1 + expectancy_within | therapist)"):  # the model without the alliance slope
            calls["reduced"] += 1
            if calls["reduced"] % 4 == 0:
                fit.optimizer.converged = False
        return fit

    monkeypatch.setattr(replicate_module, "fit_design", flaky)
    r = power(therapists=[12], patients_per_therapist=[4], nsim=12, seed=2, workers=1, progress=False)
    t = r.table.set_index(["test", "process"])
    mod = t.loc[("moderator", "alliance")]
    assert mod["n_errors"] == 4 and mod["n_usable"] == 8
    reps = r.replicates.query("test == 'moderator'")
    usable = reps[reps["status"] == "ok"]
    assert mod["rejections"] == int((usable["p"] < 0.05).sum())
    assert mod["power"] == pytest.approx(mod["rejections"] / 8)
    assert reps.loc[reps["status"] == "error", "p"].isna().all()
    slope = t.loc[("slope_variance", "alliance")]
    assert slope["n_nonconverged"] == 3 and slope["n_usable"] == 9
    assert t.loc[("within", "alliance"), "n_usable"] == 12
    assert len(r.failures) == 4 and r.failures["error"].str.contains("injected failure").all()
    assert "Failed tests: 7" in r.summary()


def test_exclude_singular_counts_singular_fits_as_failed() -> None:
    kw = {"therapists": [10], "patients_per_therapist": [4], "nsim": 6, "seed": 1, "workers": 1, "progress": False}
    keep, drop = power(**kw), power(exclude_singular=True, **kw)
    k = keep.table.set_index(["test", "process"])
    d = drop.table.set_index(["test", "process"])
    assert (d["n_singular_excluded"] == k["n_singular"]).all()
    assert (d["n_usable"] == k["n_usable"] - k["n_singular"]).all()


def test_settings_reach_the_simulation() -> None:
    r = power(therapists=[10], patients_per_therapist=[3], nsim=2, workers=1, progress=False,
              settings=["within.alliance=-0.3", "moderator_effect=0", "therapist_icc=0.1"],
              slope_sd={"expectancy": 0.0})
    t = r.table.set_index(["test", "process"])
    assert t.loc[("within", "alliance"), "true_value"] == -0.3
    assert t.loc[("moderator", "alliance"), "true_value"] == 0.0
    assert t.loc[("slope_variance", "expectancy"), "true_value"] == 0.0
    assert r.spec.overrides["therapist_intercept_sd"] == pytest.approx(0.45 * np.sqrt(0.1 / 0.9))


def test_session_design_power() -> None:
    r = power(therapists=[12], patients_per_therapist=[4], nsim=3, seed=2, workers=1, progress=False,
              design="session", settings=["within.alliance=-0.2", "between_patient.expectancy=0.1",
                                          "slope_sd.alliance=0", "therapist_icc=0.2"])
    assert r.spec.level == "session" and r.meta()["design"] == "session"
    t = r.table.set_index(["test", "process"])
    assert t.loc[("within", "alliance"), "label"] == "within-patient effect of alliance"
    assert t.loc[("within", "alliance"), "true_value"] == -0.2
    assert t.loc[("between_patient", "expectancy"), "true_value"] == 0.1
    assert t.loc[("slope_variance", "alliance"), "true_value"] == pytest.approx(0.03 * 0.8, rel=1e-12)
    assert r.spec.overrides["session_within_patient"] == {"alliance": -0.2}
    assert r.spec.overrides["therapist_intercept_sd"] == pytest.approx(0.30 * 0.5)
    assert len(t) == 2 + 3 * 2 + 1 and (t["n_usable"] > 0).all()
    assert "Design: session level" in r.summary()


@pytest.mark.parametrize("design", ["patient", "session"])
def test_any_processes_and_moderators(design: str) -> None:
    """Three freely named processes, a binary moderator and a covariate: the tests follow them,
    settings name them, and the default moderator test is the simulated cross-level effect."""
    from theralens.simulation.generate import Variable

    effects = "session_moderator_effects" if design == "session" else "moderator_effects"
    r = power(therapists=[12], patients_per_therapist=[5], nsim=2, seed=1, workers=1, progress=False, design=design,
              processes=("empathy", "homework", "goals"), moderators={"female": Variable("binary", 0.5)},
              covariates={"employed": Variable("binary", 0.6)}, covariate_effects={"employed": -0.1},
              settings=["within.homework=-0.25", "moderator_effect=0.2"],
              **{effects: {("female", "goals", "within_slope"): 0.15}})
    assert r.spec.moderator == "female" and r.spec.moderator_process == "goals"
    assert r.spec.covariates == ("employed",)
    kinds = {(t.kind, t.process) for t in r.tests}
    assert {("slope_variance", p) for p in ("empathy", "homework", "goals")} <= kinds
    assert ("moderator", "goals") in kinds and not any(p == "alliance" for _, p in kinds)
    t = r.table.set_index(["test", "process"])
    assert t.loc[("within", "homework"), "true_value"] == -0.25
    assert t.loc[("moderator", "goals"), "true_value"] == 0.15  # keyword overrides apply after the settings
    assert (t["n_usable"] > 0).all()
    with pytest.raises(InputError, match="within.empathy or within.homework or within.goals"):
        power(nsim=1, progress=False, processes=("empathy", "homework", "goals"), settings=["within.alliance=1"])


def test_ddf_choice_reaches_the_tests_and_the_tables() -> None:
    kw = {"therapists": [10], "patients_per_therapist": [4], "nsim": 3, "seed": 4, "workers": 1, "progress": False}
    kr, sat = power(ddf="Kenward-Roger", **kw), power(**kw)
    assert kr.spec.ddf == "kenward-roger" and kr.meta()["ddf"] == "kenward-roger"
    methods = dict(zip(kr.table["test"], kr.table["method"]))
    assert methods["within"] == "t test, Kenward-Roger df" and "chi-bar-square" in methods["slope_variance"]
    assert "Kenward-Roger (Kenward & Roger, 1997) df" in kr.summary() and "Satterthwaite" in sat.summary()
    a, b = kr.replicates.query("test == 'within'"), sat.replicates.query("test == 'within'")
    np.testing.assert_allclose(a["estimate"].to_numpy(), b["estimate"].to_numpy())  # the same fits
    assert not np.allclose(a["p"].to_numpy(), b["p"].to_numpy())  # other tests
    assert (kr.replicates.query("test == 'slope_variance'")["p"].to_numpy()
            == sat.replicates.query("test == 'slope_variance'")["p"].to_numpy()).all()
    with pytest.raises(InputError, match="kenward-roger"):
        power(ddf="kenward", **kw)


def test_bad_input() -> None:
    with pytest.raises(InputError, match="nsim"):
        power(nsim=0, progress=False)
    with pytest.raises(InputError, match="alpha"):
        power(nsim=1, alpha=1.5, progress=False)
    with pytest.raises(InputError, match="patient.*session"):
        power(nsim=1, design="sessions", progress=False)
    with pytest.raises(InputError, match="3 or more"):
        power(nsim=1, therapists=[2], progress=False)


def test_notebook_views_of_a_power_result(one_worker: PowerResult) -> None:
    text = repr(one_worker)
    lines = text.splitlines()
    assert 3 <= len(lines) <= 4
    assert lines[0] == (f"<PowerResult: preset coyne2022, 2 design cell(s) x {len(one_worker.tests)} tests, "
                        "10 replicates per cell, alpha 0.05, seed 5>")
    assert "Cells (therapists x patients per therapist): 10x4, 16x4" in text
    wide = one_worker._wide("power")
    assert list(wide.columns) == ["10x4", "16x4"] and list(wide.index) == [x.label for x in one_worker.tests]
    t = one_worker.table
    got = wide.loc[t["label"], :].to_numpy()[np.arange(len(t)), (t["n_therapists"] == 16).to_numpy().astype(int)]
    np.testing.assert_array_equal(got, t["power"].to_numpy())
    html = one_worker._repr_html_()
    assert html.count("<table") == 3 and "Simulation-based power" in html and "95% Wilson interval" in html
    assert html.count("<tr>") == 3 * (1 + len(one_worker.tests))
