"""Profile-likelihood against Wald intervals of the latent between-type effects (issue #10),
recorded in validation/latent_profile.md.

The cells, seeds, simulator and latent fit of ``validation/latent.py`` (the same replicates:
seed s of a cell here is seed s there). For b_between, the contextual effect and g03 (the
moderator of the between association) each replicate records the ML estimate, its Wald 95%
interval (z, observed information; what the study reports) and its profile-likelihood 95%
interval (:meth:`theralens.latent.ml.LatentFit.profile_interval`: 2 (l_max - l_v) <=
chi2_1(.95)), and the summary gives each interval's coverage of the latent truth, split into
misses with the truth below the interval and above it, and the median width. An unbounded
profile side (the likelihood does not fall by chi2_1(.95) / 2 within 9 Wald steps) counts as
covering on that side and is counted in ``unbounded``.

Run:  .venv/bin/python validation/latent_profile.py --workers 2 --out validation/latent_profile.md
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

EFFECTS = {"b_between": ("between_therapist", None), "contextual": ("contextual", None),
           "g03": ("between_association", "skill")}
TRUE = {"b_between": TRUTH["between"], "contextual": TRUTH["between"] - TRUTH["within"], "g03": TRUTH["g03"]}


def one_replicate(J: int, rho: float, seed: int) -> list[dict]:
    sim = simulate_latent(J, N_PATIENTS, icc=rho, within=TRUTH["within"], between=TRUTH["between"],
                          moderator_within=TRUTH["g11"], moderator_between=TRUTH["g03"], seed=seed)
    df = patient_table(sim)
    fit = fit_latent(latent_stats(df, ["x"], "final", ["baseline"], sim.therapists, ["skill"]))
    eff = fit.effects.set_index("component")
    mod = fit.moderators.set_index("target")
    rows = []
    for name, (component, moderator) in EFFECTS.items():
        r = mod.loc[component] if moderator else eff.loc[component]
        row = {"J": J, "rho": rho, "seed": seed, "effect": name, "estimate": float(r["estimate"]),
               "se": float(r["se"]), "wald_low": float(r["ci_low"]), "wald_high": float(r["ci_high"]),
               "converged": bool(fit.converged), "profile_low": np.nan, "profile_high": np.nan}
        if fit.converged:
            lo, hi = fit.profile_interval(fit.contrast_vector(component, "x", moderator))
            row.update(profile_low=lo, profile_high=hi)
        rows.append(row)
    return rows


def _task(args: tuple[int, float, int]) -> list[dict]:
    return one_replicate(*args)


def summarise(raw: pd.DataFrame) -> pd.DataFrame:
    out = []
    for (J, rho, eff), g_all in raw.groupby(["J", "rho", "effect"], sort=False):
        g = g_all[g_all["converged"]]
        truth = TRUE[eff]
        R = len(g)
        for kind in ("wald", "profile"):
            lo, hi = g[f"{kind}_low"].to_numpy(), g[f"{kind}_high"].to_numpy()
            below, above = truth < lo, truth > hi
            cover = 1.0 - below.mean() - above.mean()
            out.append({"J": J, "rho": rho, "effect": eff, "interval": kind, "reps": R, "coverage": cover,
                        "mc_se": float(np.sqrt(cover * (1 - cover) / R)), "truth_below": below.mean(),
                        "truth_above": above.mean(), "median_width": float(np.nanmedian(hi - lo)),
                        "median_centre_minus_truth": float(np.nanmedian((lo + hi) / 2 - truth)),
                        "unbounded": int((~np.isfinite(lo) | ~np.isfinite(hi)).sum()),
                        "not_converged": int((~g_all["converged"]).sum())})
    return pd.DataFrame(out)


def main(argv: list[str] | None = None) -> int:
    args, tasks = cell_tasks(argv, __doc__.splitlines()[0], "validation/latent_profile.md")
    code = commit()  # the code that runs (a commit made during the run does not change it)
    t0 = time.perf_counter()
    raw = pd.DataFrame(run_replicates(_task, tasks, args.workers))
    summary = summarise(raw)
    out = Path(args.out)
    raw.to_csv(out.with_suffix(".raw.csv.gz"), index=False)
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    cmd = "python validation/latent_profile.py " + " ".join(argv if argv is not None else sys.argv[1:])
    out.write_text("\n".join([
        "# Profile-likelihood and Wald intervals of the latent between-type effects (issue #10)", "",
        f"Recorded {stamp} at commit {code} on {machine()} ({args.workers} workers, "
        f"{time.perf_counter() - t0:.0f} s). Command: `{cmd}`. Columns: see the script's docstring; "
        f"truth: b_between {TRUE['b_between']}, contextual {TRUE['contextual']}, g03 {TRUE['g03']}.", "",
        markdown_table(summary), ""]))
    print(summary.to_string(), file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
