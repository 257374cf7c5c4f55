"""Formula parsing and design construction: lme4 syntax, names and nesting checks."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import theralens as tl
from theralens.errors import InputError, ModelSpecError
from theralens.model.formula import parse_formula


def test_parse_random_terms() -> None:
    p = parse_formula("y ~ a*b + (1 + x | g) + (0 + z | h) + (w || k) + (1 | c/d) + (1 | e:f)")
    assert p.response == "y"
    assert p.fixed == "a*b"
    got = [(t.lhs, t.group, t.factors) for t in p.random]
    assert got == [
        ("1 + x", "g", ("g",)),
        ("0 + z", "h", ("h",)),
        ("1", "k", ("k",)),
        ("0 + w", "k", ("k",)),
        ("1", "c", ("c",)),
        ("1", "d:c", ("d", "c")),
        ("1", "e:f", ("e", "f")),
    ]


def test_fixed_part_defaults_to_intercept() -> None:
    assert parse_formula("y ~ (1 | g)").fixed == "1"


@pytest.mark.parametrize("bad", ["y = x + (1|g)", "y ~ x", "~ x + (1|g)", "y ~ x + (1 | g"])
def test_bad_formulas_are_refused(bad: str) -> None:
    with pytest.raises(ModelSpecError):
        parse_formula(bad)


def _nested_data(seed: int = 1) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for t in range(12):
        ut = rng.normal()
        for p in range(4):
            up = rng.normal(scale=0.5)
            for s in range(5):
                x = rng.normal()
                rows.append({"therapist": f"T{t}", "patient": f"T{t}P{p}", "session": s, "x": x,
                             "y": 1 + 0.5 * x + ut + up + rng.normal()})
    return pd.DataFrame(rows)


def test_crossed_factors_get_a_clear_error() -> None:
    df = _nested_data()
    df.loc[df.index[:3], "therapist"] = "T5"  # patient T0P0 now also seen by therapist T5
    with pytest.raises(ModelSpecError) as err:
        tl.fit_mixed("y ~ x + (1 | therapist) + (1 | patient)", df)
    msg = str(err.value)
    assert "crossed" in msg and "patient" in msg and "therapist" in msg and "T0P0" in msg
    assert "\n" not in msg


def test_missing_rows_are_dropped_and_counted() -> None:
    df = _nested_data()
    df.loc[[3, 10, 11], "x"] = np.nan
    df.loc[20, "y"] = np.nan
    m = tl.fit_mixed("y ~ x + (1 | therapist) + (1 | patient)", df)
    assert m.n_dropped == 4
    assert m.nobs == len(df) - 4
    assert "dropped" in m.summary()


def test_missing_column_is_named() -> None:
    with pytest.raises(InputError, match="clinic"):
        tl.fit_mixed("y ~ x + (1 | clinic)", _nested_data())


def test_interaction_grouping_equals_unique_ids() -> None:
    """(1 | therapist:patient) with ids unique within therapist == (1 | patient) with global ids."""
    df = _nested_data()
    df["local"] = df["patient"].str.split("P").str[1]
    a = tl.fit_mixed("y ~ x + (1 | therapist) + (1 | therapist:local)", df)
    b = tl.fit_mixed("y ~ x + (1 | therapist) + (1 | patient)", df)
    c = tl.fit_mixed("y ~ x + (1 | therapist/local)", df)
    assert a.reml_criterion == pytest.approx(b.reml_criterion, abs=1e-8)
    assert c.reml_criterion == pytest.approx(b.reml_criterion, abs=1e-8)
    assert a.ngroups == {"therapist:local": 48, "therapist": 12}
    assert c.ngroups == {"local:therapist": 48, "therapist": 12}


def test_depth_four_nesting_runs() -> None:
    rng = np.random.default_rng(4)
    rows = []
    for c in range(4):
        for t in range(4):
            for p in range(4):
                for s in range(4):
                    for _ in range(2):
                        rows.append({"clinic": c, "therapist": f"{c}-{t}", "patient": f"{c}-{t}-{p}",
                                     "visit": f"{c}-{t}-{p}-{s}", "x": rng.normal()})
    df = pd.DataFrame(rows)
    df["y"] = df["x"] + rng.normal(size=len(df))
    for col, sd in [("clinic", 1.0), ("therapist", 0.7), ("patient", 0.5), ("visit", 0.3)]:
        eff = {k: rng.normal(scale=sd) for k in df[col].unique()}
        df["y"] += df[col].map(eff)
    m = tl.fit_mixed("y ~ x + (1 | clinic) + (1 | therapist) + (1 | patient) + (1 | visit)", df)
    assert m.converged
    assert list(m.ngroups.values()) == [256, 64, 16, 4]
    assert len(m.varcorr) == 5


def test_building_a_design_leaves_no_cyclic_garbage_of_the_data() -> None:
    """formulaic's materializer leaves reference cycles holding evaluated data columns;
    build_design frees them at once, so repeated fits on large data do not pile them up
    until Python's cyclic collector happens to run (peak memory, benchmarks/RESULTS.md)."""
    import gc

    from theralens.model.design import build_design

    rng = np.random.default_rng(3)
    n = 400
    df = pd.DataFrame({"y": rng.normal(size=n), "x": rng.normal(size=n), "c": rng.choice(["a", "b"], n),
                       "g": np.repeat(np.arange(40), 10)})
    parsed = parse_formula("y ~ x * c + (1 + x | g)")
    build_design(parsed, df)  # warm-up: imports and caches
    gc.collect()
    gc.disable()  # no automatic collection: whatever cyclic garbage the build leaves stays
    try:
        design = build_design(parsed, df)
        left = gc.collect()  # unreachable objects found (cycles the build left behind)
    finally:
        gc.enable()
    assert design.X.shape == (n, 4)
    assert left == 0


def _same_design(a, b) -> None:
    """Two designs hold the same rows, columns, terms, levels and theta layout."""
    assert a.formula == b.formula and a.fixed_names == b.fixed_names
    np.testing.assert_array_equal(a.y, b.y)
    np.testing.assert_array_equal(a.X, b.X)
    assert [(t.spec, t.columns, t.name) for t in a.terms] == [(t.spec, t.columns, t.name) for t in b.terms]
    for s, t in zip(a.terms, b.terms):
        np.testing.assert_array_equal(s.Z, t.Z)
    assert [(lv.group, lv.theta_slices, lv.numeric, [t.columns for t in lv.terms]) for lv in a.levels] == \
        [(lv.group, lv.theta_slices, lv.numeric, [t.columns for t in lv.terms]) for lv in b.levels]
    for s, t in zip(a.levels, b.levels):
        np.testing.assert_array_equal(s.codes, t.codes)
        np.testing.assert_array_equal(s.labels, t.labels)
    assert len(a.parents) == len(b.parents) and all(np.array_equal(p, q) for p, q in zip(a.parents, b.parents))
    assert a.n_dropped == b.n_dropped and a.dropped_columns == b.dropped_columns and a.row_index.equals(b.row_index)


def test_design_without_a_random_slope_equals_the_built_one() -> None:
    """with_random_columns (a slope left out of the main model's design) equals build_design of that
    formula, and its fit is the same to the last bit; other formulas give None."""
    from theralens.model.design import build_design, with_random_columns
    from theralens.model.fit import fit_design

    rng = np.random.default_rng(3)
    n = 400
    g = rng.integers(0, 12, n)
    p = g * 10 + rng.integers(0, 4, n)
    x, z = rng.standard_normal(n), rng.standard_normal(n)
    y = 0.5 * x + rng.standard_normal(12)[g] * (1 + 0.3 * z) + rng.standard_normal(60 * 2)[p % 120] * 0.5
    y += rng.standard_normal(n)
    df = pd.DataFrame({"y": y, "x": x, "z": z, "g": g.astype(str), "p": (p % 120).astype(str)})
    df.loc[5, "x"] = np.nan  # a dropped row: the same rows in both
    main_f = "y ~ x + z + (1 + x + z | g) + (1 | g:p)"
    main = build_design(parse_formula(main_f), df)
    for reduced in ("y ~ x + z + (1 + z | g) + (1 | g:p)", "y ~ x + z + (1 + x | g) + (1 | g:p)",
                    "y ~ x + z + (1 | g) + (1 | g:p)", "y ~ x + z + (0 + z | g) + (1 | g:p)"):
        parsed = parse_formula(reduced)
        got = with_random_columns(main, parsed)
        assert got is not None
        built = build_design(parsed, df)
        _same_design(got, built)
        a, b = fit_design(got, reduced), fit_design(built, reduced)
        assert a.reml_criterion == b.reml_criterion
        np.testing.assert_array_equal(a.solution.theta, b.solution.theta)
        np.testing.assert_array_equal(a.solution.beta, b.solution.beta)
    for other in ("y ~ x + (1 + z | g) + (1 | g:p)",  # another fixed part
                  "y ~ x + z + (1 + z | g)",  # another set of terms
                  "y ~ x + z + (1 + z | p) + (1 | g:p)",  # another grouping factor
                  "y ~ x + z + (1 + I(z * 2) | g) + (1 | g:p)",  # not plain names
                  "y ~ x + z + (1 + x | g) + (1 + x | g:p)"):  # a column the main term does not have
        assert with_random_columns(main, parse_formula(other)) is None


def test_kept_formulaic_parse_gives_the_same_model_matrix() -> None:
    """_model_matrix reuses formulaic's parse of the text: the same matrix and names as parsing it
    with the data each time; a formula whose parse needs the data ('.') or fails goes to formulaic as
    text."""
    from formulaic import model_matrix

    from theralens.model.design import _formulaic, _model_matrix

    rng = np.random.default_rng(0)
    df = pd.DataFrame({"y": rng.standard_normal(30), "x": rng.standard_normal(30), "z": rng.standard_normal(30),
                       "f": rng.choice(["a", "b", "c"], 30)})
    for rhs in ("x + z", "x * f", "x:z + C(f)", "np.log(np.abs(x)) + z"):
        X, names, raw = _model_matrix(rhs, df, {"y": 0, "x": 1, "z": 2, "f": 3}, "test")
        ref = model_matrix(rhs, df, na_action="ignore", output="numpy")
        np.testing.assert_array_equal(X, np.asarray(ref, dtype=float))
        assert raw == list(ref.model_spec.column_names)
        assert _formulaic(rhs) is _formulaic(rhs)
    assert _formulaic(". - y") == ". - y"  # parsed with the data's columns
    with pytest.raises(ModelSpecError, match="cannot build"):
        _model_matrix("x +", df, {}, "test")
