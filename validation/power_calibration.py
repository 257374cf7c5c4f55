"""Calibration of the power simulation: with the tested effect at zero, tests reject at alpha.

Runs ``theralens.power`` on the ``coyne2022`` design (42 therapists, 212 patients, uneven
caseloads), ``--nsim`` replicates per scenario, each scenario setting the tested effects to
zero and leaving the rest of the preset as it is:

- ``fixed``: within and between effects of both processes (g10, g01) and every cross-level
  effect (g11, g03) = 0; the therapist slopes vary as in the preset (SD 0.12 and 0.08). The
  preset's CBT moderation of the between alliance association is among the zeros: a true
  therapist-level interaction left out of the main model makes the between-effect SEs too
  small (validation/recovery.md), a property of that model, not of the tool.
  Criterion: each fixed-effect test (within, between, moderator; t tests with Satterthwaite
  df) rejects within Monte Carlo error of alpha, |rate - alpha| <= 1.96 sqrt(alpha (1 -
  alpha) / n_usable).
- ``slopes``: the therapist slope SDs of both processes = 0 and no cross-level effect on the
  within slopes (so that the slopes do not vary at all); other effects as in the preset.
  Criterion: each slope-variance test (REML likelihood ratio against the chi-bar-square
  mixture 0.5 chi2(2) + 0.5 chi2(3); Self & Liang 1987; Stram & Lee 1994) rejects at most at
  alpha + 1.96 sqrt(alpha (1 - alpha) / n_usable): it may be conservative.
- ``fixed_120x10``: as ``fixed`` with 120 therapists of 10 patients each (equal caseloads),
  where the therapist slope variances are identified in most replicates. Same criterion.
- ``slopes_120x10``: as ``slopes`` with 120 therapists of 10 patients each.
- ``all_zero`` (for information, no criterion): everything above at zero at once.

Every scenario runs for each ``--designs`` (``patient``: the published analysis; ``session``:
the lagged design, whose zeros are the within-patient, between-patient and between-therapist
effects, ``session_*`` parameters) and each ``--ddf`` method of the fixed-effect t tests
(``satterthwaite``, ``kenward-roger``: Kenward & Roger 1997 through the engine; the
slope-variance scenarios do not depend on the df and run once). A second table puts each
test's Kenward-Roger size beside its Satterthwaite size (same seeds, hence the same data and
fits: the difference is the df and, for Kenward-Roger, the adjusted SE).

For fixed effects the table also shows ``z_rate``, the rate of |estimate / SE| > 1.96, and
``sd_over_se``, the SD of the estimates over their root mean square SE: when these are near
0.05 and 1 the SEs are right and any departure of ``rejection_rate`` from alpha comes from
the Satterthwaite degrees of freedom. ``--lmertest K`` refits the main model of the first K
replicates of ``fixed`` with R's lme4 + lmerTest (when ``Rscript`` has them) and reports
the largest differences of the Satterthwaite df and p-values of the within and between
effects.

Rates are also shown among replicates whose fits were not singular (what
``exclude_singular=True`` would give), with their number.

Run (the full record of issue #12: 42 x 5 and 120 x 10, both designs, Satterthwaite and
Kenward-Roger, 1,000 replicates each):

    .venv/bin/python validation/power_calibration.py --nsim 1000 --workers 2 \
        --designs patient,session --ddf satterthwaite,kenward-roger --out validation/power_calibration.md
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from theralens.atomic import write_text
from theralens.planning import power
from theralens.simulation.generate import MODERATORS, PROCESSES, TARGETS

NO_MODERATION = {(m, p, t): 0.0 for m in MODERATORS for p in PROCESSES for t in TARGETS}
ZERO = dict.fromkeys(PROCESSES, 0.0)
LARGE = {"therapists": [120], "patients_per_therapist": [10]}
#: scenario -> (overrides of the patient design, cells, tests it checks)
SCENARIOS: dict[str, tuple[dict[str, Any], dict[str, Any], tuple[str, ...]]] = {
    "fixed": ({"within": ZERO, "between": ZERO, "moderator_effects": NO_MODERATION}, {},
              ("within", "between_patient", "between", "moderator")),
    "slopes": ({"slope_sd": ZERO, "moderator_effects": {(m, p, "within_slope"): 0.0 for m in MODERATORS
                                                        for p in PROCESSES}}, {}, ("slope_variance",)),
    "fixed_120x10": ({"within": ZERO, "between": ZERO, "moderator_effects": NO_MODERATION, "caseload_shape": None},
                     LARGE, ("within", "between_patient", "between", "moderator")),
    "slopes_120x10": ({"slope_sd": ZERO, "caseload_shape": None,
                       "moderator_effects": {(m, p, "within_slope"): 0.0 for m in MODERATORS for p in PROCESSES}},
                      LARGE, ("slope_variance",)),
    "all_zero": ({"within": ZERO, "between": ZERO, "slope_sd": ZERO, "moderator_effects": NO_MODERATION}, {}, ()),
}
#: The session design's parameter behind each patient-design one the scenarios set.
SESSION = {"within": "session_within_patient", "between": "session_between_therapist", "slope_sd": "session_slope_sd",
           "moderator_effects": "session_moderator_effects"}


def scenario_overrides(scenario: str, design: str) -> dict[str, Any]:
    """The overrides of ``scenario`` for ``design`` (session: the ``session_*`` parameters, and the
    between-patient effects at zero wherever the within and between ones are)."""
    overrides = dict(SCENARIOS[scenario][0])
    if design == "patient":
        return overrides
    out = {SESSION.get(k, k): v for k, v in overrides.items()}
    if "within" in overrides:
        out["session_between_patient"] = ZERO
    return {**out, "design": "session"}


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def calibrate(scenario: str, design: str, ddf: str, nsim: int, workers: int, seed: int,
              alpha: float) -> tuple[pd.DataFrame, dict]:
    """Rejection rates of one scenario in one design with one df method, with the verdict for
    the tests it checks."""
    _, cells, checked = SCENARIOS[scenario]
    t0 = time.perf_counter()
    res = power("coyne2022", nsim=nsim, alpha=alpha, seed=seed, workers=workers, progress=sys.stderr.isatty(),
                ddf=ddf, **cells, **scenario_overrides(scenario, design))
    seconds = time.perf_counter() - t0
    rows = []
    reps = res.replicates
    for _, r in res.table.iterrows():
        if r["test"] not in checked and scenario != "all_zero":
            continue
        margin = 1.96 * math.sqrt(alpha * (1 - alpha) / r["n_usable"]) if r["n_usable"] else float("nan")
        rate = r["power"]
        if r["test"] not in checked:
            verdict, criterion = "(information)", ""
        elif r["test"] == "slope_variance":
            criterion = f"<= {alpha + margin:.4f}"
            verdict = "ok" if rate <= alpha + margin else "too many rejections"
        else:
            criterion = f"{alpha - margin:.4f} .. {alpha + margin:.4f}"
            verdict = ("ok" if abs(rate - alpha) <= margin else
                       "too few rejections" if rate < alpha else "too many rejections")
        sub = reps[(reps["test"] == r["test"]) & (reps["process"] == r["process"]) & (reps["status"] == "ok")]
        nonsing = sub[~sub["singular"]]
        fixed = r["test"] != "slope_variance" and len(sub)
        z = (sub["estimate"] / sub["se"]).abs() if fixed else None
        rows.append({
            "scenario": scenario, "level": design,
            "ddf": "(LRT)" if r["test"] == "slope_variance" else ddf,
            "design": f"{r['n_therapists']}x{r['patients_per_therapist']:.3g}",
            "test": r["label"], "true_value": r["true_value"], "n_usable": int(r["n_usable"]),
            "n_failed": int(r["n_failed"]), "rejection_rate": r["power"], "mc_se": r["mc_se"],
            "wilson_low": r["power_low"], "wilson_high": r["power_high"],
            "criterion": criterion, "verdict": verdict,
            "share_singular": float(sub["singular"].mean()) if len(sub) else float("nan"),
            "rate_non_singular": float((nonsing["p"] < alpha).mean()) if len(nonsing) else float("nan"),
            "n_non_singular": len(nonsing),
            "z_rate": float((z > 1.96).mean()) if fixed else float("nan"),
            "sd_over_se": float(sub["estimate"].std() / np.sqrt((sub["se"] ** 2).mean())) if fixed else float("nan"),
        })
    meta = {"seconds": seconds, "execution": res.execution, "failures": res.failures,
            "replicates": nsim * len(res.cells)}
    return pd.DataFrame(rows), meta


def side_by_side(table: pd.DataFrame) -> pd.DataFrame:
    """Each fixed-effect test's size under every df method, one column per method (with MC SE)."""
    fixed = table[(table["ddf"] != "(LRT)") & (table["verdict"] != "(information)")]
    if fixed["ddf"].nunique() < 2:
        return pd.DataFrame()
    fixed = fixed.assign(size=[f"{r:.3f} [{lo:.3f}, {hi:.3f}]" for r, lo, hi in
                               zip(fixed["rejection_rate"], fixed["wilson_low"], fixed["wilson_high"])])
    wide = fixed.pivot_table(index=["level", "design", "test"], columns="ddf", values="size", aggfunc="first")
    return wide.reset_index()


LMERTEST = r"""
suppressMessages({library(lme4); library(lmerTest)})
args <- commandArgs(trailingOnly = TRUE)
for (f in args) {
  d <- read.csv(f)
  m <- suppressMessages(suppressWarnings(lmer(FORMULA, data = d, REML = TRUE)))
  co <- summary(m)$coefficients
  cat(f, paste(co[, "df"], collapse = ","), paste(co[, "Pr(>|t|)"], collapse = ","), sprintf("%.10f", REMLcrit(m)),
      "\n")
}
"""


def lmertest_check(k: int, seed: int) -> str:
    """Satterthwaite df and p of the main model: theralens against lme4 + lmerTest (R)."""
    import shutil
    import subprocess
    import tempfile

    from theralens.model.fit import fit_design
    from theralens.planning.designs import StudyModels
    from theralens.planning.replicate import replicate_seed
    from theralens.planning.satterthwaite import t_tests
    from theralens.planning.settings import design_cells
    from theralens.planning.table import patient_arrays
    from theralens.simulation.generate import simulate

    if shutil.which("Rscript") is None:
        return "lmerTest check skipped: no Rscript on PATH"
    sm = StudyModels()
    (cell,) = design_cells("coyne2022", None, None, {})
    zeros = scenario_overrides("fixed", "patient")
    ours, files = {}, []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(k):
            sim = simulate("coyne2022", seed=replicate_seed(seed, cell, r), **zeros)
            a = patient_arrays(sim.sessions)
            path = str(Path(tmp) / f"rep{r}.csv")
            a.frame().to_csv(path, index=False)
            files.append(path)
            fit = fit_design(sm.main_design(a), sm.main_formula)
            _, _, df, p = t_tests(fit)
            ours[path] = (df, p, fit.reml_criterion)
        script = Path(tmp) / "check.R"
        script.write_text(LMERTEST.replace("FORMULA", sm.main_formula))
        run = subprocess.run(["Rscript", str(script), *files], capture_output=True, text=True, timeout=600)
    if run.returncode != 0:
        return f"lmerTest check failed: {run.stderr.strip().splitlines()[-1] if run.stderr.strip() else run.returncode}"
    rel_df, abs_p, worse = [], [], 0
    for line in run.stdout.strip().splitlines():
        path, dfs, ps, crit = line.split()
        df, p, ours_crit = ours[path]
        if float(crit) > ours_crit + 1e-4:  # lme4 stopped at a worse optimum: df are not comparable
            worse += 1
            continue
        r_df, r_p = np.array(dfs.split(","), dtype=float), np.array(ps.split(","), dtype=float)
        rel_df.append(np.abs(df[1:5] / r_df[1:5] - 1))
        abs_p.append(np.abs(p[1:5] - r_p[1:5]))
    rel_df, abs_p = np.array(rel_df).reshape(-1, 4), np.array(abs_p).reshape(-1, 4)
    same = (f"Satterthwaite df relative difference median {np.median(rel_df):.1e}, 95th percentile "
            f"{np.quantile(rel_df, 0.95):.1e}, max {rel_df.max():.1e}; p-value difference median "
            f"{np.median(abs_p):.1e}, max {abs_p.max():.1e}") if len(rel_df) else "no replicate at the same optimum"
    return (f"lmerTest check ({k} replicates of `fixed`, main model, within and between effects): lme4 reached "
            f"theralens' REML optimum (within 1e-4) in {k - worse}, a worse one in {worse}; where the optima agree: "
            f"{same}")


def _markdown(table: pd.DataFrame, metas: dict[str, dict], args: argparse.Namespace, command: str,
              notes: list[str]) -> str:
    now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    cols = list(table.columns)
    wall = sum(m["seconds"] for m in metas.values())
    n_reps = sum(m["replicates"] for m in metas.values())
    executor = next(iter(metas.values()))["execution"]
    checked = table[table["verdict"] != "(information)"]
    per: dict[tuple[str, str, str], list[float]] = {}
    for name, m in metas.items():  # seconds per replicate, by design level, df method and cell
        scenario, level, ddf = name.split("/")
        cell = "120x10" if scenario.endswith("120x10") else "42x5"
        per.setdefault((level, ddf, cell), []).append(m["seconds"] / max(m["replicates"], 1))
    timing = "; ".join(f"{lv} {c} {d}: {1000 * np.mean(v) * (executor.get('workers') or 1):.0f} ms"
                       for (lv, d, c), v in sorted(per.items()))
    lines = [
        "# Calibration of the power simulation (validation/power_calibration.py)",
        "",
        f"- date: {now}; machine: {_cpu()}, {os.cpu_count()} cores (shared with other work, load average "
        f"{os.getloadavg()[0]:.1f} at the end); Python {platform.python_version()}, numpy {np.__version__}",
        f"- command: `{command}`; wall time {wall:.0f} s for {n_reps} replicates ({executor.get('executor')}, "
        f"{executor.get('workers', '')} worker(s)); per replicate (wall x workers, including each run's start): "
        f"{timing}",
        f"- design: preset `coyne2022` (42 therapists, 212 patients, uneven caseloads; `_120x10`: 120 therapists x "
        f"10 patients, equal caseloads), {args.nsim} replicates per scenario, design level and df method, seed "
        f"{args.seed}, alpha {args.alpha}; levels {args.designs}; df methods {args.ddf}. Scenarios (module "
        "docstring): `fixed` = within, between (and, session level, between-patient) and cross-level effects 0, "
        "slopes vary as in the preset; `slopes` = therapist slope SDs 0 and no cross-level effect on the within "
        "slopes; `all_zero` = everything at once (information only).",
        "- criteria: fixed-effect tests within 1.96 MC SE (at alpha) of alpha; slope-variance tests at most "
        "alpha + 1.96 MC SE. MC SE = sqrt(alpha (1 - alpha) / n) is 0.0069 at n = 1000; `wilson_low`/`wilson_high`: "
        "the 95% Wilson interval of the rate. `rate_non_singular`: the rate among replicates whose fits were not "
        "singular (`exclude_singular=True`), for information.",
        "",
        "| " + " | ".join(cols) + " |",
        "|" + "---|" * len(cols),
    ]
    for _, r in table.iterrows():
        lines.append("| " + " | ".join(f"{r[c]:.4g}" if isinstance(r[c], float) else str(r[c]) for c in cols) + " |")
    lines += ["", f"All checks within criterion: {bool((checked['verdict'] == 'ok').all())}"]
    wide = side_by_side(table)
    if len(wide):
        wcols = list(wide.columns)
        lines += ["", "## Sizes by df method (rejection rate at alpha [95% Wilson interval]; the same replicates)", "",
                  "| " + " | ".join(wcols) + " |", "|" + "---|" * len(wcols)]
        lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in wide.itertuples(index=False)]
    lines += [f"- {n}" for n in notes]
    lines += _findings(table)
    for name, meta in metas.items():
        fails = meta["failures"]
        if len(fails):
            lines += [f"- {name}: {len(fails)} failed models; most frequent: "
                      + "; ".join(f"{e} ({n}x)" for e, n in fails["error"].value_counts().head(3).items())]
    return "\n".join(lines) + "\n"


def _findings(table: pd.DataFrame) -> list[str]:
    """The failed checks with their diagnostics, and how to read them."""
    failed = table[~table["verdict"].isin(["ok", "(information)"])]
    if not len(failed):
        return []
    out = ["", "## Failed checks", ""]
    for _, r in failed.iterrows():
        out.append(f"- {r['scenario']} {r['level']} {r['design']} ({r['ddf']}), {r['test']}: rejection rate "
                   f"{r['rejection_rate']:.3f} "
                   f"({r['verdict']}; criterion {r['criterion']}); {r['share_singular']:.0%} singular fits; "
                   f"z_rate {r['z_rate']:.3f}, SD of estimates / RMS SE {r['sd_over_se']:.3f}")
    out += ["", "How to read them: `sd_over_se` below 1 means the model's SEs are larger than the spread of the "
            "estimates, and `rejection_rate` below `z_rate` means the Satterthwaite df are small; both make a test "
            "conservative. The tool does not choose either: it reports what the study's analysis (random therapist "
            "slopes, REML, lmerTest's Satterthwaite df, which the lmerTest check above reproduces) does on data like "
            "these. Compare the same tests where the slope variances are identified (`fixed_120x10`)."]
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nsim", type=int, default=1000)
    ap.add_argument("--workers", type=int, default=1, help="local processes (default 1: leave a core free)")
    ap.add_argument("--seed", type=int, default=2024)
    ap.add_argument("--alpha", type=float, default=0.05)
    ap.add_argument("--scenarios", default=",".join(SCENARIOS), help="comma-separated: " + ", ".join(SCENARIOS))
    ap.add_argument("--designs", default="patient", help="comma-separated design levels: patient, session")
    ap.add_argument("--ddf", default="satterthwaite", help="comma-separated df methods: satterthwaite, kenward-roger, "
                                                             "residual, asymptotic")
    ap.add_argument("--out", help="write the markdown record here (e.g. validation/power_calibration.md)")
    ap.add_argument("--lmertest", type=int, default=0, metavar="K", help="compare K replicates with lmerTest (R)")
    args = ap.parse_args()
    tables, metas = [], {}
    for name in args.scenarios.split(","):
        for design in args.designs.split(","):
            methods = args.ddf.split(",")
            if not SCENARIOS[name][2] or SCENARIOS[name][2] == ("slope_variance",):
                methods = methods[:1]  # the slope-variance tests do not use the df
            for ddf in methods:
                table, metas[f"{name}/{design}/{ddf}"] = calibrate(name, design, ddf, args.nsim, args.workers,
                                                                   args.seed, args.alpha)
                tables.append(table)
    table = pd.concat(tables, ignore_index=True)
    command = ".venv/bin/python validation/power_calibration.py " + " ".join(sys.argv[1:])
    notes = [lmertest_check(args.lmertest, args.seed)] if args.lmertest else []
    text = _markdown(table, metas, args, command, notes)
    print(text)
    if args.out:
        write_text(args.out, text)
    checked = table[table["verdict"] != "(information)"]
    return 0 if (checked["verdict"] == "ok").all() else 1


if __name__ == "__main__":
    raise SystemExit(main())
