"""Simulation-based power for the next study: :func:`power`.

For every design cell (therapists x patients per therapist) and replicate: simulate a study
from a preset with the chosen effect sizes (:mod:`theralens.planning.settings`), analyse it as
the study pipeline does (:mod:`theralens.planning.replicate`) and record whether each test
rejects at alpha; power is the share of rejections among the replicates whose models were
fitted, with its Monte Carlo SE (:mod:`theralens.planning.result`). Replicates run on local
cores or a Dask cluster (:mod:`theralens.planning.execution`); the seed alone fixes the result.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from theralens.errors import InputError
from theralens.planning.execution import available_cores, execute
from theralens.planning.latent import estimate_seconds
from theralens.planning.loop import LOOP_STUDIES, LoopSpec, loop_cells, loop_overrides
from theralens.planning.pilot import study_parameters
from theralens.planning.replicate import PowerSpec, run_replicate
from theralens.planning.result import PowerResult, summarise
from theralens.planning.search import parse_search, run_search
from theralens.planning.settings import CELL_FIELDS, Cell, design_cells, parse_settings, resolve_overrides
from theralens.simulation.generate import PRESETS, REPLACED, TARGETS, SimulationParameters, resolve_parameters

__all__ = ["power"]

DEFAULT_MODERATOR = ("self_rated_alliance_skill", "alliance")


def _default_moderator(params: SimulationParameters, moderator: str | None, process: str,
                       target: str) -> tuple[str | None, str]:
    """The moderator test: as asked; the defaults (self-rated alliance skill on the alliance
    within slope) where simulated, else the largest simulated cross-level effect on ``target``,
    else the first moderator on the first process, else none."""
    if (moderator, process) != DEFAULT_MODERATOR or (moderator in params.moderators and process in params.processes):
        return moderator, process
    if not params.moderators:
        return None, params.processes[0]
    effects = params.session_moderator_effects if params.design == "session" else params.moderator_effects
    on_target = {k: abs(v) for k, v in effects.items() if k[2] == target and target in TARGETS}
    if on_target:
        m, q, _ = max(on_target, key=lambda k: on_target[k])
        return m, q
    return next(iter(params.moderators)), params.processes[0]


def power(
    study: Any = "coyne2022",
    *,
    therapists: Iterable[int] | None = None,
    patients_per_therapist: Iterable[float] | None = None,
    nsim: int = 500,
    alpha: float = 0.05,
    seed: int = 1,
    settings: Mapping[str, Any] | Iterable[str] | None = None,
    moderator: str | None = "self_rated_alliance_skill",
    moderator_process: str = "alliance",
    moderator_target: str = "within_slope",
    exclude_singular: bool = False,
    decomposition: str = "manifest",
    design: str | None = None,
    search: Any = None,
    ddf: str | None = None,
    workers: int | None = None,
    scheduler: Any = None,
    progress: bool = True,
    chunk_size: int | None = None,
    **overrides: Any,
) -> PowerResult:
    """Power to detect therapist slope variances, a cross-level moderator and the within and
    between effects, by simulation.

    Args:
        study: a simulation preset (:func:`theralens.simulation.generate.list_presets`), or an
            analysed study whose estimates are the truth simulated from: a path to its
            ``results.json``, a :class:`~theralens.study.result.StudyResult` or the document
            (:mod:`theralens.planning.pilot`: fixed effects, variance components, process ICCs,
            caseloads, sessions, dropout, moderators, design and options). Settings and
            keyword overrides apply on top (the smallest effect worth detecting instead of the
            estimate: ``settings=["within.alliance=-0.1"]``).
        therapists, patients_per_therapist: the design cells (every pair); None takes the
            preset's own number (coyne2022: 42 therapists, 212 patients = 5.05 each).
            Caseloads follow the preset's ``caseload_shape`` (coyne2022: very uneven);
            set ``caseload_shape=None`` for equal caseloads.
        nsim: replicates per cell. alpha: level of every test. seed: fixes every replicate
            (its seed is drawn from (seed, therapists, patients, replicate index)).
        settings: effect sizes as ``{"within.alliance": -0.2, "therapist_icc": 0.05}`` or
            ``["within.alliance=-0.2", ...]`` (:mod:`theralens.planning.settings`).
        moderator, moderator_process, moderator_target: the cross-level test (default:
            self-rated alliance skill on the alliance within slope, g11); None: no moderator
            model.
        exclude_singular: also count replicates with a singular (boundary) fit of a model a
            test needs as failed. Off by default: boundary estimates are legitimate REML
            estimates (the chi-bar-square reference allows for them), leaving them out would
            mostly drop non-rejections of the slope variance and inflate its power, and with
            few patients per therapist most fits are singular (94% at coyne2022's 42 x 5:
            validation/power_calibration.md). Singular fits are counted either way
            (``n_singular``).
        decomposition: ``"manifest"`` (default) or ``"latent"``: simulate the outcome from the
            latent caseload means and test the within, between and moderator effects with the
            latent ML fit (:mod:`theralens.planning.latent`); its run time is estimated from one
            timed replicate before the run starts and printed with the progress bar.
        design: ``"patient"`` (the published analysis) or ``"session"`` (the lagged design:
            data simulated and analysed as :func:`theralens.analyze` does with ``[design]
            level = "session"``, :mod:`theralens.planning.analysis_table`); None: the preset's.
        search: find the smallest number of therapists reaching a target power for one test
            instead of a grid (:mod:`theralens.planning.search`): ``"moderator"``,
            ``"within.alliance:0.9"`` (test[:target], default 80%), a mapping of
            :class:`~theralens.planning.search.SearchGoal` fields or a goal; ``therapists`` is
            then the range (two numbers, default 10 and 300) and ``patients_per_therapist`` the
            one caseload. The result's ``search`` holds the answer with its Monte Carlo interval;
            its table every evaluated cell.
        ddf: the degrees-of-freedom method of the fixed-effect t tests
            (:mod:`theralens.model.ddf`: ``"satterthwaite"``, ``"kenward-roger"``, ``"residual"``,
            ``"asymptotic"``), as ``[inference] ddf`` of the study; None: the fitted study's
            method, else Satterthwaite.
        workers: local processes (default: all cores; 1 = this process). scheduler: a
            dask.distributed scheduler address or Client (then ``workers`` is ignored).
        progress: show a progress bar on stderr. chunk_size: replicates per task.
        **overrides: any :func:`~theralens.simulation.generate.simulate` parameter, applied after
            ``settings`` (e.g. ``slope_sd={"alliance": 0.2}``).

    Returns a :class:`~theralens.planning.result.PowerResult`.
    """
    t0 = time.perf_counter()
    if isinstance(nsim, bool) or not isinstance(nsim, int) or nsim < 1:
        raise InputError(f"--nsim {nsim}: give a whole number of replicates, 1 or more (500 or more for a plan)")
    if isinstance(study, str) and study in LOOP_STUDIES:
        if decomposition != "manifest" or design not in (None, "patient"):
            raise InputError(f"--preset {study}: the training-loop studies are simulated and analysed at the patient "
                             "level with the manifest decomposition; leave out --design and --decomposition")
        if (moderator, moderator_process, moderator_target) != (*DEFAULT_MODERATOR, "within_slope"):
            raise InputError(f"--preset {study}: the training-loop studies have no moderator test; leave out the "
                             "moderator options")
        loop = LoopSpec(study=study, overrides=loop_overrides(study, parse_settings(settings), overrides),
                        alpha=float(alpha), seed=int(seed), ddf=ddf or "satterthwaite",
                        exclude_singular=bool(exclude_singular))
        return _plan(loop, loop_cells, therapists, patients_per_therapist, search, nsim, workers, scheduler,
                     progress, chunk_size, "manifest", [], t0)
    truth = None
    if isinstance(study, str) and (study in PRESETS or not (study.endswith(".json") or Path(study).exists())):
        preset = study
    else:
        truth, preset = study_parameters(study), "coyne2022"
    from_study = dict(truth.overrides) if truth else {}
    if design is not None:
        if truth is not None and design != from_study["design"]:
            raise InputError(f"--design {design}: the study ({truth.source}) was analysed at the "
                             f"{from_study['design']} level; its estimates are that design's")
        overrides = {**overrides, "design": design}
    given = _layer(from_study, overrides)
    base = resolve_parameters(preset, **{k: v for k, v in given.items() if k not in CELL_FIELDS})
    moderator, moderator_process = _default_moderator(base, moderator, moderator_process, moderator_target)
    mod_key = (moderator or "", moderator_process, moderator_target)
    resolved = _layer(_layer(from_study, resolve_overrides(preset, parse_settings(settings), mod_key, base.design,
                                                           base=given)), overrides)
    spec = PowerSpec(preset=preset, overrides={k: v for k, v in resolved.items() if k not in CELL_FIELDS},
                     alpha=float(alpha), seed=int(seed), moderator=moderator, moderator_process=moderator_process,
                     moderator_target=moderator_target, exclude_singular=bool(exclude_singular),
                     decomposition=decomposition, config=truth.config if truth else None,
                     source=truth.source if truth else "",
                     ddf=ddf if ddf is not None else (truth.ddf if truth else "satterthwaite"))

    def cells_for(js: Iterable[int] | None, ms: Iterable[float] | None) -> list[Cell]:
        return design_cells(preset, js, ms, resolved)

    return _plan(spec, cells_for, therapists, patients_per_therapist, search, nsim, workers, scheduler, progress,
                 chunk_size, decomposition, list(truth.notes) if truth else [], t0)


def _plan(spec: Any, cells_for: Callable[[Iterable[int] | None, Iterable[float] | None], list[Cell]],
          therapists: Iterable[int] | None, patients_per_therapist: Iterable[float] | None, search: Any, nsim: int,
          workers: int | None, scheduler: Any, progress: bool, chunk_size: int | None, decomposition: str,
          notes: list[str], t0: float) -> PowerResult:
    """The power table of ``spec`` (a :class:`PowerSpec` or a :class:`LoopSpec`) over the grid of
    design cells, or the sample-size search (``search``) with every cell it evaluated;
    ``cells_for(therapists, patients_per_therapist)`` gives the cells."""
    goal = None
    if search is not None:
        goal = parse_search(search, therapists)
        if patients_per_therapist is not None and len(list(patients_per_therapist)) != 1:
            raise InputError("--search: give one caseload (--patients-per-therapist M); the search is over therapists")
        therapists = [goal.low]
    cells = cells_for(therapists, patients_per_therapist)
    if goal is None:
        result = _run_cells(spec, cells, nsim, workers, scheduler, progress, chunk_size, decomposition)
        result.seconds = time.perf_counter() - t0
        result.notes = notes
        return result
    test = goal.pick(spec.tests)
    m = cells[0].patients_per_therapist
    runs: list[PowerResult] = []

    def evaluate(js: list[int]) -> pd.DataFrame:
        new = cells_for(js, [m])
        runs.append(_run_cells(spec, new, nsim, workers, scheduler, progress, chunk_size, decomposition))
        t = runs[-1].table
        return t[(t["test"] == test.kind) & (t["process"] == test.process)]

    found = run_search(goal, test, m, evaluate)
    cells = sorted((c for r in runs for c in r.cells), key=lambda c: c.n_therapists)

    def joined(name: str) -> pd.DataFrame:
        frame = pd.concat([getattr(r, name) for r in runs], ignore_index=True)
        return frame.sort_values("n_therapists", kind="stable").reset_index(drop=True)

    return PowerResult(table=joined("table"), replicates=joined("replicates"), failures=joined("failures"),
                       cells=cells, tests=spec.tests, spec=spec, nsim=nsim,
                       seconds=time.perf_counter() - t0, execution=runs[0].execution,
                       notes=notes, search=found)


def _run_cells(spec: PowerSpec, cells: list[Cell], nsim: int, workers: int | None, scheduler: Any, progress: bool,
               chunk_size: int | None, decomposition: str) -> PowerResult:
    """Every replicate of ``cells``: the power table of those cells."""
    t0 = time.perf_counter()
    truths = [spec.truth(c) for c in cells]  # checks every setting once, here, and gives the true values
    if decomposition == "latent":
        biggest = max(cells, key=lambda c: c.n_patients)
        n_workers = 1 if workers == 1 else (workers or available_cores())
        one, total = estimate_seconds(lambda: run_replicate(spec, biggest, nsim), nsim * len(cells), n_workers)
        if progress:
            print(f"theralens power: latent decomposition: one replicate of the largest cell took {one:.1f} s; "
                  f"about {total / 60:.0f} min for {nsim * len(cells)} replicates on {n_workers} worker(s) "
                  "(at most; smaller cells are faster)", file=sys.stderr, flush=True)
    chunks, info = execute(spec, cells, nsim, workers=workers, scheduler=scheduler, progress=progress,
                           chunk_size=chunk_size)
    tests = spec.tests
    table, replicates, failures = summarise(chunks, cells, tests, spec, nsim, truths)
    return PowerResult(table=table, replicates=replicates, failures=failures, cells=cells, tests=tests, spec=spec,
                       nsim=nsim, seconds=time.perf_counter() - t0, execution=info)


def _layer(under: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """``over`` on top of ``under``: dict-valued parameters merged (except those an override
    replaces: moderators, covariates), others replaced."""
    out = dict(under)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping) and key not in REPLACED:
            out[key] = {**out[key], **value}
        else:
            out[key] = value
    return out
