"""A fourth level (issue #11): [columns] service = "clinic": sessions in patients in therapists in
services, a service random intercept in every model; the service id validated like the other
ids on both engines (a therapist in two services is a one-line error naming the therapist)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from results_compare import numbers_equal

from theralens.data.config import config_from_dict
from theralens.data.read import read_table
from theralens.data.scan import scan_files
from theralens.data.validate import validate_sessions
from theralens.datasets import demo_paths
from theralens.errors import InputError
from theralens.study.analysis import analyze_files


def with_clinics(demo: pd.DataFrame) -> pd.DataFrame:
    s = demo.copy()
    codes = pd.factorize(s["therapist"], sort=True)[0]
    s["clinic"] = np.array([f"C{k + 1}" for k in codes // 6], dtype=object)
    return s


@pytest.fixture(scope="module")
def demo() -> pd.DataFrame:
    return pd.read_csv(demo_paths()[0], dtype={"therapist": str, "patient": str})


def config(design: str):
    return config_from_dict({"design": {"level": design}, "columns": {"service": "clinic"},
                             "therapist_moderators": {"columns": ["cbt"]}})


@pytest.mark.parametrize("design", ["patient", "session"])
def test_service_intercept_in_every_model_on_both_engines(tmp_path, demo, design):
    path = tmp_path / "s.parquet"
    with_clinics(demo).to_parquet(path, index=False)
    docs = {}
    for engine in ("pandas", "duckdb"):
        result = analyze_files(path, demo_paths()[1], config(design), engine=engine)
        docs[engine] = json.loads(result.to_json())
        for spec in result.models():
            assert spec.formula.endswith(" + (1 | service)")
            assert spec.fit.ngroups["service"] == 7
            assert "service" in set(spec.fit.varcorr["grp"])
    doc = docs["pandas"]
    assert doc["n"]["services"] == 7
    clinic = with_clinics(demo).groupby("therapist")["clinic"].first()
    assert all(t["service"] == clinic[t["therapist"]] for t in doc["therapists"])
    numbers_equal(docs["pandas"], docs["duckdb"])  # 1e-8 relative (results_compare.py)
    without = json.loads(analyze_files(path, demo_paths()[1], config_from_dict(
        {"design": {"level": design}, "therapist_moderators": {"columns": ["cbt"]}}), engine="pandas").to_json())
    assert "services" not in without["n"] and "service" not in without["models"][0]["formula"]


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_service_ids_are_checked_like_the_other_ids(tmp_path, demo, fmt):
    s = with_clinics(demo)
    s.loc[[5, 6], "clinic"] = np.nan  # rows without a service id: left out and counted
    t = s.loc[0, "therapist"]
    s.loc[s.index[s["therapist"] == t][-1], "clinic"] = "C9"  # the therapist's last row in another service
    path = tmp_path / f"s.{fmt}"
    s.to_csv(path, index=False) if fmt == "csv" else s.to_parquet(path, index=False)
    cfg = config("patient")
    with pytest.raises(InputError) as pandas_error:
        validate_sessions(read_table(path), cfg, source=str(path))
    with pytest.raises(InputError) as duck_error:
        scan_files(path, cfg, source=str(path))
    message = str(pandas_error.value)
    assert str(duck_error.value) == message and "\n" not in message
    assert f"therapist {t} appears under services C1 (" in message and "C9 (row" in message
    assert "one service each" in message
    s.loc[s["therapist"] == t, "clinic"] = "C1"  # fixed: now only the rows without an id are left out
    s.loc[[5, 6], "clinic"] = np.nan
    s.to_csv(path, index=False) if fmt == "csv" else s.to_parquet(path, index=False)
    expected = validate_sessions(read_table(path), cfg, source=str(path))
    with scan_files(path, cfg, source=str(path)) as scanned:
        assert scanned.data.exclusions == expected.exclusions
        assert scanned.data.counts == expected.counts
    reasons = [e.reason for e in expected.exclusions]
    assert "no service id (column 'clinic')" in reasons
    with pytest.raises(InputError, match='no column "clinic" for the service id'):
        validate_sessions(demo, cfg, source="demo")


def test_one_service_is_refused(tmp_path, demo):
    s = demo.assign(clinic="C1")
    path = tmp_path / "one.csv"
    s.to_csv(path, index=False)
    with pytest.raises(InputError, match="has 1 service"):
        analyze_files(path, None, config_from_dict({"columns": {"service": "clinic"}}), engine="pandas")
