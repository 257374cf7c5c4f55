"""The aims' rows beyond one machine (study/rows.py ClusterRows): the fits' statistics computed per
partition on a dask.distributed LocalCluster and summed on the client give the results.json of
the pandas engine, with one and two workers, patients split across partitions."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from results_compare import numbers_equal

from theralens.data.config import config_from_dict
from theralens.datasets import demo_paths
from theralens.errors import InputError
from theralens.model.stats import SufficientStats
from theralens.study.analysis import analyze_files
from theralens.study.rows import ClusterRows, partial_stats

distributed = pytest.importorskip("distributed", reason="dask.distributed is a dependency of the cluster path")


@pytest.fixture(scope="module")
def demo_parquet(tmp_path_factory):
    sessions, therapists = demo_paths()
    folder = tmp_path_factory.mktemp("cluster")
    path = folder / "sessions.parquet"
    pd.read_csv(sessions, dtype={"therapist": str, "patient": str}).to_parquet(path, index=False)
    return path, therapists


@pytest.fixture(scope="module")
def pandas_docs(demo_parquet):
    path, therapists = demo_parquet
    return {design: json.loads(analyze_files(path, therapists, _config(design), engine="pandas").to_json())
            for design in ("patient", "session")}


def _config(design: str):
    return config_from_dict({"design": {"level": design},
                             "therapist_moderators": {"columns": ["self_rated_alliance_skill", "cbt"]}})


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("design", ["patient", "session"])
def test_cluster_gives_the_results_of_pandas(demo_parquet, pandas_docs, tmp_path, monkeypatch, design, workers):
    path, therapists = demo_parquet
    seen = []
    statistics = ClusterRows.statistics

    def spy(self, formula):  # record the partitions of every fit (patients split across them)
        import dask.dataframe as dd

        seen.append(dd.read_parquet(self.parquet).npartitions)
        return statistics(self, formula)

    monkeypatch.setattr(ClusterRows, "statistics", spy)
    # small partitions, so that the demo's rows are split (a patient across two partitions)
    from theralens.data import scan

    export = scan.export_parquet
    monkeypatch.setattr("theralens.study.analysis.export_parquet",
                        lambda con, rel, folder: export(con, rel, folder, rows_per_file=97))
    with distributed.LocalCluster(n_workers=workers, threads_per_worker=1, processes=False,
                                  dashboard_address=None) as cluster, distributed.Client(cluster) as client:
        result = analyze_files(path, therapists, _config(design), scheduler=client, scratch=tmp_path)
        assert len(client.scheduler_info()["workers"]) == workers
    assert seen and min(seen) > 2  # every model of the study: statistics from several partitions
    assert len(seen) == len(result.models())
    assert any(n.startswith("Cluster: ") for n in result.notes)
    doc = json.loads(result.to_json())
    numbers_equal(pandas_docs[design], doc)  # 1e-8 relative (results_compare.py)


def test_a_patient_split_across_partitions_is_one_patient(demo_parquet):
    """partial_stats of two halves that cut through a patient, combined, equal the whole's statistics."""
    frame = pd.read_csv(demo_paths()[0], dtype={"therapist": str, "patient": str}).dropna()
    formula = "outcome ~ alliance + expectancy + (1 + alliance | therapist) + (1 | therapist:patient)"
    order = ["therapist:patient", "therapist"]
    cut = int(np.flatnonzero(frame["patient"].to_numpy()[1:] == frame["patient"].to_numpy()[:-1])[100]) + 1
    assert frame["patient"].iloc[cut - 1] == frame["patient"].iloc[cut]  # the cut splits this patient
    parts = [partial_stats(frame.iloc[:cut], formula, order), partial_stats(frame.iloc[cut:], formula, order)]
    whole = SufficientStats.from_frame(formula, frame, order=order)
    merged = SufficientStats.combine(parts)
    assert merged.levels[0].ngroups == whole.levels[0].ngroups
    np.testing.assert_array_equal(merged.counts, whole.counts)
    for a, b in [(merged.inner, whole.inner), (merged.sums[1], whole.sums[1]), (merged.total, whole.total)]:
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-10)
    assert partial_stats(frame.iloc[:0], formula, order) is None
    moderators = pd.DataFrame({"therapist": ["nobody"], "w": [1.0]})
    assert partial_stats(frame, formula, order, moderators) is None  # no therapist of this part has a value


def test_unreachable_scheduler_is_one_line(demo_parquet):
    path, therapists = demo_parquet
    with pytest.raises(InputError, match="cannot reach the dask scheduler at 'tcp://127.0.0.1:9'"):
        analyze_files(path, therapists, _config("patient"), scheduler="tcp://127.0.0.1:9")
    with pytest.raises(InputError, match="use --engine duckdb"):
        analyze_files(path, therapists, _config("patient"), engine="pandas", scheduler="tcp://127.0.0.1:9")


def test_cli_scheduler(demo_parquet, pandas_docs, tmp_path, capsys):
    """analyze --scheduler ADDRESS writes the pandas engine's results; an unreachable one: one line, exit 2."""
    from theralens.cli import main

    path, therapists = demo_parquet
    config = tmp_path / "study.toml"
    config.write_text('[therapist_moderators]\ncolumns = ["self_rated_alliance_skill", "cbt"]\n')
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False,
                                  dashboard_address=None) as cluster:
        code = main(["analyze", str(path), "--therapists", str(therapists), "--config", str(config), "--scheduler",
                     cluster.scheduler_address, "--scratch", str(tmp_path / "shared"), "--no-report", "--out",
                     str(tmp_path / "out")])
    assert code == 0
    doc = json.loads((tmp_path / "out" / "results.json").read_text())
    assert any("dask.distributed cluster (2 worker(s))" in n for n in doc["notes"])
    expected = dict(pandas_docs["patient"])
    doc.pop("input"), expected.pop("input")  # the same file, named in its own words
    numbers_equal(expected, doc)
    capsys.readouterr()
    assert main(["analyze", str(path), "--scheduler", "tcp://127.0.0.1:9", "--out", str(tmp_path / "bad")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "cannot reach the dask scheduler at 'tcp://127.0.0.1:9'" in err
    assert not (tmp_path / "bad" / "results.json").exists()
