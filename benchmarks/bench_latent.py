"""Speed of the latent decomposition (issue #10): the latent ML fit of the published design.

The published design is the demo data (42 therapists, 212 patients; simulated, see
src/theralens/datasets/README.md) with both processes and one moderator (self-rated alliance
skill). Timed, each as the median of ``--repeats`` runs after one warm-up, in this process:

- ``latent_main``: the latent ML fit of aims 1-2 (two processes, no moderator);
- ``latent_moderator``: the latent ML fit with the moderator (what issue #10 times: target < 5 s);
- ``jackknife_moderator``: ``LatentFit.jackknife()`` of that fit (one refit per therapist:
  what ``[inference] latent_bias_correction = "jackknife"`` adds per latent model);
- ``manifest_analysis``, ``both_analysis`` and ``both_jackknife_analysis``: ``theralens.analyze``
  with ``decomposition = "manifest"``, ``"both"`` and ``"both"`` with the jackknife (the whole
  study: every manifest model, plus the latent ones), so the ratio says what the latent
  decomposition adds to an analysis;
- ``cli_both``: ``theralens analyze ... --config`` (decomposition "both") end to end as a
  subprocess, as a user runs it (library default threads).

There is no other Python implementation to run side by side (lavaan/Mplus are not available
here); the ratios are to theralens's own manifest analysis.

Run:  .venv/bin/python benchmarks/bench_latent.py --repeats 5 [--json benchmarks/results_latent.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from theralens import analyze
from theralens.data.config import DesignConfig, InferenceConfig, ModeratorsConfig, StudyConfig
from theralens.data.decompose import patient_level
from theralens.data.read import read_table
from theralens.data.validate import validate_sessions, validate_therapists
from theralens.latent.ml import fit_latent, latent_stats

DATA = Path(__file__).resolve().parents[1] / "src" / "theralens" / "datasets"
MODERATOR = "self_rated_alliance_skill"


def _median_time(fn, repeats: int) -> tuple[float, list[float]]:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    sessions = read_table(DATA / "coyne2022_sessions.csv", what="sessions")
    therapists = read_table(DATA / "coyne2022_therapists.csv", what="therapists")
    cfg = StudyConfig(therapist_moderators=ModeratorsConfig(columns=(MODERATOR,)))
    data = validate_sessions(sessions, cfg)
    mods = validate_therapists(therapists, data, cfg)
    table = patient_level(data, cfg)
    frame = table.table
    procs = list(table.processes)
    adjust = [*table.adjust_for, *table.covariates]
    have = mods.dropna(subset=[MODERATOR])

    rows = {}
    fits = {}

    def main_fit() -> None:
        fits["main"] = fit_latent(latent_stats(frame, procs, table.response, adjust))

    def mod_fit() -> None:
        sub = frame[frame["therapist"].astype(str).isin(set(have["therapist"].astype(str)))]
        fits["moderator"] = fit_latent(latent_stats(sub, procs, table.response, adjust, have, [MODERATOR]))

    rows["latent_main"] = _median_time(main_fit, args.repeats)
    rows["latent_moderator"] = _median_time(mod_fit, args.repeats)
    rows["jackknife_moderator"] = _median_time(lambda: fits["moderator"].jackknife(), args.repeats)
    both = dataclasses.replace(cfg, design=DesignConfig(decomposition="both"))
    both_jk = dataclasses.replace(both, inference=InferenceConfig(latent_bias_correction="jackknife"))
    rows["manifest_analysis"] = _median_time(lambda: analyze(sessions, therapists, cfg), args.repeats)
    rows["both_analysis"] = _median_time(lambda: analyze(sessions, therapists, both), args.repeats)
    rows["both_jackknife_analysis"] = _median_time(lambda: analyze(sessions, therapists, both_jk), args.repeats)
    with tempfile.TemporaryDirectory() as tmp:
        conf = Path(tmp) / "study.toml"
        conf.write_text(f'[therapist_moderators]\ncolumns = ["{MODERATOR}"]\n[design]\ndecomposition = "both"\n')
        exe = Path(sys.executable).with_name("theralens")
        cmd = [str(exe), "analyze", str(DATA / "coyne2022_sessions.csv"), "--therapists",
               str(DATA / "coyne2022_therapists.csv"), "--config", str(conf), "--out", str(Path(tmp) / "out")]
        env = {k: v for k, v in os.environ.items() if not k.endswith("_NUM_THREADS")}
        rows["cli_both"] = _median_time(lambda: subprocess.run(cmd, check=True, capture_output=True, env=env),
                                        max(1, args.repeats // 2))
    base = rows["manifest_analysis"][0]
    print(f"{'what':<20} {'median s':>9} {'x manifest analysis':>20}  fits")
    for name, (med, times) in rows.items():
        print(f"{name:<20} {med:9.3f} {med / base:20.2f}  {', '.join(f'{t:.3f}' for t in times)}")
    for role, f in fits.items():
        print(f"{role}: logLik {f.loglik:.6f}, {f.evaluations} evaluations, {f.rounds} rounds, {f.nodes} nodes, "
              f"quadrature change {f.quadrature_change:.1e}, converged {f.converged}")
    if args.json:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
        out = {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "commit": commit,
               "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                           "python": platform.python_version()},
               "rows": {k: {"median_s": m, "times": t} for k, (m, t) in rows.items()},
               "fits": {k: {"loglik": f.loglik, "evaluations": f.evaluations, "nodes": f.nodes}
                        for k, f in fits.items()}}
        Path(args.json).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
