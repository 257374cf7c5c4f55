"""Benchmark of simulation-based power (issue: plan the next study).

Measures, for the ``coyne2022`` preset (42 therapists, 212 patients, uneven caseloads):

1. seconds per replicate on one core (one process, BLAS limited to one thread), median of
   ``--batches`` batches of ``--reps`` replicates each, for three loops over the same
   simulated data (``simulate`` + the numpy patient-level table of ``theralens.power``):
   - ``theralens_two_fits``: the data, the main model and the model without the alliance
     slope (``theralens.planning.fit.fit_design``), and their chi-bar-square LRT;
   - ``mixedlm_two_fits``: the same loop around ``mixedlm.lmer`` (PyPI, Rust backend):
     the data, the same two REML fits, the same LRT from ``REMLcrit``;
   - ``theralens_replicate``: a full power replicate (main, two reduced models, the moderator
     model, chi-bar-square LRTs, Satterthwaite t tests: ``theralens.planning.replicate``);
   the parts of the data step (``simulate``, table), and CPU ms per step of a replicate
   (``replicate_steps``: simulate, table and designs, each fit, the batched Satterthwaite
   t tests); all loops run as a power worker runs its chunk (one BLAS thread, freed memory
   kept for reuse: ``theralens.planning.blas``, ``theralens.planning.memory``);
2. wall time of ``theralens.power(nsim=1000, workers=2)`` (the whole study: process pool,
   aggregation), with the load average before and after;
3. ``--compare`` (issue #12, side by side in one run, for the published design and the session
   design): ``theralens power`` started from the command line with library defaults (a child
   process with no thread variable set: every ``*_NUM_THREADS`` removed; default workers =
   all cores), ``--nsim`` (``--cli-nsim``, default 1,000) replicates of 42 therapists x 212
   patients, its wall seconds (total and per replicate) and CPU seconds per replicate; and the
   same replicate written around ``mixedlm`` (also in a child process with library defaults):
   simulate, the study's analysis table, the main model, the model without each slope, the
   moderator model (REML, ``mixedlm.lmer``), the chi-bar-square LRTs from ``REMLcrit``,
   Satterthwaite t tests (``mixedlm.pvalues_with_ddf``) of the main and moderator models, median
   over ``--mixedlm-batches`` batches of ``--mixedlm-reps`` replicates; the ratio per replicate
   (mixedlm / theralens, wall; CPU beside it) and mixedlm's seconds for 1,000 replicates at that
   rate.

Run from the repository root::

    .venv/bin/python benchmarks/bench_power.py                  # 1 and 2, about a minute
    .venv/bin/python benchmarks/bench_power.py --skip-pool --reps 50 --out /tmp/bench_power.json
    .venv/bin/python benchmarks/bench_power.py --compare --out benchmarks/results_power_compare.json

Times are wall clock (``time.perf_counter``) and CPU (``time.process_time``); on a machine
shared with other work the CPU times are the steadier numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # one core per process, before numpy loads
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
from scipy import stats  # noqa: E402

try:
    import theralens  # noqa: F401
except ImportError:  # not installed: use the source tree next to us
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from theralens import lrt  # noqa: E402
from theralens.model.fit import fit_design  # noqa: E402
from theralens.planning import power  # noqa: E402
from theralens.planning.analysis_table import AnalysisTable, analysis_table  # noqa: E402
from theralens.planning.blas import single_thread_blas  # noqa: E402
from theralens.planning.designs import StudyModels  # noqa: E402
from theralens.planning.memory import reuse_freed_memory  # noqa: E402
from theralens.planning.replicate import PowerSpec, replicate_seed, run_replicate  # noqa: E402
from theralens.planning.satterthwaite import t_tests  # noqa: E402
from theralens.planning.settings import Cell  # noqa: E402
from theralens.planning.table import patient_arrays  # noqa: E402
from theralens.simulation.generate import PROCESSES, simulate  # noqa: E402

CELL = Cell(n_therapists=42, patients_per_therapist=212 / 42, n_patients=212)
MODELS = StudyModels()


def _data(seed: int) -> Any:
    return patient_arrays(simulate("coyne2022", seed=seed).sessions)


def theralens_two_fits(seed: int) -> float:
    a = _data(seed)
    main_design = MODELS.main_design(a)
    main = fit_design(main_design, MODELS.main_formula)
    reduced = fit_design(MODELS.reduced_design(a, "alliance", main_design), MODELS.reduced_formula("alliance"))
    return lrt(reduced, main).p_value


def mixedlm_two_fits(seed: int) -> float:
    import mixedlm

    frame = _data(seed).frame()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # singular-fit warnings
        main = mixedlm.lmer(MODELS.main_formula, frame, REML=True)
        reduced = mixedlm.lmer(MODELS.reduced_formula("alliance"), frame, REML=True)
    stat = max(float(reduced.REMLcrit()) - float(main.REMLcrit()), 0.0)
    return 0.5 * stats.chi2.sf(stat, 2) + 0.5 * stats.chi2.sf(stat, 3)  # Self & Liang 1987


def theralens_replicate(seed: int) -> float:
    return float(run_replicate(PowerSpec(seed=seed), CELL, 0).p[0])


def data_simulate(seed: int) -> float:
    return float(len(simulate("coyne2022", seed=seed).sessions))


_SESSIONS = [simulate("coyne2022", seed=s).sessions for s in range(20)]


def data_table(seed: int) -> float:
    return float(patient_arrays(_SESSIONS[seed % len(_SESSIONS)]).n)


def replicate_steps(reps: int) -> dict[str, float]:
    """CPU ms per replicate of each step of :func:`run_replicate` (the same calls, timed one
    by one with ``time.process_time``), over ``reps`` replicates."""
    spec = PowerSpec(seed=1)
    sm = spec.models
    steps: dict[str, float] = {}

    def tick(name: str, t0: float) -> float:
        t = time.process_time()
        steps[name] = steps.get(name, 0.0) + t - t0
        return t

    for r in range(-2, reps):  # two untimed warm-up replicates
        if r == 0:
            steps.clear()
        t = time.process_time()
        sim = simulate(spec.preset, seed=replicate_seed(spec.seed, CELL, r % 10_000), n_therapists=CELL.n_therapists,
                       n_patients=CELL.n_patients)
        t = tick("simulate", t)
        a = patient_arrays(sim.sessions, PROCESSES, spec.covariates)
        main_design = sm.main_design(a)
        ids = sim.therapists["therapist"].to_numpy()
        order = np.argsort(ids)
        w = sim.therapists[spec.moderator].to_numpy(dtype=float)[order][
            np.searchsorted(ids[order], a.all_therapist_ids)]
        designs = [sm.reduced_design(a, p, main_design) for p in PROCESSES]
        mod_design = sm.moderator_design(a, w, main_design)
        t = tick("table_and_designs", t)
        try:
            main = fit_design(main_design, sm.main_formula)
            t = tick("fit_main", t)
            for p, d in zip(PROCESSES, designs):
                fit_design(d, sm.reduced_formula(p))
            t = tick("fit_reduced_x2", t)
            mod = fit_design(mod_design, sm.moderator_formula)
            t = tick("fit_moderator", t)
            t_tests(main)
            t_tests(mod)
            t = tick("satterthwaite_t_tests_x2", t)
        except Exception:  # a failed fit: its time stays in its step
            continue
    out = {k: v / max(reps, 1) * 1e3 for k, v in steps.items()}
    out["total"] = sum(out.values())
    return out


def per_replicate(fn: Callable[[int], float], reps: int, batches: int) -> dict[str, Any]:
    """Median seconds per replicate over ``batches`` batches (wall and CPU)."""
    for s in range(2):
        fn(10_000 + s)  # warm-up: imports, caches
    wall, cpu, failed = [], [], 0
    for b in range(batches):
        t0, c0 = time.perf_counter(), time.process_time()
        for r in range(reps):
            try:
                fn(b * reps + r)
            except Exception:  # a failed fit still cost its time
                failed += 1
        wall.append((time.perf_counter() - t0) / reps)
        cpu.append((time.process_time() - c0) / reps)
    return {"wall_s": statistics.median(wall), "cpu_s": statistics.median(cpu), "wall_all": wall, "cpu_all": cpu,
            "failed": failed, "replicates": reps * batches}


THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "VECLIB_MAXIMUM_THREADS",
                    "NUMEXPR_NUM_THREADS", "RAYON_NUM_THREADS", "POLARS_MAX_THREADS")


def _clean_env() -> dict[str, str]:
    """This environment without any thread-count variable (library defaults)."""
    return {k: v for k, v in os.environ.items() if k not in THREAD_VARIABLES}


def mixedlm_replicate(design: str, replicate: int) -> int:
    """One power replicate written around mixedlm: the same data, fits and tests as
    :func:`theralens.planning.replicate.run_replicate` (returns the number of p-values)."""
    import mixedlm

    spec = PowerSpec(seed=1, overrides={"design": design})
    sim = simulate("coyne2022", seed=replicate_seed(spec.seed, CELL, replicate), n_therapists=CELL.n_therapists,
                   n_patients=CELL.n_patients, design=design)
    if design == "patient":
        a = patient_arrays(sim.sessions, spec.processes, spec.covariates)
        at = AnalysisTable(frame=a.frame().astype({"therapist": str, "patient": str}), terms=spec.models.terms)
    else:
        at = analysis_table(sim.sessions, spec.analysis_config)
    terms, sm = at.terms, spec.models
    mod_frame, _ = at.with_moderator(sim.therapists, spec.moderator)
    p = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # singular-fit and convergence warnings
        main = mixedlm.lmer(terms.formula(), at.frame, REML=True)
        for proc in terms.processes:
            reduced = mixedlm.lmer(terms.formula(slopes=[terms.within[o] for o in terms.processes if o != proc]),
                                   at.frame, REML=True)
            stat = max(float(reduced.REMLcrit()) - float(main.REMLcrit()), 0.0)
            q = 1 + len(terms.processes)
            p.append(0.5 * stats.chi2.sf(stat, q - 1) + 0.5 * stats.chi2.sf(stat, q))  # Self & Liang 1987
        moderator = mixedlm.lmer(sm.moderator_formula, mod_frame, REML=True)
        for fit in (main, moderator):
            p += [v[2] for v in mixedlm.pvalues_with_ddf(fit, method="Satterthwaite").values()]
    return len(p)


def _mixedlm_loop(design: str, reps: int, batches: int) -> dict[str, Any]:
    """``--mixedlm-loop``: :func:`mixedlm_replicate` timed (run in a child with library defaults)."""
    mixedlm_replicate(design, 10_000)  # warm-up
    wall, cpu = [], []
    for b in range(batches):
        t0, c0 = time.perf_counter(), time.process_time()
        for r in range(reps):
            mixedlm_replicate(design, b * reps + r)
        wall.append((time.perf_counter() - t0) / reps)
        cpu.append((time.process_time() - c0) / reps)
    return {"wall_s": statistics.median(wall), "cpu_s": statistics.median(cpu), "wall_all": wall, "cpu_all": cpu,
            "replicates": reps * batches}


def compare(cli_nsim: int, mixedlm_reps: int, mixedlm_batches: int) -> dict[str, Any]:
    """Issue #12's comparison (module docstring, 3) for both designs."""
    import subprocess
    import tempfile

    out: dict[str, Any] = {"env_removed": [k for k in THREAD_VARIABLES if k in os.environ]}
    exe = Path(sys.executable).with_name("theralens")
    for design in ("patient", "session"):
        with tempfile.TemporaryDirectory() as tmp:
            cmd = [str(exe) if exe.exists() else "theralens", "power", "--therapists", "42",
                   "--patients-per-therapist", repr(212 / 42), "--nsim", str(cli_nsim), "--seed", "1",
                   "--design", design, "--out", str(Path(tmp) / "plan")]
            t0 = time.perf_counter()
            run = subprocess.run(cmd, env=_clean_env(), capture_output=True, text=True)
            wall = time.perf_counter() - t0
            if run.returncode != 0:
                raise RuntimeError(f"theralens power failed: {run.stderr.strip()[-500:]}")
            meta = json.loads((Path(tmp) / "plan" / "power.json").read_text())["meta"]
        ex = meta["execution"]
        cli = {"command": " ".join(cmd[1:-2]), "nsim": cli_nsim, "wall_s": wall,
               "wall_per_replicate_s": wall / cli_nsim, "workers": ex.get("workers"),
               "replicate_cpu_per_replicate_s": ex.get("replicate_cpu_seconds", 0.0) / cli_nsim,
               "seconds_inside": meta["seconds"]}
        loop = subprocess.run([sys.executable, __file__, "--mixedlm-loop", design, "--mixedlm-reps", str(mixedlm_reps),
                               "--mixedlm-batches", str(mixedlm_batches)], env=_clean_env(), capture_output=True,
                              text=True)
        if loop.returncode != 0:
            raise RuntimeError(f"mixedlm loop failed: {loop.stderr.strip()[-500:]}")
        ml = json.loads(loop.stdout.strip().splitlines()[-1])
        out[design] = {"theralens_cli": cli, "mixedlm": ml,
                       "ratio_wall_per_replicate": ml["wall_s"] / cli["wall_per_replicate_s"],
                       "ratio_cpu_per_replicate": ml["cpu_s"] / max(cli["replicate_cpu_per_replicate_s"], 1e-12),
                       "mixedlm_seconds_per_1000": ml["wall_s"] * 1000,
                       "theralens_seconds_per_1000": cli["wall_per_replicate_s"] * 1000}
        r = out[design]
        print(f"{design} design: theralens power (CLI, defaults, {cli['workers']} workers) {cli['wall_s']:.1f} s for "
              f"{cli_nsim} replicates = {cli['wall_per_replicate_s'] * 1e3:.1f} ms/replicate wall "
              f"({cli['replicate_cpu_per_replicate_s'] * 1e3:.1f} ms CPU in replicates); mixedlm "
              f"{ml['wall_s'] * 1e3:.1f} ms/replicate wall ({ml['cpu_s'] * 1e3:.1f} ms CPU); ratio "
              f"{r['ratio_wall_per_replicate']:.1f}x wall, {r['ratio_cpu_per_replicate']:.1f}x CPU; 1,000 replicates: "
              f"theralens {r['theralens_seconds_per_1000']:.0f} s, mixedlm {r['mixedlm_seconds_per_1000']:.0f} s")
    return out


def main() -> None:
    if "--mixedlm-loop" in sys.argv:  # the child of compare(): print one JSON line
        ap = argparse.ArgumentParser()
        ap.add_argument("--mixedlm-loop", choices=["patient", "session"])
        ap.add_argument("--mixedlm-reps", type=int, default=10)
        ap.add_argument("--mixedlm-batches", type=int, default=3)
        a = ap.parse_args()
        print(json.dumps(_mixedlm_loop(a.mixedlm_loop, a.mixedlm_reps, a.mixedlm_batches)))
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--compare", action="store_true", help="issue #12: theralens power CLI vs the mixedlm replicate")
    ap.add_argument("--cli-nsim", type=int, default=1000, help="replicates of each theralens power command")
    ap.add_argument("--mixedlm-reps", type=int, default=10, help="mixedlm replicates per timed batch")
    ap.add_argument("--mixedlm-batches", type=int, default=3)
    ap.add_argument("--reps", type=int, default=40, help="replicates per timed batch")
    ap.add_argument("--batches", type=int, default=5)
    ap.add_argument("--nsim", type=int, default=1000, help="replicates of the 2-core run")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--skip-pool", action="store_true", help="skip the 2-core run")
    ap.add_argument("--skip-mixedlm", action="store_true")
    ap.add_argument("--out", help="write the results as JSON here")
    args = ap.parse_args()
    if args.compare:
        results = {"meta": {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "platform": platform.platform(),
                            "python": platform.python_version(), "cores": os.cpu_count(),
                            "loadavg_before": os.getloadavg()}}
        import mixedlm

        results["meta"]["mixedlm"] = getattr(mixedlm, "__version__", "?")
        results["compare"] = compare(args.cli_nsim, args.mixedlm_reps, args.mixedlm_batches)
        results["meta"]["loadavg_after"] = os.getloadavg()
        if args.out:
            Path(args.out).write_text(json.dumps(results, indent=2))
            print(f"wrote {args.out}")
        return

    loops: list[tuple[str, Callable[[int], float]]] = [
        ("data_simulate", data_simulate), ("data_table", data_table),
        ("theralens_two_fits", theralens_two_fits), ("theralens_replicate", theralens_replicate),
    ]
    if not args.skip_mixedlm:
        try:
            import mixedlm  # noqa: F401

            loops.insert(3, ("mixedlm_two_fits", mixedlm_two_fits))
        except ImportError:
            print("mixedlm not installed (.venv/bin/pip install mixedlm): skipped", file=sys.stderr)
    results: dict[str, Any] = {"meta": {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "platform": platform.platform(),
        "python": platform.python_version(), "numpy": np.__version__, "cores": os.cpu_count(),
        "loadavg_before": os.getloadavg(), "reps_per_batch": args.reps, "batches": args.batches,
    }}
    try:
        import mixedlm

        results["meta"]["mixedlm"] = getattr(mixedlm, "__version__", "?")
    except ImportError:
        pass
    print(f"one core, median of {args.batches} x {args.reps} replicates (coyne2022: 42 therapists, 212 patients)")
    with single_thread_blas(), reuse_freed_memory():  # as a power worker runs its chunk
        for name, fn in loops:
            r = per_replicate(fn, args.reps, args.batches)
            results[name] = r
            print(f"  {name:22s} {r['wall_s'] * 1e3:8.2f} ms/replicate wall  {r['cpu_s'] * 1e3:8.2f} ms CPU"
                  + (f"  ({r['failed']} failed)" if r["failed"] else ""))
        steps = replicate_steps(args.reps * args.batches)
    results["replicate_steps_cpu_ms"] = steps
    print("  steps of a replicate, ms CPU: " + ", ".join(f"{k} {v:.2f}" for k, v in steps.items()))
    if "mixedlm_two_fits" in results:
        for key in ("wall_s", "cpu_s"):
            ratio = results["mixedlm_two_fits"][key] / results["theralens_two_fits"][key]
            results.setdefault("ratio_mixedlm_over_theralens", {})[key] = ratio
        print(f"  mixedlm / theralens (two fits): {results['ratio_mixedlm_over_theralens']['cpu_s']:.1f}x CPU, "
              f"{results['ratio_mixedlm_over_theralens']['wall_s']:.1f}x wall")
    if not args.skip_pool:
        load = os.getloadavg()
        t0 = time.perf_counter()
        res = power("coyne2022", nsim=args.nsim, workers=args.workers, seed=1, progress=False)
        wall = time.perf_counter() - t0
        cpu = res.execution["replicate_cpu_seconds"]
        results["pool"] = {"nsim": args.nsim, "workers": args.workers, "wall_s": wall, "loadavg_before": load,
                           "loadavg_after": os.getloadavg(), "usable_share_min": float(res.table["usable_share"].min()),
                           "replicate_cpu_s": cpu, "replicate_wall_s": res.execution["replicate_seconds"]}
        print(f"theralens.power(nsim={args.nsim}, workers={args.workers}): {wall:.1f} s wall "
              f"(load average before {load[0]:.1f}, after {os.getloadavg()[0]:.1f}); CPU in replicates {cpu:.1f} s "
              f"= {cpu / args.nsim * 1e3:.1f} ms per replicate, {cpu / args.workers:.1f} s per worker")
    results["meta"]["loadavg_after"] = os.getloadavg()
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
