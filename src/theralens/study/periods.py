"""Periods of a therapist's caseload, for the training loop (docs/stability_training.md): each
patient's treatment start, the earlier and later half of a therapist's patients, the patients
before and after the therapist's training, and the process scores centred within a period.

A therapist's slope in a period is the within-therapist association among the patients of that
period only, so in the patient-level design the process is centred at the therapist's mean over
the patients of the period, X_ij - Xbar_j(period) (models.md, "Decomposition of a process", taken
within a period); the shift of the period's mean from the therapist's mean, Xbar_j(period) -
Xbar_j, enters as a fixed covariate. The session-level design's within-patient component does not
depend on the period and is used as it is.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from theralens.atomic import write_text
from theralens.data.config import StudyConfig
from theralens.data.validate import ValidatedData, normalize_ids, parse_dates
from theralens.errors import InputError, ModelSpecError, closest
from theralens.model import fit_mixed
from theralens.study.aims import DesignTerms, ModelSpec
from theralens.study.result import StudyResult

__all__ = ["PERIOD_MODES", "PatientStarts", "SectionResult", "analysed", "centre_in_periods", "fit_spec", "half_split",
           "model_entries", "patient_starts", "period_formula", "write_tables"]

#: How a therapist's patients are split into two halves: by treatment start, or at random.
PERIOD_MODES = ("time", "random")


@dataclass(frozen=True)
class PatientStarts:
    """Each patient's treatment start: ``values`` (patient id -> Timestamp or number), ``kind``
    (``"date"`` or ``"number"``) and ``column`` (where it came from, for messages)."""

    values: pd.Series
    kind: str
    column: str


def patient_starts(data: ValidatedData, config: StudyConfig, sessions: pd.DataFrame | None = None,
                   source: str = "sessions data") -> PatientStarts:
    """The treatment start of every analysed patient.

    With ``[training] start`` set, the first value of that column of the raw ``sessions`` table
    for each patient (a date, or a number such as a week of intake); otherwise each patient's
    first ``[columns] time``, which must tell patients apart (dates do; session numbers that
    start at 1 for everyone do not).
    """
    column = config.training.start
    patients = pd.Index(data.sessions["patient"].astype(str).unique())
    if not column:
        s = data.sessions
        if data.time_kind == "date" and "date" in s:
            first = s.groupby("patient")["date"].min()
            kind = "date"
        else:
            first = s.groupby("patient")["time"].min().astype(float)
            kind = "number"
        first.index = first.index.astype(str)
        if first.nunique() < 2:
            raise InputError(f"{source}: every patient's first {config.columns.time!r} is the same "
                             f"({first.iloc[0]}), so treatment starts cannot be told apart; name the column with each "
                             "patient's treatment start date in [training] start")
        return PatientStarts(values=first.reindex(patients), kind=kind, column=config.columns.time)
    if sessions is None:
        raise InputError(f"[training] start = {column!r} needs the sessions table itself; pass sessions=DataFrame "
                         "(the table the analysis read)")
    if column not in sessions.columns:
        near = closest(column, [str(c) for c in sessions.columns])
        hint = f' (did you mean "{near}"?)' if near else ""
        raise InputError(f'{source}: no column "{column}" for the treatment start{hint}; rename the column or set '
                         "[training] start in the config")
    first_row = int(sessions.attrs.get("first_data_row", 2))
    rows = np.arange(len(sessions)) + first_row
    ids = normalize_ids(sessions[config.columns.patient]).astype("string")
    raw = sessions[column]
    if pd.api.types.is_datetime64_any_dtype(raw):
        values, kind = pd.to_datetime(raw).astype("datetime64[ns]"), "date"
    elif pd.api.types.is_numeric_dtype(raw) and not pd.api.types.is_bool_dtype(raw):
        values, kind = pd.to_numeric(raw, errors="coerce").astype(float), "number"
    else:
        text = raw.astype("string").str.strip().replace("", pd.NA)
        numbers = pd.to_numeric(text, errors="coerce")
        if text.notna().any() and numbers[text.notna()].notna().all():
            values, kind = numbers.astype(float), "number"
        else:
            values = parse_dates(text, column, rows, source, role="treatment start",
                                 fix="write each patient's treatment start as a date like 2021-03-15")
            kind = "date"
    frame = pd.DataFrame({"patient": ids, "start": values, "row": rows}).dropna(subset=["patient"])
    first = frame.dropna(subset=["start"]).groupby("patient")["start"].first()
    first.index = first.index.astype(str)
    missing = [p for p in patients if p not in first.index]
    if missing:
        where = frame.loc[frame["patient"].isin(missing), "row"].to_numpy()
        raise InputError(f"{source}: {len(missing)} analysed patient(s) have no treatment start in column {column!r} "
                         f"(e.g. row {int(where[0]) if len(where) else '?'}); fill in the start of every patient")
    return PatientStarts(values=first.reindex(patients), kind=kind, column=column)


def half_split(frame: pd.DataFrame, starts: PatientStarts, mode: str = "time",
               rng: np.random.Generator | None = None) -> pd.Series:
    """1 for the patients in the later half of their therapist's patients, 0 for the earlier half.

    ``mode="time"``: by treatment start (ties by patient id); a therapist with n patients has
    ceil(n / 2) in the earlier half. ``mode="random"``: a random half of each caseload (``rng``).
    Indexed like ``frame`` (one row per patient or per assessment).
    """
    if mode not in PERIOD_MODES:
        raise InputError(f"split must be one of {', '.join(PERIOD_MODES)}; got {mode!r}")
    pats = frame[["therapist", "patient"]].drop_duplicates("patient").copy()
    pats["patient"] = pats["patient"].astype(str)
    if mode == "time":
        pats["key"] = starts.values.reindex(pats["patient"]).to_numpy()
        pats = pats.sort_values(["therapist", "key", "patient"], kind="stable")
    else:
        rng = rng if rng is not None else np.random.default_rng()
        pats = pats.assign(key=rng.random(len(pats))).sort_values(["therapist", "key"], kind="stable")
    rank = pats.groupby("therapist").cumcount()
    size = pats.groupby("therapist")["patient"].transform("size")
    later = pd.Series((rank >= np.ceil(size / 2)).astype(int).to_numpy(), index=pats["patient"].to_numpy())
    return frame["patient"].astype(str).map(later).astype(int)


def centre_in_periods(frame: pd.DataFrame, terms: DesignTerms, process: str, period: pd.Series) -> pd.DataFrame:
    """Columns ``slope`` (the process centred within therapist and period: X_ij - Xbar_j(period)
    in the patient design, the within-patient component in the session design) and ``shift``
    (Xbar_j(period) - Xbar_j, zero in the session design), indexed like ``frame``."""
    if terms.level == "patient":
        x = frame[process].astype(float)
        keys = [frame["therapist"].astype(str), period]
        period_mean = x.groupby(keys).transform("mean")
        return pd.DataFrame({"slope": x - period_mean, "shift": period_mean - frame[f"{process}_caseload_mean"]},
                            index=frame.index)
    return pd.DataFrame({"slope": frame[terms.within[process]].astype(float), "shift": 0.0}, index=frame.index)


def period_formula(terms: DesignTerms, process: str, fixed: Sequence[str], random: Sequence[str]) -> str:
    """The formula of a period model for ``process``: every fixed term of the main model but
    ``process``'s within component, then ``fixed``; therapist random effects: an intercept and
    ``random`` (correlated), plus the patient intercept of the session design."""
    keep = [t for t in terms.fixed_main() if t != terms.within[process]]
    part = f"(1 + {' + '.join(random)} | therapist)"
    if terms.patient_intercept:
        part += " + (1 | therapist:patient)"
    return f"{terms.response} ~ {' + '.join([*keep, *fixed])} + {part}"


def fit_spec(role: str, formula: str, data: pd.DataFrame, *, ddf: str, note: str = "") -> ModelSpec:
    """:func:`theralens.fit_mixed` of ``formula`` as a :class:`ModelSpec`, its tests by ``ddf`` (the
    study's ``[inference] ddf``, :mod:`theralens.model.ddf`); a singular design is a
    :class:`ModelSpecError` naming the model."""
    try:
        return ModelSpec(role=role, formula=formula, fit=fit_mixed(formula, data, ddf=ddf), note=note)
    except np.linalg.LinAlgError as exc:
        raise ModelSpecError(f"the {role} model could not be fitted ({exc}); check that every process varies "
                             "within therapists in each period") from None


def analysed(data: StudyResult | pd.DataFrame, therapists: pd.DataFrame | None, config: StudyConfig | None,
             source: str, therapists_source: str) -> tuple[StudyResult, pd.DataFrame | None]:
    """(the study result, the raw sessions table or None): ``data`` itself when it is a
    :class:`StudyResult`, else :func:`theralens.analyze` of the sessions DataFrame ``data``."""
    from theralens.study.analysis import analyze

    if isinstance(data, StudyResult):
        return data, None
    if not isinstance(data, pd.DataFrame):
        raise InputError(f"expected a StudyResult or a sessions DataFrame; got {type(data).__name__}")
    return analyze(data, therapists, config, source=source, therapists_source=therapists_source), data


def write_tables(out: str | Path, tables: dict[str, pd.DataFrame]) -> list[Path]:
    """Write ``tables`` (file name -> table) into ``out/tables`` (atomically, file by file)."""
    return [write_text(Path(out) / "tables" / name, df.to_csv(index=False)) for name, df in tables.items()]


class SectionResult:
    """A results document made of the study's (:class:`StudyResult`) plus one section
    (``section_name``: "stability" or "training"): the document, its JSON, the CSV tables and
    writing them, shared by :class:`~theralens.study.stability.StabilityResult` and
    :class:`~theralens.study.training.TrainingResult`, which supply ``section()``,
    ``tables()`` and ``summary()``."""

    study: StudyResult
    section_name: ClassVar[str]

    def section(self) -> dict[str, Any]:
        raise NotImplementedError

    def tables(self) -> dict[str, pd.DataFrame]:
        raise NotImplementedError

    def summary(self) -> str:
        raise NotImplementedError

    def to_dict(self) -> dict[str, Any]:
        """The study's results document with this section."""
        return {**self.study.to_dict(), self.section_name: self.section()}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, allow_nan=False)

    def write(self, out: str | Path, document: str | None = None) -> list[Path]:
        """``results.json`` (with this section) and every table of the study and of this section."""
        written = self.study.write(out, document=self.to_json() if document is None else document)
        return written + write_tables(out, self.tables())

    def __str__(self) -> str:
        return self.summary()


def model_entries(models: Sequence[ModelSpec]) -> list[dict[str, Any]]:
    """The record of each fitted model: role, formula, nobs, converged, singular."""
    return [{"role": m.role, "formula": m.formula, "nobs": int(m.fit.nobs), "converged": bool(m.fit.converged),
             "singular": bool(m.fit.singular)} for m in models]
