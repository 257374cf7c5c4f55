"""Bayesian and ML latent estimates of the patient design side by side (issue #10).

Data: the demo data (both processes) and three sets simulated from the latent model
(:func:`theralens.simulation.generate.simulate_latent`: 150 therapists x 5 patients, ICC .2, one
process, seeds 1-3). Each is fitted by :func:`theralens.latent.ml.fit_latent` (ML) and
:func:`theralens.latent.bayes.fit_bayes` (NUTS, weakly informative priors). For b_within,
b_between and the contextual effect it records the ML estimate and SE, the posterior mean and SD,
the Monte Carlo SE of the posterior mean (posterior SD / sqrt(bulk ESS)), and the difference in
units of that MC SE and of the ML SE. Posterior mean and ML estimate differ by Monte Carlo error
and by the prior and the mean-versus-mode difference, which shrink as data grow; the record says
how large the difference was.

Run:  .venv/bin/python validation/latent_bayes.py --out validation/latent_bayes.md
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import subprocess
import time
from pathlib import Path

import numpy as np
import pandas as pd

from theralens.data.config import StudyConfig
from theralens.data.decompose import patient_level
from theralens.data.read import read_table
from theralens.data.validate import validate_sessions
from theralens.latent.bayes import fit_bayes
from theralens.latent.ml import fit_latent, latent_stats
from theralens.simulation.generate import simulate_latent

DATA = Path(__file__).resolve().parents[1] / "src" / "theralens" / "datasets"
COMPONENTS = ("within_therapist", "between_therapist")


def _table(sessions: pd.DataFrame, processes: tuple[str, ...]):
    cfg = StudyConfig()
    if processes != cfg.columns.process:
        from dataclasses import replace

        cfg = replace(cfg, columns=replace(cfg.columns, process=processes))
    data = validate_sessions(sessions, cfg)
    return patient_level(data, cfg)


def compare(name: str, table, seed: int) -> list[dict]:
    procs = list(table.processes)
    adjust = [*table.adjust_for, *table.covariates]
    t0 = time.perf_counter()
    ml = fit_latent(latent_stats(table.table, procs, table.response, adjust))
    t_ml = time.perf_counter() - t0
    bayes = fit_bayes(table, seed=seed)
    rows = []
    label = {table.labels.get(p, p): p for p in procs}
    beff = bayes.effects.assign(process=lambda d: d["process"].map(lambda x: label.get(x, x)))
    for p in procs:
        for comp in COMPONENTS:
            m = ml.effects[(ml.effects["process"] == p) & (ml.effects["component"] == comp)].iloc[0]
            b = beff[(beff["process"] == p) & (beff["component"] == comp)].iloc[0]
            mcse = float(b["se"]) / np.sqrt(float(b["ess_bulk"]))
            diff = float(b["estimate"]) - float(m["estimate"])
            rows.append({"data": name, "process": p, "component": comp, "ml": float(m["estimate"]),
                         "ml_se": float(m["se"]), "bayes_mean": float(b["estimate"]), "bayes_sd": float(b["se"]),
                         "mc_se": mcse, "diff": diff, "diff_in_mc_se": diff / mcse,
                         "diff_in_ml_se": diff / float(m["se"]),
                         "converged": bool(bayes.converged), "max_r_hat": bayes.max_r_hat,
                         "seconds_ml": t_ml, "seconds_bayes": bayes.seconds})
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="validation/latent_bayes.md")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    rows = compare("demo", _table(read_table(DATA / "coyne2022_sessions.csv", what="sessions"),
                                  ("alliance", "expectancy")), seed=1)
    for seed in (1, 2, 3):
        sim = simulate_latent(150, 5, icc=0.2, seed=seed)
        rows += compare(f"simulated seed {seed}", _table(sim.sessions, ("alliance",)), seed=seed)
    res = pd.DataFrame(rows)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    head = ["# Bayesian vs ML latent estimates, patient design (issue #10)", "",
            f"Recorded {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC at commit {commit} on "
            f"{platform.processor() or platform.machine()} ({os.cpu_count()} cores), {time.perf_counter() - t0:.0f} s. "
            "Command: `python validation/latent_bayes.py`. Columns: see the script's docstring.", ""]
    cols = list(res.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in res.itertuples(index=False):
        lines.append("| " + " | ".join(f"{v:.4g}" if isinstance(v, float) else str(v) for v in r) + " |")
    Path(args.out).write_text("\n".join(head + lines) + "\n")
    print(res.to_string())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
