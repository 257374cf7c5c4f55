"""Checks of the sessions and therapist tables: every user error is one line naming
the file, column, rows or therapist (data/validate.py)."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pyreadstat
import pytest

from theralens.data.config import config_from_dict
from theralens.data.read import read_table
from theralens.data.validate import safe_name, validate_sessions, validate_therapists
from theralens.errors import InputError

SRC = "clinic.csv"


def sessions(n_therapists: int = 4, n_patients: int = 3, n_sessions: int = 4) -> pd.DataFrame:
    """Valid long table: outcome every second session, process every session."""
    rng = np.random.default_rng(7)
    rows = []
    for t in range(n_therapists):
        for p in range(n_patients):
            for s in range(1, n_sessions + 1):
                rows.append(
                    {
                        "therapist": f"T{t}",
                        "patient": f"P{t}{p}",
                        "session": s,
                        "outcome": round(rng.normal(), 3) if s % 2 else np.nan,
                        "alliance": round(rng.normal(5, 1), 2),
                        "expectancy": round(rng.normal(3, 1), 2),
                    }
                )
    return pd.DataFrame(rows)


def fails(df, *parts, config=None, source=SRC) -> str:
    with pytest.raises(InputError) as err:
        validate_sessions(df, config, source=source)
    msg = str(err.value)
    assert "\n" not in msg
    assert source in msg
    for part in parts:
        assert part in msg, msg
    return msg


def test_valid_table_canonical_form():
    df = sessions()
    v = validate_sessions(df, source=SRC)
    s = v.sessions
    assert list(s.columns) == ["row", "therapist", "patient", "time", "outcome", "alliance", "expectancy"]
    assert v.processes == ("alliance", "expectancy")
    assert v.counts["therapists"] == 4 and v.counts["patients"] == 12
    assert v.counts["rows_used"] == len(df) and v.exclusions == []
    assert v.counts["outcome_assessments"] == int(df["outcome"].notna().sum())
    assert s["row"].min() == 2  # the header is row 1
    assert s["time"].dtype == float


def test_renamed_columns_and_ids_normalised():
    df = sessions().rename(columns={"therapist": "tid", "alliance": "Working Alliance (WAI)"})
    df["tid"] = df["tid"].str[1:].astype(int).astype(float)  # 0.0, 1.0, ...
    cfg = config_from_dict({"columns": {"therapist": "tid", "process": ["Working Alliance (WAI)", "expectancy"]}})
    v = validate_sessions(df, cfg, source=SRC)
    assert v.processes[0] == "Working_Alliance_WAI"
    assert v.labels["Working_Alliance_WAI"] == "Working Alliance (WAI)"
    assert set(v.sessions["therapist"]) == {"0", "1", "2", "3"}
    assert all(name.isidentifier() for name in v.sessions.columns)


def test_safe_name():
    assert safe_name("Alliance") == "Alliance"
    assert safe_name("1st alliance") == "x1st_alliance"
    assert safe_name("lambda") == "lambda_score"
    assert safe_name("outcome") == "outcome_score"
    assert safe_name("Erwartung (ä)") == "Erwartung_a"
    assert safe_name("a", {"a"}) == "a_2"


def test_missing_column_suggests_closest():
    df = sessions().rename(columns={"outcome": "Outcome"})
    fails(df, '"outcome"', 'did you mean "Outcome"', "[columns] outcome")
    df = sessions().rename(columns={"alliance": "aliance"})
    fails(df, '"alliance"', 'did you mean "aliance"', "[columns] process")


def test_text_in_numeric_column_shows_rows():
    df = sessions()
    df["alliance"] = df["alliance"].astype(object)
    df.loc[[3, 7, 9, 10], "alliance"] = ["high", "n.a.", "?", "5,5,5"]
    # "n.a." is not a missing-value token, "?" is
    fails(df, "'alliance'", "rows 5, 9, 12", "'high'", "'n.a.'", "numbers")


def test_decimal_comma_is_read():
    df = sessions()
    df["outcome"] = df["outcome"].map(lambda v: "" if pd.isna(v) else f"{v}".replace(".", ","))
    v = validate_sessions(df, source=SRC)
    assert v.sessions["outcome"].notna().sum() == sessions()["outcome"].notna().sum()
    assert any("decimal comma" in n for n in v.notes)


def test_infinite_values():
    df = sessions()
    df.loc[4, "outcome"] = np.inf
    fails(df, "'outcome'", "infinite", "row 6")


def test_all_values_missing():
    df = sessions()
    df["expectancy"] = np.nan
    fails(df, "'expectancy'", "no values")


def test_dates_in_several_formats():
    df = sessions(n_sessions=3)
    days = {1: "2021-03-01", 2: "08.03.2021", 3: "15/03/2021"}
    df["session"] = df["session"].map(days)
    v = validate_sessions(df, source=SRC)
    assert v.time_kind == "date"
    assert sorted(v.sessions["time"].unique()) == [0.0, 1.0, 2.0]  # weeks
    assert any("weeks" in n for n in v.notes)


def test_unparseable_and_ambiguous_dates():
    df = sessions(n_sessions=3)
    df["session"] = df["session"].map({1: "2021-03-01", 2: "2021-03-08", 3: "2021-03-15"})
    df.loc[5, "session"] = "next week"
    fails(df, "'session'", "row 7", "'next week'", "dates like 2021-03-15")
    df = sessions(n_sessions=3)
    df["session"] = df["session"].map({1: "01/03/2021", 2: "02/03/2021", 3: "03/03/2021"})
    fails(df, "'session'", "day/month or month/day", "YYYY-MM-DD")
    df = sessions(n_sessions=3)
    df["session"] = df["session"].map({1: "13/03/2021", 2: "03/14/2021", 3: "2021-03-20"})
    fails(df, "mixes day/month and month/day")


def test_datetime_column_from_excel():
    df = sessions(n_sessions=3)
    df["session"] = pd.to_datetime("2022-01-03") + pd.to_timedelta((df["session"] - 1) * 7, "D")
    v = validate_sessions(df, source=SRC)
    assert sorted(v.sessions["time"].unique()) == [0.0, 1.0, 2.0]


def test_duplicated_patient_time():
    df = sessions()
    df = pd.concat([df, df.iloc[[5]]], ignore_index=True)
    fails(df, "patient P01", "session 2", "rows 7, 50", "one row per patient")


def test_patient_under_two_therapists():
    df = sessions()
    df.loc[2, "therapist"] = "T1"
    fails(df, "patient P00", "T0", "T1", "row 4", "one therapist")


def test_fewer_than_three_therapists():
    fails(sessions(n_therapists=2), "only 2 therapist", "at least 3")


def test_process_without_within_variance():
    df = sessions()
    df["alliance"] = df["therapist"].map({"T0": 4.0, "T1": 5.0, "T2": 6.0, "T3": 5.5})
    fails(df, "'alliance'", "within therapists", "therapist table")
    df["alliance"] = 5.0
    fails(df, "'alliance'", "same value in every row")


def test_one_assessment_per_patient():
    df = sessions()
    df["outcome"] = np.where(df["session"] == 1, 1.0 + 0.1 * np.arange(len(df)), np.nan)
    cfg = config_from_dict({"design": {"level": "session"}})
    fails(df, "at most one outcome assessment", "session-level", config=cfg)
    fails(df, "at most one outcome assessment", "baseline")


def test_rows_without_ids_or_values_are_dropped_and_counted():
    df = sessions()
    df.loc[0, "therapist"] = None
    df.loc[1, "patient"] = " "
    df.loc[2, "session"] = np.nan
    df.loc[5, ["outcome", "alliance", "expectancy"]] = np.nan
    v = validate_sessions(df, source=SRC)
    reasons = {e.reason: e for e in v.exclusions}
    assert reasons["no therapist id (column 'therapist')"].examples == (2,)
    assert reasons["no patient id (column 'patient')"].rows == 1
    assert reasons["no time (column 'session')"].rows == 1
    assert reasons["neither an outcome nor a process value"].examples == (7,)
    assert v.counts["rows_excluded"] == 4 and v.counts["rows_used"] == len(df) - 4
    assert all(e.patients_removed == 0 for e in v.exclusions)
    d = v.exclusions[0].to_dict()
    assert set(d) == {"reason", "rows", "patients", "patients_removed"}
    assert v.exclusions[0].to_dict(examples=True)["examples"] == [2]


def test_blank_rows_are_not_data(tmp_path):
    path = tmp_path / "s.csv"
    df = sessions()
    text = df.to_csv(index=False).splitlines()
    text.insert(3, ",,,,,")
    path.write_text("\n".join(text) + "\n")
    v = validate_sessions(read_table(path), source=str(path))
    assert v.counts["rows_empty"] == 1 and v.exclusions == []
    df2 = read_table(path)
    df2["alliance"] = df2["alliance"].astype(object)
    df2.loc[10, "alliance"] = "bad"
    with pytest.raises(InputError, match="row 12 "):  # line 12 of the file
        validate_sessions(df2, source=str(path))


def test_spss_labels_explained(tmp_path):
    df = sessions()
    df["therapist"] = df["therapist"].str[1:].astype(float)
    df["patient"] = np.arange(len(df), dtype=float) // 4
    df["alliance"] = np.tile([1.0, 2.0, 1.0, 2.0, 2.0, 1.0], len(df) // 6)
    path = tmp_path / "s.sav"
    pyreadstat.write_sav(
        df,
        str(path),
        variable_value_labels={"alliance": {1.0: "low", 2.0: "high"}},
        variable_measure={"alliance": "nominal"},
    )
    data = read_table(path)
    msg = fails(data, "'alliance'", "value labels", "scale", source=str(path))
    assert "rows 1, " in msg  # SPSS cases are counted from 1


def test_covariates_dummy_coded():
    df = sessions()
    df["sex"] = np.where(df["patient"].str[-1] == "0", "f", "m")
    cfg = config_from_dict({"columns": {"covariates": ["sex"]}})
    v = validate_sessions(df, cfg, source=SRC)
    assert v.covariates == ("sex_m",)
    assert v.labels["sex_m"] == "sex = m"
    assert set(v.sessions["sex_m"]) == {0.0, 1.0}
    df["age"] = 40
    cfg = config_from_dict({"columns": {"covariates": ["age"]}})
    fails(df, "'age'", "same value", config=cfg)


# ----------------------------------------------------------------------------- therapists

TSRC = "therapists.csv"


@pytest.fixture
def data():
    return validate_sessions(sessions(), source=SRC)


def therapists() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "therapist": ["T0", "T1", "T2", "T3"],
            "orientation": ["CBT", "psychodynamic", "CBT", "integrative"],
            "cbt": ["yes", "no", "yes", "no"],
            "school": ["CBT", "other", "CBT", "other"],
            "skill": [5.5, 6.0, np.nan, 4.0],
        }
    )


def mods(*cols):
    return config_from_dict({"therapist_moderators": {"columns": list(cols)}})


def tfails(tdf, data, *parts, config=None) -> None:
    with pytest.raises(InputError) as err:
        validate_therapists(tdf, data, config or mods(), source=TSRC)
    msg = str(err.value)
    assert "\n" not in msg and TSRC in msg
    for part in parts:
        assert part in msg, msg


def test_therapist_moderators_coded(data):
    out = validate_therapists(therapists(), data, mods("skill", "cbt", "school", "orientation"), source=TSRC)
    assert list(out["therapist"]) == ["T0", "T1", "T2", "T3"]
    assert out["skill"].isna().sum() == 1
    assert list(out["cbt"]) == [1.0, 0.0, 1.0, 0.0]  # yes = 1, keeps its name
    assert list(out["school_other"]) == [0.0, 1.0, 0.0, 1.0]  # level named
    assert {"orientation_integrative", "orientation_psychodynamic"} <= set(out.columns)
    assert "orientation_CBT" not in out.columns  # most frequent level is the reference
    assert out.attrs["moderators"]["orientation"] == ["orientation_integrative", "orientation_psychodynamic"]
    assert out.attrs["labels"]["school_other"] == "school = other"
    assert any("skill" in n and "missing for 1" in n for n in out.attrs["notes"])


def test_data_therapist_missing_from_table(data):
    out = validate_therapists(therapists().iloc[:3], data, mods("skill"), source=TSRC)
    assert out.attrs["missing_therapists"] == ["T3"]
    assert np.isnan(out.loc[out["therapist"] == "T3", "skill"]).all()


def test_numeric_ids_match_text_ids():
    df = sessions()
    df["therapist"] = df["therapist"].str[1:].astype(int)
    v = validate_sessions(df, source=SRC)
    t = therapists()
    t["therapist"] = ["0", "1.0", "2", "3"]
    out = validate_therapists(t, v, mods("skill"), source=TSRC)
    assert out["skill"].notna().sum() == 3


def test_therapist_table_errors(data):
    t = therapists()
    tfails(t.rename(columns={"therapist": "Therapist"}), data, 'did you mean "Therapist"')
    tfails(t, data, '"skil"', 'did you mean "skill"', config=mods("skil"))
    dup = pd.concat([t, t.iloc[[1]]], ignore_index=True)
    tfails(dup, data, "therapist T1", "2 times", "rows 3, 6")
    extra = pd.concat([t, pd.DataFrame({"therapist": ["T9"]})], ignore_index=True)
    tfails(extra, data, "T9", "not in the sessions data")
    noid = t.copy()
    noid.loc[2, "therapist"] = None
    tfails(noid, data, "row 4", "no therapist id")
    const = t.assign(skill=5.0)
    tfails(const, data, "'skill'", "same value for every therapist", config=mods("skill"))
    mixed = t.assign(skill=["5", "six", "4", "3"])
    tfails(mixed, data, "'skill'", "mixes numbers and text", "row 3", config=mods("skill"))
    many = pd.DataFrame({"therapist": t["therapist"], "name": ["a", "b", "c", "d"]})
    ok = validate_therapists(many, data, mods("name"), source=TSRC)
    assert ok.shape[1] == 4
    empty = t.assign(skill=np.nan)
    tfails(empty, data, "'skill'", "no values", config=mods("skill"))
    infinite = t.assign(skill=[1.0, np.inf, 2.0, 3.0])
    tfails(infinite, data, "'skill'", "infinite", "row 3", config=mods("skill"))


def test_too_many_categories():
    df = sessions(n_therapists=12)
    v = validate_sessions(df, source=SRC)
    t = pd.DataFrame({"therapist": [f"T{i}" for i in range(12)], "name": list("abcdefghijkl")})
    tfails(t, v, "'name'", "12 different text values", config=mods("name"))


def test_no_configured_moderators_means_every_column(data):
    """A therapist table without [therapist_moderators] columns: each column but the id is a
    moderator, coded exactly as if it had been configured."""
    auto = validate_therapists(therapists(), data, mods(), source=TSRC)
    listed = validate_therapists(therapists(), data, mods("orientation", "cbt", "school", "skill"), source=TSRC)
    assert list(auto.attrs["moderators"]) == ["orientation", "cbt", "school", "skill"]
    assert auto.attrs["moderators_from"] == "table" and listed.attrs["moderators_from"] == "config"
    pd.testing.assert_frame_equal(auto, listed)
    assert auto.attrs["labels"] == listed.attrs["labels"]


def test_therapist_table_of_ids_only_is_still_checked(data):
    ids = therapists()[["therapist"]]
    out = validate_therapists(ids, data, mods(), source=TSRC)
    assert list(out.columns) == ["therapist"] and out.attrs["moderators"] == {}
    tfails(pd.concat([ids, ids.iloc[[0]]], ignore_index=True), data, "therapist T0", "2 times", "rows 2, 6")


def test_unusable_column_of_an_unconfigured_table_says_why_it_is_a_moderator():
    """Text that is not a few categories is refused as for a configured moderator, and the
    message says that every column is a moderator when none is configured."""
    v = validate_sessions(sessions(n_therapists=12), source=SRC)
    t = pd.DataFrame({"therapist": [f"T{i}" for i in range(12)], "name": list("abcdefghijkl"),
                      "skill": np.arange(12.0)})
    tfails(t, v, "'name'", "12 different text values", "every column of the therapist table is a moderator",
           "delete this column from the table or list the moderators in the config")
    with pytest.raises(InputError) as err:
        validate_therapists(t, v, mods("name"), source=TSRC)
    assert "every column" not in str(err.value)  # configured: the plain message
    assert validate_therapists(t, v, mods("skill"), source=TSRC).attrs["moderators"] == {"skill": ["skill"]}
    tfails(t.assign(name=np.nan), v, "'name'", "no values; fill it in or delete the column")


@pytest.mark.parametrize("values, dtype", [
    (["a", " b ", "NA", None, np.nan, "3.0", "-4.00", "3", "x.0", "", "?", "3.0", " b "], object),
    (["a", " b ", "NA", None, "3.0", "7.00"], "string"),
    ([1, "1", 1.0, None, " 2.0", True, "2.0"], object),  # mixed: 1 and 1.0 are equal keys, not equal text
    ([None, np.nan], object),
])
def test_text_views_of_distinct_values_equal_cell_by_cell(values: list, dtype: object) -> None:
    """_as_text and normalize_ids convert text columns one distinct value at a time: the same
    as converting every cell (trimmed, missing tokens None, '3.0' -> '3')."""
    from theralens.data.validate import MISSING_TOKENS, _as_text, normalize_ids

    series = pd.Series(values, dtype=dtype, index=np.arange(len(values)) * 3)

    def cell(v: object) -> str | None:
        if pd.isna(v):
            return None
        t = str(v).strip()
        return None if t.lower() in MISSING_TOKENS else t

    expected = [cell(v) for v in series.to_numpy(dtype=object)]
    text = _as_text(series)
    assert text.index.equals(series.index) and text.dtype == object and list(text) == expected
    ids = normalize_ids(series)
    pattern = re.compile(r"^(-?\d+)\.0+$")
    assert ids.index.equals(series.index) and list(ids) == [None if t is None else pattern.sub(r"\1", t)
                                                             for t in expected]


def test_dropped_rows_count_the_patients_touched_and_removed():
    """An exclusion counts the patients with a dropped row and those left with none (ids compared
    by value, whatever their storage)."""
    df = sessions()
    df.loc[df["patient"] == "P01", "session"] = np.nan  # every row of P01
    df.loc[(df["patient"] == "P12") & (df["session"] == 2), "session"] = np.nan  # one row of P12
    df.loc[(df["patient"] == "P20") & (df["session"] == 2), "patient"] = None  # a row without an id
    df.loc[(df["patient"] == "P20") & (df["session"] == 3), "session"] = np.nan
    v = validate_sessions(df, source=SRC)
    exc = {e.reason: e for e in v.exclusions}["no time (column 'session')"]
    assert (exc.rows, exc.patients, exc.patients_removed) == (6, 3, 1)
    assert "P01" not in set(v.sessions["patient"]) and "P12" in set(v.sessions["patient"])
