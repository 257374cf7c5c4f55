"""The study's models of a power replicate: formulas for both designs, and the patient-level
designs built from arrays (no formulaic).

The models are those of :mod:`theralens.study.aims` (models.md), with formulas written by
:class:`theralens.study.aims.DesignTerms`:

- ``main``: final ~ sum_p (p_within + p_between) + baseline [+ covariates]
  + (1 + sum_p p_within | therapist)  (aims 1 and 2; session-level design: outcome_next ~
  sum_p (p_within_patient + p_between_patient + p_between_therapist) + outcome + time
  [+ covariates] + (1 + sum_p p_within_patient | therapist) + (1 | therapist:patient));
- ``without_slope:p``: as main without the therapist random slope of p's within component
  (the reduced model of the slope-variance test, Self & Liang 1987; Stram & Lee 1994);
- ``moderator:W``: main + W_c + sum_p (within_p:W_c + between_p:W_c), W centred at its
  mean over the therapists of the data (aim 3, one moderator at a time).

The session-level models are fitted on the pipeline's own lagged table
(:mod:`theralens.planning.analysis_table`); only the patient-level ones are built here from arrays.

Each :class:`~theralens.model.design.Design` holds y, X (columns in the order and with the
lme4 names that ``build_design`` gives the same formula) and one therapist level; the
designs equal ``build_design(parse_formula(formula), table)`` (``tests/planning/test_fit_design.py``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
import pandas as pd

from theralens.errors import ModelSpecError
from theralens.model.design import Design, Level, Term
from theralens.model.formula import ParsedFormula, parse_formula
from theralens.planning.table import PatientArrays
from theralens.study.aims import DesignTerms

__all__ = ["StudyModels", "parsed_formula", "study_terms"]


@lru_cache(maxsize=64)
def parsed_formula(formula: str) -> ParsedFormula:
    """:func:`theralens.model.formula.parse_formula`, cached (a power study parses a few
    formulas thousands of times)."""
    return parse_formula(formula)


def study_terms(level: str, processes: tuple[str, ...], covariates: tuple[str, ...] = ()) -> DesignTerms:
    """What :func:`theralens.study.aims.design_terms` returns for a ``level`` ("patient" or
    "session") table of ``processes`` with the default config (``tests/planning/test_fit_design.py``
    holds them equal)."""
    if level == "session":
        comps = {p: {"within_patient": f"{p}_within_patient", "between_patient": f"{p}_between_patient",
                     "between_therapist": f"{p}_between_therapist"} for p in processes}
        return DesignTerms(
            level="session", response="outcome_next", adjust=["outcome", "time", *covariates], processes=processes,
            within={p: comps[p]["within_patient"] for p in processes},
            between={p: comps[p]["between_therapist"] for p in processes},
            components=comps, patient_intercept=True,
        )
    return DesignTerms(
        level="patient", response="final", adjust=["baseline", *covariates], processes=processes,
        within={p: f"{p}_within" for p in processes}, between={p: f"{p}_between" for p in processes},
        components={p: {"within_therapist": f"{p}_within", "between_therapist": f"{p}_between"}
                    for p in processes},
        patient_intercept=False,
    )


@dataclass(frozen=True)
class StudyModels:
    """Formulas of the study's models for ``processes`` (and ``covariates``) at ``level``
    ("patient" or "session"), and the patient-level designs of one data set
    (:meth:`main_design`, :meth:`reduced_design`, :meth:`moderator_design`).

    ``moderator``: the therapist characteristic of the moderator model (None: no such model).
    """

    processes: tuple[str, ...] = ("alliance", "expectancy")
    covariates: tuple[str, ...] = ()
    moderator: str | None = "self_rated_alliance_skill"
    level: str = "patient"
    terms: DesignTerms = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "terms", study_terms(self.level, self.processes, self.covariates))

    # -- formulas (as the study writes them) -----------------------------------------------
    @property
    def main_formula(self) -> str:
        return self.terms.formula()

    def reduced_formula(self, process: str) -> str:
        return self.terms.formula(slopes=[self.terms.within[o] for o in self.processes if o != process])

    @property
    def moderator_column(self) -> str:
        return f"{self.moderator}_c"

    def moderator_terms(self) -> list[str]:
        w = self.moderator_column
        extra = [w]
        for p in self.processes:
            extra += [f"{self.terms.within[p]}:{w}", f"{self.terms.between[p]}:{w}"]
        return extra

    @property
    def moderator_formula(self) -> str:
        return self.terms.formula(extra=self.moderator_terms())

    @property
    def fixed_names(self) -> list[str]:
        return ["(Intercept)", *self.terms.fixed_main()]

    # -- designs -------------------------------------------------------------------------
    def _fixed(self, a: PatientArrays) -> np.ndarray:
        cols = [np.ones(a.n)]
        for p in self.processes:
            cols += [a.within[p], a.between[p]]
        cols.append(a.baseline)
        cols += [a.covariates[c] for c in self.covariates]
        return np.column_stack(cols)

    def _design(self, formula: str, a: PatientArrays, X: np.ndarray, names: list[str],
                slopes: list[str]) -> Design:
        parsed = parsed_formula(formula)
        cols = [np.ones(a.n)] + [a.within[p] for p in self.processes if f"{p}_within" in slopes]
        term = Term(spec=parsed.random[0], columns=["(Intercept)", *slopes], Z=np.column_stack(cols),
                    name="therapist")
        level = Level(group="therapist", terms=[term], codes=a.therapist, labels=a.therapist_ids)
        level.theta_slices = [slice(0, term.ntheta)]
        return Design(formula=parsed, y=a.final, X=X, fixed_names=names, terms=[term], levels=[level], parents=[],
                      n_dropped=0, dropped_columns=[], row_index=pd.RangeIndex(a.n))

    def main_design(self, a: PatientArrays) -> Design:
        """Design of the main model."""
        X = self._fixed(a)
        _check_rank(X, "main")
        return self._design(self.main_formula, a, X, self.fixed_names, [self.terms.within[p] for p in self.processes])

    def reduced_design(self, a: PatientArrays, process: str, main: Design) -> Design:
        """Design of the main model without the therapist slope of ``process``."""
        slopes = [self.terms.within[o] for o in self.processes if o != process]
        return self._design(self.reduced_formula(process), a, main.X, main.fixed_names, slopes)

    def moderator_design(self, a: PatientArrays, values: np.ndarray, main: Design) -> Design:
        """Design of the moderator model; ``values``: the moderator of every therapist in
        ``a.all_therapist_ids`` order (centred here over all of them, as aim 3 does)."""
        if self.moderator is None:
            raise ModelSpecError("no moderator configured")
        centred_all = values - float(values.mean())
        pos = np.searchsorted(a.all_therapist_ids, a.therapist_ids)
        w = centred_all[pos][a.therapist]
        extra = [w]
        for p in self.processes:
            extra += [a.within[p] * w, a.between[p] * w]
        X = np.column_stack([main.X, *extra])
        _check_rank(X, f"moderator:{self.moderator}")
        return self._design(self.moderator_formula, a, X, self.fixed_names + self.moderator_terms(),
                            [self.terms.within[p] for p in self.processes])


def _check_rank(X: np.ndarray, role: str) -> None:
    """Refuse aliased fixed effects (the study's engine would drop a column, as lme4 does;
    a replicate whose tested column is aliased has no test)."""
    s = np.linalg.svd(X, compute_uv=False)
    if s[-1] <= s[0] * max(X.shape) * np.finfo(float).eps * 1e3:
        raise ModelSpecError(f"the {role} model's fixed-effects matrix is rank deficient")
