"""Benchmark theralens' nested linear mixed-model engine against its peers.

Simulates therapy data (sessions in patients in therapists), writes it once per size to a
temporary Parquet (and, for R, CSV) file and fits the same model with every peer, each in
its own subprocess, so that the peak resident memory of a fit is that process's own:

    outcome ~ alliance + expectancy + session
              + (1 + alliance + expectancy | therapist) + (1 | patient)

Peers: ``theralens`` (``theralens.fit_mixed``), ``mixedlm`` (PyPI, Rust backend,
``mixedlm.lmer``), ``statsmodels`` (``MixedLM`` with a variance component for patients) and
``lme4`` (``lmer`` through ``Rscript``). Only the fit is timed (model building included,
data loading excluded): one warm-up fit, then the median of ``--repeats`` fits.

Two paths (``--paths``): ``simulated`` fits the model above to the simulated table as it is
(integer ids, Parquet); ``user`` is what a user does: the same sessions written to CSV with
string ids and the lagged decomposition of the processes (within patient, between patients,
between therapists), read back with ``pandas.read_csv`` and fitted with the lagged model

    outcome_next ~ outcome + alliance_wp + alliance_bp + alliance_bt + expectancy_wp
                   + expectancy_bp + expectancy_bt
                   + (1 + alliance_wp + expectancy_wp | therapist) + (1 | patient)

(the last session of every patient has no next outcome: those rows are dropped by every peer).
Every path runs with each thread setting of ``--threads`` (``default``: the libraries' own
thread pools; ``1``: one thread).

Run from the repository root::

    .venv/bin/python benchmarks/bench_engine.py --sizes small,medium --peers mixedlm,lme4

See ``benchmarks/README.md`` for what is measured and how the criteria are matched.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

FORMULA = "outcome ~ alliance + expectancy + session + (1 + alliance + expectancy | therapist) + (1 | patient)"
FIXED_NAMES = ["(Intercept)", "alliance", "expectancy", "session"]
USER_FORMULA = ("outcome_next ~ outcome + alliance_wp + alliance_bp + alliance_bt + expectancy_wp + expectancy_bp"
                " + expectancy_bt + (1 + alliance_wp + expectancy_wp | therapist) + (1 | patient)")
USER_FIXED = ["(Intercept)", "outcome", "alliance_wp", "alliance_bp", "alliance_bt", "expectancy_wp",
              "expectancy_bp", "expectancy_bt"]
PATHS = {"simulated": FORMULA, "user": USER_FORMULA}
ALL_PEERS = ["theralens", "mixedlm", "statsmodels", "lme4"]
SEED = 20240611
RESULT_TAG = "BENCH_RESULT_JSON "


@dataclass(frozen=True)
class Size:
    """One benchmark size: therapists and (globally unique) patients."""

    name: str
    therapists: int
    patients: int


SIZES: dict[str, Size] = {
    "small": Size("small", 42, 212),
    "medium": Size("medium", 400, 4_000),
    "large": Size("large", 2_000, 40_000),
    # About 1 million session rows (issue #11: lme4 and mixedlm beside theralens at 1M rows).
    "xlarge": Size("xlarge", 4_600, 92_000),
}
#: Sizes fitted once per peer by default, where statsmodels is skipped unless asked for.
LARGE_SIZES = ("large", "xlarge")

# True generating values (documented in benchmarks/README.md).
TRUE_BETA = {"(Intercept)": 20.0, "alliance": -1.0, "expectancy": -0.5, "session": -0.4}
THERAPIST_SD = np.array([1.2, 0.5, 0.35])  # intercept, alliance slope, expectancy slope
THERAPIST_CORR = np.array(
    [
        [1.0, -0.3, 0.2],
        [-0.3, 1.0, 0.4],
        [0.2, 0.4, 1.0],
    ]
)
PATIENT_SD = 2.5
RESIDUAL_SD = 3.0
SESSIONS_MIN, SESSIONS_MAX = 4, 18


# --------------------------------------------------------------------------- simulation


def simulate(size: Size, seed: int = SEED) -> Any:
    """Simulate one data set of ``size``; returns a pandas DataFrame.

    Each therapist has at least two patients, the rest of the caseload is spread with
    Dirichlet weights (unequal caseloads); each patient has 4-18 sessions (uniform, mean
    11). ``alliance`` and ``expectancy`` are session-level processes with a stable patient
    part, a drift over sessions and session noise (roughly standardised). Patient ids are
    globally unique integers; therapist ids are integers too.
    """
    import pandas as pd

    rng = np.random.default_rng(seed + size.patients)
    n_t, n_p = size.therapists, size.patients
    if n_p < 2 * n_t:
        raise ValueError("need at least two patients per therapist")
    weights = rng.dirichlet(np.full(n_t, 2.0))
    caseload = 2 + rng.multinomial(n_p - 2 * n_t, weights)
    patient_therapist = np.repeat(np.arange(n_t), caseload)  # therapist of each patient
    n_sessions = rng.integers(SESSIONS_MIN, SESSIONS_MAX + 1, size=n_p)
    n_rows = int(n_sessions.sum())

    patient = np.repeat(np.arange(n_p), n_sessions)
    therapist = patient_therapist[patient]
    starts = np.repeat(np.cumsum(n_sessions) - n_sessions, n_sessions)
    session = (np.arange(n_rows) - starts + 1).astype(np.float64)  # 1..n_sessions

    # Session-level processes: patient trait + growth over sessions + session noise.
    pat_alliance = rng.normal(0.0, 0.7, n_p)
    pat_expect = 0.4 * pat_alliance + rng.normal(0.0, 0.6, n_p)
    s_c = (session - 8.0) / 8.0
    alliance = pat_alliance[patient] + 0.25 * s_c + rng.normal(0.0, 0.7, n_rows)
    expectancy = pat_expect[patient] + 0.10 * s_c + rng.normal(0.0, 0.65, n_rows)

    cov = np.outer(THERAPIST_SD, THERAPIST_SD) * THERAPIST_CORR
    u = rng.multivariate_normal(np.zeros(3), cov, size=n_t)  # therapist effects
    v = rng.normal(0.0, PATIENT_SD, n_p)  # patient intercepts
    b = TRUE_BETA
    outcome = (
        b["(Intercept)"]
        + b["alliance"] * alliance
        + b["expectancy"] * expectancy
        + b["session"] * session
        + u[therapist, 0]
        + u[therapist, 1] * alliance
        + u[therapist, 2] * expectancy
        + v[patient]
        + rng.normal(0.0, RESIDUAL_SD, n_rows)
    )
    return pd.DataFrame(
        {
            "therapist": therapist.astype(np.int64) + 1,
            "patient": patient.astype(np.int64) + 1,
            "session": session,
            "alliance": np.round(alliance, 6),
            "expectancy": np.round(expectancy, 6),
            "outcome": np.round(outcome, 6),
        }
    )


def user_table(df: Any) -> Any:
    """The simulated sessions as a user's file holds them: string ids (``T0001``, ``P000001``),
    each process split into its within-patient deviation (``_wp``), the patient mean's deviation
    from the therapist mean (``_bp``) and the therapist mean's deviation from the grand mean
    (``_bt``), and the next session's outcome (``outcome_next``; missing at a patient's last
    session)."""
    out = df[["therapist", "patient", "session", "outcome"]].copy()
    out["therapist"] = [f"T{t:04d}" for t in df["therapist"]]
    out["patient"] = [f"P{p:06d}" for p in df["patient"]]
    for proc in ("alliance", "expectancy"):
        x = df[proc]
        patient_mean = x.groupby(df["patient"]).transform("mean")
        therapist_mean = x.groupby(df["therapist"]).transform("mean")
        out[f"{proc}_wp"] = np.round(x - patient_mean, 6)
        out[f"{proc}_bp"] = np.round(patient_mean - therapist_mean, 6)
        out[f"{proc}_bt"] = np.round(therapist_mean - x.mean(), 6)
    out["outcome_next"] = df["outcome"].groupby(df["patient"]).shift(-1)
    return out


def read_data(path: str) -> Any:
    """The data file as a peer reads it: CSV through ``pandas.read_csv`` (the user path), else Parquet."""
    import pandas as pd

    return pd.read_csv(path) if path.endswith(".csv") else pd.read_parquet(path)


# --------------------------------------------------------------------------- workers
# Each worker runs in a fresh interpreter: load data (not timed), one warm-up fit, then
# ``repeats`` timed fits; it prints one tagged JSON line with its results.


def _peak_rss_mb() -> float:
    import resource

    # Linux reports ru_maxrss in KiB.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _current_rss_mb() -> float | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


def _import_peer(peer: str) -> None:
    """Import a peer's modules before any timing (mixedlm loads its public objects lazily)."""
    if peer == "theralens":
        try:
            import theralens
        except ImportError:  # not installed in the venv: use the source tree next to us
            sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
            import theralens
        _ = theralens.fit_mixed
    elif peer == "mixedlm":
        import mixedlm

        _ = mixedlm.lmer
    elif peer == "statsmodels":
        import statsmodels.formula.api  # noqa: F401


def _fit_theralens(df: Any, formula: str) -> dict[str, Any]:
    import theralens

    res = theralens.fit_mixed(formula, df, reml=True)
    fe = res.fixed_effects
    opt = getattr(res, "optimizer", None)
    return {
        "criterion": float(res.reml_criterion),
        "fixed_effects": {str(k): float(v) for k, v in fe.items()},
        "converged": bool(getattr(res, "converged", True)),
        "evaluations": getattr(opt, "evaluations", None),
        "optimizer": getattr(opt, "name", None) or getattr(opt, "method", None),
    }


def _fit_mixedlm(df: Any, formula: str) -> dict[str, Any]:
    import mixedlm

    res = mixedlm.lmer(formula, df, REML=True)
    return {
        # REMLcrit = -2 * REML log-likelihood, same definition as lme4::REMLcrit.
        "criterion": float(res.REMLcrit()),
        "fixed_effects": {str(k): float(v) for k, v in res.fixef().items()},
        "converged": bool(res.converged),
        "evaluations": int(res.function_evals),
        "optimizer": str(res.optimizer),
        "message": str(res.message),
        "singular": bool(res.isSingular()),
    }


def _fit_statsmodels(df: Any, formula: str) -> dict[str, Any]:
    import warnings

    import statsmodels.formula.api as smf

    fixed = formula.split(" + (")[0]
    slopes = formula.split(" + (1 + ")[1].split(" |")[0]
    response = fixed.split(" ~ ")[0]
    model = smf.mixedlm(
        fixed,
        df[df[response].notna()],
        groups="therapist",
        re_formula="~" + slopes,
        vc_formula={"patient": "0 + C(patient)"},
    )
    # Default optimizers: bfgs, then lbfgs, then cg when the previous one did not converge
    # (statsmodels warns "Retrying MixedLM optimization with <next>"); full_output keeps the
    # final attempt's retvals (function-call count) in res.hist.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = model.fit(reml=True, full_output=True)
    optimizer = "bfgs"
    for w in caught:
        m = re.search(r"Retrying MixedLM optimization with (\w+)", str(w.message))
        if m:
            optimizer = m.group(1)
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    hist = getattr(res, "hist", None) or []
    evals = int(hist[-1]["fcalls"]) if hist and "fcalls" in hist[-1] else None
    fe = {("(Intercept)" if k == "Intercept" else str(k)): float(v) for k, v in res.fe_params.items()}
    return {
        # statsmodels' REML llf is the profiled REML log-likelihood with the same constants
        # as lme4 ((n-p) log(2 pi) etc.), so -2 llf is directly comparable to REMLcrit.
        "criterion": float(-2.0 * res.llf),
        "raw_llf": float(res.llf),
        "fixed_effects": fe,
        "converged": bool(res.converged),
        "evaluations": evals,  # of the final optimizer only
        "optimizer": optimizer,
    }


PY_FITTERS = {
    "theralens": _fit_theralens,
    "mixedlm": _fit_mixedlm,
    "statsmodels": _fit_statsmodels,
}


def run_python_worker(peer: str, data_path: str, formula: str, repeats: int, warmup: int) -> None:
    """Entry point of a Python worker subprocess; prints one tagged JSON line."""
    import warnings

    out: dict[str, Any] = {"peer": peer, "status": "ok"}
    try:
        t0 = time.perf_counter()
        df = read_data(data_path)
        out["read_seconds"] = time.perf_counter() - t0
        out["rows"] = int(len(df))
        out["rss_after_load_mb"] = _current_rss_mb()
        _import_peer(peer)
        fitter = PY_FITTERS[peer]
        seconds: list[float] = []
        per_fit: list[dict[str, Any]] = []
        caught: list[str] = []
        info: dict[str, Any] = {}
        for i in range(warmup + repeats):
            with warnings.catch_warnings(record=True) as wlist:
                warnings.simplefilter("always")
                t0, c0 = time.perf_counter(), time.process_time()
                info = fitter(df, formula)
                elapsed = time.perf_counter() - t0
                cpu = time.process_time() - c0
            for w in wlist:
                msg = f"{w.category.__name__}: {w.message}"
                if msg not in caught:
                    caught.append(msg)
            if i >= warmup:
                seconds.append(elapsed)
                per_fit.append(
                    {
                        "seconds": elapsed,
                        "cpu_seconds": cpu,
                        "optimizer": info.get("optimizer"),
                        "evaluations": info.get("evaluations"),
                        "criterion": info.get("criterion"),
                    }
                )
        out.update(info)
        out["per_fit"] = per_fit
        out["seconds_all"] = seconds
        out["seconds"] = statistics.median(seconds)
        out["cpu_seconds"] = statistics.median(f["cpu_seconds"] for f in per_fit)
        out["warnings"] = caught
    except Exception as exc:  # noqa: BLE001 - any peer failure is recorded, not raised
        out["status"] = "error"
        out["error"] = f"{type(exc).__name__}: {exc}"
    out["peak_rss_mb"] = _peak_rss_mb()
    print(RESULT_TAG + json.dumps(out), flush=True)


R_SCRIPT = r"""
args <- commandArgs(trailingOnly = TRUE)
path <- args[1]; repeats <- as.integer(args[2]); warmup <- as.integer(args[3])
formula_str <- args[4]
emit <- function(key, value) {
  value <- gsub("[\t\n]", " ", as.character(value))
  cat("RESULT\t", key, "\t", paste(value, collapse = "\x1f"), "\n", sep = "")
}
emit("r_version", R.version.string)
if (!suppressWarnings(requireNamespace("lme4", quietly = TRUE))) {
  emit("error", "R package lme4 is not installed")
  quit(status = 3)
}
suppressPackageStartupMessages(library(lme4))
emit("lme4_version", as.character(packageVersion("lme4")))
emit("matrix_version", as.character(packageVersion("Matrix")))
emit("blas", sessionInfo()$BLAS)
if (requireNamespace("data.table", quietly = TRUE)) {
  d <- as.data.frame(data.table::fread(path))
} else {
  d <- read.csv(path)
}
d$therapist <- factor(d$therapist)
d$patient <- factor(d$patient)
emit("rows", nrow(d))
f <- as.formula(formula_str)
invisible(gc(reset = TRUE))
secs <- numeric(0)
cpus <- numeric(0)
msgs <- character(0)
m <- NULL
for (i in seq_len(warmup + repeats)) {
  p0 <- proc.time()
  m <- withCallingHandlers(
    lmer(f, data = d, REML = TRUE),
    warning = function(cond) {
      msgs <<- c(msgs, paste("warning:", conditionMessage(cond)))
      invokeRestart("muffleWarning")
    },
    message = function(cond) {
      msgs <<- c(msgs, paste("message:", trimws(conditionMessage(cond))))
      invokeRestart("muffleMessage")
    }
  )
  dp <- proc.time() - p0
  if (i > warmup) {
    secs <- c(secs, dp[["elapsed"]])
    cpus <- c(cpus, dp[["user.self"]] + dp[["sys.self"]])
  }
}
g <- gc()
emit("seconds_all", sprintf("%.6f", secs))
emit("cpu_seconds_all", sprintf("%.6f", cpus))
emit("criterion", sprintf("%.10f", REMLcrit(m)))
fe <- fixef(m)
emit("fixef_names", names(fe))
emit("fixef_values", sprintf("%.12g", fe))
emit("evaluations", m@optinfo$feval)
emit("optimizer", m@optinfo$optimizer)
conv_msgs <- m@optinfo$conv$lme4$messages
emit("converged", if (m@optinfo$conv$opt == 0 && length(conv_msgs) == 0) "TRUE" else "FALSE")
emit("singular", isSingular(m))
emit("warnings", unique(c(msgs, setdiff(conv_msgs, sub("^warning: ", "", msgs)))))
emit("gc_max_used_mb", sprintf("%.1f", sum(g[, 6])))
"""


THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "RAYON_NUM_THREADS")


def worker_env(threads: int | None) -> dict[str, str]:
    """Environment for a peer subprocess; ``threads`` caps BLAS/OpenMP/Rayon thread pools."""
    env = dict(os.environ)
    if threads is not None:
        env.update({k: str(threads) for k in THREAD_VARS})
    return env


def run_lme4(
    data_csv: Path,
    workdir: Path,
    repeats: int,
    warmup: int,
    timeout: float,
    threads: int | None = None,
    formula: str = FORMULA,
) -> dict[str, Any]:
    """Fit with lme4 through Rscript (wrapped in /usr/bin/time -v for the peak RSS)."""
    out: dict[str, Any] = {"peer": "lme4", "status": "ok"}
    rscript = shutil.which("Rscript")
    if rscript is None:
        return {**out, "status": "skipped", "error": "Rscript not on PATH"}
    script = workdir / "fit_lme4.R"
    script.write_text(R_SCRIPT)
    cmd = [rscript, "--vanilla", str(script), str(data_csv), str(repeats), str(warmup), formula]
    gnu_time = Path("/usr/bin/time")
    if gnu_time.exists():
        cmd = [str(gnu_time), "-v", *cmd]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=worker_env(threads))
    except subprocess.TimeoutExpired:
        return {**out, "status": "error", "error": f"timeout after {timeout:.0f} s"}
    fields: dict[str, list[str]] = {}
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT\t"):
            _, key, value = line.split("\t", 2)
            fields[key] = value.split("\x1f") if value else []
    m = re.search(r"Maximum resident set size \(kbytes\):\s*(\d+)", proc.stderr)
    out["peak_rss_mb"] = int(m.group(1)) / 1024.0 if m else None
    out["r_version"] = fields.get("r_version", [None])[0]
    out["lme4_version"] = fields.get("lme4_version", [None])[0]
    out["matrix_version"] = fields.get("matrix_version", [None])[0]
    out["r_blas"] = fields.get("blas", [None])[0]
    if "criterion" not in fields:
        err = fields.get("error", [""])[0]
        tail = "\n".join(ln for ln in proc.stderr.splitlines()[-15:] if not ln.startswith("\t"))
        out["status"] = "skipped" if "not installed" in err else "error"
        out["error"] = err or f"Rscript exited {proc.returncode}: {tail.strip()[-800:]}"
        return out
    secs = [float(s) for s in fields["seconds_all"]]
    out.update(
        {
            "rows": int(fields["rows"][0]),
            "seconds_all": secs,
            "seconds": statistics.median(secs),
            "cpu_seconds": statistics.median(float(c) for c in fields["cpu_seconds_all"]),
            "criterion": float(fields["criterion"][0]),
            "fixed_effects": dict(zip(fields["fixef_names"], map(float, fields["fixef_values"]), strict=True)),
            "evaluations": int(float(fields["evaluations"][0])),
            "optimizer": fields["optimizer"][0],
            "converged": fields["converged"][0] == "TRUE",
            "singular": fields["singular"][0] == "TRUE",
            "warnings": fields.get("warnings", []),
            "gc_max_used_mb": float(fields["gc_max_used_mb"][0]),
        }
    )
    return out


def run_python_peer(
    peer: str,
    data_file: Path,
    repeats: int,
    warmup: int,
    timeout: float,
    threads: int | None = None,
    formula: str = FORMULA,
) -> dict[str, Any]:
    """Run one Python peer in a fresh subprocess and collect its tagged JSON result."""
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--worker",
        peer,
        "--data",
        str(data_file),
        "--formula",
        formula,
        "--repeats",
        str(repeats),
        "--warmup",
        str(warmup),
    ]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=worker_env(threads))
    except subprocess.TimeoutExpired:
        return {"peer": peer, "status": "error", "error": f"timeout after {timeout:.0f} s"}
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT_TAG):
            return json.loads(line[len(RESULT_TAG) :])
    tail = proc.stderr.strip().splitlines()[-5:]
    return {
        "peer": peer,
        "status": "error",
        "error": f"worker exited {proc.returncode}: " + " | ".join(tail),
    }


# --------------------------------------------------------------------------- environment


def machine_info() -> dict[str, Any]:
    """Describe the machine: platform, CPU model, cores and total RAM."""
    cpu = None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gb = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_gb = round(int(line.split()[1]) / 1024**2, 1)
    except OSError:
        pass
    try:
        nproc = len(os.sched_getaffinity(0))
    except AttributeError:
        nproc = os.cpu_count()
    return {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_model": cpu,
        "nproc": nproc,
        "total_ram_gb": mem_gb,
        "python": platform.python_version(),
        "thread_env": {
            k: os.environ[k] for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS") if k in os.environ
        },
    }


def python_blas() -> str | None:
    """numpy's BLAS (name, version) as numpy reports it."""
    try:
        import numpy

        blas = numpy.show_config(mode="dicts")["Build Dependencies"]["blas"]
        return f"{blas.get('name')} {blas.get('version')}"
    except Exception:  # noqa: BLE001 - informational only
        return None


def package_versions() -> dict[str, str | None]:
    """Versions of the Python packages involved (None when not installed)."""
    from importlib import metadata

    out: dict[str, str | None] = {}
    for name in ("theralens", "mixedlm", "statsmodels", "numpy", "scipy", "pandas", "pyarrow"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


# --------------------------------------------------------------------------- reporting


def _fmt(x: float | None, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def add_comparisons(results: list[dict[str, Any]]) -> None:
    """Per path, size and thread setting: ratio to theralens seconds, difference to the best
    (lowest) criterion and the largest absolute fixed-effect difference to the best-criterion peer."""
    for key in {(r["path"], r["size"], r["threads"]) for r in results}:
        rows = [r for r in results if (r["path"], r["size"], r["threads"]) == key]
        names = USER_FIXED if key[0] == "user" else FIXED_NAMES
        ok = [r for r in rows if r.get("status") == "ok" and r.get("criterion") is not None]
        base = next((r for r in ok if r["peer"] == "theralens"), None)
        best = min(ok, key=lambda r: r["criterion"]) if ok else None
        for r in rows:
            r["ratio_to_theralens"] = (
                r["seconds"] / base["seconds"] if base is not None and r.get("seconds") is not None else None
            )
            if best is None or r not in ok:
                r["criterion_diff_to_best"] = None
                r["max_abs_fixef_diff_to_best"] = None
                continue
            r["criterion_diff_to_best"] = r["criterion"] - best["criterion"]
            fe, fb = r.get("fixed_effects") or {}, best.get("fixed_effects") or {}
            common = [k for k in names if k in fe and k in fb]
            r["max_abs_fixef_diff_to_best"] = max(abs(fe[k] - fb[k]) for k in common) if common else None


def print_table(results: list[dict[str, Any]]) -> None:
    """Print the size x peer table."""
    header = (
        f"{'path':<10}{'size':<7}{'thr':>4} {'peer':<12}{'rows':>8}{'s/fit':>10}{'ratio':>8}"
        f"{'cpu s':>9}{'REMLcrit':>17}{'Δbest':>11}{'|Δβ|max':>10}{'peakMB':>9}{'evals':>7}  notes"
    )
    print(header)
    print("-" * len(header))
    for r in results:
        notes: list[str] = []
        if r.get("status") != "ok":
            notes.append(f"{r.get('status')}: {r.get('error', '')}")
        else:
            if not r.get("converged", True):
                notes.append("NOT CONVERGED")
            if r.get("singular"):
                notes.append("singular")
            notes.extend(r.get("warnings") or [])
        note = "; ".join(notes)
        if len(note) > 90:
            note = note[:87] + "..."
        print(
            f"{r['path']:<10}{r['size']:<7}{r['threads']:>4} {r['peer']:<12}{_fmt(r.get('rows'), 'd'):>8}"
            f"{_fmt(r.get('seconds'), '.3f'):>10}{_fmt(r.get('ratio_to_theralens'), '.2f'):>8}"
            f"{_fmt(r.get('cpu_seconds'), '.3f'):>9}"
            f"{_fmt(r.get('criterion'), '.4f'):>17}"
            f"{_fmt(r.get('criterion_diff_to_best'), '.2e'):>11}"
            f"{_fmt(r.get('max_abs_fixef_diff_to_best'), '.1e'):>10}"
            f"{_fmt(r.get('peak_rss_mb'), '.0f'):>9}{_fmt(r.get('evaluations'), 'd'):>7}  {note}"
        )


# --------------------------------------------------------------------------- main


def _csv_list(text: str, allowed: list[str], what: str) -> list[str]:
    items = [s.strip() for s in text.split(",") if s.strip()]
    bad = [s for s in items if s not in allowed]
    if bad:
        raise argparse.ArgumentTypeError(f"unknown {what}: {', '.join(bad)}")
    return items


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--sizes",
        type=lambda s: _csv_list(s, list(SIZES), "size"),
        default=["small", "medium", "large"],
        help="comma list of small,medium,large,xlarge (default: small,medium,large; xlarge is about 1M rows)",
    )
    p.add_argument(
        "--peers",
        type=lambda s: _csv_list(s, ALL_PEERS, "peer"),
        default=list(ALL_PEERS),
        help="comma list of theralens,mixedlm,statsmodels,lme4 (default: all)",
    )
    p.add_argument("--repeats", type=int, default=None, help="timed fits per peer (default 3; 1 for large)")
    p.add_argument("--warmup", type=int, default=1, help="untimed warm-up fits (default 1)")
    p.add_argument("--out", default="benchmarks/results_engine.json", help="JSON output file")
    p.add_argument("--timeout", type=float, default=3600.0, help="seconds before a peer's run is abandoned")
    p.add_argument(
        "--statsmodels-large",
        action="store_true",
        help="also run statsmodels on the large size (skipped by default: too slow)",
    )
    p.add_argument(
        "--paths",
        type=lambda s: _csv_list(s, list(PATHS), "path"),
        default=list(PATHS),
        help="comma list of simulated,user (default: both)",
    )
    p.add_argument(
        "--threads",
        type=_thread_list,
        default=["default", "1"],
        help="comma list of thread settings: 'default' leaves the libraries' thread pools as they are, "
        "N sets OMP/OPENBLAS/MKL/RAYON_NUM_THREADS=N in every peer's process (default: default,1)",
    )
    p.add_argument("--seed", type=int, default=SEED, help="simulation seed")
    # Internal: worker mode.
    p.add_argument("--worker", choices=list(PY_FITTERS), help=argparse.SUPPRESS)
    p.add_argument("--data", help=argparse.SUPPRESS)
    p.add_argument("--formula", default=FORMULA, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def _thread_list(text: str) -> list[str]:
    items = [s.strip() for s in text.split(",") if s.strip()]
    bad = [s for s in items if s != "default" and not (s.isdigit() and int(s) > 0)]
    if bad or not items:
        raise argparse.ArgumentTypeError(f"thread settings are 'default' or positive integers, not {', '.join(bad)}")
    return items


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        run_python_worker(args.worker, args.data, args.formula, args.repeats or 1, args.warmup)
        return 0

    started = _dt.datetime.now(_dt.timezone.utc)
    meta = {
        "date": started.isoformat(timespec="seconds"),
        "formulas": {path: PATHS[path] for path in args.paths},
        "seed": args.seed,
        "machine": machine_info(),
        "python_packages": package_versions(),
        "warmup": args.warmup,
        "threads": args.threads,
        "python_blas": python_blas(),
        "sizes": {s: vars(SIZES[s]) for s in args.sizes},
        "paths": args.paths,
        "peers": args.peers,
    }
    print(f"theralens engine benchmark  {meta['date']}")
    m = meta["machine"]
    print(f"machine: {m['cpu_model']}, {m['nproc']} cpus, {m['total_ram_gb']} GB, {m['platform']}")
    for path in args.paths:
        print(f"formula ({path}): {PATHS[path]}")
    print(f"threads per peer process: {', '.join(args.threads)}; numpy BLAS: {meta['python_blas']}\n")

    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="theralens-bench-") as tmp:
        tmpdir = Path(tmp)
        for size_name in args.sizes:
            size = SIZES[size_name]
            repeats = args.repeats
            if repeats is None:
                repeats = 1 if size_name in LARGE_SIZES else 3
            sim = simulate(size, args.seed)
            for path in args.paths:
                formula = PATHS[path]
                df = user_table(sim) if path == "user" else sim
                csv = tmpdir / f"{size_name}-{path}.csv"
                if path == "user" or "lme4" in args.peers:
                    df.to_csv(csv, index=False)
                data_file = csv
                if path == "simulated":
                    data_file = tmpdir / f"{size_name}.parquet"
                    df.to_parquet(data_file, index=False)
                print(
                    f"[{path} {size_name}] {size.therapists} therapists, {size.patients} patients, "
                    f"{len(df)} rows; repeats={repeats}, warmup={args.warmup}",
                    flush=True,
                )
                del df
                for setting in args.threads:
                    threads = None if setting == "default" else int(setting)
                    for peer in args.peers:
                        base = {
                            "path": path,
                            "size": size_name,
                            "threads": setting,
                            "peer": peer,
                            "repeats": repeats,
                            # 1-minute load average before the run: others' work skews timings.
                            "loadavg_before": round(os.getloadavg()[0], 2),
                        }
                        if peer == "statsmodels" and size_name in LARGE_SIZES and not args.statsmodels_large:
                            res = {
                                "status": "skipped",
                                "error": f"statsmodels skipped on {size_name} by default (too slow); "
                                "use --statsmodels-large",
                            }
                        elif peer == "lme4":
                            res = run_lme4(csv, tmpdir, repeats, args.warmup, args.timeout, threads, formula)
                        else:
                            res = run_python_peer(peer, data_file, repeats, args.warmup, args.timeout, threads,
                                                  formula)
                        res = {**base, **res}
                        results.append(res)
                        shown = (
                            f"{res['seconds']:.3f} s/fit, crit {res.get('criterion'):.4f}"
                            if res.get("status") == "ok"
                            else f"{res.get('status')}: {res.get('error')}"
                        )
                        print(f"  threads {setting:<8} {peer:<12} {shown}", flush=True)
            del sim
    add_comparisons(results)
    r_info = next((r for r in results if r.get("lme4_version")), None)
    if r_info:
        meta["r_packages"] = {
            "R": r_info.get("r_version"),
            "lme4": r_info.get("lme4_version"),
            "Matrix": r_info.get("matrix_version"),
            "BLAS": r_info.get("r_blas"),
        }
    meta["wall_seconds"] = round((_dt.datetime.now(_dt.timezone.utc) - started).total_seconds(), 1)
    print()
    print_table(results)
    print(
        "\nseconds: median of timed fits after warm-up (model building included, data loading"
        " excluded; the user path reads a CSV with pandas first, untimed: read_seconds in the JSON);"
        " thr = thread setting; cpu s = process CPU time per fit (> s/fit: multithreaded); ratio = peer s /"
        " theralens s; Δbest = REMLcrit - lowest REMLcrit of the"
        " size; |Δβ|max = largest fixed-effect difference to the best peer; peakMB = peak RSS"
        " of the peer's process (includes interpreter and data)."
    )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"meta": meta, "results": results}, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
