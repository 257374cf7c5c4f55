"""The result of a study analysis: tidy tables, a text summary, ``results.json`` and CSVs.

``results.json`` schema (``schema_version`` 1; NaN is written as null):

- ``schema_version``, ``software`` ({theralens version}), ``design`` ("patient" or
  "session"), ``higher_outcome_is``, ``decomposition`` ("observed (manifest)"), ``options``
  (the full configuration used).
- ``n``: ``therapists``, ``patients``, ``assessments``, ``exclusions`` (list of {reason,
  rows, patients, patients_removed, examples}).
- ``aim1``: list of {process, component, estimate, se, df, p, ci_low, ci_high}; component is
  ``within_therapist``/``between_therapist`` (patient design) or
  ``within_patient``/``between_patient``/``between_therapist`` (session design).
- ``aim2``: list of {process, component, slope_variance, slope_sd, lrt_statistic, lrt_df,
  p, reference, mean_slope_reliability, therapists: [{therapist, slope, se, ci_low, ci_high,
  prob_stronger_than_average, n_patients, deviation, deviation_sd, slope_reliability,
  estimable}]}; a therapist with fewer than two patients has ``estimable`` false and null
  slope fields (they still count in the between part).
- ``aim3``: list of {process, moderator, target (``within_slope`` or
  ``between_association``), estimate, se, df, p, ci_low, ci_high, therapists,
  therapists_missing}.
- ``ancillary``: list of {process, estimate, se, df, p, ci_low, ci_high}.
- ``therapists``: list of {therapist, n_patients, intercept_deviation, intercept_sd,
  caseload_means: {process: mean}}; intercept_deviation is the therapist's random intercept
  u0j in outcome units.
- ``reliability``: per process {process, icc, mean_reliability, min_reliability, ...}.
- ``models``: list of {role, formula, nobs, converged, singular, reml_criterion,
  evaluations, gradient_norm, note}.
- ``warnings``, ``notes``: sentences.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from theralens.atomic import prepare_dir, write_text
from theralens.data.config import StudyConfig
from theralens.data.decompose import PatientTable, SessionTable
from theralens.data.validate import ValidatedData
from theralens.study.aims import DesignTerms, ModelSpec, ModeratorResults, SlopeResults

SCHEMA_VERSION = 1


def _clean(v: Any) -> Any:
    """JSON-ready: numpy scalars to Python, NaN/inf to None, recursively."""
    if isinstance(v, dict):
        return {str(k): _clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_clean(x) for x in v]
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (np.floating, float)):
        f = float(v)
        return f if math.isfinite(f) else None
    if isinstance(v, np.bool_):
        return bool(v)
    if v is pd.NA or v is None:
        return None
    return v


def _records(df: pd.DataFrame, columns: list[str]) -> list[dict[str, Any]]:
    cols = [c for c in columns if c in df.columns]
    return [_clean(r) for r in df[cols].to_dict(orient="records")]


@dataclass
class StudyResult:
    """Everything a study analysis produced.

    Fields: ``config``; ``data`` (:class:`ValidatedData`); ``table`` (the analysis table,
    :class:`PatientTable` or :class:`SessionTable`); ``terms`` (column names used);
    ``main`` (the aims 1-2 model); ``aim1`` (DataFrame); ``aim2`` (:class:`SlopeResults`);
    ``aim3`` (:class:`ModeratorResults`); ``ancillary`` (DataFrame) and
    ``ancillary_model``; ``moderators`` (therapist table used, or None); ``warnings`` and
    ``notes`` (sentences); ``seconds`` (wall time of the analysis).
    Views: :meth:`summary`, :meth:`to_dict` (the ``results.json`` schema in the module
    docstring), :meth:`therapists` and :meth:`write`.
    """

    config: StudyConfig
    data: ValidatedData
    table: PatientTable | SessionTable
    terms: DesignTerms
    main: ModelSpec
    aim1: pd.DataFrame
    aim2: SlopeResults
    aim3: ModeratorResults
    ancillary: pd.DataFrame
    ancillary_model: ModelSpec
    moderators: pd.DataFrame | None = None
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def design(self) -> str:
        return self.terms.level

    @property
    def benefit_sign(self) -> int:
        return self.table.benefit_sign

    def label(self, name: str) -> str:
        return self.table.labels.get(name, name)

    def models(self) -> list[ModelSpec]:
        """Every fitted model, main first."""
        return [self.main, *self.aim2.reduced, *self.aim3.models, self.ancillary_model]

    def therapists(self) -> pd.DataFrame:
        """One row per therapist: n_patients, intercept deviation u0j and its conditional SD,
        and the caseload mean of every process (column ``mean_<process label>``)."""
        t = self.table.table.copy()
        t["therapist"] = t["therapist"].astype(str)
        n = t.groupby("therapist")["patient"].nunique().rename("n_patients")
        re = self.main.fit.random_effects("therapist")
        icpt = re[re["term"] == "(Intercept)"].set_index("level")
        out = pd.DataFrame({"n_patients": n})
        out["intercept_deviation"] = icpt["estimate"].reindex(out.index)
        out["intercept_sd"] = icpt["cond_sd"].reindex(out.index)
        for p in self.terms.processes:
            out[f"mean_{self.label(p)}"] = t.groupby("therapist")[f"{p}_caseload_mean"].first()
        if self.moderators is not None:
            mods = self.moderators.copy()
            mods["therapist"] = mods["therapist"].astype(str)
            mods = mods.set_index("therapist")
            labels = self.moderators.attrs.get("labels", {})
            for c in mods.columns:
                out[f"moderator_{labels.get(c, c)}"] = mods[c].reindex(out.index)
        out.index.name = "therapist"
        return out.reset_index()

    # -- JSON ------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The ``results.json`` document (schema in the module docstring)."""
        from theralens import __version__

        aim2 = []
        ther = self.aim2.therapists
        for row in self.aim2.variance.to_dict(orient="records"):
            mine = ther[ther["process"] == row["process"]]
            entry = _clean({k: row[k] for k in ("process", "component", "slope_variance", "slope_sd",
                                                 "lrt_statistic", "lrt_df", "p", "reference",
                                                 "mean_slope_reliability")})
            entry["therapists"] = _records(mine, [
                "therapist", "slope", "se", "ci_low", "ci_high", "prob_stronger_than_average", "n_patients",
                "deviation", "deviation_sd", "slope_reliability", "estimable"])
            aim2.append(entry)
        tt = self.therapists()
        therapists = []
        for r in tt.to_dict(orient="records"):
            therapists.append(_clean({
                "therapist": r["therapist"], "n_patients": r["n_patients"],
                "intercept_deviation": r["intercept_deviation"], "intercept_sd": r["intercept_sd"],
                "caseload_means": {self.label(p): r[f"mean_{self.label(p)}"] for p in self.terms.processes},
            }))
        models = []
        for m in self.models():
            f = m.fit
            models.append(_clean({
                "role": m.role, "formula": m.formula, "nobs": f.nobs, "converged": f.converged,
                "singular": f.singular, "reml_criterion": f.reml_criterion,
                "evaluations": f.optimizer.evaluations, "gradient_norm": f.optimizer.gradient_norm,
                "note": m.note,
            }))
        counts = self.table.counts
        doc = {
            "schema_version": SCHEMA_VERSION,
            "software": {"theralens": __version__, "engine": "theralens nested REML (lme4 formulation)"},
            "design": self.design,
            "higher_outcome_is": self.table.higher_outcome_is,
            "decomposition": "observed (manifest)",
            "options": self.config.to_dict(),
            "n": {
                "therapists": counts.get("therapists"),
                "patients": counts.get("patients"),
                "assessments": counts.get("assessments"),
                "exclusions": self._exclusions(),
            },
            "aim1": _records(self.aim1, ["process", "component", "estimate", "se", "df", "p", "ci_low", "ci_high"]),
            "aim2": aim2,
            "aim3": _records(self.aim3.table, ["process", "moderator", "target", "estimate", "se", "df", "p",
                                               "ci_low", "ci_high", "therapists", "therapists_missing"]),
            "ancillary": _records(self.ancillary, ["process", "estimate", "se", "df", "p", "ci_low", "ci_high"]),
            "therapists": therapists,
            "reliability": _records(self.table.reliability_summary.assign(
                process=lambda d: d["process"].map(self.label)), list(self.table.reliability_summary.columns)),
            "models": models,
            "warnings": list(self.warnings),
            "notes": list(self.notes),
        }
        return _clean(doc)

    def _exclusions(self) -> list[dict[str, Any]]:
        """Exclusions; their examples (row numbers or patient ids) only with ``show_patient_ids``."""
        show = self.config.report.show_patient_ids
        return [e.to_dict(examples=show) for e in self.table.exclusions]

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, allow_nan=False)

    def write(self, out: str | Path) -> list[Path]:
        """Write ``results.json`` and ``tables/*.csv`` into ``out`` (atomically)."""
        out = prepare_dir(out)
        written = [write_text(out / "results.json", self.to_json())]
        tables = {
            "aim1_effects.csv": self.aim1,
            "aim2_slope_variance.csv": self.aim2.variance,
            "aim2_therapist_slopes.csv": self.aim2.therapists,
            "aim3_moderators.csv": self.aim3.table,
            "ancillary_within_x_between.csv": self.ancillary,
            "therapists.csv": self.therapists(),
            "reliability.csv": self.table.reliability_summary,
            "exclusions.csv": pd.DataFrame(self._exclusions(),
                                           columns=["reason", "rows", "patients", "patients_removed"]
                                           + (["examples"] if self.config.report.show_patient_ids else [])),
        }
        for name, df in tables.items():
            written.append(write_text(out / "tables" / name, df.to_csv(index=False)))
        return written

    # -- text --------------------------------------------------------------------------------
    def summary(self) -> str:
        """Plain-text summary of all aims."""
        sign = "a negative estimate means more benefit" if self.benefit_sign < 0 else \
            "a positive estimate means more benefit"
        c = self.table.counts
        lines = [
            f"theralens study analysis - {self.design}-level design ({sign}: higher outcome is "
            f"{self.table.higher_outcome_is})",
            f"{c.get('therapists')} therapists, {c.get('patients')} patients, {c.get('assessments')} assessments",
            "",
            "Aim 1 - process-outcome associations (Satterthwaite df):",
            self.aim1[["process", "component", "estimate", "se", "df", "p", "ci_low", "ci_high"]].to_string(
                index=False, float_format=lambda v: f"{v:.4g}"),
            "",
            "Aim 2 - do within slopes differ between therapists?",
            self.aim2.variance[["process", "slope_variance", "slope_sd", "lrt_statistic", "p",
                                "mean_slope_reliability"]].to_string(index=False, float_format=lambda v: f"{v:.4g}"),
            "",
        ]
        if len(self.aim3.table):
            lines += ["Aim 3 - therapist moderators:",
                      self.aim3.table[["process", "moderator", "target", "estimate", "se", "df", "p"]].to_string(
                          index=False, float_format=lambda v: f"{v:.4g}"), ""]
        else:
            lines += ["Aim 3 - no therapist moderators given.", ""]
        lines += ["Ancillary - within x between interaction:",
                  self.ancillary[["process", "estimate", "se", "df", "p"]].to_string(
                      index=False, float_format=lambda v: f"{v:.4g}")]
        if self.warnings:
            lines += ["", "Warnings:"] + [f"- {w}" for w in self.warnings]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()

    # -- notebook views ---------------------------------------------------------------------
    def _status_lines(self) -> list[str]:
        """What the analysis is, in a few lines (no tables): the repr and the notebook header."""
        c = self.table.counts
        mods = list(self.moderators.attrs.get("moderators", {})) if self.moderators is not None else []
        models = self.models()
        bad = sum(not m.fit.converged for m in models)
        singular = sum(m.fit.singular for m in models)
        return [
            f"<StudyResult: {self.design}-level design; {c.get('therapists')} therapists, {c.get('patients')} "
            f"patients, {c.get('assessments')} assessments>",
            f"Processes: {', '.join(self.label(p) for p in self.terms.processes)}; "
            f"moderators: {', '.join(mods) if mods else 'none'}",
            f"{len(models)} models fitted: {'all converged' if not bad else f'{bad} NOT converged'}, "
            f"{singular} singular; {len(self.warnings)} warning(s) (.warnings; summary() prints them)",
        ]

    def _view_tables(self) -> dict[str, pd.DataFrame]:
        """The aims' main columns, with the user's process and moderator names."""
        labels = self.moderators.attrs.get("labels", {}) if self.moderators is not None else {}

        def named(df: pd.DataFrame, cols: list[str]) -> pd.DataFrame:
            out = df[[c for c in cols if c in df.columns]].copy()
            if "process" in out:
                out["process"] = [self.label(p) for p in out["process"]]
            if "moderator" in out:
                out["moderator"] = [labels.get(m, m) for m in out["moderator"]]
            return out

        tables = {
            "aim 1: process-outcome associations": named(
                self.aim1, ["process", "component", "estimate", "se", "df", "p", "ci_low", "ci_high"]),
            "aim 2: therapist slope variances": named(
                self.aim2.variance, ["process", "slope_variance", "slope_sd", "lrt_statistic", "p",
                                     "mean_slope_reliability"]),
        }
        if len(self.aim3.table):
            tables["aim 3: therapist moderators"] = named(
                self.aim3.table, ["process", "moderator", "target", "estimate", "se", "df", "p", "therapists"])
        tables["ancillary: within x between"] = named(self.ancillary, ["process", "estimate", "se", "df", "p"])
        return tables

    def __repr__(self) -> str:
        return "\n".join(self._status_lines())

    def _repr_html_(self) -> str:
        from theralens.display import html_view

        first, *rest = self._status_lines()
        tables = self._view_tables()
        lines = [first.removeprefix("<StudyResult: ").removesuffix(">"), *rest,
                 *(f"Warning: {w}" for w in self.warnings)]
        return html_view("theralens study analysis", lines, tables, index=dict.fromkeys(tables, False))
