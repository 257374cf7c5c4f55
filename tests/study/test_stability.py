"""Profile stability (theralens.study.stability): halves, the verdict, recovery of a known
between-half correlation, repeated random halves, and the per-therapist labels of each half."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from theralens import InputError
from theralens.data.config import config_from_dict
from theralens.profiles.stability import AGREE, DIFFER, NOT_JUDGED, half_labels, label_agreement
from theralens.simulation.training import simulate_stability
from theralens.study.periods import PatientStarts, half_split
from theralens.study.stability import STABLE_R, apa_r, stability, stability_verdict


def test_half_split_by_treatment_start_puts_the_earlier_ceil_half_first():
    frame = pd.DataFrame({"therapist": ["A"] * 5 + ["B"] * 4,
                          "patient": ["a1", "a2", "a3", "a4", "a5", "b1", "b2", "b3", "b4"]})
    starts = PatientStarts(values=pd.Series([5, 1, 4, 2, 3, 10, 40, 20, 30], index=frame["patient"], dtype=float),
                           kind="number", column="start")
    later = half_split(frame, starts, "time").to_numpy()
    # A: starts a2 < a4 < a5 < a3 < a1: the first three (ceil 5/2) earlier
    assert dict(zip(frame["patient"], later)) == {"a2": 0, "a4": 0, "a5": 0, "a3": 1, "a1": 1,
                                                  "b1": 0, "b3": 0, "b4": 1, "b2": 1}


def test_random_halves_are_halves_and_differ_between_draws():
    frame = pd.DataFrame({"therapist": np.repeat(["A", "B", "C"], 10), "patient": [f"p{i}" for i in range(30)]})
    rng = np.random.default_rng(3)
    a = half_split(frame, None, "random", rng)  # type: ignore[arg-type]
    b = half_split(frame, None, "random", rng)  # type: ignore[arg-type]
    assert (a.groupby(frame["therapist"]).sum() == 5).all()
    assert not a.equals(b)
    with pytest.raises(InputError, match="split must be one of time, random"):
        half_split(frame, None, "alternate")  # type: ignore[arg-type]


def test_verdict_follows_the_interval():
    cat, text = stability_verdict("alliance", 0.21, -0.40, 0.71)
    assert cat == "not supported"
    assert text == "These data cannot support individual alliance profiles: stability r = .21 [-.40, .71]."
    assert stability_verdict("alliance", 0.7, 0.2, 0.9)[0] == "partly stable"
    assert stability_verdict("alliance", 0.8, STABLE_R, 0.95)[0] == "supported"
    cat, text = stability_verdict("alliance", 0.5, None, None, "no profile")
    assert cat == "no interval" and "no profile" in text and "no verdict" in text
    assert apa_r(-0.04) == "-.04" and apa_r(1.0) == "1.00" and apa_r(None) == "NA"


@pytest.fixture(scope="module")
def known() -> tuple:
    """A study with between-half correlation 0.6 (170 therapists x 16 patients) and its stability."""
    sim = simulate_stability(170, 16, correlation=0.6, seed=11)
    return sim, stability(sim.sessions, sim.therapists, config_from_dict(sim.config))


def test_recovers_a_known_between_half_correlation(known):
    sim, res = known
    rows = res.correlations.set_index("process")
    for p in ("alliance", "expectancy"):
        r = rows.loc[p]
        assert r["ci_low"] < 0.6 < r["ci_high"], r
        assert abs(r["correlation"] - 0.6) < 0.2
        assert -1 <= r["ci_low"] < r["correlation"] < r["ci_high"] <= 1
        assert r["ci_method"] == "profile likelihood"
        # the slope SDs of the halves are near the simulated ones
        for half in ("slope_sd_earlier", "slope_sd_later"):
            assert abs(r[half] - sim.truth["slope_sd"][p]) < 0.35 * sim.truth["slope_sd"][p]
        assert r["verdict"] == stability_verdict(p, r["correlation"], r["ci_low"], r["ci_high"])[0]
        assert r["therapists_both"] == 170


def test_the_stability_model_is_one_model_with_slopes_in_each_half(known):
    _, res = known
    assert [m.role for m in res.models] == ["stability:alliance", "stability:expectancy"]
    f = res.models[0].formula
    assert "(1 + alliance_earlier_half + alliance_later_half | therapist)" in f
    assert "alliance_within" not in f and "expectancy_within" in f  # the other process: fixed only
    fit = res.models[0].fit
    vc = fit.varcorr
    corr = vc[(vc["var1"] == "alliance_earlier_half") & (vc["var2"] == "alliance_later_half")]["sdcor"].iloc[0]
    assert res.correlations.loc[0, "correlation"] == pytest.approx(corr, abs=1e-12)


def test_section_and_tables(known):
    _, res = known
    sec = res.section()
    assert {"process", "correlation", "ci_low", "ci_high", "verdict", "verdict_text"} <= set(sec["rows"][0])
    assert len(sec["therapists"]) == 2 * 170
    assert set(res.tables()) == {"stability.csv", "stability_therapists.csv", "stability_splits.csv"}
    doc = res.to_dict()
    assert doc["stability"] == sec and "aim1" in doc
    first = res.correlations.iloc[0]
    assert repr(res).startswith("<StabilityResult: alliance r = ") and f"({first['verdict']})" in repr(res)
    import html

    assert html.escape(first["verdict_text"]) in res._repr_html_() and first["verdict_text"] in res.summary()


def test_labels_of_each_half_and_their_agreement():
    doc = {"benefit_sign": -1, "stability": {"therapists": [
        # benefit = -deviation: strength in both halves
        {"therapist": "A", "process": "x", "n_earlier": 3, "n_later": 3, "deviation_earlier": -0.5,
         "sd_earlier": 0.1, "deviation_later": -0.4, "sd_later": 0.1},
        # strength, then not distinguishable
        {"therapist": "B", "process": "x", "n_earlier": 3, "n_later": 3, "deviation_earlier": -0.5,
         "sd_earlier": 0.1, "deviation_later": 0.05, "sd_later": 0.1},
        # one patient in the later half: not judged
        {"therapist": "C", "process": "x", "n_earlier": 2, "n_later": 1, "deviation_earlier": 0.5,
         "sd_earlier": 0.1, "deviation_later": 0.0, "sd_later": 0.3},
    ]}}
    lab = half_labels(doc).set_index("therapist")
    assert lab.loc["A", ["label_earlier", "label_later", "agreement"]].tolist() == ["strength", "strength", AGREE]
    assert lab.loc["B", "label_later"] == "not distinguishable from the average"
    assert lab.loc["B", "agreement"] == DIFFER
    assert lab.loc["C", "label_earlier"] == "growth area" and lab.loc["C", "agreement"] == NOT_JUDGED
    agg = label_agreement(half_labels(doc)).iloc[0]
    assert (agg["judged"], agg["agree"], agg["differ"], agg["strength_or_growth"], agg["kept_strength_growth"]) == (
        2, 1, 1, 2, 1)


def test_repeated_random_halves_take_medians():
    sim = simulate_stability(60, 8, correlation=0.6, seed=5)
    res = stability(sim.sessions, sim.therapists, config_from_dict(sim.config), split="random", repeats=3, seed=2)
    assert len(res.splits) == 3 * 2 and res.repeats == 3
    for p, d in res.splits.groupby("process"):
        row = res.correlations.set_index("process").loc[p]
        assert row["correlation"] == pytest.approx(d["correlation"].median())
        assert row["split_sd"] == pytest.approx(d["correlation"].std(ddof=1))
    assert len(res.models) == 2  # the models of the first split are kept
    with pytest.raises(InputError, match="repeats must be a whole number"):
        stability(sim.sessions, sim.therapists, config_from_dict(sim.config), split="random", repeats=0)


def test_session_numbers_alone_cannot_order_patients():
    sim = simulate_stability(20, 4, seed=1)
    cfg = config_from_dict({"columns": {"process": ["alliance", "expectancy"]}})  # no [training] start
    with pytest.raises(InputError, match="treatment starts cannot be told apart"):
        stability(sim.sessions, sim.therapists, cfg)
