"""Data larger than memory: ``theralens analyze --engine duckdb`` end to end at 1, 10 and 100 million session rows.

Simulates a Parquet data set (a folder of part files) of N million session rows laid out like
NHS Talking Therapies data: 8 sessions per patient, 100 patients per therapist, 20 services,
the outcome and two process ratings (alliance, expectancy) at every session, about 2% of the
ratings missing. It is generated in chunks of whole therapists with numpy and pyarrow, so the
generator holds one chunk (``--chunk-rows``) at a time. Then, for each design (patient,
session), it runs the real command as a subprocess::

    python -m theralens.cli analyze DATA --engine duckdb --memory-limit LIMIT --no-report --out OUT

and records the wall time and the peak resident memory of that child (``os.wait4``), with the
statistics pass (reading, checks, decomposition) and the fits timed separately (the phase
timings ``analyze`` prints, :attr:`StudyResult.timings`).

Targets (issue #11): 10 million rows in under 60 s end to end with peak memory under 4 GB
(patient design), under 120 s (session design); 100 million rows completes under
``--memory-limit 8GB``.

Run from the repository root::

    .venv/bin/python benchmarks/bench_scale.py --rows 1            # one size, both designs
    .venv/bin/python benchmarks/bench_scale.py --rows 1,10,100 --record benchmarks/results_scale.json
    .venv/bin/python benchmarks/bench_scale.py --rows 10 --service            # the four-level model
    .venv/bin/python benchmarks/bench_scale.py --rows 10 --local-cluster 2    # fits' statistics on Dask workers

Every model of the study is fitted from sufficient statistics computed by DuckDB SQL (no frame
of the sessions or lagged pairs is built); ``statistics`` is the checks and decomposition,
``fits`` the model fits, each including its GROUP BY pass over the analysis rows.

The data sets go to ``--data-dir`` (default: the system temp directory) and are deleted
afterwards unless ``--keep``.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SESSIONS_PER_PATIENT = 8
PATIENTS_PER_THERAPIST = 100
SERVICES = 20
ROWS_PER_THERAPIST = SESSIONS_PER_PATIENT * PATIENTS_PER_THERAPIST


def write_dataset(folder: Path, rows: int, *, seed: int = 11, chunk_rows: int = 2_000_000) -> dict:
    """Write ``rows`` simulated session rows as Parquet part files into ``folder``; return its description.

    Generating model (per therapist j, patient i, session t = 1..8): alliance and expectancy
    = therapist mean + patient mean + session noise; outcome = 15 - 0.6 t + 2 u_j + 3 v_i
    - (0.3 + w_j) (alliance - its patient mean) - 0.5 (caseload alliance mean) + noise.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder.mkdir(parents=True, exist_ok=True)
    n_therapists = max(4, rows // ROWS_PER_THERAPIST)
    per_chunk = max(1, chunk_rows // ROWS_PER_THERAPIST)
    rng = np.random.default_rng(seed)
    t0 = time.perf_counter()
    written = 0
    for part, first in enumerate(range(0, n_therapists, per_chunk)):
        J = min(per_chunk, n_therapists - first)
        P = J * PATIENTS_PER_THERAPIST
        n = P * SESSIONS_PER_PATIENT
        tid = np.repeat(np.arange(first, first + J), PATIENTS_PER_THERAPIST * SESSIONS_PER_PATIENT)
        pid = np.repeat(np.arange(first * PATIENTS_PER_THERAPIST, first * PATIENTS_PER_THERAPIST + P),
                        SESSIONS_PER_PATIENT)
        session = np.tile(np.arange(1, SESSIONS_PER_PATIENT + 1, dtype=np.int16), P)
        u = np.repeat(rng.normal(size=J), PATIENTS_PER_THERAPIST * SESSIONS_PER_PATIENT)
        w = np.repeat(rng.normal(scale=0.1, size=J), PATIENTS_PER_THERAPIST * SESSIONS_PER_PATIENT)
        ta = np.repeat(rng.normal(scale=0.4, size=J), PATIENTS_PER_THERAPIST * SESSIONS_PER_PATIENT)
        pa_mean = np.repeat(rng.normal(scale=0.8, size=P), SESSIONS_PER_PATIENT)
        v = np.repeat(rng.normal(size=P), SESSIONS_PER_PATIENT)
        within = rng.normal(scale=0.7, size=n)
        alliance = 5.0 + ta + pa_mean + within
        expectancy = 4.0 + 0.5 * ta + 0.5 * pa_mean + rng.normal(scale=0.8, size=n)
        outcome = (15 - 0.6 * session + 2 * u + 3 * v - (0.3 + w) * within - 0.5 * ta
                   + rng.normal(scale=2.0, size=n))
        for values in (alliance, expectancy):
            values[rng.random(n) < 0.02] = np.nan
        table = pa.table({
            "service": pa.array(np.char.add("S", (tid % SERVICES).astype("U2"))),
            "therapist": pa.array(np.char.add("T", tid.astype("U7"))),
            "patient": pa.array(np.char.add("P", pid.astype("U9"))),
            "session": pa.array(session),
            "outcome": pa.array(np.round(outcome, 2)),
            "alliance": pa.array(np.round(alliance, 2), from_pandas=True),
            "expectancy": pa.array(np.round(expectancy, 2), from_pandas=True),
        })
        pq.write_table(table, folder / f"part-{part:05d}.parquet", row_group_size=500_000)
        written += n
        del table, tid, pid, session, u, w, ta, pa_mean, v, within, alliance, expectancy, outcome
    size = sum(f.stat().st_size for f in folder.glob("*.parquet"))
    return {"rows": written, "therapists": n_therapists, "patients": n_therapists * PATIENTS_PER_THERAPIST,
            "services": SERVICES, "files": part + 1, "bytes": size, "seconds": time.perf_counter() - t0}


_PHASES = re.compile(r"\(([0-9.]+) s, statistics ([0-9.]+) s, fits ([0-9.]+) s\)")


def run_analyze(data: Path, design: str, out: Path, memory_limit: str, timeout: float, service: bool = False,
                scheduler: str | None = None) -> dict:
    """One ``theralens analyze`` in a child process: wall seconds, the child's peak RSS, phases.
    ``service``: the four-level model ([columns] service); ``scheduler``: the fits' statistics on
    that dask.distributed cluster (--scheduler; the Parquet copy goes next to ``out``)."""
    config = out.parent / f"{design}.toml"
    config.write_text(f'[design]\nlevel = "{design}"\n' + ('[columns]\nservice = "service"\n' if service else ""))
    argv = [sys.executable, "-m", "theralens.cli", "analyze", str(data), "--engine", "duckdb", "--memory-limit",
            memory_limit, "--config", str(config), "--no-report", "--out", str(out)]
    if scheduler:
        argv += ["--scheduler", scheduler, "--scratch", str(out.parent / "scratch")]
    t0 = time.perf_counter()
    child = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        stdout, stderr = child.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        child.kill()
        stdout, stderr = child.communicate()
        return {"design": design, "error": f"timeout after {timeout:.0f} s"}
    seconds = time.perf_counter() - t0
    # communicate() has reaped the child; its rusage is the largest of the children reaped so far,
    # so every run starts from a fresh interpreter (main) and only one child runs per measurement
    import resource

    peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    row: dict = {"design": design, "returncode": child.returncode, "seconds": seconds, "peak_rss_gb": peak_kb / 1e6,
                 "service_level": service, "scheduler": scheduler}
    phases = _PHASES.search(stdout)
    if phases:
        row.update(analysis_seconds=float(phases.group(1)), statistics_seconds=float(phases.group(2)),
                   fits_seconds=float(phases.group(3)))
    if child.returncode != 0:
        row["error"] = (stderr.strip().splitlines() or ["?"])[-1]
    return row


def _measure_one(args: argparse.Namespace) -> None:
    """Child mode: run one analyze and print its row as JSON (a fresh process per measurement,
    so that RUSAGE_CHILDREN holds exactly one child)."""
    row = run_analyze(Path(args.measure), args.design, Path(args.out_dir), args.memory_limit, args.timeout,
                      service=args.service, scheduler=args.scheduler)
    print(json.dumps(row))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", default="1,10,100", help="comma-separated sizes in millions of session rows")
    p.add_argument("--designs", default="patient,session")
    p.add_argument("--memory-limit", default="8GB", help="--memory-limit passed to theralens analyze")
    p.add_argument("--data-dir", default=None, help="where the data sets are written (default: system temp)")
    p.add_argument("--chunk-rows", type=int, default=2_000_000, help="rows generated at a time")
    p.add_argument("--timeout", type=float, default=7200)
    p.add_argument("--keep", action="store_true", help="keep the data sets")
    p.add_argument("--record", help="write the results to this JSON file")
    p.add_argument("--service", action="store_true", help="fit the four-level model ([columns] service)")
    p.add_argument("--scheduler", default=None, help="dask.distributed scheduler address for --scheduler")
    p.add_argument("--local-cluster", type=int, default=0, metavar="N",
                   help="start a LocalCluster of N worker processes and pass its address as --scheduler")
    p.add_argument("--measure", help=argparse.SUPPRESS)
    p.add_argument("--design", help=argparse.SUPPRESS)
    p.add_argument("--out-dir", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.measure:
        _measure_one(args)
        return 0
    root = Path(tempfile.mkdtemp(prefix="theralens-scale-", dir=args.data_dir))
    results = []
    cluster = None
    if args.local_cluster:
        from distributed import LocalCluster

        cluster = LocalCluster(n_workers=args.local_cluster, threads_per_worker=1, dashboard_address=None)
        args.scheduler = cluster.scheduler_address
    try:
        for millions in [float(x) for x in args.rows.split(",")]:
            rows = int(millions * 1_000_000)
            data = root / f"sessions_{millions:g}M"
            info = write_dataset(data, rows, chunk_rows=args.chunk_rows)
            print(f"{millions:g}M rows: {info['files']} files, {info['bytes'] / 1e9:.2f} GB, "
                  f"written in {info['seconds']:.1f} s", flush=True)
            for design in args.designs.split(","):
                out = root / f"out_{millions:g}M_{design}"
                out.mkdir()
                child = subprocess.run([sys.executable, __file__, "--measure", str(data), "--design", design,
                                        "--out-dir", str(out / "result"), "--memory-limit", args.memory_limit,
                                        "--timeout", str(args.timeout)]
                                       + (["--service"] if args.service else [])
                                       + (["--scheduler", args.scheduler] if args.scheduler else []),
                                       capture_output=True, text=True)
                row = json.loads(child.stdout.strip().splitlines()[-1]) if child.returncode == 0 else {
                    "design": design, "error": child.stderr.strip()[-300:]}
                row.update(millions=millions, data=info, memory_limit=args.memory_limit)
                results.append(row)
                shown = ", ".join(f"{k} {row[k]:.1f}" for k in ("seconds", "statistics_seconds", "fits_seconds",
                                                                 "peak_rss_gb") if k in row)
                print(f"  {design}: {shown}{'  ERROR ' + row['error'] if 'error' in row else ''}", flush=True)
            if not args.keep:
                shutil.rmtree(data, ignore_errors=True)
    finally:
        if cluster is not None:
            cluster.close()
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    if args.record:
        doc = {"date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), "cpus": os.cpu_count(),
               "python": sys.version.split()[0], "results": results}
        Path(args.record).write_text(json.dumps(doc, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
