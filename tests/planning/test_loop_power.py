"""theralens power --preset training|stability (planning/loop.py): a replicate is the study itself."""

from __future__ import annotations

import json

import numpy as np
import pytest

import theralens as tl
from theralens.cli import main
from theralens.data.config import config_from_dict
from theralens.planning.loop import LoopSpec
from theralens.planning.replicate import OK, replicate_seed
from theralens.planning.settings import Cell
from theralens.simulation.training import simulate_stability, simulate_training
from theralens.study.stability import stability
from theralens.study.training import training


def test_training_replicate_is_the_training_study() -> None:
    spec = LoopSpec("training", seed=5)
    cell = Cell(24, 6.0, 144)
    out = spec.run(cell, 1)
    sim = simulate_training(24, 6, seed=replicate_seed(5, cell, 1))
    cfg = config_from_dict({**sim.config, "inference": {"ddf": "satterthwaite"}})
    res = training(sim.sessions, sim.therapists, cfg)
    rows = {(r["process"], r["term"]): r for r in res.effects.to_dict(orient="records")}
    for i, t in enumerate(spec.tests):
        row = rows[(t.process, t.kind)]
        assert out.status[i] == OK
        assert out.estimate[i] == pytest.approx(row["estimate"], rel=1e-10)
        assert out.p[i] == pytest.approx(row["p"], rel=1e-10)
        assert out.reject[i] == (row["p"] < 0.05)


def test_stability_replicate_rejects_from_the_profile_interval() -> None:
    spec = LoopSpec("stability", overrides={"correlation": 0.8}, alpha=0.1, seed=2)
    cell = Cell(30, 8.0, 240)
    out = spec.run(cell, 0)
    sim = simulate_stability(30, 8, seed=replicate_seed(2, cell, 0), correlation=0.8)
    res = stability(sim.sessions, sim.therapists, config_from_dict(sim.config), level=0.9)
    rows = res.correlations.set_index("process")
    for i, t in enumerate(spec.tests):
        low = rows.loc[t.process, "ci_low"]
        assert out.estimate[i] == pytest.approx(rows.loc[t.process, "correlation"], rel=1e-10)
        assert out.reject[i] == (low > 0 if t.kind == "stability" else low >= 0.5)
        assert np.isnan(out.p[i])


def test_truth_and_power_table() -> None:
    r = tl.power("training", therapists=[20], patients_per_therapist=[6], nsim=3, workers=1, progress=False,
                 settings=["change.targeted=0.4"])
    tab = r.table
    assert set(tab["test"].str.split(":").str[-1]) >= {"targeted_change"}
    truth = simulate_training(20, 6, seed=0, change={"targeted": 0.4}).truth["effects"]
    for row in tab.to_dict(orient="records"):
        assert row["true_value"] == pytest.approx(truth[row["process"]][row["test"].split(":")[-1]])
        assert 0.0 <= row["power"] <= 1.0
    reps = r.replicates
    assert len(reps) == 3 * len(tab)
    np.testing.assert_array_equal(reps["reject"], (reps["p"] < 0.05) & (reps["status"] == "ok"))


def test_cli_writes_files(tmp_path) -> None:
    out = tmp_path / "plan"
    code = main(["power", "--preset", "stability", "--therapists", "24", "--patients-per-therapist", "8",
                 "--nsim", "2", "--workers", "1", "--out", str(out), "--set", "correlation=0.7"])
    assert code == 0
    for name in ("power.csv", "power.json", "power.png", "power.svg"):
        assert (out / name).stat().st_size > 0
    doc = json.loads((out / "power.json").read_text())
    assert doc["meta"]["preset"] == "stability" and doc["meta"]["overrides"]["correlation"] == 0.7


@pytest.mark.parametrize("args", [
    ["--set", "chnage.targeted=0.3"],
    ["--set", "correlation=2"],
    ["--patients-per-therapist", "3"],
    ["--patients-per-therapist", "5.5"],
    ["--design", "session"],
    ["--decomposition", "latent"],
])
def test_bad_input_one_line_exit_2(tmp_path, capsys: pytest.CaptureFixture[str], args: list[str]) -> None:
    code = main(["power", "--preset", "training", "--nsim", "2", "--therapists", "8", "--workers", "1",
                 "--out", str(tmp_path / "x"), *args])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith("theralens: ")
