"""Therapist profiles (models.md "Profiles"): wording follows the 95% interval, rank intervals,
the minimum caseload, caseload percentiles and the outcome effect, on small hand-made tables
with known answers, plus one consistency check on the demo study."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from theralens.profiles import (
    AVERAGE,
    CATEGORIES,
    GROWTH,
    STRENGTH,
    UNCERTAIN,
    Profiles,
    build_profiles,
    classify_interval,
    profiles_from_tables,
    rank_intervals,
)
from theralens.profiles.language import process_kind, process_statement, training_suggestion
from theralens.study.result import StudyResult

# therapist: (n_patients, deviation, deviation_sd) for both processes; higher outcome = worse,
# so a negative deviation is more benefit.
THERAPISTS = {
    "A": (10, -0.5, 0.1),  # interval entirely on the benefit side -> strength
    "B": (10, 0.5, 0.1),  # entirely on the other side -> growth area
    "C": (10, -0.1, 0.1),  # covers the average -> not distinguishable
    "D": (3, -0.9, 0.1),  # clear, but below the minimum caseload -> too uncertain
    "E": (1, None, None),  # a single patient: no slope of their own
    "F": (6, 0.0, 0.2),
}
PROCESSES = ["alliance", "homework compliance"]


def tables(benefit_sign: int = -1) -> tuple[pd.DataFrame, pd.DataFrame]:
    slopes, ther = [], []
    for i, (t, (n, dev, sd)) in enumerate(THERAPISTS.items()):
        for p in PROCESSES:
            ok = dev is not None
            slopes.append({
                "process": p, "therapist": t, "n_patients": n, "estimable": ok,
                "slope": -0.2 + dev if ok else None, "ci_low": -0.2 + dev - 2 * sd if ok else None,
                "ci_high": -0.2 + dev + 2 * sd if ok else None, "deviation": dev, "deviation_sd": sd,
                "prob_stronger_than_average": 0.5 if ok else None, "slope_reliability": 0.5 if ok else None,
            })
        ther.append({"therapist": t, "n_patients": n, "intercept_deviation": -0.5 + 0.2 * i, "intercept_sd": 0.1,
                     "mean_alliance": float(i), "mean_homework compliance": 3.0, "moderator_cbt": i % 2})
    return pd.DataFrame(slopes), pd.DataFrame(ther)


def make(benefit_sign: int = -1, min_caseload: int = 5) -> Profiles:
    slopes, ther = tables()
    return profiles_from_tables(slopes, ther, processes=PROCESSES, average_slopes={p: -0.2 for p in PROCESSES},
                                benefit_sign=benefit_sign, min_caseload=min_caseload, draws=2000, seed=7)


def test_classification_follows_the_interval() -> None:
    assert classify_interval(0.01, 0.5) == STRENGTH
    assert classify_interval(-0.5, -0.01) == GROWTH
    assert classify_interval(-0.1, 0.3) == AVERAGE
    assert classify_interval(0.0, 0.3) == AVERAGE  # touching the average is not clear
    assert classify_interval(None, 0.3) == UNCERTAIN
    assert classify_interval(float("nan"), 0.3) == UNCERTAIN


def test_profile_categories_and_wording() -> None:
    prof = make()
    cat = {t.therapist: t.process("alliance").category for t in prof}
    assert cat == {"A": STRENGTH, "B": GROWTH, "C": AVERAGE, "D": UNCERTAIN, "E": UNCERTAIN, "F": AVERAGE}
    a, b, c = (prof[x].process("alliance") for x in "ABC")
    assert a.benefit == pytest.approx(0.5) and a.benefit_ci_low > 0
    assert b.benefit_ci_high < 0
    assert c.benefit_ci_low < 0 < c.benefit_ci_high
    # plain language follows the interval and never calls an average slope a weakness
    assert "strength" in a.statement.lower() and "alliance" in a.suggestion
    assert "growth area" in b.statement.lower() and "rupture" in b.suggestion
    assert "not distinguishable" in c.statement.lower() and "not a weakness" in c.statement
    assert "growth" not in c.statement.lower() and "Consider" not in c.suggestion
    for t in prof:
        for pp in t.processes:
            if pp.category != GROWTH:
                assert "weaker" not in pp.statement and "training in" not in pp.suggestion
    # generic wording for a process theralens does not know
    h = prof["A"].process("homework compliance")
    assert h.kind == "other" and "homework compliance" in h.suggestion


def test_benefit_direction_flips_with_the_outcome_scale() -> None:
    prof = make(benefit_sign=+1)
    assert prof["A"].process("alliance").category == GROWTH
    assert prof["B"].process("alliance").category == STRENGTH
    assert prof["A"].outcome.category == GROWTH  # u0j = -0.5 is worse when higher outcome is better


def test_min_caseload_makes_small_caseloads_too_uncertain() -> None:
    prof = make()
    d, e = prof["D"], prof["E"]
    assert not d.interpretable and "minimum caseload of 5" in d.reason
    assert d.process("alliance").category == UNCERTAIN
    assert "fewer than the minimum caseload" in d.process("alliance").statement
    assert d.outcome.category == UNCERTAIN
    assert e.process("alliance").category == UNCERTAIN and "at least two" in e.process("alliance").reason
    assert e.process("alliance").rank_median is None
    # a lower threshold lets therapist D's clear slope count
    assert make(min_caseload=3)["D"].process("alliance").category == STRENGTH
    assert make(min_caseload=3)["E"].process("alliance").category == UNCERTAIN


def test_rank_intervals() -> None:
    dev = pd.Series([-3.0, 0.0, 3.0, np.nan], index=["best", "mid", "worst", "none"])
    sd = pd.Series([0.01, 0.01, 0.01, 0.1], index=dev.index)
    r = rank_intervals(dev, sd, benefit_sign=-1)
    assert list(r.loc[["best", "mid", "worst"], "rank_median"]) == [1, 2, 3]
    assert list(r.loc[["best", "mid", "worst"], "rank_low"]) == [1, 2, 3]
    assert list(r.loc[["best", "mid", "worst"], "rank_high"]) == [1, 2, 3]
    assert np.isnan(r.loc["none", "rank_median"]) and int(r["n_ranked"].iloc[0]) == 3
    # the other direction of benefit reverses the ranks
    assert list(rank_intervals(dev, sd, benefit_sign=1).loc[["best", "mid", "worst"], "rank_median"]) == [3, 2, 1]
    # indistinguishable therapists (even with a conditional SD of 0) get wide rank intervals
    same = rank_intervals(pd.Series(0.0, index=list("abcdefghij")), pd.Series(0.0, index=list("abcdefghij")), -1)
    assert (same["rank_low"] <= 2).all() and (same["rank_high"] >= 9).all()
    noisy = rank_intervals(pd.Series([-0.2, 0.0, 0.2], index=list("xyz")), pd.Series(0.5, index=list("xyz")), -1)
    assert (noisy["rank_low"] == 1).all() and (noisy["rank_high"] == 3).all()
    assert noisy.loc["x", "rank_median"] <= noisy.loc["z", "rank_median"]
    # a fixed seed makes them reproducible
    pd.testing.assert_frame_equal(noisy, rank_intervals(pd.Series([-0.2, 0.0, 0.2], index=list("xyz")),
                                                        pd.Series(0.5, index=list("xyz")), -1))


def test_ranks_percentiles_and_outcome_in_profiles() -> None:
    prof = make()
    ranks = {t.therapist: t.process("alliance").rank_median for t in prof}
    assert ranks["D"] == 1 and ranks["A"] == 2 and ranks["B"] == 5 and ranks["E"] is None
    for t in prof:
        pp = t.process("alliance")
        if pp.rank_median is not None:
            assert pp.rank_low <= pp.rank_median <= pp.rank_high and pp.n_ranked == 5
    pct = {t.therapist: t.process("alliance").caseload_percentile for t in prof}
    assert pct["A"] == 0 and pct["F"] == 100 and pct["C"] == pytest.approx(40)
    assert prof["A"].process("homework compliance").caseload_percentile == 50  # all tied
    o = prof["A"].outcome
    assert o.benefit == pytest.approx(0.5) and o.category == STRENGTH and "improved more" in o.statement
    assert o.rank_median == 1
    assert prof["A"].moderators == {"cbt": 0.0}


def test_dataframe_views_and_summary() -> None:
    prof = make()
    tidy = prof.to_frame()
    assert len(tidy) == len(THERAPISTS) * len(PROCESSES)
    assert {"therapist", "process", "category", "rank_low", "rank_high", "benefit_ci_low"} <= set(tidy.columns)
    assert set(tidy["category"]) <= set(CATEGORIES)
    assert len(prof.overview()) == len(THERAPISTS)
    counts = prof.category_counts()
    assert (counts.sum(axis=1) == len(THERAPISTS)).all()
    assert "alliance" in prof.summary() and "1 strength" in prof.summary()
    with pytest.raises(KeyError, match="no therapist"):
        prof["nobody"]


def test_process_kinds_and_suggestions() -> None:
    assert process_kind("WAI alliance") == "alliance"
    assert process_kind("outcome_expectation") == "expectancy" and process_kind("OE") == "expectancy"
    assert process_kind("empathy") == "other"
    assert "expectation" in training_suggestion("expectancy", GROWTH)
    assert "revisit" in training_suggestion("alliance", UNCERTAIN)
    assert "next assessment" not in process_statement("alliance", STRENGTH, "patient")
    assert "sessions" in process_statement("alliance", STRENGTH, "session")


@pytest.fixture(scope="module")
def demo_result() -> StudyResult:
    from theralens.data.config import config_from_dict
    from theralens.datasets import load_demo
    from theralens.study.analysis import analyze

    sessions, therapists = load_demo()
    cfg = config_from_dict({"therapist_moderators": {"columns": ["cbt"]}})
    return analyze(sessions, therapists, cfg)


def test_demo_profiles_agree_with_the_study(demo_result: StudyResult) -> None:
    prof = build_profiles(demo_result)
    assert len(prof) == 42 and prof.min_caseload == 5
    slopes = demo_result.aim2.therapists.set_index(["therapist", "process"])
    for t in prof:
        assert t.interpretable == (t.n_patients >= 5)
        assert set(t.moderators) == {"cbt"}
        for pp in t.processes:
            row = slopes.loc[(t.therapist, pp.process)]
            if not t.interpretable:
                assert pp.category == UNCERTAIN
                continue
            assert pp.prob_stronger == row["prob_stronger_than_average"]
            assert pp.slope == row["slope"] and pp.deviation == row["deviation"]
            assert pp.deviation_ci_low < pp.deviation < pp.deviation_ci_high
            expected = STRENGTH if pp.benefit_ci_low > 0 else GROWTH if pp.benefit_ci_high < 0 else AVERAGE
            assert pp.category == expected
            # a strength is the same as P(stronger) above 0.975
            assert (pp.category == STRENGTH) == (pp.prob_stronger > 0.975)
            assert 1 <= pp.rank_low <= pp.rank_median <= pp.rank_high <= pp.n_ranked
    # same seed, same ranks
    again = build_profiles(demo_result)
    pd.testing.assert_frame_equal(prof.to_frame(), again.to_frame())
