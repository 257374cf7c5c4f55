"""Training evaluation (theralens.study.training): the schedule, the reference date, recovery of
known targeted training effects, each therapist's change, and the wording of a change."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest

from theralens import InputError
from theralens.data.config import config_from_dict
from theralens.simulation.training import simulate_training
from theralens.study.training import CONTRASTS, change_words, reference_date, training


def test_reference_date_is_the_median_training_date():
    d = [pd.Timestamp("2024-01-01"), pd.Timestamp("2024-03-01"), pd.Timestamp("2024-02-01")]
    assert reference_date(d) == pd.Timestamp("2024-02-01")
    assert reference_date(d[:2]) == pd.Timestamp("2024-01-31")  # midpoint of two, at the start of its day
    assert reference_date([3.0, 1.0]) == 2.0
    with pytest.raises(InputError, match="no training dates"):
        reference_date([])


def test_change_words_follow_the_interval():
    assert change_words(0.21, 0.02, 0.40) == "stronger"
    assert change_words(-0.21, -0.40, -0.02) == "weaker"
    assert change_words(0.05, -0.10, 0.20) == "no detectable change"
    assert change_words(None, None, None) == "no estimate"


@pytest.fixture(scope="module")
def known() -> tuple:
    """Targeted change -0.20, untargeted -0.05, untrained 0 (change SD 0.10), 180 x 14."""
    sim = simulate_training(180, 14, seed=21)
    return sim, training(sim.sessions, sim.therapists, config_from_dict(sim.config))


def test_recovers_known_training_effects(known):
    sim, res = known
    eff = res.effects.set_index(["process", "term"])
    for p in ("alliance", "expectancy"):
        truth = sim.truth["effects"][p]
        for term in ("change_untrained", "change_untargeted", "change_targeted", *CONTRASTS):
            r = eff.loc[(p, term)]
            # one study cannot show coverage (validation/training_stability.md does): each of the 12
            # estimates within 3.5 SE of its truth (a false alarm in about 0.5% of seeds)
            assert abs(r["estimate"] - truth[term]) < 3.5 * r["se"], (p, term, r.to_dict())
            assert r["ci_low"] < r["estimate"] < r["ci_high"]
        # targeted minus untargeted is the difference of the two group changes
        assert eff.loc[(p, "targeted_change"), "estimate"] == pytest.approx(
            eff.loc[(p, "change_targeted"), "estimate"] - eff.loc[(p, "change_untargeted"), "estimate"], abs=1e-12)
        # -0.15 with this design: detected, in the direction of more benefit (a higher outcome is worse)
        assert eff.loc[(p, "targeted_change"), "words"] == "stronger"
    var = res.variance.set_index("process")
    for p in ("alliance", "expectancy"):
        assert var.loc[p, "change_sd"] == pytest.approx(math.sqrt(var.loc[p, "change_variance"]))
        assert var.loc[p, "ci_low"] <= 0.10 <= var.loc[p, "ci_high"]


def test_schedule_matches_the_simulation(known):
    sim, res = known
    assert repr(res).startswith(f"<TrainingResult: {sim.truth['n_trained']} trained therapists; alliance "
                                "targeted_change ")
    assert "targeted_change" in res.summary() and "variance of the change" in res._repr_html_()
    sched = res.schedule.set_index("therapist")
    assert int(sched["trained"].sum()) == sim.truth["n_trained"]
    assert res.reference_date == sim.truth["reference_date"]
    assert (sched["n_before"] + sched["n_after"] == 14).all()
    trained = sched[sched["trained"]]
    assert (trained["n_before"] == 7).all() and (trained["n_after"] == 7).all()  # dates between the middle two


def test_each_therapists_change_is_their_group_mean_plus_their_own_part(known):
    _, res = known
    fit = next(m.fit for m in res.models if m.role == "training:expectancy")
    re = fit.random_effects("therapist")
    v = re[re["term"] == "expectancy_change"].set_index("level")
    ther = res.therapists[res.therapists["process"] == "expectancy"].set_index("therapist")
    for t in list(ther.index[:5]) + list(ther.index[-5:]):
        row = ther.loc[t]
        name = f"expectancy_change_{row['group']}"
        assert row["change"] == pytest.approx(fit.fixed_effects[name] + v.loc[t, "estimate"], abs=1e-12)
        se = math.sqrt(fit.vcov.loc[name, name] + v.loc[t, "cond_sd"] ** 2)
        assert row["se"] == pytest.approx(se)
        assert row["benefit"] == pytest.approx(-row["change"])
        assert row["words"] == change_words(row["benefit"], row["benefit_ci_low"], row["benefit_ci_high"])
    groups = res.therapists.groupby("process")["group"].value_counts().unstack()
    assert (groups["targeted"] == 60).all() and (groups["untrained"] == 60).all()


def _schedule_study():
    sim = simulate_training(40, 6, seed=4)
    return sim, config_from_dict(sim.config)


def test_bad_schedules_are_one_line_errors():
    sim, cfg = _schedule_study()
    trained = sim.therapists.index[sim.therapists["trained_on"] != ""]
    t = sim.therapists.copy()
    t.loc[trained[0], "trained_process"] = "empathy"
    with pytest.raises(InputError, match=r"training target 'empathy' of therapist T\d+ .* is not a configured process"):
        training(sim.sessions, t, cfg)
    t = sim.therapists.copy()
    t.loc[trained[0], "trained_on"] = "2031-01-01"
    with pytest.raises(InputError, match="has no analysed patient whose treatment started after it"):
        training(sim.sessions, t, cfg)
    t = sim.therapists.copy()
    t.loc[trained[0], "trained_on"] = "2023-01-01"
    with pytest.raises(InputError, match="whose treatment started before it"):
        training(sim.sessions, t, cfg)
    t = sim.therapists.copy()
    t.loc[trained[0], "trained_on"] = "2025-02-30"
    with pytest.raises(InputError, match=r"'trained_on' \(training date\) has values that are neither"):
        training(sim.sessions, t, cfg)
    t = sim.therapists.assign(trained_on="", trained_process="")
    with pytest.raises(InputError, match="no analysed therapist has a training date"):
        training(sim.sessions, t, cfg)
    t = sim.therapists.copy()
    t.loc[trained[0], "trained_on"] = ""
    with pytest.raises(InputError, match="has a training target but no training date"):
        training(sim.sessions, t, cfg)


def test_several_targets_and_therapists_missing_from_the_table():
    sim, cfg = _schedule_study()
    t = sim.therapists.copy()
    first = t.index[t["trained_on"] != ""][0]
    t.loc[first, "trained_process"] = "alliance; expectancy"
    untrained = t.index[t["trained_on"] == ""][0]
    res = training(sim.sessions, t.drop(index=untrained), cfg)
    sched = res.schedule.set_index("therapist")
    assert sched.loc[t.loc[first, "therapist"], "targets"] == "alliance;expectancy"
    assert not sched.loc[t.loc[untrained, "therapist"], "trained"]  # not in the table: untrained
    ther = res.therapists.set_index(["process", "therapist"])
    assert ther.loc[("alliance", t.loc[first, "therapist"]), "group"] == "targeted"
    assert ther.loc[("expectancy", t.loc[first, "therapist"]), "group"] == "targeted"


def test_the_study_ddf_is_the_df_of_the_training_and_stability_models():
    """``[inference] ddf`` reaches the period models: with Kenward-Roger the training rows carry
    pbkrtest's contrast df (and the adjusted SE) of the fitted model, not Satterthwaite's."""
    from theralens.study.stability import stability

    sim, cfg = _schedule_study()
    kr = config_from_dict({**sim.config, "inference": {"ddf": "kenward-roger"}})
    sw = training(sim.sessions, sim.therapists, cfg)
    res = training(sim.sessions, sim.therapists, kr)
    assert all(m.fit.ddf == "kenward-roger" for m in res.models)
    assert all(m.fit.ddf == "satterthwaite" for m in sw.models)
    fit = res.models[0].fit
    p = res.models[0].role.split(":", 1)[1]
    row = res.effects[(res.effects["process"] == p) & (res.effects["term"] == "change_targeted")].iloc[0]
    c = fit.contrast({f"{p}_change_targeted": 1.0})
    assert row["df"] == pytest.approx(c["df"], rel=1e-12)
    assert row["se"] == pytest.approx(c["se"], rel=1e-12)
    other = sw.effects[(sw.effects["process"] == p) & (sw.effects["term"] == "change_targeted")].iloc[0]
    assert row["estimate"] == pytest.approx(other["estimate"], rel=1e-9)  # same REML fit
    assert abs(row["df"] - other["df"]) > 1e-3 * other["df"]
    assert "Kenward-Roger" in json.loads(res.to_json())["inference"]["label"]
    st = stability(sim.sessions, sim.therapists, kr)
    assert all(m.fit.ddf == "kenward-roger" for m in st.models)
