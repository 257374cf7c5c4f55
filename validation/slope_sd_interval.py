"""Coverage of the therapist slope SD's profile-likelihood interval (issue #13, aim 2).

For ``--reps`` studies simulated from the ``coyne2022`` preset at 120 therapists x 10 patients
(equal caseloads, patient-level design; the preset's moderator effects set to zero, so that the
aim-2 model, which has no moderators, is the generating model and the truth is the preset's
``slope_sd``), fit the study's main model (REML) and compute the 95% profile-likelihood
interval of each process's therapist slope SD with ``MixedResult.conf_int_varcorr`` (lme4's
``confint(method = "profile")``: the ML profile), the interval aim 2 reports. Records
coverage with its Monte Carlo SE (target 93-97%), how often the lower bound is 0, and the mean
and median of the REML estimate beside the truth.

Run:  .venv/bin/python validation/slope_sd_interval.py --reps 1000 --workers 2 \
          --out validation/slope_sd_interval.md
      (``--likelihood reml`` for the REML profile, ``--boundary one-sided`` for the interval
      that, when it reaches 0, puts the whole 5% on the upper side, ``--boundary boundary-aware``
      for the interval that inverts the likelihood-ratio test with its distribution near 0)
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
from record import commit as git_commit
from record import machine, markdown_table

from theralens import fit_mixed
from theralens.data.config import config_from_dict
from theralens.data.decompose import patient_level
from theralens.data.validate import validate_sessions
from theralens.simulation.generate import simulate
from theralens.study.aims import design_terms

THERAPISTS, PER_THERAPIST = 120, 10
SCENARIO = {"n_therapists": THERAPISTS, "n_patients": THERAPISTS * PER_THERAPIST, "caseload_shape": None}


def one_replicate(seed: int, likelihood: str = "ml", boundary: str = "two-sided") -> list[dict]:
    """One simulated study: per process, the slope SD's estimate, interval and coverage."""
    sim0 = simulate("coyne2022", seed=seed, design="patient", **SCENARIO)
    zero = {key: 0.0 for key in sim0.parameters.moderator_effects}
    sim = simulate("coyne2022", seed=seed, design="patient", moderator_effects=zero, **SCENARIO)
    cfg = config_from_dict({"design": {"level": "patient"}})
    data = validate_sessions(sim.sessions, cfg, source=f"simulated seed {seed}")
    table = patient_level(data, cfg)
    terms = design_terms(table)
    frame = table.table.copy()
    frame["therapist"] = frame["therapist"].astype(str)
    frame["patient"] = frame["patient"].astype(str)
    fit = fit_mixed(terms.formula(), frame)
    ci = fit.conf_int_varcorr(rows=[("therapist", terms.within[p], None) for p in terms.processes],
                              likelihood=likelihood, boundary=boundary)
    rows = []
    for p, (_, r) in zip(terms.processes, ci.iterrows()):
        truth = float(sim.truth["slope_sd"][p])
        rows.append({"seed": seed, "process": p, "truth": truth, "estimate": float(r.sdcor),
                     "ci_low": float(r["2.5 %"]), "ci_high": float(r["97.5 %"]),
                     "covered": bool(r["2.5 %"] <= truth <= r["97.5 %"]), "converged": fit.converged,
                     "singular": fit.singular})
    return rows


def _job(job: tuple[int, str, str]) -> list[dict]:
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    return one_replicate(*job)


def summarize(df: pd.DataFrame) -> pd.DataFrame:
    out = []
    for p, g in df.groupby("process", sort=False):
        cov = float(g["covered"].mean())
        out.append({"process": p, "truth": g["truth"].iloc[0], "reps": len(g), "coverage": cov,
                    "mc_se": float(np.sqrt(cov * (1 - cov) / len(g))), "ok": bool(0.93 <= cov <= 0.97),
                    "truth_below": float((g["ci_low"] > g["truth"]).mean()),
                    "truth_above": float((g["ci_high"] < g["truth"]).mean()),
                    "lower_bound_0": float((g["ci_low"] == 0).mean()), "mean_estimate": float(g["estimate"].mean()),
                    "median_estimate": float(g["estimate"].median()),
                    "mean_width": float((g["ci_high"] - g["ci_low"]).mean()),
                    "converged": float(g["converged"].mean()), "singular": float(g["singular"].mean())})
    return pd.DataFrame(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=100)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", default="validation/slope_sd_interval.md")
    ap.add_argument("--likelihood", default="ml", choices=["ml", "reml"],
                    help="profile the ML likelihood (lme4's confint, the default) or the REML criterion")
    ap.add_argument("--boundary", default="two-sided", choices=["two-sided", "one-sided", "boundary-aware"],
                    help="lme4's two-sided interval, the one-sided upper bound when the interval reaches 0, or the "
                         "boundary-aware interval (the likelihood-ratio test inverted with its distribution near 0)")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    rows: list[dict] = []
    with ProcessPoolExecutor(max_workers=args.workers) as ex:
        jobs = [(seed, args.likelihood, args.boundary) for seed in range(1, args.reps + 1)]
        for i, res in enumerate(ex.map(_job, jobs, chunksize=4), 1):
            rows += res
            if i % 50 == 0:
                print(f"{i}/{args.reps} replicates, {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    df = pd.DataFrame(rows)
    summ = summarize(df)
    seconds = time.perf_counter() - t0
    cpu, commit = machine(), git_commit()
    lines = [
        "# Coverage of the therapist slope SD's profile interval (validation/slope_sd_interval.py)",
        "",
        f"- date: {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC; machine: {cpu}, {os.cpu_count()} cores; "
        f"Python {platform.python_version()}; commit {commit}",
        f"- command: `.venv/bin/python validation/slope_sd_interval.py --reps {args.reps} --workers {args.workers} "
        f"--likelihood {args.likelihood} --boundary {args.boundary}`;"
        f" wall time {seconds:.0f} s",
        f"- design: preset `coyne2022` at {THERAPISTS} therapists x {PER_THERAPIST} patients (equal caseloads), "
        f"patient-level design, moderator effects 0, seeds 1..{args.reps}; the aim-2 main model by REML; 95% "
        "profile-likelihood interval of the slope SD (`conf_int_varcorr`; ML profile = lme4's confint, REML "
        f"profile = `likelihood='reml'`): here the {args.likelihood.upper()} profile, boundary rule "
        f"`{args.boundary}` (one-sided: an interval reaching 0 gets the one-sided 95% upper bound; boundary-aware: "
        "zeta^2 <= c(v / SE), the likelihood-ratio test's quantile near the boundary, theralens.model.profile); "
        "target coverage 93-97%.",
        "- columns: `truth_below`/`truth_above` = share of intervals that miss the truth because it lies below/above "
        "them; "
        "`lower_bound_0` = share of intervals whose lower bound is the boundary 0.",
        "",
        markdown_table(summ),
        "",
    ]
    Path(args.out).write_text("\n".join(lines))
    df.to_csv(Path(args.out).with_suffix(".raw.csv.gz"), index=False)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
