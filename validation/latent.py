"""Latent vs manifest decomposition in simulation (issue #10), recorded in validation/latent.md.

Cells: J = 42 and 150 therapists, n = 5 patients each, process ICC rho = .1, .2, .3; 500
replicates per cell (1,000 at J = 150, rho = .2), seeds 1..reps. Each replicate simulates the
latent model (:func:`theralens.simulation.generate.simulate_latent`: within 0.3, between 0.6,
moderator on the within slope 0.1 and on the between association 0.2, therapist slope SD 0.15)
and fits, with the moderator (``skill``, centred) in the model:

- manifest: ``final ~ baseline + x_within + x_between + skill_c + x_within:skill_c +
  x_between:skill_c + (1 + x_within | therapist)`` (REML, Satterthwaite t intervals; the
  study's aim-3 model);
- latent: :func:`theralens.latent.ml.fit_latent` (ML, Wald intervals).

For b_within, b_between, the contextual effect (b_between - b_within), g11 (moderator x within)
and g03 (moderator x between) it reports the mean estimate, bias (and relative bias), its Monte
Carlo SE, RMSE and the coverage of the 95% intervals with its MC SE, over the fits that converged
(the others are counted in ``not_converged``, never averaged; the median is shown beside the mean:
a fit whose latent caseload-mean variance is near zero has an unidentified between effect). The
record in latent.md was made at commit c512022, before this change, and kept them in the means.
The manifest between-type
effects are also compared with their analytic large-sample values (Luedtke et al. 2008):
lambda b_between + (1 - lambda) b_within, lambda g03 + (1 - lambda) g11 and lambda (b_between -
b_within), lambda = n rho / (1 + (n - 1) rho).

Run:  .venv/bin/python validation/latent.py --workers 2 --out validation/latent.md
      (--reps-scale 0.1 for a quick look)
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

sys.path.insert(0, str(Path(__file__).resolve().parent))
from record import run_replicates  # noqa: E402

from theralens import fit_mixed  # noqa: E402
from theralens.latent.ml import fit_latent, latent_stats  # noqa: E402
from theralens.simulation.generate import simulate_latent  # noqa: E402

TRUTH = {"within": 0.3, "between": 0.6, "g11": 0.1, "g03": 0.2}
N_PATIENTS = 5
CELLS = [(42, 0.1, 500), (42, 0.2, 500), (42, 0.3, 500), (150, 0.1, 500), (150, 0.2, 1000), (150, 0.3, 500)]
EFFECTS = ["b_within", "b_between", "contextual", "g11", "g03"]


def truth_of(rho: float) -> dict[str, dict[str, float]]:
    """The latent truth and the manifest estimates' large-sample values in one cell."""
    lam = N_PATIENTS * rho / (1 + (N_PATIENTS - 1) * rho)
    w, b, g11, g03 = TRUTH["within"], TRUTH["between"], TRUTH["g11"], TRUTH["g03"]
    latent = {"b_within": w, "b_between": b, "contextual": b - w, "g11": g11, "g03": g03}
    manifest = {"b_within": w, "b_between": lam * b + (1 - lam) * w, "contextual": lam * (b - w), "g11": g11,
                "g03": lam * g03 + (1 - lam) * g11}
    return {"latent": latent, "manifest": manifest, "lambda": {"value": lam}}


def patient_table(sim) -> pd.DataFrame:
    s = sim.sessions.sort_values(["patient", "session"])
    g = s.groupby("patient", sort=False)
    df = pd.DataFrame({"therapist": g["therapist"].first(), "baseline": g["outcome"].first(),
                       "final": g["outcome"].last(), "x": g["alliance"].mean()}).reset_index()
    xbar = df.groupby("therapist")["x"].transform("mean")
    df["x_within"] = df["x"] - xbar
    df["x_between"] = xbar - df.groupby("therapist")["x"].mean().mean()
    w = sim.therapists.set_index("therapist")["skill"]
    df["skill_c"] = df["therapist"].map(w - w.mean())
    return df


def one_replicate(J: int, rho: float, seed: int) -> list[dict]:
    sim = simulate_latent(J, N_PATIENTS, icc=rho, within=TRUTH["within"], between=TRUTH["between"],
                          moderator_within=TRUTH["g11"], moderator_between=TRUTH["g03"], seed=seed)
    df = patient_table(sim)
    rows = []
    m = fit_mixed("final ~ baseline + x_within + x_between + skill_c + x_within:skill_c + x_between:skill_c"
                  " + (1 + x_within | therapist)", df)
    fe, V, dfs = m.fixed_effects, m.vcov, m.df
    L = {"b_within": {"x_within": 1.0}, "b_between": {"x_between": 1.0},
         "contextual": {"x_between": 1.0, "x_within": -1.0}, "g11": {"x_within:skill_c": 1.0},
         "g03": {"x_between:skill_c": 1.0}}
    for eff, weights in L.items():
        names = list(weights)
        w = np.array([weights[n] for n in names])
        est = float(w @ fe[names].to_numpy())
        se = float(np.sqrt(w @ V.loc[names, names].to_numpy() @ w))
        d = float(m.contrast(weights)["df"]) if len(names) > 1 else float(dfs[names[0]])
        q = float(stats.t.ppf(0.975, d))
        rows.append({"J": J, "rho": rho, "seed": seed, "decomposition": "manifest", "effect": eff, "estimate": est,
                     "se": se, "ci_low": est - q * se, "ci_high": est + q * se, "converged": bool(m.converged),
                     "singular": bool(m.singular)})
    fit = fit_latent(latent_stats(df, ["x"], "final", ["baseline"], sim.therapists, ["skill"]))
    eff = fit.effects.set_index("component")
    mod = fit.moderators.set_index("target")
    sources = {"b_within": eff.loc["within_therapist"], "b_between": eff.loc["between_therapist"],
               "contextual": eff.loc["contextual"], "g11": mod.loc["within_slope"],
               "g03": mod.loc["between_association"]}
    for name, r in sources.items():
        rows.append({"J": J, "rho": rho, "seed": seed, "decomposition": "latent", "effect": name,
                     "estimate": float(r["estimate"]), "se": float(r["se"]), "ci_low": float(r["ci_low"]),
                     "ci_high": float(r["ci_high"]), "converged": bool(fit.converged),
                     "singular": bool(fit.slope_sd[0] < 1e-4)})
    return rows


def _task(args: tuple[int, float, int]) -> list[dict]:
    return one_replicate(*args)


def summarise(raw: pd.DataFrame) -> pd.DataFrame:
    out = []
    for (J, rho, dec, eff), g_all in raw.groupby(["J", "rho", "decomposition", "effect"], sort=False):
        t = truth_of(rho)
        truth = t["latent"][eff]
        expected = t[dec][eff]
        g = g_all[g_all["converged"]]  # a fit that failed is reported (not_converged), never averaged
        est = g["estimate"].to_numpy()
        R = len(est)
        bias = est.mean() - truth
        cover = ((g["ci_low"] <= truth) & (truth <= g["ci_high"])).to_numpy()
        out.append({
            "J": J, "rho": rho, "lambda": t["lambda"]["value"], "decomposition": dec, "effect": eff,
            "truth": truth, "reps": R, "mean": est.mean(), "median": float(np.median(est)), "bias": bias,
            "rel_bias_pct": 100 * bias / truth if truth else float("nan"), "bias_mc_se": est.std(ddof=1) / np.sqrt(R),
            "rmse": float(np.sqrt(np.mean((est - truth) ** 2))), "coverage": cover.mean(),
            "coverage_mc_se": float(np.sqrt(cover.mean() * (1 - cover.mean()) / R)),
            "expected": expected, "minus_expected_in_mc_se": (est.mean() - expected) / (est.std(ddof=1) / np.sqrt(R)),
            "not_converged": int((~g_all["converged"]).sum()), "singular": int(g["singular"].sum()),
        })
    return pd.DataFrame(out)


def _commit() -> str:
    try:
        return subprocess.check_output(["git", "rev-parse", "--short", "HEAD"], text=True).strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def write_markdown(summary: pd.DataFrame, meta: dict, path: Path) -> None:
    lines = ["# Latent vs manifest decomposition in simulation (issue #10)", "",
             f"Recorded {meta['date']} at commit {meta['commit']} on {meta['machine']} "
             f"({meta['workers']} workers, {meta['seconds']:.0f} s). Command: `{meta['command']}`.", "",
             "Model and cells: see the docstring of `validation/latent.py`. Truth: b_within 0.3, b_between 0.6 "
             "(contextual 0.3), g11 0.1, g03 0.2; n = 5 patients per therapist; lambda = n rho / (1 + (n - 1) rho). "
             "`expected` is the truth for latent fits and the analytic large-sample value for manifest fits "
             "(Luedtke et al. 2008); `minus_expected_in_mc_se` is (mean - expected) / MC SE. Coverage: 95% "
             "intervals (manifest: Satterthwaite t; latent: Wald z) against the latent truth.", ""]
    cols = ["J", "rho", "lambda", "decomposition", "effect", "truth", "mean", "median", "rel_bias_pct", "bias_mc_se",
            "rmse",
            "coverage", "coverage_mc_se", "expected", "minus_expected_in_mc_se", "not_converged", "singular"]
    lines.append("| " + " | ".join(cols) + " |")
    lines.append("|" + "---|" * len(cols))
    for r in summary[cols].itertuples(index=False):
        cells = []
        for c, v in zip(cols, r):
            if isinstance(v, float):
                cells.append(f"{v:.1f}" if c in ("rel_bias_pct", "minus_expected_in_mc_se") else
                             f"{100 * v:.1f}%" if c == "coverage" else f"{v:.4f}")
            else:
                cells.append(str(v))
        lines.append("| " + " | ".join(cells) + " |")
    path.write_text("\n".join(lines) + "\n")


def cell_tasks(argv: list[str] | None, description: str, out: str) -> tuple[argparse.Namespace, list[tuple]]:
    """The command line of the latent validation scripts (--workers, --reps-scale, --cells,
    --out) and the (J, rho, seed) replicates it asks for: seeds 1..reps of each cell."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--reps-scale", type=float, default=1.0, help="multiply every cell's replicates (quick looks)")
    ap.add_argument("--cells", type=int, nargs="*", default=None, help="only the cells of these J (default: all)")
    ap.add_argument("--rho", type=float, nargs="*", default=None, help="only the cells of these rho (default: all)")
    ap.add_argument("--reps", type=int, default=None, help="replicates per cell (default: the cell's own)")
    ap.add_argument("--out", default=out)
    args = ap.parse_args(argv)
    cells = [(J, rho, args.reps or reps) for J, rho, reps in CELLS
             if (args.cells is None or J in args.cells) and (args.rho is None or rho in args.rho)]
    return args, [(J, rho, s) for J, rho, reps in cells for s in range(1, max(2, int(reps * args.reps_scale)) + 1)]


def main(argv: list[str] | None = None) -> int:
    args, tasks = cell_tasks(argv, __doc__.splitlines()[0], "validation/latent.md")
    code = _commit()  # the code that runs (a commit made during the run does not change it)
    t0 = time.perf_counter()
    raw = pd.DataFrame(run_replicates(_task, tasks, args.workers))
    summary = summarise(raw)
    out = Path(args.out)
    meta = {"date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "commit": code,
            "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
            "workers": args.workers, "seconds": time.perf_counter() - t0,
            "command": "python validation/latent.py " + " ".join(argv if argv is not None else sys.argv[1:])}
    write_markdown(summary, meta, out)
    raw.to_csv(out.with_suffix(".raw.csv.gz"), index=False)  # every replicate's estimates, to summarise again
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "summary": summary.to_dict(orient="records")},
                                                   indent=1))
    print(summary.to_string(), file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
