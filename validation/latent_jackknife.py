"""The delete-one-therapist jackknife of the latent ML fit (issue #10), recorded in
validation/latent_jackknife.md.

The cells, seeds, simulator and latent fit of ``validation/latent.py`` (seed s of a cell here is
seed s there, so the ML columns repeat that record). For b_within, b_between, the contextual
effect, g11 and g03 each replicate records the ML estimate with its Wald 95% interval (z,
observed information) and :meth:`theralens.latent.ml.LatentFit.jackknife`'s bias-corrected
estimate J e - (J - 1) mean_j e_(j) with its interval (jackknife SE, t with J - 1 df). The
summary gives, per estimator, the mean and median bias (relative to the truth), the Monte Carlo
SE of the mean, the RMSE, and the coverage of the interval with misses split by side.

Run:  .venv/bin/python validation/latent_jackknife.py --workers 2 --out validation/latent_jackknife.md
      (--cells 150 for the J = 150 cells only; --reps-scale 0.1 for a quick look)
"""

from __future__ import annotations

import datetime as dt
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from latent import N_PATIENTS, TRUTH, cell_tasks, patient_table  # noqa: E402
from record import commit, machine, markdown_table, run_replicates  # noqa: E402

from theralens.latent.ml import fit_latent, latent_stats  # noqa: E402
from theralens.simulation.generate import simulate_latent  # noqa: E402

EFFECTS = {"b_within": "within_therapist", "b_between": "between_therapist", "contextual": "contextual",
           "g11": "within_slope", "g03": "between_association"}
TRUE = {"b_within": TRUTH["within"], "b_between": TRUTH["between"], "contextual": TRUTH["between"] - TRUTH["within"],
        "g11": TRUTH["g11"], "g03": TRUTH["g03"]}


def one_replicate(J: int, rho: float, seed: int) -> list[dict]:
    sim = simulate_latent(J, N_PATIENTS, icc=rho, within=TRUTH["within"], between=TRUTH["between"],
                          moderator_within=TRUTH["g11"], moderator_between=TRUTH["g03"], seed=seed)
    fit = fit_latent(latent_stats(patient_table(sim), ["x"], "final", ["baseline"], sim.therapists, ["skill"]))
    wald = pd.concat([fit.effects, fit.moderators.rename(columns={"target": "component"})]).set_index("component")
    t0 = time.perf_counter()
    jk = fit.jackknife().set_index("component") if fit.converged else None
    seconds = time.perf_counter() - t0
    rows = []
    for name, component in EFFECTS.items():
        w = wald.loc[component]
        row = {"J": J, "rho": rho, "seed": seed, "effect": name, "converged": bool(fit.converged),
               "ml": float(w["estimate"]), "ml_low": float(w["ci_low"]), "ml_high": float(w["ci_high"]),
               "jackknife": np.nan, "jackknife_se": np.nan, "jackknife_low": np.nan, "jackknife_high": np.nan,
               "jackknife_seconds": seconds}
        if jk is not None:
            j = jk.loc[component]
            row.update(jackknife=float(j["jackknife_estimate"]), jackknife_se=float(j["se"]),
                       jackknife_low=float(j["ci_low"]), jackknife_high=float(j["ci_high"]))
        rows.append(row)
    return rows


def _task(args: tuple[int, float, int]) -> list[dict]:
    return one_replicate(*args)


def summarise(raw: pd.DataFrame) -> pd.DataFrame:
    out = []
    for (J, rho, eff), g_all in raw.groupby(["J", "rho", "effect"], sort=False):
        g = g_all[g_all["converged"]]
        truth = TRUE[eff]
        for kind in ("ml", "jackknife"):
            est = g[kind].to_numpy()
            R = len(est)
            below, above = truth < g[f"{kind}_low"].to_numpy(), truth > g[f"{kind}_high"].to_numpy()
            cover = float(((g[f"{kind}_low"] <= truth) & (truth <= g[f"{kind}_high"])).mean())
            out.append({"J": J, "rho": rho, "effect": eff, "estimator": kind, "reps": R, "truth": truth,
                        "rel_bias_pct": 100 * (est.mean() - truth) / truth,
                        "rel_bias_mc_se_pct": 100 * est.std(ddof=1) / np.sqrt(R) / truth,
                        "median_rel_bias_pct": 100 * (np.median(est) - truth) / truth,
                        "rmse": float(np.sqrt(np.mean((est - truth) ** 2))), "coverage": cover,
                        "coverage_mc_se": float(np.sqrt(cover * (1 - cover) / R)),
                        "truth_below": float(below.mean()), "truth_above": float(above.mean()),
                        "not_converged": int((~g_all["converged"]).sum())})
    return pd.DataFrame(out)


def main(argv: list[str] | None = None) -> int:
    args, tasks = cell_tasks(argv, __doc__.splitlines()[0], "validation/latent_jackknife.md")
    code = commit()  # the code that runs (a commit made during the run does not change it)
    t0 = time.perf_counter()
    raw = pd.DataFrame(run_replicates(_task, tasks, args.workers))
    summary = summarise(raw)
    out = Path(args.out)
    raw.to_csv(out.with_suffix(".raw.csv.gz"), index=False)
    per_rep = raw.groupby(["J", "rho", "seed"])["jackknife_seconds"].first().groupby(["J", "rho"]).median()
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    cmd = "python validation/latent_jackknife.py " + " ".join(argv if argv is not None else sys.argv[1:])
    out.write_text("\n".join([
        "# Delete-one-therapist jackknife of the latent ML estimates (issue #10)", "",
        f"Recorded {stamp} at commit {code} on {machine()} ({args.workers} workers, "
        f"{time.perf_counter() - t0:.0f} s). Command: `{cmd}`. Columns: see the script's docstring. "
        "Median seconds of one jackknife (J refits) per cell: "
        + ", ".join(f"J = {J}, rho = {rho}: {s:.2f}" for (J, rho), s in per_rep.items()) + ".", "",
        markdown_table(summary), ""]))
    print(summary.to_string(), file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
