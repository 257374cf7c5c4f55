"""Sufficient statistics (theralens.model.stats) are the engine's only input.

- the statistics of a random partition of the rows (patients split across parts) summed equal
  the statistics of the whole data (1e-10), on every engine fixture;
- a fit from the summed partial statistics (fit_stats) equals the fit from the frame: the
  criterion to 1e-8; at the frame's optimum fixed effects, SEs, variance components and
  conditional modes to 1e-8 and Satterthwaite df to 1e-6 (lmerTest's df come from
  Richardson-extrapolated second differences of the deviance with steps down to h / 8, which
  turn the rounding of sums taken in another order, 1e-16 of the criterion, into a few 1e-7 of
  the df: seen on hsb82 with theta equal to 1e-15); the fits' own end points to the optimizer's
  tolerance;
- with a patient intercept only n_p and the sums of the other columns are kept per patient;
- statistics from arrays equal statistics from the frame; fitted()/residuals() of a fit from
  statistics raise InputError; parts of different models or with a patient under two
  therapists are refused; likelihood-ratio tests work from statistics alone.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from lme4ref import load_fixture

import theralens as tl
from theralens.errors import InputError
from theralens.model.design import build_design
from theralens.model.fit import fit_mixed, fit_stats
from theralens.model.formula import parse_formula
from theralens.model.stats import SufficientStats

FIXTURES = ["hsb82", "therapy3", "pastes", "sleep_uncorr", "singular", "growth3", "factors", "nonconverge"]


def _parts(data: pd.DataFrame, n_parts: int, seed: int) -> list[pd.DataFrame]:
    """A random partition of the rows: every row to one of ``n_parts`` parts, so that most
    innermost clusters are split across parts."""
    rng = np.random.default_rng(seed)
    which = rng.integers(0, n_parts, len(data))
    return [data[which == i] for i in range(n_parts)]


def _assert_same_stats(a: SufficientStats, b: SufficientStats, rtol: float) -> None:
    assert a.fixed_names == b.fixed_names
    assert [lv.group for lv in a.levels] == [lv.group for lv in b.levels]
    for la, lb in zip(a.levels, b.levels):
        assert list(la.labels) == list(lb.labels)
    for pa, pb in zip(a.parents, b.parents):
        np.testing.assert_array_equal(pa, pb)
    np.testing.assert_array_equal(a.counts, b.counts)
    scale = np.abs(a.total).max()
    np.testing.assert_allclose(a.inner, b.inner, rtol=rtol, atol=rtol * scale)
    for sa, sb in zip(a.sums, b.sums):
        assert (sa is None) == (sb is None)
        if sa is not None:
            np.testing.assert_allclose(sa, sb, rtol=rtol, atol=rtol * scale)
    np.testing.assert_allclose(a.total, b.total, rtol=rtol, atol=rtol * scale)


def _whole_and_summed(name: str) -> tuple[dict, pd.DataFrame, SufficientStats, SufficientStats]:
    ref, data = load_fixture(name)
    whole = SufficientStats.from_design(build_design(parse_formula(ref["formula"]), data))
    parts = [SufficientStats.from_frame(ref["formula"], part) for part in _parts(data, 3, seed=len(name))]
    return ref, data, whole, SufficientStats.combine(parts)


@pytest.mark.parametrize("name", FIXTURES)
def test_partial_statistics_sum_to_the_whole(name: str) -> None:
    _, data, whole, summed = _whole_and_summed(name)
    # the partition really splits innermost clusters across parts
    inner = whole.levels[0].group
    assert summed.levels[0].ngroups == whole.levels[0].ngroups
    assert inner
    _assert_same_stats(summed, whole, 1e-10)
    # + is combine, in any order of the parts
    ref, _ = load_fixture(name)
    a, b = (SufficientStats.from_frame(ref["formula"], part) for part in _parts(data, 2, seed=7))
    _assert_same_stats(b + a, whole, 1e-10)


def test_the_partitions_split_patients() -> None:
    ref, data = load_fixture("therapy3")
    parts = _parts(data, 3, seed=len("therapy3"))
    stats = [SufficientStats.from_frame(ref["formula"], p) for p in parts]
    labels = [set(s.levels[0].labels) for s in stats]
    assert len(labels[0] & labels[1]) > 10  # many patients have rows in two parts


def _assert_same_fit(a, b, rtol: float, df_rtol: float) -> None:
    """Fixed effects, SEs, Satterthwaite df, variance components and conditional modes agree."""
    assert a.fixed_names == b.fixed_names
    np.testing.assert_allclose(a.fixed_effects, b.fixed_effects, rtol=rtol,
                               atol=rtol * float(np.abs(b.fixed_effects).max()))
    np.testing.assert_allclose(a.std_errors, b.std_errors, rtol=rtol)
    np.testing.assert_allclose(a.df, b.df, rtol=df_rtol)
    va, vb = a.varcorr, b.varcorr
    assert va[["grp", "var1", "var2"]].equals(vb[["grp", "var1", "var2"]])
    np.testing.assert_allclose(va["vcov"], vb["vcov"], rtol=rtol, atol=rtol * float(vb["vcov"].abs().max()))
    re_a, re_b = a.random_effects(), b.random_effects()
    assert list(re_a["level"]) == list(re_b["level"])
    np.testing.assert_allclose(re_a["estimate"], re_b["estimate"], rtol=rtol,
                               atol=rtol * float(re_b["estimate"].abs().max()) + 1e-300)


@pytest.mark.parametrize("reml", [True, False])
@pytest.mark.parametrize("name", FIXTURES)
def test_fit_from_summed_statistics_equals_fit_from_frame(name: str, reml: bool) -> None:
    ref, data, _, summed = _whole_and_summed(name)
    frame_fit = fit_mixed(ref["formula"], data, reml=reml)
    stats_fit = fit_stats(summed, reml=reml)
    crit = (lambda m: m.reml_criterion) if reml else (lambda m: m.deviance)
    assert crit(stats_fit) == pytest.approx(crit(frame_fit), rel=1e-8)
    assert stats_fit.nobs == frame_fit.nobs and stats_fit.ngroups == frame_fit.ngroups
    assert stats_fit.converged == frame_fit.converged and stats_fit.singular == frame_fit.singular
    # the statistics give the frame's numbers at the frame's optimum (the algebra: to 1e-8)
    theta = frame_fit.solution.theta
    at = type(stats_fit)(formula=stats_fit.formula, reml=reml, design=stats_fit.design,
                         criterion=stats_fit.criterion, solution=stats_fit.criterion.solve(theta, reml),
                         optimizer=stats_fit.optimizer)
    assert crit(at) == pytest.approx(crit(frame_fit), rel=1e-12)
    _assert_same_fit(at, frame_fit, 1e-8, 1e-6)
    # and the fit from the statistics ends where the frame's fit ends, to the optimizer's tolerance
    # (BFGS stops at a gradient of 1e-6: in the flat valleys of pastes and nonconverge, summing in
    # another order moves the end point by ~1e-6)
    _assert_same_fit(stats_fit, frame_fit, 1e-5, 1e-4)


def test_a_patient_intercept_keeps_a_handful_of_sums_per_patient() -> None:
    """Memory grows with patients x columns: per patient n_p and the sums of Z_2, X and y (one row
    of C_p), while the d x d blocks are summed per therapist."""
    ref, data = load_fixture("therapy3")
    stats = SufficientStats.from_frame(ref["formula"], data)
    P, T, d = stats.levels[0].ngroups, stats.levels[1].ngroups, stats.d
    assert stats.q[0] == 1 and stats.inner.shape == (P, 1, d)
    assert stats.sums[0] is None and stats.group_sums(1).shape == (T, d, d)
    np.testing.assert_array_equal(stats.inner[:, 0, 0], stats.counts)  # the intercept's own sum is n_p
    per_patient = stats.inner.nbytes + stats.counts.nbytes + stats.parents[0].nbytes
    assert per_patient == P * (d + 2) * 8
    assert per_patient < P * d * d * 8 / 4  # a quarter of the full blocks here (d = 9)
    # the row sums per patient are what they say: n_p, sum of alliance, ..., sum of y
    design = build_design(parse_formula(ref["formula"]), data)
    codes = stats.order[0][design.levels[0].codes]
    np.testing.assert_allclose(stats.inner[:, 0, -1], np.bincount(codes, weights=design.y), rtol=1e-12)


def test_statistics_from_arrays_equal_statistics_from_the_frame() -> None:
    ref, data = load_fixture("therapy3")
    formula = "outcome ~ alliance + expectancy + session + (1 + alliance | therapist) + (1 | patient)"
    data = data.assign(patient=data["therapist"].astype(str) + ":" + data["patient"].astype(str))
    frame = SufficientStats.from_frame(formula, data)
    X = np.column_stack([np.ones(len(data)), data["alliance"], data["expectancy"], data["session"]])
    arrays = SufficientStats.from_arrays(
        data["outcome"].to_numpy(), X,
        {"patient": data["patient"].to_numpy(), "therapist": data["therapist"].to_numpy()},
        random={"therapist": (np.column_stack([np.ones(len(data)), data["alliance"]]), ["(Intercept)", "alliance"])},
        fixed_names=["(Intercept)", "alliance", "expectancy", "session"], response="outcome")
    _assert_same_stats(arrays, frame, 1e-12)
    a, b = fit_stats(arrays), fit_mixed(formula, data)
    assert a.reml_criterion == pytest.approx(b.reml_criterion, rel=1e-10)
    assert list(a.theta.index) == list(b.theta.index)


def test_fitted_and_residuals_need_rows() -> None:
    ref, data = load_fixture("sleep_uncorr")
    fit = fit_stats(SufficientStats.from_frame(ref["formula"], data))
    for method in (fit.fitted, fit.residuals):
        with pytest.raises(InputError, match="need the rows of the data"):
            method()
    frame_fit = fit_mixed(ref["formula"], data)  # the frame's fit has them
    np.testing.assert_allclose(frame_fit.fitted() + frame_fit.residuals(), data["Reaction"], rtol=1e-12)


def test_parts_must_be_of_one_model_and_nested() -> None:
    ref, data = load_fixture("therapy3")
    a = SufficientStats.from_frame(ref["formula"], data)
    other = SufficientStats.from_frame(ref["formula"].replace(" + session", ""), data)
    with pytest.raises(InputError, match="different models"):
        a + other
    rng = np.random.default_rng(2)
    rows = pd.DataFrame({"therapist": np.repeat(["t1", "t2"], 20), "patient": np.repeat([f"p{i}" for i in range(8)], 5),
                         "x": rng.normal(size=40), "y": rng.normal(size=40)})
    formula = "y ~ x + (1 | therapist) + (1 | patient)"
    moved = rows.assign(therapist=np.where(rows["patient"] == "p0", "t2", rows["therapist"]))
    order = ["patient", "therapist"]  # the second part has one patient and one therapist
    with pytest.raises(InputError, match="different models"):
        SufficientStats.from_frame(formula, rows.iloc[:20]) + SufficientStats.from_frame(formula, moved.iloc[:5])
    with pytest.raises(InputError, match="sits under therapist"):
        SufficientStats.from_frame(formula, rows.iloc[:20], order) + SufficientStats.from_frame(formula, moved.iloc[:5],
                                                                                                 order)
    summed = SufficientStats.from_frame(formula, rows.iloc[:20], order) + SufficientStats.from_frame(
        formula, rows.iloc[20:], order)
    _assert_same_stats(summed, SufficientStats.from_frame(formula, rows), 1e-12)


def test_aliased_columns_of_the_whole_data_are_dropped() -> None:
    """A part may be rank deficient on its own (kept); the whole data decide, as lme4 does."""
    rng = np.random.default_rng(5)
    g = np.repeat(np.arange(40), 6)
    x = rng.normal(size=g.size)
    data = pd.DataFrame({"g": g, "x": x, "x2": 2.0 * x, "y": x + rng.normal(size=40)[g] + rng.normal(size=g.size)})
    fit = fit_stats(SufficientStats.from_frame("y ~ x + x2 + (1 | g)", data))
    ref = fit_mixed("y ~ x + x2 + (1 | g)", data)
    assert fit.dropped_columns == ref.dropped_columns == ["x2"]
    assert fit.reml_criterion == pytest.approx(ref.reml_criterion, rel=1e-12)


def test_lrt_from_statistics_alone() -> None:
    ref, data = load_fixture("therapy3")
    big, small = ref["formula"], ref["formula"].replace(" + session", "")
    from_stats = tl.lrt(fit_stats(SufficientStats.from_frame(small, data)),
                        fit_stats(SufficientStats.from_frame(big, data)))
    from_frame = tl.lrt(fit_mixed(small, data), fit_mixed(big, data))
    assert from_stats.refitted and from_frame.refitted
    assert from_stats.statistic == pytest.approx(from_frame.statistic, rel=1e-8, abs=1e-8)
    assert from_stats.p_value == pytest.approx(from_frame.p_value, rel=1e-6)


def test_group_labels_sorted_as_the_design_numbers_them():
    """Group labels in the order of the tuple key the design numbers groups by: piece by piece
    (``a:b``), by value where a factor's ids are numbers, as text otherwise; duplicates once;
    labels with fewer pieces than factors and an empty set of labels too."""
    from theralens.model.stats import _sorted_labels

    def expected(labels, numeric):
        parts = max(len(numeric), 1)

        def key(label):
            pieces = label.split(":", parts - 1)
            return tuple(float(x) if i < len(numeric) and numeric[i] else x for i, x in enumerate(pieces))

        return sorted(set(labels), key=key)

    rng = np.random.default_rng(3)
    two = [f"{t}:{p}" for t in rng.integers(0, 300, 400) for p in rng.integers(0, 1000, 3)]
    for numeric in [(True, True), (False, False), (True, False), (False, True)]:
        got = _sorted_labels(np.array(two, dtype=object), numeric)
        assert got.tolist() == expected(two, numeric)
    one = [str(v) for v in rng.integers(0, 10_000, 2_000)] + ["b", "a", "Z", "é"]
    assert _sorted_labels(np.array(one, dtype=object), (False,)).tolist() == expected(one, (False,))
    numbers = [str(v) for v in rng.integers(0, 10_000, 2_000)]
    assert _sorted_labels(np.array(numbers, dtype=object), (True,)).tolist() == expected(numbers, (True,))
    short = ["3:1", "10", "2:5", "2:10"]
    assert _sorted_labels(np.array(short, dtype=object), (True, True)).tolist() == ["2:5", "2:10", "3:1", "10"]
    assert _sorted_labels(np.array([], dtype=object), (True, True)).tolist() == []


@pytest.mark.parametrize("ddf", ["satterthwaite", "kenward-roger"])
def test_released_statistics_keep_the_results_and_refuse_the_rest(ddf: str) -> None:
    """release_statistics frees the per-patient blocks, the criterion and the patients' modes;
    estimates, vcov (adjusted too), varcorr, SEs, criteria and the LRT stay as they were, and
    what needs the statistics again says so in one line."""
    ref, data = load_fixture("therapy3")
    small = ref["formula"].replace("1 + alliance + expectancy | therapist", "1 + alliance | therapist")
    fit = fit_stats(SufficientStats.from_frame(ref["formula"], data), ddf=ddf)
    other = fit_stats(SufficientStats.from_frame(ref["formula"], data), ddf=ddf)
    before = (fit.fixed_effects.copy(), fit.std_errors.copy(), fit.varcorr.copy(), fit.reml_criterion, fit.nobs,
              fit.ngroups, fit.singular)
    n_inner = fit.design.inner.shape[0]
    assert n_inner > 0
    fit.release_statistics()
    assert fit.design.inner.shape[0] == 0 and fit.solution.b[0].shape[0] == 0
    pd.testing.assert_series_equal(fit.fixed_effects, before[0])
    pd.testing.assert_series_equal(fit.std_errors, before[1])
    pd.testing.assert_frame_equal(fit.varcorr, before[2])
    assert (fit.reml_criterion, fit.nobs, fit.ngroups, fit.singular) == before[3:]
    test = tl.lrt(fit_stats(SufficientStats.from_frame(small, data)), fit)
    assert test.statistic == pytest.approx(tl.lrt(fit_stats(SufficientStats.from_frame(small, data)),
                                                  other).statistic, rel=1e-12)
    assert test.statistic > 0
    refused = [lambda: fit.random_effects("therapist"), lambda: fit.conf_int_varcorr(rows=[("Residual", None, None)])]
    if ddf == "kenward-roger":  # computed with the adjusted covariance before the release: kept
        pd.testing.assert_series_equal(fit.df, other.df)
    else:  # Satterthwaite's df were not asked for before
        refused.append(lambda: fit.df)
    for use in refused:
        with pytest.raises(InputError, match="statistics were released"):
            use()
    fit.release_statistics()  # twice: nothing more to free
