"""Power for the training loop: how many therapists, with how many patients each, are needed to
detect a targeted training effect, or to show that therapist profiles are stable
(docs/stability_training.md, docs/power.md; ``theralens power --preset training`` /
``--preset stability``).

A replicate simulates a study with known truth (:mod:`theralens.simulation.training`: every
therapist has ``patients_per_therapist`` patients, half of them in each period) and analyses it
as ``theralens training`` and ``theralens stability`` do, through the whole pipeline
(:func:`theralens.study.training.training`, :func:`theralens.study.stability.stability`):

- preset ``training``, per process: ``targeted_change`` (the difference in differences: the
  slope change of therapists trained on the process minus that of therapists trained on another
  one), ``targeted_vs_untrained`` and ``untargeted_vs_untrained``; each rejects when the study's
  t test of the contrast (the ``[inference] ddf`` method, Satterthwaite by default) has p < alpha.
  The change-SD interval is not computed (it tests nothing here).
- preset ``stability``, per process: ``stability`` rejects when the profile-likelihood interval
  of the between-half correlation at level 1 - alpha lies above 0 (the report's verdict "partly
  stable" or better), ``stability_supported`` when it lies at or above
  :data:`theralens.study.stability.STABLE_R` (the verdict "supported"). These tests are decided
  by the interval the report shows, so their p-value is left empty; a two-sided interval makes
  each a one-sided test at level alpha / 2.

Settings (``--set NAME=VALUE``), applied to the simulator's defaults: ``change.GROUP`` (GROUP
targeted, untargeted or untrained: the mean slope change of that group; defaults -0.20, -0.05,
0), ``change_sd.P`` (SD of the therapists' changes, 0.10), ``share_trained`` (2/3),
``correlation`` (the true between-half correlation, 0.6), ``slope_sd.P`` (SD of the therapist
slopes) and ``sessions`` (ratings per patient, 4). Failed replicates leave the denominator, as in
every power study (:mod:`theralens.planning.result`).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from theralens.data.config import config_from_dict
from theralens.errors import InputError, closest
from theralens.model.ddf import check_ddf, ddf_label, ddf_reference
from theralens.planning.replicate import ERROR, NONCONVERGED, SINGULAR, ReplicateOutcome, TestSpec, replicate_seed
from theralens.planning.settings import Cell, parse_numbers
from theralens.simulation.training import PROCESSES, LoopStudy, simulate_stability, simulate_training
from theralens.study.stability import STABLE_R, stability
from theralens.study.training import CONTRASTS, GROUPS, training

__all__ = ["LOOP_STUDIES", "LoopSpec", "loop_cells", "loop_overrides"]

#: The training-loop studies ``theralens power`` plans, with what each simulates.
LOOP_STUDIES = {
    "training": "training evaluation: therapists trained on one process, untrained ones as controls "
                "(theralens.simulation.training.simulate_training)",
    "stability": "profile stability: therapist slopes correlated between the earlier and later half of their "
                 "patients (theralens.simulation.training.simulate_stability)",
}
SIMULATORS = {"training": simulate_training, "stability": simulate_stability}
#: The default design cell of each (the simulators' defaults, the design of validation/training_stability.md).
DEFAULT_CELL = (200, 20)
PER_PROCESS = ("change_sd", "slope_sd")


def _keywords(study: str) -> set[str]:
    sig = inspect.signature(SIMULATORS[study])
    return {n for n, p in sig.parameters.items() if p.kind == p.KEYWORD_ONLY and n != "seed"}


def _number(name: str, value: Any, lo: float | None = None, hi: float | None = None, open_: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(float(value)):
        raise InputError(f"--set {name}: needs a number, got {value!r}")
    v = float(value)
    low_bad = lo is not None and (v <= lo if open_ else v < lo)
    high_bad = hi is not None and (v >= hi if open_ else v > hi)
    if low_bad or high_bad:
        brackets = ("(", ")") if open_ else ("[", "]")
        raise InputError(f"--set {name}={value}: must lie in {brackets[0]}{lo}, {hi}{brackets[1]}")
    return v


def loop_overrides(study: str, settings: Mapping[str, Any], overrides: Mapping[str, Any] | None = None
                   ) -> dict[str, Any]:
    """Parsed settings (module docstring) and keyword ``overrides`` of the simulator -> the
    simulator's keyword arguments, checked."""
    keywords = _keywords(study)
    known = sorted({"sessions", "share_trained", "correlation"} & keywords
                   | {f"change.{g}" for g in GROUPS if "change" in keywords}
                   | {f"{f}.{p}" for f in PER_PROCESS if f in keywords for p in PROCESSES})
    out: dict[str, Any] = {}
    for name, value in settings.items():
        field_, _, rest = name.partition(".")
        if field_ == "change" and "change" in keywords and rest in GROUPS:
            out.setdefault("change", {})[rest] = _number(name, value)
        elif field_ in PER_PROCESS and field_ in keywords and rest in PROCESSES:
            out.setdefault(field_, {})[rest] = _number(name, value, 0.0, None)
        elif name == "share_trained" and name in keywords:
            out[name] = _number(name, value, 0.0, 1.0, open_=True)
        elif name == "correlation" and name in keywords:
            out[name] = _number(name, value, -1.0, 1.0, open_=True)
        elif name == "sessions":
            v = _number(name, value, 1.0, None)
            if v != int(v):
                raise InputError(f"--set sessions={value}: needs a whole number of ratings per patient")
            out[name] = int(v)
        else:
            match = closest(name, known)
            hint = f' (did you mean "{match}"?)' if match else ""
            raise InputError(f"--set {name}: not a setting of the {study} power study{hint}; its settings: "
                             f"{', '.join(known)}")
    for key, value in (overrides or {}).items():
        if key not in keywords:
            raise InputError(f"{key}=...: not a parameter of the {study} simulation; it takes "
                             f"{', '.join(sorted(keywords))}")
        out[key] = {**out.get(key, {}), **value} if isinstance(value, Mapping) else value
    return out


def loop_cells(therapists: Iterable[int] | None, patients_per_therapist: Iterable[float] | None) -> list[Cell]:
    """The design cells (every pair) of a training-loop power study; None takes 200 therapists
    and 20 patients each. Every therapist has the same whole number of patients, 4 or more (two
    in each period)."""
    js = parse_numbers(list(therapists), "therapists", True) if therapists is not None else [DEFAULT_CELL[0]]
    ms = (parse_numbers(list(patients_per_therapist), "patients-per-therapist", False)
          if patients_per_therapist is not None else [DEFAULT_CELL[1]])
    cells = []
    for J in js:
        if J < 3:
            raise InputError(f"--therapists: {J} therapists cannot give a between-therapist variance; use 3 or more")
        for m in ms:
            if m != int(m) or m < 4:
                raise InputError(f"--patients-per-therapist {m:g}: the training-loop simulations give every therapist "
                                 "the same whole number of patients, 4 or more (two in each period)")
            cells.append(Cell(n_therapists=int(J), patients_per_therapist=float(m), n_patients=int(J) * int(m)))
    if len(set(cells)) != len(cells):
        raise InputError("--therapists / --patients-per-therapist: a design cell is listed twice")
    return cells


@dataclass(frozen=True)
class LoopSpec:
    """What every replicate of a training-loop power study shares (module docstring):
    ``study`` ("training" or "stability"), ``overrides`` (keyword arguments of the simulator),
    ``alpha``, ``seed``, ``ddf`` (the df method of the training t tests) and
    ``exclude_singular`` (also count replicates whose model is a boundary fit as failed)."""

    study: str
    overrides: dict[str, Any] = field(default_factory=dict)
    alpha: float = 0.05
    seed: int = 1
    ddf: str = "satterthwaite"
    exclude_singular: bool = False

    def __post_init__(self) -> None:
        if self.study not in LOOP_STUDIES:
            raise InputError(f"unknown training-loop study {self.study!r}; one of {', '.join(LOOP_STUDIES)}")
        object.__setattr__(self, "ddf", check_ddf(self.ddf, "--ddf"))
        if not 0.0 < self.alpha < 1.0:
            raise InputError(f"--alpha {self.alpha}: the level of the tests must lie strictly between 0 and 1")

    # -- what PowerResult shows -----------------------------------------------------------
    preset = property(lambda self: self.study)
    source = ""
    level = "patient"

    @property
    def origin(self) -> str:
        return f"preset {self.study}"

    @property
    def tests(self) -> tuple[TestSpec, ...]:
        out = []
        if self.study == "training":
            words = {"targeted_change": "targeted change (diff. in diff.)",
                     "targeted_vs_untrained": "targeted vs untrained change",
                     "untargeted_vs_untrained": "untargeted vs untrained change"}
            for p in PROCESSES:
                for term in CONTRASTS:
                    out.append(TestSpec(term, p, f"{p}:{term}", f"{words[term]} of the {p} slope", (f"training:{p}",)))
        else:
            for p in PROCESSES:
                out.append(TestSpec("stability", p, f"{p}:correlation", f"stability of {p} profiles (r > 0)",
                                    (f"stability:{p}",)))
                out.append(TestSpec("stability_supported", p, f"{p}:correlation",
                                    f"{p} profiles supported (r >= {STABLE_R:g})", (f"stability:{p}",)))
        return tuple(out)

    def simulate(self, cell: Cell, seed: int) -> LoopStudy:
        """The study of one replicate of ``cell``."""
        return SIMULATORS[self.study](cell.n_therapists, int(cell.patients_per_therapist), seed=seed,
                                      **self.overrides)

    def truth(self, cell: Cell) -> dict[str, Any]:
        """The simulation's true values (the data of seed 0; checks every setting)."""
        try:
            return self.simulate(cell, 0).truth
        except ValueError as exc:
            raise InputError(f"--set: {exc}") from None

    def true_value(self, test: TestSpec, truth: dict[str, Any]) -> float:
        if self.study == "training":
            return float(truth["effects"][test.process][test.kind])
        return float(truth["correlation"][test.process])

    def method(self, test: TestSpec) -> str:
        if self.study == "training":
            return f"t test of the slope-change contrast, {ddf_label(self.ddf)} df"
        bound = "0" if test.kind == "stability" else f"{STABLE_R:g}"
        return f"profile-likelihood interval (level 1 - alpha) above {bound}"

    def meta(self) -> dict[str, Any]:
        what = ("training evaluation: difference in differences of the therapist slopes before and after training, "
                f"REML, contrasts by t tests with {ddf_reference(self.ddf)} df" if self.study == "training" else
                "profile stability: correlated therapist slopes in the earlier and later half of each caseload, "
                "REML; profile-likelihood interval of the correlation (ML, as lme4)")
        return {"preset": self.study, "study": None, "overrides": self.overrides, "ddf": self.ddf,
                "exclude_singular": self.exclude_singular, "design": "patient", "analysis": f"patient level, {what}"}

    def design_line(self) -> str:
        if self.study == "training":
            return ("Design: training evaluation (patient level): each therapist's patients before and after their "
                    "training date (untrained therapists: the median training date); every test is a t test of a "
                    f"contrast of the mean slope changes, {ddf_reference(self.ddf)} df")
        return ("Design: profile stability (patient level): each therapist's patients split into the earlier and "
                "later half by treatment start; a test rejects when the profile-likelihood interval of the "
                "between-half correlation (level 1 - alpha) lies above its bound")

    # -- one replicate ---------------------------------------------------------------------
    def run(self, cell: Cell, replicate: int, tests: Sequence[TestSpec] | None = None) -> ReplicateOutcome:
        """Replicate ``replicate`` of ``cell``: simulate, analyse as the study does, test."""
        tests = self.tests if tests is None else tests
        n = len(tests)
        out = ReplicateOutcome(np.full(n, np.nan), np.full(n, np.nan), np.full(n, np.nan), np.zeros(n, dtype=np.int8),
                               np.zeros(n, dtype=bool), [], np.zeros(n, dtype=bool))
        try:
            sim = self.simulate(cell, replicate_seed(self.seed, cell, replicate))
            cfg = config_from_dict({**sim.config, "inference": {"ddf": self.ddf}})
            if self.study == "training":
                res: Any = training(sim.sessions, sim.therapists, cfg, intervals=False)
                rows = {(r["process"], r["term"]): r for r in res.effects.to_dict(orient="records")}
            else:
                res = stability(sim.sessions, sim.therapists, cfg, level=1.0 - self.alpha)
                rows = {(r["process"], "correlation"): r for r in res.correlations.to_dict(orient="records")}
        except Exception as exc:  # data or models the study would refuse: every test of the replicate failed
            out.status[:] = ERROR
            out.messages.append(("study", f"{type(exc).__name__}: {exc}"))
            return out
        fits = {m.role: m.fit for m in res.models}
        for i, t in enumerate(tests):
            fit = fits.get(t.models[0])
            row = rows.get((t.process, t.kind if self.study == "training" else "correlation"))
            if fit is None or row is None:
                out.status[i] = ERROR
                out.messages.append((t.models[0], f"the study reported no {t.kind} for {t.process}"))
                continue
            if not fit.converged:
                out.status[i] = NONCONVERGED
                continue
            out.singular[i] = bool(fit.singular)
            if out.singular[i] and self.exclude_singular:
                out.status[i] = SINGULAR
                continue
            if self.study == "training":
                out.p[i], out.estimate[i], out.se[i] = row["p"], row["estimate"], row["se"]
                if not math.isfinite(out.p[i]):
                    out.status[i] = ERROR
                    out.messages.append((t.models[0], "the t test gave no p-value (not finite)"))
                else:
                    out.reject[i] = out.p[i] < self.alpha
                continue
            out.estimate[i] = np.nan if row["correlation"] is None else row["correlation"]
            low = row["ci_low"]
            if low is None or not math.isfinite(low):
                out.status[i] = ERROR
                out.messages.append((t.models[0], "the profile interval of the correlation could not be computed"))
                continue
            out.reject[i] = low > 0 if t.kind == "stability" else low >= STABLE_R
        return out
