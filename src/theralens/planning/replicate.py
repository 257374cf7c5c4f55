"""One replicate of a power study: simulate a study, analyse it as the study does, test.

For design cell (J therapists, N patients) and replicate r, the data come from
:func:`theralens.simulation.generate.simulate` with the seed of (seed, J, N, r)
(:func:`replicate_seed`). The analysis table is the one :func:`theralens.analyze` would build:
for the patient-level design with the default options from arrays
(:mod:`theralens.planning.table`, held equal to the pipeline's), for the session-level (lagged)
design and for other options by the pipeline itself (:mod:`theralens.planning.analysis_table`).
The models are those of :mod:`theralens.study.aims` (:mod:`theralens.planning.designs`), fitted
by REML with the engine (:func:`theralens.model.fit.fit_design`) from its default start, as the
study fits them (starting the other models from the main model's estimates saves a fifth of
the evaluations but can end at a worse boundary optimum: seen in testing). Tests at level
alpha, as the study reports them:

- ``slope_variance`` of process p: REML likelihood ratio of ``main`` against the model
  without the slope of p, referred to the chi-bar-square mixture 0.5 chi2(q-1) + 0.5 chi2(q)
  (Self & Liang 1987; Stram & Lee 1994), as :func:`theralens.lrt` computes it
  (:func:`slope_lrt`), q = the therapist random effects of ``main`` (1 + the processes);
- ``within`` and ``between`` effect of p (g10, g01; session design: the within-patient and
  between-therapist components), and in the session design ``between_patient``: t tests in
  ``main`` with the ``ddf`` method's df (Satterthwaite by default; Kenward-Roger, residual or
  asymptotic: :func:`fixed_effect_tests`) (aim 1);
- ``moderator``: the cross-level interaction of the configured moderator W with the
  configured component (default g11: W x alliance within, the within slope), t test in the
  moderator model (aim 3).

Each test records its p-value, estimate and SE (fixed effects), or why it has none: a model it needs raised an
error (status ``error``) or did not converge (``nonconverged``); singular (boundary) fits
are flagged and, with ``exclude_singular``, also count as failed (``singular``). A failed
test is never a non-rejection: it leaves the denominator (:mod:`theralens.planning.result`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np
from scipy import special

from theralens.data.config import ColumnsConfig, DesignConfig, StudyConfig
from theralens.errors import InputError
from theralens.latent.ml import LatentFit
from theralens.model.chibar import ChiBarSquare, slope_mixture
from theralens.model.ddf import check_ddf, ddf_label, ddf_reference
from theralens.model.design import Design, build_design, with_random_columns
from theralens.model.fit import MixedResult, fit_design
from theralens.planning.analysis_table import analysis_table
from theralens.planning.designs import StudyModels, parsed_formula
from theralens.planning.latent import LATENT_KINDS, latent_fit, latent_test
from theralens.planning.satterthwaite import t_tests
from theralens.planning.settings import Cell
from theralens.planning.table import patient_arrays
from theralens.simulation.generate import TARGETS, SimulationParameters, resolve_parameters, simulate

__all__ = ["ERROR", "NONCONVERGED", "OK", "SINGULAR", "ChunkOutcome", "PowerSpec", "ReplicateOutcome", "TestSpec",
           "fixed_effect_tests", "replicate_seed", "run_chunk", "run_replicate", "slope_lrt"]

OK, NONCONVERGED, ERROR, SINGULAR = 0, 1, 2, 3
STATUS = {OK: "ok", NONCONVERGED: "nonconverged", ERROR: "error", SINGULAR: "singular"}


@dataclass(frozen=True)
class TestSpec:
    """One test of a replicate: ``kind`` (slope_variance, within, between, moderator),
    ``process``, ``term`` (the engine's name of what is tested), ``label`` (words) and
    ``models`` (the models it needs)."""

    kind: str
    process: str
    term: str
    label: str
    models: tuple[str, ...]


@dataclass(frozen=True)
class PowerSpec:
    """What every replicate of a power study shares (sent to each worker).

    ``preset`` and ``overrides`` (keyword overrides of :func:`simulate`), ``alpha``,
    ``seed``, ``moderator`` (a therapist characteristic or None), ``moderator_process`` and
    ``moderator_target`` (``within_slope`` or ``between_association``), ``exclude_singular``,
    ``decomposition`` (``"latent"``: data from the latent model, within, between and moderator
    tests from the latent ML fit; :mod:`theralens.planning.latent`), ``config`` (the analysis
    options of a fitted study, :class:`~theralens.data.config.StudyConfig`; None: the defaults),
    ``source`` (the fitted study the truth was taken from; "" for a preset), ``ddf`` (the df
    method of the fixed-effect t tests, :mod:`theralens.model.ddf`).
    The design level is the simulation's (``design`` in ``overrides`` or the preset).
    """

    preset: str = "coyne2022"
    overrides: dict[str, Any] = field(default_factory=dict)
    alpha: float = 0.05
    seed: int = 1
    moderator: str | None = "self_rated_alliance_skill"
    moderator_process: str = "alliance"
    moderator_target: str = "within_slope"
    exclude_singular: bool = False
    decomposition: str = "manifest"
    config: StudyConfig | None = None
    source: str = ""
    ddf: str = "satterthwaite"

    def __post_init__(self) -> None:
        object.__setattr__(self, "ddf", check_ddf(self.ddf, "--ddf"))
        if self.ddf == "kenward-roger" and self.decomposition == "latent":
            raise InputError("--ddf kenward-roger: the latent decomposition's tests are likelihood-based (Wald); "
                             "use the manifest decomposition for Kenward-Roger")
        if self.decomposition not in ("manifest", "latent"):
            raise InputError(f'--decomposition {self.decomposition}: use "manifest" or "latent"')
        if not 0.0 < self.alpha < 1.0:
            raise InputError(f"--alpha {self.alpha}: the level of the tests must lie strictly between 0 and 1")
        params = self.parameters
        if self.moderator is not None and self.moderator not in params.moderators:
            raise InputError(f"moderator {self.moderator!r}: the simulation has "
                             f"{', '.join(params.moderators) or 'no moderator'}")
        if self.moderator is not None and self.moderator_process not in params.processes:
            raise InputError(f"moderator process {self.moderator_process!r}: one of {', '.join(params.processes)}")
        if self.moderator_target not in TARGETS:
            raise InputError(f"moderator target {self.moderator_target!r}: one of {', '.join(TARGETS)}")

    @cached_property
    def parameters(self) -> SimulationParameters:
        """The simulation's parameters (cells aside): ``preset`` with ``overrides`` (computed once)."""
        return resolve_parameters(self.preset, **self.overrides)

    @property
    def origin(self) -> str:
        """Where the truth comes from, in words."""
        return f"truth from {self.source}" if self.source else f"preset {self.preset}"

    @property
    def level(self) -> str:
        """The design: "patient" or "session" (the simulation's ``design``)."""
        return self.parameters.design

    @property
    def processes(self) -> tuple[str, ...]:
        return self.parameters.processes

    @property
    def covariates(self) -> tuple[str, ...]:
        return tuple(self.parameters.covariates)

    @property
    def analysis_config(self) -> StudyConfig:
        """The config a replicate is analysed with: ``config`` (or the defaults) with the
        simulated columns and the simulated design level."""
        base = self.config or StudyConfig()
        columns = dataclasses.replace(ColumnsConfig(), process=self.processes, covariates=self.covariates,
                                      higher_outcome_is=base.columns.higher_outcome_is)
        design = dataclasses.replace(base.design, level=self.level, decomposition="manifest")
        return dataclasses.replace(base, columns=columns, design=design)

    @property
    def from_arrays(self) -> bool:
        """True when the patient-level table can be built from arrays (default options)."""
        return self.level == "patient" and self.analysis_config.design == DesignConfig(level="patient")

    @property
    def models(self) -> StudyModels:
        return StudyModels(processes=self.processes, covariates=self.covariates, moderator=self.moderator,
                           level=self.level)

    @property
    def tests(self) -> tuple[TestSpec, ...]:
        sm = self.models
        session = self.level == "session"
        out = []
        for p in self.processes:
            out.append(TestSpec("slope_variance", p, sm.terms.within[p], f"therapist slope variance of {p}",
                                ("main", f"without_slope:{p}")))
        inside = "within-patient" if session else "within-therapist"
        for p in self.processes:
            out.append(TestSpec("within", p, sm.terms.within[p], f"{inside} effect of {p}", ("main",)))
            if session:
                out.append(TestSpec("between_patient", p, sm.terms.components[p]["between_patient"],
                                    f"between-patient effect of {p}", ("main",)))
            out.append(TestSpec("between", p, sm.terms.between[p], f"between-therapist effect of {p}", ("main",)))
        if self.moderator is not None:
            comp = sm.terms.within if self.moderator_target == "within_slope" else sm.terms.between
            what = "within slope" if self.moderator_target == "within_slope" else "between association"
            out.append(TestSpec("moderator", self.moderator_process,
                                f"{comp[self.moderator_process]}:{sm.moderator_column}",
                                f"{self.moderator} x {self.moderator_process} {what}", ("moderator",)))
        return tuple(out)

    # -- what the shared parts of a power study ask of a spec (run_chunk, planning.result) -----
    def run(self, cell: Cell, replicate: int, tests: Sequence[TestSpec] | None = None) -> ReplicateOutcome:
        """Replicate ``replicate`` of ``cell`` (:func:`run_replicate`)."""
        return run_replicate(self, cell, replicate, tests)

    def truth(self, cell: Cell) -> dict[str, Any]:
        """The simulation's true values in ``cell`` (the data of seed 0; checks every setting)."""
        return simulate(self.preset, seed=0, n_therapists=cell.n_therapists, n_patients=cell.n_patients,
                        decomposition=self.decomposition, **self.overrides).truth

    def true_value(self, test: TestSpec, truth: dict[str, Any]) -> float:
        """The simulated value of what ``test`` tests (slope variances: the marginal slope SD,
        which the main model, without the moderator, sees)."""
        if test.kind == "slope_variance":
            return float(truth["slope_sd_marginal"][test.process])
        if test.kind != "moderator":
            comp = COMPONENTS[self.level][test.kind]
            return float(next(e["estimate"] for e in truth["effects"] if e["process"] == test.process
                              and e["component"] == comp))
        return float(next(m["estimate"] for m in truth["moderators"] if m["moderator"] == self.moderator
                          and m["process"] == self.moderator_process and m["target"] == self.moderator_target))

    def method(self, test: TestSpec) -> str:
        """How ``test`` is tested, in words (the ``method`` column of the power table)."""
        if test.kind == "slope_variance":
            return "REML likelihood ratio, chi-bar-square reference"
        if self.decomposition == "latent" and test.kind in LATENT_KINDS:
            return "latent ML fit, Wald test"
        return f"t test, {ddf_label(self.ddf)} df"

    def meta(self) -> dict[str, Any]:
        """The settings of ``power.json``'s ``meta`` that belong to this kind of study."""
        return {"preset": self.preset, "study": self.source or None, "overrides": self.overrides,
                "moderator": self.moderator, "moderator_process": self.moderator_process,
                "moderator_target": self.moderator_target, "exclude_singular": self.exclude_singular,
                "ddf": self.ddf, "design": self.level,
                "analysis": ("patient level (residualized change)" if self.level == "patient" else
                             "session level (lagged outcome)") + ", manifest decomposition, REML; slope variances by "
                            f"chi-bar-square LRT, fixed effects by t tests with {ddf_reference(self.ddf)} df"}

    def design_line(self) -> str:
        """The summary's line on the design and the tests."""
        return (f"Design: {self.level} level" + (" (lagged: the outcome at the next assessment, adjusted for the "
                                                 "current one)" if self.level == "session" else
                                                 " (residualized change)")
                + f"; fixed effects by t tests with {ddf_reference(self.ddf)} df, slope variances by "
                "chi-bar-square likelihood ratio")


#: The truth's component of each fixed-effect test, per design level.
COMPONENTS = {"patient": {"within": "within_therapist", "between": "between_therapist"},
              "session": {"within": "within_patient", "between_patient": "between_patient",
                          "between": "between_therapist"}}


def fixed_effect_tests(fit: MixedResult, ddf: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(estimate, SE, df, p) of every fixed effect by the ``ddf`` method: Satterthwaite's on
    arrays (:func:`theralens.planning.satterthwaite.t_tests`, the engine's numbers in batched
    form), every other method from the engine itself (``fit.with_ddf(ddf)``: with Kenward-Roger
    the adjusted SEs and df, :mod:`theralens.model.kenward_roger`)."""
    if ddf == "satterthwaite":
        return t_tests(fit)
    other = fit.with_ddf(ddf)
    return (other.fixed_effects.to_numpy(), other.std_errors.to_numpy(), other.df.to_numpy(),
            other.p_values.to_numpy())


def replicate_seed(seed: int, cell: Cell, replicate: int) -> int:
    """Seed of one replicate from (seed, therapists, patients, replicate index) alone, by
    :class:`numpy.random.SeedSequence`: the same whatever worker or order runs it."""
    ss = np.random.SeedSequence(entropy=int(seed), spawn_key=(cell.n_therapists, cell.n_patients, int(replicate)))
    return int(ss.generate_state(1, dtype=np.uint64)[0])


@dataclass
class ReplicateOutcome:
    """One replicate, per test: ``p``, ``estimate`` (the coefficient; the therapist slope SD
    for slope variances), ``se`` (fixed effects), ``status`` (:data:`STATUS` codes),
    ``singular``, ``reject`` (the test rejected at alpha: p < alpha, or for a test decided by an
    interval, the interval excludes the null; False unless ``status`` is OK); ``messages``:
    (model, error) of what failed."""

    p: np.ndarray
    estimate: np.ndarray
    se: np.ndarray
    status: np.ndarray
    singular: np.ndarray
    messages: list[tuple[str, str]]
    reject: np.ndarray


@dataclass
class ChunkOutcome:
    """Replicates ``start``..``start + n`` of one cell: the fields of
    :class:`ReplicateOutcome` stacked (replicate x test); ``messages``: (replicate, model,
    error) for failed models; ``seconds`` and ``cpu_seconds``: wall and CPU time of the chunk."""

    cell: int
    start: int
    p: np.ndarray
    estimate: np.ndarray
    se: np.ndarray
    status: np.ndarray
    singular: np.ndarray
    reject: np.ndarray
    messages: list[tuple[int, str, str]]
    seconds: float
    cpu_seconds: float = 0.0


def _therapist_level(fit: MixedResult) -> Any:
    return next(lv for lv in fit.design.levels if lv.group == "therapist")


def _slope_sd(fit: MixedResult, column: str) -> float:
    lv = _therapist_level(fit)
    lam = lv.lambda_matrix(fit.solution.theta)
    cols = [c for t in lv.terms for c in t.columns]
    i = cols.index(column)
    return float(np.sqrt(fit.solution.sigma2 * (lam[i] @ lam[i])))


def slope_lrt(reduced: MixedResult, main: MixedResult) -> float:
    """p-value of the REML likelihood ratio of ``main`` against ``reduced`` (``main`` without
    one slope of its correlated block of q therapist random effects): what :func:`theralens.lrt`
    returns for this pair, the chi-bar-square mixture 0.5 chi2(q - 1) + 0.5 chi2(q)
    (Self & Liang 1987; Stram & Lee 1994), without building its report table."""
    stat = max(float(reduced.reml_criterion) - float(main.reml_criterion), 0.0)
    return _mixture_sf(slope_mixture(_therapist_level(main).q), stat)


def _mixture_sf(mixture: ChiBarSquare, x: float) -> float:
    """:meth:`ChiBarSquare.sf <theralens.model.chibar.ChiBarSquare.sf>` term by term with
    the function ``scipy.stats.chi2.sf`` evaluates (``scipy.special.chdtrc``), without the
    distribution object's argument handling (most of its cost): the same numbers."""
    total = 0.0
    for w, df in zip(mixture.weights, mixture.dfs):
        total += w * (float(x <= 0) if df == 0 else float(special.chdtrc(df, x)))
    return min(1.0, total)


def _moderator_values(therapists: Any, moderator: str, ids: np.ndarray) -> np.ndarray:
    """The simulated therapist table's ``moderator`` for each of ``ids`` (in that order)."""
    tids = therapists["therapist"].to_numpy()
    order = np.argsort(tids)
    return therapists[moderator].to_numpy(dtype=float)[order][np.searchsorted(tids[order], ids)]


def _fit(role: str, build: Any, formula: str, fits: dict[str, Any]) -> None:
    try:
        fits[role] = fit_design(build(), formula)
    except Exception as exc:  # any failure of a fit is counted and reported, never fatal
        fits[role] = exc


def _reduced_design(main: Design, formula: str, frame: Any) -> Design:
    """The design of ``formula`` (the main model without a therapist slope) on ``frame``: the main
    model's design with that Z column left out (:func:`~theralens.model.design.with_random_columns`,
    what ``build_design`` gives without evaluating the formula again), else built."""
    parsed = parsed_formula(formula)
    design = with_random_columns(main, parsed)
    return build_design(parsed, frame) if design is None else design


def _pipeline_fits(spec: PowerSpec, sim: Any, needed: set[str], fits: dict[str, Any]) -> None:
    """The models of ``spec.tests`` on the pipeline's analysis table of ``sim``
    (:mod:`theralens.planning.analysis_table`): the session design, or non-default options."""
    at = analysis_table(sim.sessions, spec.analysis_config)
    terms = at.terms
    _fit("main", lambda: build_design(parsed_formula(terms.formula()), at.frame), terms.formula(), fits)
    main = fits["main"]
    if isinstance(main, MixedResult):
        for proc in terms.processes:
            role = f"without_slope:{proc}"
            if role in needed:
                formula = terms.formula(slopes=[terms.within[o] for o in terms.processes if o != proc])
                _fit(role, lambda f=formula: _reduced_design(main.design, f, at.frame), formula, fits)
    if "moderator" in needed and spec.moderator is not None:
        try:
            frame, column = at.with_moderator(sim.therapists, spec.moderator)
        except Exception as exc:  # counted and reported, never fatal
            fits["moderator"] = exc
            return
        extra = [column]
        for p in terms.processes:
            extra += [f"{terms.within[p]}:{column}", f"{terms.between[p]}:{column}"]
        formula = terms.formula(extra=extra)
        _fit("moderator", lambda: build_design(parsed_formula(formula), frame), formula, fits)


def run_replicate(spec: PowerSpec, cell: Cell, replicate: int,
                  tests: Sequence[TestSpec] | None = None) -> ReplicateOutcome:
    """Replicate ``replicate`` of ``cell``: every test of ``spec.tests`` (or ``tests``)."""
    tests = spec.tests if tests is None else tests
    n = len(tests)
    p, est, se = np.full(n, np.nan), np.full(n, np.nan), np.full(n, np.nan)
    status, singular = np.zeros(n, dtype=np.int8), np.zeros(n, dtype=bool)
    messages: list[tuple[str, str]] = []
    out = ReplicateOutcome(p, est, se, status, singular, messages, np.zeros(n, dtype=bool))
    sm = spec.models
    fits: dict[str, Any] = {}
    needed = {m for t in tests for m in t.models}
    try:
        sim = simulate(spec.preset, seed=replicate_seed(spec.seed, cell, replicate), n_therapists=cell.n_therapists,
                       n_patients=cell.n_patients, decomposition=spec.decomposition, **spec.overrides)
        if spec.from_arrays:
            arrays = patient_arrays(sim.sessions, spec.processes, spec.covariates)
            main_design = sm.main_design(arrays)
        else:
            _pipeline_fits(spec, sim, needed, fits)
    except Exception as exc:  # data the study would refuse: every test of the replicate failed
        status[:] = ERROR
        messages.append(("data", f"{type(exc).__name__}: {exc}"))
        return out
    if spec.from_arrays:
        _array_fits(spec, sim, arrays, main_design, needed, fits)
    _collect(spec, tests, fits, out)
    out.reject[:] = (out.status == OK) & (out.p < spec.alpha)
    return out


def _array_fits(spec: PowerSpec, sim: Any, arrays: Any, main_design: Any, needed: set[str],
                fits: dict[str, Any]) -> None:
    """The models of ``spec.tests`` on the patient-level designs built from arrays."""
    sm = spec.models
    _fit("main", lambda: main_design, sm.main_formula, fits)
    if isinstance(fits["main"], MixedResult):
        for proc in spec.processes:
            role = f"without_slope:{proc}"
            if role in needed:
                _fit(role, lambda proc=proc: sm.reduced_design(arrays, proc, main_design), sm.reduced_formula(proc),
                     fits)
    if "moderator" in needed and spec.moderator is not None:
        values = _moderator_values(sim.therapists, spec.moderator, arrays.all_therapist_ids)
        _fit("moderator", lambda: sm.moderator_design(arrays, values, main_design), sm.moderator_formula, fits)
    if spec.decomposition == "latent":
        mod_values = None if spec.moderator is None else _moderator_values(sim.therapists, spec.moderator,
                                                                           arrays.therapist_ids)
        try:
            fits["latent"] = latent_fit(arrays, spec.processes, spec.covariates, mod_values, spec.moderator)
        except Exception as exc:  # counted and reported, never fatal
            fits["latent"] = exc


def _collect(spec: PowerSpec, tests: Sequence[TestSpec], fits: dict[str, Any], out: ReplicateOutcome) -> None:
    """Each test's p-value, estimate and SE from the fits (or why it has none), into ``out``."""
    p, est, se, status, singular, messages = out.p, out.estimate, out.se, out.status, out.singular, out.messages
    for role, f in fits.items():
        if not isinstance(f, (MixedResult, LatentFit)):
            messages.append((role, f"{type(f).__name__}: {f}"))
    ttests: dict[int, tuple[np.ndarray, ...]] = {}
    for i, t in enumerate(tests):
        if spec.decomposition == "latent" and t.kind in LATENT_KINDS:
            lf = fits.get("latent")
            if not isinstance(lf, LatentFit):
                status[i] = ERROR
            elif not lf.converged:
                status[i] = NONCONVERGED
            else:
                p[i], est[i], se[i] = latent_test(lf, t.kind, t.process, spec.moderator_target)
                if not np.isfinite(p[i]):
                    status[i] = ERROR
                    messages.append((t.kind, "the latent test gave no p-value (not finite)"))
            continue
        models = [fits.get(m) for m in t.models]
        if any(not isinstance(m, MixedResult) for m in models):
            status[i] = ERROR
            continue
        if not all(m.converged for m in models):
            status[i] = NONCONVERGED
            continue
        singular[i] = any(m.singular for m in models)
        if singular[i] and spec.exclude_singular:
            status[i] = SINGULAR
            continue
        try:
            if t.kind == "slope_variance":
                main, reduced = models
                p[i] = slope_lrt(reduced, main)
                est[i] = _slope_sd(main, t.term)
            else:
                fit = models[0]
                if id(fit) not in ttests:
                    ttests[id(fit)] = fixed_effect_tests(fit, spec.ddf)
                beta, ses, _, pv = ttests[id(fit)]
                j = fit.fixed_names.index(t.term)
                p[i], est[i], se[i] = pv[j], beta[j], ses[j]
        except Exception as exc:
            status[i] = ERROR
            messages.append((t.kind, f"{type(exc).__name__}: {exc}"))
        if status[i] == OK and not np.isfinite(p[i]):
            status[i] = ERROR
            messages.append((t.kind, "the test gave no p-value (not finite)"))


def run_chunk(spec: Any, cells: Sequence[Cell], cell: int, start: int, stop: int) -> ChunkOutcome:
    """Replicates ``start``..``stop - 1`` of ``cells[cell]`` (what one worker task runs) by
    ``spec.run`` (a :class:`PowerSpec`, or :class:`theralens.planning.loop.LoopSpec`),
    with one BLAS thread and freed memory kept for reuse (:mod:`theralens.planning.blas`,
    :mod:`theralens.planning.memory`: speed only, the numbers do not depend on them)."""
    import time

    from theralens.planning.blas import single_thread_blas
    from theralens.planning.memory import reuse_freed_memory

    t0, c0 = time.perf_counter(), time.process_time()
    tests = spec.tests
    n, m = stop - start, len(tests)
    out = ChunkOutcome(cell=cell, start=start, p=np.full((n, m), np.nan), estimate=np.full((n, m), np.nan),
                       se=np.full((n, m), np.nan), status=np.zeros((n, m), dtype=np.int8),
                       singular=np.zeros((n, m), dtype=bool), messages=[], seconds=0.0,
                       reject=np.zeros((n, m), dtype=bool))
    with single_thread_blas(), reuse_freed_memory():
        for k, r in enumerate(range(start, stop)):
            rep = spec.run(cells[cell], r, tests)
            out.p[k], out.estimate[k], out.se[k] = rep.p, rep.estimate, rep.se
            out.status[k], out.singular[k], out.reject[k] = rep.status, rep.singular, rep.reject
            out.messages += [(r, role, text) for role, text in rep.messages]
    out.seconds, out.cpu_seconds = time.perf_counter() - t0, time.process_time() - c0
    return out
