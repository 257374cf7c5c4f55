"""Command-line interface: ``theralens analyze | stability | training | report | demo | validate |
simulate | power``.

Exit codes: 0 success, 2 bad input or usage (one line on stderr naming the file, column,
row or therapist and the fix), 1 internal error (one line, plus ``--debug`` for the
traceback).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from theralens.errors import InputError

DEMO_MODERATORS = ["self_rated_alliance_skill", "self_rated_expectancy_skill", "cbt"]
THERAPISTS_HELP = ("therapist table, one row per therapist: its moderators are the columns in [therapist_moderators] "
                   "columns, or every column but the id when none are listed")


class _Parser(argparse.ArgumentParser):
    """argparse that reports usage errors as one line and exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(f"theralens: {message} (see '{self.prog} --help')\n")
        raise SystemExit(2)


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="theralens", description="Which therapist benefits from which therapy process.")
    p.add_argument("--debug", action="store_true", help="show tracebacks of internal errors")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    a = sub.add_parser("analyze", help="run the study on your data and write results and a report")
    a.add_argument("sessions", help="sessions file: CSV, Parquet, Excel, SPSS (.sav) or Stata (.dta)")
    a.add_argument("--therapists", help=THERAPISTS_HELP)
    a.add_argument("--config", help="study config (TOML); every key has a default")
    a.add_argument("--sheet", help="worksheet of an Excel sessions file")
    a.add_argument("--therapists-sheet", help="worksheet of an Excel therapist table")
    a.add_argument("--out", default="theralens-out", help="output folder (default: theralens-out)")
    a.add_argument("--no-report", action="store_true", help="write results.json and tables only")
    _engine_options(a)
    a.add_argument("--scheduler", default=None, metavar="ADDRESS",
                   help="dask.distributed scheduler (e.g. tcp://host:8786): the fits' statistics are computed per "
                        "partition on its workers (the checks and decomposition by DuckDB here)")
    a.add_argument("--scratch", default=None, metavar="DIR",
                   help="with --scheduler: a folder every worker can read, for the Parquet copy of the analysis "
                        "rows (default: the scan's temporary folder, for workers on this machine)")

    for name, what in (("stability", "how stable therapist profiles are from earlier to later patients"),
                       ("training", "did training change the process-outcome slope it targeted")):
        x = sub.add_parser(name, help=f"{what}: the study plus this section, in results.json and a report")
        x.add_argument("sessions", help="sessions file: CSV, Parquet, Excel, SPSS (.sav) or Stata (.dta)")
        x.add_argument("--therapists", required=name == "training",
                       help=THERAPISTS_HELP + ("; with the training columns ([training] date and target)"
                                               if name == "training" else ""))
        x.add_argument("--config", help="study config (TOML), with [training] start, date and target")
        x.add_argument("--sheet", help="worksheet of an Excel sessions file")
        x.add_argument("--therapists-sheet", help="worksheet of an Excel therapist table")
        x.add_argument("--out", default=f"theralens-{name}", help=f"output folder (default: theralens-{name})")
        x.add_argument("--no-report", action="store_true", help="write results.json and tables only")
        if name == "stability":
            x.add_argument("--split", choices=["time", "random"], default="time",
                           help="time: earlier vs later half of each caseload by treatment start; random: random "
                                "halves, --repeats times")
            x.add_argument("--repeats", type=int, default=20, help="random splits (with --split random)")
            x.add_argument("--seed", type=int, default=1, help="seed of the random splits")

    r = sub.add_parser("report", help="rebuild report.html and the therapist pages from a results.json")
    r.add_argument("results", help="the results.json that theralens analyze wrote")
    r.add_argument("--out", help="output folder (default: the folder of the results file)")

    d = sub.add_parser("demo", help="the whole analysis on the built-in (simulated) demo data")
    d.add_argument("--out", default="theralens-demo", help="output folder (default: theralens-demo)")
    d.add_argument("--design", choices=["patient", "session"], default="patient")

    v = sub.add_parser("validate", help="check input files without fitting anything")
    v.add_argument("sessions")
    v.add_argument("--therapists", help=THERAPISTS_HELP)
    v.add_argument("--config")
    v.add_argument("--sheet", help="worksheet of an Excel sessions file")
    v.add_argument("--therapists-sheet", help="worksheet of an Excel therapist table")
    _engine_options(v)

    s = sub.add_parser("simulate", help="simulate a study with known truth")
    s.add_argument("--preset", default="coyne2022")
    s.add_argument("--seed", type=int, default=None)
    s.add_argument("--design", choices=["patient", "session"], default=None)
    s.add_argument("--out", required=True, help="sessions file to write (.csv or .parquet)")
    s.add_argument("--therapists-out", help="therapist table to write (.csv or .parquet)")

    w = sub.add_parser("power", help="simulation-based power for the next study")
    w.add_argument("--preset", default="coyne2022",
                   help="study to plan: coyne2022 (default), training (the training difference-in-differences) "
                        "or stability (the profile stability correlation)")
    w.add_argument("--therapists", default=None,
                   help="comma-separated numbers of therapists (default 42,80,120,200; with --from, the study's)")
    w.add_argument("--patients-per-therapist", default=None,
                   help="comma-separated caseload sizes (default 5,10; with --from, the study's)")
    w.add_argument("--nsim", type=int, default=500)
    w.add_argument("--alpha", type=float, default=0.05)
    w.add_argument("--seed", type=int, default=1)
    w.add_argument("--workers", type=int, default=None, help="local processes (default: all cores)")
    w.add_argument("--scheduler", help="address of a dask.distributed scheduler")
    w.add_argument("--from", dest="from_study", metavar="RESULTS_JSON",
                   help="plan from an analysed study: its results.json gives the truth (estimates, variance "
                        "components, caseloads, sessions, dropout, moderators, design); --set overrides any of it")
    w.add_argument("--search", metavar="TEST[:TARGET]",
                   help="smallest number of therapists reaching TARGET power (default 0.8) for TEST (e.g. moderator, "
                        "within.alliance); --therapists LOW,HIGH is the range (default 10,300), "
                        "--patients-per-therapist one caseload")
    w.add_argument("--ddf", default=None, metavar="METHOD",
                   help="df of the fixed-effect t tests: satterthwaite (default), kenward-roger, residual, asymptotic; "
                        "with --from, the study's [inference] ddf")
    w.add_argument("--design", choices=["patient", "session"], default=None,
                   help="patient (the published analysis; default) or session (lagged) level")
    w.add_argument("--decomposition", choices=["manifest", "latent"], default="manifest",
                   help="latent: data from the latent model, within/between/moderator tests by the latent ML fit")
    w.add_argument("--out", default="theralens-power")
    w.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                   help="effect size or design setting, e.g. --set within.alliance=-0.2 (repeatable)")
    return p


def _write_outputs(result, out: Path, report: bool, sections: Sequence = ()) -> list[Path]:  # noqa: ANN001
    """Write results, tables and the report into ``out``, all or nothing (atomic.write_staged).
    The report is drawn from the very document written to ``results.json`` (its text, read
    back), so ``theralens report`` rebuilds it byte for byte. ``sections``: (name, result)
    pairs (the stability and training results) whose ``section()`` joins the document under
    ``name`` and whose ``tables()`` join tables/."""
    import json

    from theralens.atomic import write_staged

    def write(folder: Path) -> list[Path]:
        if sections:
            from theralens.study.periods import write_tables

            doc = result.to_dict()
            doc.update({name: part.section() for name, part in sections})
            text = json.dumps(doc, indent=2, allow_nan=False)
        else:
            text = result.to_json()
        written = result.write(folder, document=text)
        for _, part in sections:
            written += write_tables(folder, part.tables())
        if report:
            from theralens.report.html import write_report

            written += write_report(json.loads(text), folder)
        return written

    return write_staged(out, write)


def _read_inputs(args: argparse.Namespace):  # noqa: ANN202
    from theralens.data.config import load_config
    from theralens.data.read import read_table

    cfg = load_config(args.config)
    sessions = read_table(args.sessions, sheet=args.sheet, what="sessions")
    ther = (read_table(args.therapists, sheet=args.therapists_sheet, what="therapists")
            if args.therapists else None)
    return cfg, sessions, ther


def _engine_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--engine", choices=["auto", "pandas", "duckdb"], default="auto",
                   help="pandas reads the sessions whole; duckdb checks and reduces CSV/Parquet files (a file, "
                        "folder or glob) in SQL; auto: duckdb when the input is larger than --memory-limit")
    p.add_argument("--memory-limit", default=None,
                   help="memory budget of the duckdb engine, e.g. 8GB (default: a quarter of the RAM)")


def _cmd_analyze(args: argparse.Namespace) -> int:
    from theralens.atomic import check_dir
    from theralens.data.config import load_config
    from theralens.study.analysis import analyze_files

    out = Path(args.out)
    _check_out_not_input(out, [args.sessions, args.therapists, args.config])
    cfg = load_config(args.config)
    check_dir(out)  # fail before the analysis, not after it
    result = analyze_files(args.sessions, args.therapists, cfg, engine=args.engine, memory_limit=args.memory_limit,
                           sheet=args.sheet, therapists_sheet=args.therapists_sheet, scheduler=args.scheduler,
                           scratch=args.scratch)
    written = _write_outputs(result, out, not args.no_report)
    print(result.summary())
    phases = getattr(result, "timings", {})
    detail = "".join(f", {k} {v:.1f} s" for k, v in phases.items())
    print(f"\nwrote {len(written)} files to {out} ({result.seconds:.1f} s{detail})")
    return 0


def _cmd_loop(args: argparse.Namespace) -> int:
    """``theralens stability`` and ``theralens training``: the study, then the section."""
    from theralens.atomic import check_dir

    out = Path(args.out)
    _check_out_not_input(out, [args.sessions, args.therapists, args.config])
    cfg, sessions, ther = _read_inputs(args)
    check_dir(out)
    t_source = str(args.therapists) if args.therapists else "therapist data"
    if args.command == "stability":
        from theralens.study.stability import stability

        part = stability(sessions, ther, cfg, split=args.split, repeats=args.repeats, seed=args.seed,
                         source=str(args.sessions), therapists_source=t_source)
    else:
        from theralens.study.training import training

        part = training(sessions, ther, cfg, source=str(args.sessions), therapists_source=t_source)
    written = _write_outputs(part.study, out, not args.no_report, [(args.command, part)])
    print(part.study.summary())
    print()
    print(part.summary())
    print(f"\nwrote {len(written)} files to {out}")
    return 0


def _check_out_not_input(out: Path, inputs: Sequence[str | None]) -> None:
    """The output folder is not an input file, and no output would replace an input."""
    o = out.resolve()
    ours = {o / "results.json", o / "report.html"}
    for path in inputs:
        if not path:
            continue
        p = Path(path).resolve()
        if p == o:
            raise InputError(f"output folder {out} is one of the input files; choose another --out folder")
        if p in ours or p.parent in (o / "tables", o / "therapists"):
            raise InputError(f"input file {path} lies where theralens writes its outputs ({out}); "
                             "move it or choose another --out folder")


def _cmd_report(args: argparse.Namespace) -> int:
    from theralens.atomic import check_dir, write_staged
    from theralens.report.html import render_report
    from theralens.study.document import read_document

    doc = read_document(args.results)
    out = Path(args.out) if args.out else Path(args.results).parent
    check_dir(out)
    written = write_staged(out, lambda folder: render_report(doc, folder))
    print(f"wrote {len(written)} files to {out} from {args.results}; open {out / 'report.html'}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from theralens.atomic import check_dir
    from theralens.data.config import config_from_dict
    from theralens.datasets import DEMO_TRAINING, load_demo, load_demo_training
    from theralens.study.analysis import analyze
    from theralens.study.stability import stability
    from theralens.study.training import training

    t0 = time.perf_counter()
    out = Path(args.out)
    check_dir(out)
    sessions, therapists = load_demo()
    cfg = config_from_dict({"therapist_moderators": {"columns": DEMO_MODERATORS},
                            "design": {"level": args.design}, "training": DEMO_TRAINING})
    result = analyze(sessions, therapists, cfg, source="demo sessions (simulated, coyne2022 preset, seed 2022)",
                     therapists_source="demo therapists")
    stab = stability(result, config=cfg, sessions=sessions)
    train = training(result, load_demo_training(), cfg, sessions=sessions, therapists_source="demo training table")
    written = _write_outputs(result, out, True, [("stability", stab), ("training", train)])
    print(result.summary())
    print()
    print(stab.summary())
    print()
    print(train.summary())
    print(f"\nwrote {len(written)} files to {out} in {time.perf_counter() - t0:.1f} s; open {out / 'report.html'}")
    return 0


def _cmd_validate(args: argparse.Namespace) -> int:
    from theralens.data.config import load_config
    from theralens.data.read import read_table
    from theralens.data.scan import choose_engine, scan_files
    from theralens.data.validate import validate_sessions, validate_therapists

    if choose_engine(args.sessions, args.engine, args.memory_limit)[0] == "duckdb":
        cfg = load_config(args.config)
        with scan_files(args.sessions, cfg, memory_limit=args.memory_limit) as scanned:
            data, sessions = scanned.data, scanned.therapist_frame()
        ther = (read_table(args.therapists, sheet=args.therapists_sheet, what="therapists")
                if args.therapists else None)
    else:
        cfg, df, ther = _read_inputs(args)
        data = sessions = validate_sessions(df, cfg, source=args.sessions)
    t = validate_therapists(ther, sessions, cfg, source=args.therapists) if ther is not None else None
    c = data.counts
    print(f"{args.sessions}: OK - {c.get('therapists')} therapists, {c.get('patients')} patients, "
          f"{c.get('rows_used')} rows used")
    for e in data.exclusions:
        print(f"  excluded: {e.rows} rows ({e.reason})")
    for note in data.notes:
        print(f"  note: {note}")
    if t is not None:
        used = ", ".join(t.attrs.get("moderators", {})) or "none (the table has only the therapist id)"
        chosen = " (every column of the table: none configured)" if t.attrs.get("moderators_from") == "table" else ""
        print(f"{args.therapists}: OK - {len(t)} therapists, moderators: {used}{chosen}")
    return 0


def _cmd_simulate(args: argparse.Namespace) -> int:
    from theralens.atomic import write_bytes
    from theralens.simulation.generate import simulate

    overrides = {"design": args.design} if args.design else {}
    sim = simulate(args.preset, seed=args.seed, **overrides)
    for frame, path in [(sim.sessions, args.out), (sim.therapists, args.therapists_out)]:
        if path is None:
            continue
        p = Path(path)
        if p.suffix.lower() == ".parquet":
            import io

            buf = io.BytesIO()
            frame.to_parquet(buf, index=False)
            write_bytes(p, buf.getvalue())
        elif p.suffix.lower() in (".csv", ".txt", ""):
            write_bytes(p, frame.to_csv(index=False).encode())
        else:
            raise InputError(f"{p}: cannot write '{p.suffix}' files; use .csv or .parquet")
        print(f"wrote {p} ({len(frame)} rows)")
    return 0


def _cmd_power(args: argparse.Namespace) -> int:
    from theralens.planning.cli import run_power_command

    return run_power_command(args)


COMMANDS = {"analyze": _cmd_analyze, "stability": _cmd_loop, "training": _cmd_loop, "report": _cmd_report,
            "demo": _cmd_demo, "validate": _cmd_validate, "simulate": _cmd_simulate, "power": _cmd_power}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``theralens`` command."""
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except InputError as exc:
        sys.stderr.write(f"theralens: {exc}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write("theralens: interrupted\n")
        return 130
    except Exception as exc:  # an internal error: one line, traceback with --debug
        if args.debug:
            raise
        sys.stderr.write(f"theralens: internal error: {type(exc).__name__}: {exc} "
                         "(run again with --debug for the traceback and report it)\n")
        return 1


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
