"""Time the Bayesian latent decomposition (theralens.latent.bayes) of the demo's session design.

    python benchmarks/bench_bayes.py [--seed N] [--chains 4] [--warmup 1000] [--draws 1000]

Reads the shipped demo sessions (src/theralens/datasets/coyne2022_sessions.csv), builds the
session-level table with the default config and ``[design] level = "session"``, runs
:func:`theralens.latent.bayes.fit_bayes` with its defaults and prints the wall time (JAX
compilation included: it is part of what a user waits for) and the convergence diagnostics.
The target (issue #10) is under 90 s on the project's 2-core machine; record the timing of a
quiet machine in benchmarks/RESULTS.md. Needs the optional extra: pip install 'theralens[bayes]'.
"""

from __future__ import annotations

import argparse
import time

from theralens.data.config import DesignConfig, StudyConfig
from theralens.data.decompose import session_level
from theralens.data.validate import validate_sessions
from theralens.datasets import load_demo
from theralens.latent.bayes import CHAINS, fit_bayes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--chains", type=int, default=CHAINS)
    ap.add_argument("--warmup", type=int, default=1000)
    ap.add_argument("--draws", type=int, default=1000)
    args = ap.parse_args()
    sessions, _ = load_demo()
    config = StudyConfig(design=DesignConfig(level="session"))
    table = session_level(validate_sessions(sessions, config, source="demo sessions"), config)
    t0 = time.perf_counter()
    fit = fit_bayes(table, seed=args.seed, chains=args.chains, warmup=args.warmup, draws=args.draws)
    seconds = time.perf_counter() - t0
    print(f"demo session design: {fit.counts['rows']} lagged rows, {fit.counts['patients']} patients, "
          f"{fit.counts['therapists']} therapists; {args.chains} chains x ({args.warmup} warmup + {args.draws} draws)")
    print(f"seconds: {seconds:.1f} (target < 90)")
    print(f"converged: {fit.converged}; divergences {fit.divergences}; max R-hat {fit.max_r_hat:.4f}; "
          f"min bulk ESS {fit.min_ess_bulk:.0f}; min tail ESS {fit.min_ess_tail:.0f}")
    for message in fit.messages:
        print(" ", message)
    cols = ["process", "component", "estimate", "se", "ci_low", "ci_high", "r_hat", "ess_bulk"]
    print(fit.effects[cols].to_string(index=False))


if __name__ == "__main__":
    main()
