"""Property-based checks (hypothesis, 200 examples each) of validation and decomposition: no
crash other than InputError on random tables; invariance to row order and id relabelling;
scale equivariance."""

from __future__ import annotations

import numpy as np
import pandas as pd
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from theralens.data.config import config_from_dict
from theralens.data.decompose import patient_level, session_level
from theralens.data.validate import validate_sessions
from theralens.errors import InputError

SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
CFG = config_from_dict({"columns": {"process": ["alliance"]}})

cell = st.one_of(
    st.none(),
    st.floats(allow_nan=True, allow_infinity=True, width=32),
    st.integers(-3, 20),
    st.sampled_from(["", "x", "1,5", "NA", "2021-03-01", "inf", " 3 "]),
)


@st.composite
def messy_tables(draw):
    n = draw(st.integers(1, 25))
    col = st.lists(cell, min_size=n, max_size=n)
    ids = st.lists(st.sampled_from(["T1", "T2", "T3", "T4", 1, 2.0, None]), min_size=n, max_size=n)
    pids = st.lists(st.sampled_from(["a", "b", "c", "d", "e", 7, None]), min_size=n, max_size=n)
    return pd.DataFrame(
        {
            "therapist": draw(ids),
            "patient": draw(pids),
            "session": draw(col),
            "outcome": draw(col),
            "alliance": draw(col),
        }
    )


@SETTINGS
@given(messy_tables())
def test_random_tables_fail_only_with_input_error(df):
    try:
        data = validate_sessions(df, CFG, source="random.csv")
        patient_level(data, CFG)
        session_level(data, CFG)
    except InputError as exc:
        assert "\n" not in str(exc)


@st.composite
def valid_tables(draw):
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    n_t = draw(st.integers(3, 6))
    rows = []
    for t in range(n_t):
        for p in range(int(rng.integers(2, 5))):
            for s in range(1, int(rng.integers(3, 6)) + 1):
                rows.append(
                    {
                        "therapist": f"T{t}",
                        "patient": f"P{t}_{p}",
                        "session": s,
                        "outcome": float(rng.normal()),
                        "alliance": float(rng.normal(5, 1)),
                    }
                )
    return pd.DataFrame(rows), int(rng.integers(0, 1000))


def _canonical(table: pd.DataFrame) -> pd.DataFrame:
    return table.sort_values(["therapist", "patient"]).reset_index(drop=True)


@SETTINGS
@given(valid_tables(), st.floats(0.01, 100.0))
def test_invariance_and_scale_equivariance(args, c):
    """Row order and id labels do not matter; scaling outcome and process by c scales the
    change measures and the components by c (one test, sharing the reference fit)."""
    df, seed = args
    base = patient_level(validate_sessions(df, CFG, source="a.csv"), CFG).table
    rng = np.random.default_rng(seed)
    t_map = {t: f"X{k}" for k, t in enumerate(rng.permutation(df["therapist"].unique()))}
    p_map = {p: f"Q{k}" for k, p in enumerate(rng.permutation(df["patient"].unique()))}
    other = df.sample(frac=1.0, random_state=seed).assign(
        therapist=lambda d: d["therapist"].map(t_map), patient=lambda d: d["patient"].map(p_map)
    )
    got = patient_level(validate_sessions(other, CFG, source="b.csv"), CFG).table
    back_t = {v: k for k, v in t_map.items()}
    back_p = {v: k for k, v in p_map.items()}
    got = got.assign(therapist=got["therapist"].map(back_t), patient=got["patient"].map(back_p))
    pd.testing.assert_frame_equal(_canonical(base), _canonical(got), check_exact=False)

    scaled = df.assign(outcome=df["outcome"] * c, alliance=df["alliance"] * c)
    got = patient_level(validate_sessions(scaled, CFG, source="a.csv"), CFG).table
    for col in ("baseline", "final", "change", "slope", "alliance_within", "alliance_between"):
        np.testing.assert_allclose(got[col], base[col] * c, rtol=1e-9, atol=1e-9)


@SETTINGS
@given(
    st.lists(
        st.tuples(
            st.floats(allow_nan=False, allow_infinity=False, width=64),
            st.text(alphabet=st.characters(codec="utf-8", exclude_categories=["Cc", "Cs"]), max_size=8),
            st.integers(-(10**6), 10**6),
        ),
        min_size=1,
        max_size=20,
    ),
    st.sampled_from([".csv", ".tsv", ".parquet"]),
)
def test_reading_round_trips(tmp_path_factory, rows, ext):
    df = pd.DataFrame(rows, columns=["x", "label", "n"])
    path = tmp_path_factory.mktemp("read") / f"t{ext}"
    if ext == ".parquet":
        df.to_parquet(path)
    else:
        df.to_csv(path, index=False, sep="\t" if ext == ".tsv" else ",")
    from theralens.data.read import read_table

    try:
        got = read_table(path)
    except InputError as exc:  # e.g. a table whose text makes every row blank
        assert "\n" not in str(exc)
        return
    assert list(got.columns) == ["x", "label", "n"] and len(got) == len(df)
    np.testing.assert_allclose(got["x"].to_numpy(float), df["x"].to_numpy(float), rtol=1e-15)
    np.testing.assert_array_equal(got["n"].to_numpy(), df["n"].to_numpy())
