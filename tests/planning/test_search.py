"""Sample-size search: the power curve fit, the search on a known curve, and power(search=...)."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from theralens.cli import main
from theralens.errors import InputError
from theralens.planning import power
from theralens.planning.replicate import PowerSpec
from theralens.planning.search import SearchGoal, fit_power_curve, parse_search, run_search


def _curve(a: float, b: float):
    def p(j: float) -> float:
        return 1.0 / (1.0 + math.exp(-(a + b * math.log(j))))
    return p


def _evaluator(p, n: int, rng: np.random.Generator | None, calls: list[list[int]]):
    def evaluate(js: list[int]) -> pd.DataFrame:
        calls.append(list(js))
        rows = []
        for j in js:
            k = int(rng.binomial(n, p(j))) if rng is not None else int(round(n * p(j)))
            rows.append({"n_therapists": j, "rejections": k, "n_usable": n, "power": k / n,
                         "power_low": 0.0, "power_high": 1.0})
        return pd.DataFrame(rows)
    return evaluate


def test_fit_power_curve_recovers_a_logistic_curve() -> None:
    a, b = -6.0, 1.8
    js = np.array([10, 30, 60, 120, 250])
    n = np.full(5, 200_000)
    k = np.round(n * np.array([_curve(a, b)(j) for j in js]))
    coef, cov = fit_power_curve(js, k, n)
    np.testing.assert_allclose(coef, [a, b], atol=2e-3)
    assert np.all(np.sqrt(np.diag(cov)) < 0.05)
    # all rejections zero: a finite (Haldane-corrected) fit, not an error
    coef0, _ = fit_power_curve(js, np.zeros(5), np.full(5, 20))
    assert np.all(np.isfinite(coef0))


def test_search_finds_the_known_answer_and_reuses_cells() -> None:
    a, b = -6.0, 1.8
    p = _curve(a, b)
    truth = math.exp((math.log(0.8 / 0.2) - a) / b)  # about 60.6 therapists
    calls: list[list[int]] = []
    found = run_search(SearchGoal("within.alliance", 0.8, 10, 300), PowerSpec().tests[2], 5.0,
                       _evaluator(p, 100_000, None, calls))
    assert found.status == "found" and found.n_required == math.ceil(truth)
    assert found.j_low < truth < found.j_high and found.j_high - found.j_low < 2
    assert calls[0] == [10, 55, 300]  # the ends and the geometric middle
    flat = [j for c in calls for j in c]
    assert len(flat) == len(set(flat))  # no cell is simulated twice
    assert found.n_required in set(found.cells["n_therapists"])
    assert "answer: 61 therapists" in found.summary()


def test_search_interval_covers_with_few_replicates() -> None:
    a, b = -6.0, 1.8
    truth = math.exp((math.log(4) - a) / b)
    rng = np.random.default_rng(3)
    hits = 0
    for _ in range(100):
        found = run_search(SearchGoal("within", 0.8, 10, 300), PowerSpec().tests[2], 5.0,
                           _evaluator(_curve(a, b), 200, rng, []))
        hits += found.j_low <= truth <= found.j_high
    assert 85 <= hits <= 100  # a 95% interval, 100 searches (binomial 95% range 90..99, some slack)


def test_search_out_of_range() -> None:
    tests = PowerSpec().tests
    low = run_search(SearchGoal("moderator", 0.8, 10, 100), tests[-1], 5.0, _evaluator(_curve(-12, 1.0), 500,
                                                                                       None, []))
    assert low.status == "above range" and low.n_required is None and "widen the range" in low.summary()
    high = run_search(SearchGoal("moderator", 0.8, 10, 100), tests[-1], 5.0, _evaluator(_curve(2, 1.0), 500,
                                                                                        None, []))
    assert high.status == "below range" and "already reached at 10" in high.summary()


def test_goal_parsing_and_picking() -> None:
    tests = PowerSpec().tests
    assert parse_search("moderator", None).pick(tests).kind == "moderator"
    g = parse_search("within.expectancy:0.9", [20, 150])
    assert (g.target, g.low, g.high) == (0.9, 20, 150) and g.pick(tests).process == "expectancy"
    with pytest.raises(InputError, match="more than one test"):
        parse_search("within", None).pick(tests)
    with pytest.raises(InputError, match="not a test"):
        parse_search("moderator.expectancy", None).pick(tests)
    with pytest.raises(InputError, match="LOW,HIGH"):
        parse_search("moderator", [10, 20, 30])
    with pytest.raises(InputError, match="between 0 and 1"):
        parse_search("moderator:80", None)


def test_power_search_end_to_end(tmp_path) -> None:
    r = power(search={"test": "within.alliance", "target": 0.5, "max_cells": 4}, therapists=[6, 30],
              patients_per_therapist=[4], nsim=6, seed=2, workers=1, progress=False,
              settings=["within.alliance=-0.3"])
    s = r.search
    assert s is not None and len(s.cells) <= 4 and s.cells["n_therapists"].is_monotonic_increasing
    assert [c.n_therapists for c in r.cells] == list(s.cells["n_therapists"])
    t = r.table[(r.table["test"] == "within") & (r.table["process"] == "alliance")]
    np.testing.assert_array_equal(t["rejections"].to_numpy(), s.cells["rejections"].to_numpy())
    assert "Sample-size search" in r.summary()
    doc = json.loads(r.to_json())
    assert doc["search"]["test"] == "within" and doc["search"]["status"] == s.status
    out = tmp_path / "search"
    code = main(["power", "--search", "within.alliance:0.5", "--therapists", "6,30", "--patients-per-therapist",
                 "4", "--nsim", "4", "--workers", "1", "--out", str(out), "--set", "within.alliance=-0.3"])
    assert code == 0 and json.loads((out / "power.json").read_text())["search"]["target"] == 0.5
