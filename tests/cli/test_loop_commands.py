"""theralens stability and theralens training on the demo files (a subprocess, as a user runs
them): each writes the study's results.json with its section, its tables and the report;
``theralens report`` rebuilds that report byte for byte from results.json alone."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from clirun import fingerprint, run_cli

from theralens.datasets import load_demo_training
from theralens.study.document import validate_document

CONFIG = '[therapist_moderators]\ncolumns = ["cbt"]\n\n[training]\nstart = "start_date"\n'


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory, demo_frames) -> Path:
    d = tmp_path_factory.mktemp("loop")
    s, t = demo_frames
    s.to_csv(d / "sessions.csv", index=False)
    t.merge(load_demo_training(), on="therapist").to_csv(d / "therapists.csv", index=False)
    (d / "study.toml").write_text(CONFIG, encoding="utf-8")
    return d


def _run(files: Path, command: str, out: str) -> dict:
    r = run_cli(command, "sessions.csv", "--therapists", "therapists.csv", "--config", "study.toml", "--out", out,
                cwd=files, timeout=600)
    assert r.returncode == 0, r.stderr
    doc = json.loads((files / out / "results.json").read_text())
    validate_document(doc)
    return doc


def _report_rebuilds(files: Path, out: str) -> None:
    before = fingerprint(files / out)
    rebuilt = files / f"{out}-rebuilt"
    r = run_cli("report", f"{out}/results.json", "--out", str(rebuilt), cwd=files)
    assert r.returncode == 0, r.stderr
    after = fingerprint(rebuilt)
    same = {k: v for k, v in before.items() if k.startswith(("report.html", "therapists/"))}
    assert same and all(after[k] == v for k, v in same.items())


def test_stability_command(files):
    doc = _run(files, "stability", "stab")
    sec = doc["stability"]
    assert "training" not in doc and {"aim1", "aim2", "therapists"} <= set(doc)
    assert [r["process"] for r in sec["rows"]] == ["alliance", "expectancy"]
    for r in sec["rows"]:
        assert {"process", "correlation", "ci_low", "ci_high"} <= set(r)
        lo = r["ci_low"]
        assert lo is None or -1 <= lo <= r["correlation"] <= r["ci_high"] <= 1
        # the verdict follows the interval
        expected = ("no interval" if lo is None else "supported" if lo >= sec["stable_r"]
                    else "partly stable" if lo > 0 else "not supported")
        assert r["verdict"] == expected
    tables = files / "stab" / "tables"
    for name in ("stability.csv", "stability_therapists.csv", "stability_splits.csv", "stability_labels.csv",
                 "aim1_effects.csv"):
        assert (tables / name).exists(), name
    csv = pd.read_csv(tables / "stability.csv")
    assert csv["correlation"].tolist() == pytest.approx([r["correlation"] for r in sec["rows"]])
    report = (files / "stab" / "report.html").read_text()
    assert 'id="stability"' in report and 'href="#stability"' in report
    assert all(r["verdict_text"].split(":")[0] in report for r in sec["rows"])
    pages = list((files / "stab" / "therapists").glob("*.html"))
    assert len(pages) == 42
    assert all('href="../report.html#stability"' in p.read_text() for p in pages)
    # no patient id in any page
    patients = set(pd.read_csv(files / "sessions.csv")["patient"])
    for p in [files / "stab" / "report.html", *pages]:
        text = p.read_text()
        assert not any(f">{pid}<" in text or f"{pid}," in text for pid in list(patients)[:50])
    _report_rebuilds(files, "stab")


def test_training_command(files):
    doc = _run(files, "training", "train")
    sec = doc["training"]
    assert "stability" not in doc
    rows = pd.DataFrame(sec["rows"])
    assert {"process", "term", "estimate", "se", "ci_low", "ci_high"} <= set(rows.columns)
    assert set(rows.loc[rows["term"] == "targeted_change", "process"]) == {"alliance", "expectancy"}
    for r in sec["rows"] + sec["therapists"]:
        if r["benefit"] is None:
            continue
        lo, hi = r["benefit_ci_low"], r["benefit_ci_high"]
        assert r["words"] == ("stronger" if lo > 0 else "weaker" if hi < 0 else "no detectable change")
    sched = pd.DataFrame(sec["schedule"])
    assert int(sched["trained"].sum()) == int((load_demo_training()["trained_on"] != "").sum())
    for name in ("training_effects.csv", "training_variance.csv", "training_therapists.csv", "training_schedule.csv"):
        assert (files / "train" / "tables" / name).exists(), name
    report = (files / "train" / "report.html").read_text()
    assert 'id="training"' in report
    # "failed" only where the report says what an interval covering zero is not
    assert "failed" not in report.replace("not that the training failed", "").replace("not a failed training", "")
    trained = sched.loc[sched["trained"], "therapist"].tolist()
    from theralens.report.profile_page import profile_filename

    page = (files / "train" / "therapists" / profile_filename(trained[0])).read_text()
    assert 'class="training-line"' in page and "slope after training (trained)" in page
    _report_rebuilds(files, "train")


def test_training_needs_the_therapist_table(files):
    r = run_cli("training", "sessions.csv", "--out", "x", cwd=files)
    assert r.returncode == 2 and "--therapists" in r.stderr and len(r.stderr.splitlines()) == 1
