"""Recovery of known profile stability and known training effects (issue #14).

For each replicate (seed s = 1..reps): simulate a study with known between-half stability of the
therapist slopes (:func:`theralens.simulation.training.simulate_stability`, correlation 0.6) and a
study with known targeted training effects (:func:`simulate_training`: targeted change -0.20,
untargeted -0.05, untrained 0, change SD 0.10), both at ``--therapists`` x ``--patients``; run
:func:`theralens.stability` and :func:`theralens.training` on them through the whole pipeline
(validation, decomposition, the study, the period models) and record each estimate, its 95%
interval and the truth:

- the stability correlation of each process (profile-likelihood interval);
- every training row of each process (the group changes and their contrasts, Satterthwaite t);
- the SD of the change between therapists (profile-likelihood interval).

Rows are appended to ``--raw`` (CSV) after every replicate, so a run stopped early keeps what it
did; ``--summarize`` writes the summary table of a raw file (coverage with its Monte Carlo SE,
mean and median estimate, bias, relative bias where the truth is not zero).

Run:  nice -n 10 .venv/bin/python validation/training_stability.py --reps 1000 \
          --raw validation/training_stability.raw.csv
      .venv/bin/python validation/training_stability.py --summarize validation/training_stability.raw.csv
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from theralens.data.config import config_from_dict
from theralens.simulation.training import simulate_stability, simulate_training
from theralens.study.stability import stability
from theralens.study.training import training

CORRELATION = 0.6


def one_replicate(seed: int, n_therapists: int, n_patients: int) -> list[dict]:
    """Both studies of seed ``seed``: one row per checked quantity."""
    rows = []
    t0 = time.perf_counter()
    sim = simulate_stability(n_therapists, n_patients, correlation=CORRELATION, seed=seed)
    res = stability(sim.sessions, sim.therapists, config_from_dict(sim.config))
    for r in res.correlations.to_dict(orient="records"):
        rows.append({"seed": seed, "study": "stability", "process": r["process"], "quantity": "correlation",
                     "estimate": r["correlation"], "ci_low": r["ci_low"], "ci_high": r["ci_high"],
                     "truth": sim.truth["correlation"][r["process"]], "singular": r["singular"]})
    t1 = time.perf_counter()
    sim = simulate_training(n_therapists, n_patients, seed=10_000 + seed)
    res = training(sim.sessions, sim.therapists, config_from_dict(sim.config))
    singular = {m.role.split(":", 1)[1]: bool(m.fit.singular) for m in res.models}
    for r in res.effects.to_dict(orient="records"):
        rows.append({"seed": seed, "study": "training", "process": r["process"], "quantity": r["term"],
                     "estimate": r["estimate"], "ci_low": r["ci_low"], "ci_high": r["ci_high"],
                     "truth": sim.truth["effects"][r["process"]][r["term"]], "singular": singular[r["process"]]})
    for r in res.variance.to_dict(orient="records"):
        rows.append({"seed": seed, "study": "training", "process": r["process"], "quantity": "change_sd",
                     "estimate": r["change_sd"], "ci_low": r["ci_low"], "ci_high": r["ci_high"],
                     "truth": sim.truth["change_sd"][r["process"]], "singular": singular[r["process"]]})
    t2 = time.perf_counter()
    for r in rows:
        r["seconds_stability"], r["seconds_training"] = t1 - t0, t2 - t1
    return rows


def summarize(raw: pd.DataFrame) -> pd.DataFrame:
    """Per study, process and quantity: replicates, coverage (%) with its MC SE, mean and
    median estimate, truth, bias, relative bias (%), share of singular fits."""
    out = []
    for (study, process, quantity), d in raw.groupby(["study", "process", "quantity"], sort=False):
        ok = d["ci_low"].notna() & d["ci_high"].notna()
        cover = ((d["ci_low"] <= d["truth"]) & (d["truth"] <= d["ci_high"]))[ok]
        n = int(ok.sum())
        cov = float(cover.mean()) if n else math.nan
        truth = float(d["truth"].iloc[0])
        mean = float(d["estimate"].mean())
        out.append({"study": study, "process": process, "quantity": quantity, "replicates": len(d),
                    "with_interval": n, "coverage_pct": 100 * cov,
                    "coverage_mc_se_pct": 100 * math.sqrt(cov * (1 - cov) / n) if n else math.nan,
                    "truth": truth, "mean": mean, "median": float(d["estimate"].median()),
                    "bias": mean - truth, "relative_bias_pct": 100 * (mean - truth) / abs(truth) if truth else math.nan,
                    "mc_se_mean": float(d["estimate"].std(ddof=1) / math.sqrt(len(d))) if len(d) > 1 else math.nan,
                    "singular_pct": 100 * float(d["singular"].astype(bool).mean())})
    return pd.DataFrame(out)


def markdown(table: pd.DataFrame) -> str:
    """The summary as a Markdown table (the columns the record shows)."""
    cols = ["study", "process", "quantity", "replicates", "truth", "mean", "median", "bias", "relative_bias_pct",
            "coverage_pct", "coverage_mc_se_pct", "singular_pct"]
    head = ["study", "process", "quantity", "n", "truth", "mean", "median", "bias", "rel. bias %", "coverage %",
            "MC SE", "singular %"]

    def cell(v: object) -> str:
        if isinstance(v, float):
            return "-" if math.isnan(v) else f"{v:.4g}"
        return str(v)

    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(cell(r[c]) for c in cols) + " |" for r in table.to_dict(orient="records")]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--reps", type=int, default=1000)
    ap.add_argument("--first-seed", type=int, default=1)
    ap.add_argument("--therapists", type=int, default=200)
    ap.add_argument("--patients", type=int, default=20)
    ap.add_argument("--raw", default="validation/training_stability.raw.csv")
    ap.add_argument("--summarize", metavar="RAW_CSV", help="only summarise a raw file")
    ap.add_argument("--markdown", action="store_true", help="with --summarize: the table as Markdown")
    args = ap.parse_args(argv)
    if args.summarize:
        table = summarize(pd.read_csv(args.summarize))
        print(markdown(table) if args.markdown else table.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
        return 0
    raw = Path(args.raw)
    done = set(pd.read_csv(raw)["seed"]) if raw.exists() else set()
    for seed in range(args.first_seed, args.first_seed + args.reps):
        if seed in done:
            continue
        t0 = time.perf_counter()
        rows = one_replicate(seed, args.therapists, args.patients)
        frame = pd.DataFrame(rows)
        frame.to_csv(raw, mode="a", header=not raw.exists(), index=False)
        print(f"seed {seed}: {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
    table = summarize(pd.read_csv(raw))
    print(table.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    return 0


if __name__ == "__main__":
    np.seterr(all="ignore")
    raise SystemExit(main())
