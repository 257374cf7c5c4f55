"""``theralens power``: the command-line face of :func:`theralens.planning.power`.

    theralens power --preset coyne2022 --therapists 42,80,120,200 --patients-per-therapist 5,10 \\
        --nsim 500 [--from OUT/results.json] [--design patient|session] [--search TEST[:TARGET]] \\
        [--ddf satterthwaite|kenward-roger|residual|asymptotic] [--alpha 0.05] [--seed N] [--workers N] \\
        [--scheduler ADDRESS] [--out DIR] [--set NAME=VALUE ...]

Writes ``power.csv``, ``power.json``, ``power.png`` and ``power.svg`` into ``--out`` and
prints the summary. Bad input raises :class:`~theralens.errors.InputError` (one line, exit
status 2, from :func:`theralens.cli.main`).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from theralens.atomic import prepare_dir
from theralens.errors import InputError
from theralens.planning.estimate import power
from theralens.planning.settings import parse_numbers, parse_settings

__all__ = ["run_power_command"]


def run_power_command(args: argparse.Namespace) -> int:
    """Run ``theralens power`` from parsed arguments; returns the exit status."""
    study = getattr(args, "from_study", None)
    searching = getattr(args, "search", None)
    default_j, default_m = (None, None) if study or searching else ("42,80,120,200", "5,10")
    therapists = args.therapists if args.therapists is not None else default_j
    per = args.patients_per_therapist if args.patients_per_therapist is not None else default_m
    therapists = parse_numbers(therapists, "therapists", integer=True) if therapists is not None else None
    per = parse_numbers(per, "patients-per-therapist", integer=False) if per is not None else None
    settings = parse_settings(args.set)
    if args.nsim is None or args.nsim < 1:
        raise InputError(f"--nsim {args.nsim}: give the number of replicates per design cell, 1 or more")
    if not 0.0 < args.alpha < 1.0:
        raise InputError(f"--alpha {args.alpha}: the level of the tests must lie strictly between 0 and 1")
    if args.workers is not None and args.workers < 1:
        raise InputError(f"--workers {args.workers}: give 1 or more processes")
    out = Path(args.out)
    prepare_dir(out)
    result = power(study or args.preset, therapists=therapists, patients_per_therapist=per, nsim=args.nsim,
                   alpha=args.alpha, seed=args.seed, settings=settings, workers=args.workers, scheduler=args.scheduler,
                   decomposition=getattr(args, "decomposition", "manifest"), design=getattr(args, "design", None),
                   search=searching, ddf=getattr(args, "ddf", None))
    written = result.write(out)
    print(result.summary())
    print(f"\nwrote {len(written)} files to {out} ({result.seconds:.1f} s)")
    return 0
