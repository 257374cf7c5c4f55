"""The training-loop simulator (theralens.simulation.training): its tables, its truth, and the
demo schedule."""

from __future__ import annotations

import pandas as pd
import pytest

from theralens.datasets import load_demo, load_demo_training
from theralens.simulation.training import demo_schedule, simulate_stability, simulate_training


def test_stability_study_layout_and_truth():
    sim = simulate_stability(30, 8, correlation=0.3, seed=1)
    s = sim.sessions
    assert list(s.columns) == ["therapist", "patient", "session", "outcome", "alliance", "expectancy", "start_date"]
    assert s["patient"].nunique() == 240 and s["therapist"].nunique() == 30
    per_patient = s.groupby("patient")
    assert (per_patient["start_date"].nunique() == 1).all()
    assert (per_patient["outcome"].count() == 2).all()  # baseline and final
    assert sim.truth["correlation"] == {"alliance": 0.3, "expectancy": 0.3}
    assert sim.config["training"]["start"] == "start_date"
    with pytest.raises(ValueError, match="correlation"):
        simulate_stability(10, 8, correlation=1.0)
    with pytest.raises(ValueError, match="at least 4 patients"):
        simulate_stability(10, 3)


def test_training_study_schedule_and_truth():
    sim = simulate_training(30, 8, share_trained=0.5, change={"targeted": -0.3}, seed=2)
    t = sim.therapists
    trained = t[t["trained_on"] != ""]
    assert len(trained) == 15 and set(trained["trained_process"]) == {"alliance", "expectancy"}
    assert (t.loc[t["trained_on"] == "", "trained_process"] == "").all()
    starts = sim.sessions.drop_duplicates("patient").set_index("patient")["start_date"]
    th = sim.sessions.drop_duplicates("patient").set_index("patient")["therapist"]
    for _, r in trained.iterrows():
        mine = pd.to_datetime(starts[th == r["therapist"]])
        date = pd.Timestamp(r["trained_on"])
        assert (mine < date).sum() == 4 and (mine >= date).sum() == 4  # between the middle two starts
    e = sim.truth["effects"]["alliance"]
    assert e["change_targeted"] == -0.3 and e["targeted_change"] == pytest.approx(-0.3 - (-0.05))
    assert e["untargeted_vs_untrained"] == pytest.approx(-0.05)
    assert sim.truth["reference_date"] == sorted(trained["trained_on"])[7]  # the median of 15 training dates


def test_demo_schedule_is_the_shipped_one_and_has_patients_on_both_sides():
    sessions, therapists = load_demo()
    shipped = load_demo_training()
    again, table = demo_schedule(sessions.drop(columns="start_date"), therapists, seed=2022)
    pd.testing.assert_frame_equal(table.fillna(""), shipped, check_dtype=False)
    assert (again["start_date"] == sessions["start_date"]).all()
    starts = sessions.drop_duplicates("patient").assign(start=lambda d: pd.to_datetime(d["start_date"]))
    for _, r in shipped[shipped["trained_on"] != ""].iterrows():
        mine = starts.loc[starts["therapist"] == r["therapist"], "start"]
        assert len(mine) >= 4
        assert (mine < pd.Timestamp(r["trained_on"])).any() and (mine >= pd.Timestamp(r["trained_on"])).any()
    assert set(shipped["trained_process"]) == {"", "alliance", "expectancy"}
