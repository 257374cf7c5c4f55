"""The result of a study analysis: tidy tables, a text summary, ``results.json`` and CSVs.

``results.json`` is the record of the analysis: the report and the therapist profiles are
drawn from it alone (:func:`theralens.report.render_report`; ``theralens report``). Its JSON
Schema is ``study/results.schema.json`` (``schema_version`` 2; NaN is written as null). Tables
are keyed by stable, formula-safe names (``process``, ``moderator``, ``term``); the user's
names are in ``process_label`` / ``moderator_label`` and ``processes`` / ``moderators``, for
display only. Table rows hold every column of the tables they come from.

- ``schema_version``, ``software`` ({theralens, engine, versions: {library: version}}),
  ``design`` ("patient" or "session"), ``higher_outcome_is`` and ``benefit_sign`` (-1 when
  a higher outcome is worse: a negative estimate means more benefit), ``decomposition``
  ("manifest", "latent" or "both": ``[design] decomposition``; with latent or both, ``latent``
  holds the aims under the latent decomposition, docs/latent.md), ``inference`` ({ddf (the
  ``[inference] ddf`` method of every test of the aims: "satterthwaite", "kenward-roger",
  "residual" or "asymptotic"), label (e.g. "Kenward-Roger"), reference (e.g. "Kenward-Roger
  (Kenward & Roger, 1997)")}), ``options`` (the full configuration used).
- ``input``: ``sessions`` and ``therapists`` (where the data came from) and ``counts``
  (rows read, used, excluded; ratings per process).
- ``processes``: list of {name, label, within, between, components: {component: term}};
  ``moderators``: list of {name, label} (the coded moderator columns).
- ``n``: ``therapists``, ``patients``, ``assessments``, ``exclusions`` (list of {reason,
  rows, patients, patients_removed, examples}; examples only with ``show_patient_ids``).
- ``aim1``: rows of :func:`theralens.study.aims.aim1` ({process, process_label, component,
  term, estimate, se, df, t, p, ci_low, ci_high}); component is
  ``within_therapist``/``between_therapist`` (patient design) or
  ``within_patient``/``between_patient``/``between_therapist`` (session design).
- ``aim2``: rows of the slope variances ({process, component, term, slope_variance,
  slope_sd, lrt_statistic, lrt_df, p, reference, mean_slope_reliability, ...}), each with
  ``therapists``: [{therapist, slope, se, ci_low, ci_high, prob_stronger_than_average,
  n_patients, deviation, deviation_sd, slope_reliability, estimable}]; a therapist with
  fewer than two patients has ``estimable`` false and null slope fields.
- ``aim3``: rows {process, moderator, target (``within_slope`` or ``between_association``),
  term, centre, estimate, se, df, p, ci_low, ci_high, therapists, therapists_missing}.
- ``ancillary``: rows {process, term, estimate, se, df, p, ci_low, ci_high}.
- ``therapists``: list of {therapist, n_patients, intercept_deviation, intercept_sd,
  caseload_means: {process: mean}, caseload_reliability: {process: lambda_j},
  moderators: {moderator: value}}; intercept_deviation is u0j in outcome units.
- ``reliability``: per process {process, n_therapists, n_patients, tau2, sigma2, icc,
  mean_reliability, min_reliability}.
- ``models``: list of {role, formula, nobs, converged, singular, reml_criterion,
  evaluations, gradient_norm, note, optimizer (method, restarts, return code, messages,
  initial and final theta), fixed_effects (rows {term, estimate, se}), varcorr
  (rows {grp, var1, var2, vcov, sdcor}, lme4's ``as.data.frame(VarCorr(m))``)}.
- ``fitted_lines``: the lines of the slope figures, {figure ("moderator" or "ancillary"),
  process, moderator, model (its role), x ("moderator" or "caseload_mean"), intercept,
  coefficient, centre}: slope = intercept + coefficient * (x - centre).
- ``diagnostics``: the main model's residuals (no identifiers): {model, n, fitted, residual,
  running_mean, residual_qq, intercept_qq} (:mod:`theralens.study.document`).
- ``sample``: sessions per patient, outcome assessments and their spacing, baseline, process
  and covariate distributions (:func:`theralens.study.document.sample_summary`): what
  ``theralens power --from`` simulates a study like this one from.
- ``warnings``, ``notes``: sentences.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from theralens.atomic import prepare_dir, write_text
from theralens.data.config import StudyConfig
from theralens.data.decompose import PatientTable, SessionTable
from theralens.data.validate import ValidatedData
from theralens.display import Summary
from theralens.model.ddf import ddf_label, ddf_reference
from theralens.study.aims import DesignTerms, ModelSpec, ModeratorResults, SlopeResults, coef_name
from theralens.study.document import (
    SCHEMA_VERSION,
    json_ready,
    normal_qq,
    records,
    sample_summary,
    software_versions,
)
from theralens.study.latent import LatentResults
from theralens.study.rows import FrameRows


def _display(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` with the user's names in ``process`` and ``moderator`` (for text output)."""
    out = df.copy()
    for c in ("process", "moderator"):
        if f"{c}_label" in out:
            out[c] = out[f"{c}_label"]
    return out


@dataclass
class StudyResult:
    """Everything a study analysis produced.

    Fields: ``config``; ``data`` (:class:`ValidatedData`); ``table`` (the analysis table,
    :class:`PatientTable` or :class:`SessionTable`); ``terms`` (column names used);
    ``main`` (the aims 1-2 model); ``aim1`` (DataFrame); ``aim2`` (:class:`SlopeResults`);
    ``aim3`` (:class:`ModeratorResults`); ``ancillary`` (DataFrame) and
    ``ancillary_model``; ``moderators`` (therapist table used, or None); ``warnings`` and
    ``notes`` (sentences); ``seconds`` (wall time of the analysis); what the analysis computed
    from its rows (:mod:`theralens.study.rows`), so that the document needs no rows:
    ``therapist_rows`` (one row per therapist: patients, rows, caseload means and between
    components), ``diagnostics`` (the main model's residual summary) and ``sample``
    (:func:`~theralens.study.document.sample_summary`).
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
    latent: LatentResults | None = None
    therapist_rows: pd.DataFrame | None = None
    diagnostics: dict[str, Any] | None = None
    sample: dict[str, Any] | None = None

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
        the caseload mean of every process (column ``mean_<process>``) and the value of every
        moderator (``moderator_<moderator>``), under the stable names."""
        t = self._therapist_rows()
        re = self.main.fit.random_effects("therapist")
        icpt = re[re["term"] == "(Intercept)"].set_index("level")
        out = pd.DataFrame({"n_patients": t["n_patients"]})
        if "service" in t:
            out["service"] = t["service"].astype(str)
        out["intercept_deviation"] = icpt["estimate"].reindex(out.index)
        out["intercept_sd"] = icpt["cond_sd"].reindex(out.index)
        for p in self.terms.processes:
            out[f"mean_{p}"] = t[f"{p}_caseload_mean"]
        if self.moderators is not None:
            mods = self.moderators.copy()
            mods["therapist"] = mods["therapist"].astype(str)
            mods = mods.set_index("therapist")
            for c in mods.columns:
                out[f"moderator_{c}"] = mods[c].reindex(out.index)
        out.index.name = "therapist"
        return out.reset_index()

    # -- JSON ------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The ``results.json`` document (schema in the module docstring)."""
        from theralens import __version__

        ther = self.aim2.therapists
        aim2 = []
        for row in records(self.aim2.variance):
            row["therapists"] = records(ther[ther["process"] == row["process"]])
            aim2.append(row)
        counts = self.table.counts
        mod_labels = self.moderators.attrs.get("labels", {}) if self.moderators is not None else {}
        doc = {
            "schema_version": SCHEMA_VERSION,
            "software": {"theralens": __version__, "engine": "theralens nested REML (lme4 formulation)",
                         "versions": software_versions()},
            "design": self.design,
            "higher_outcome_is": self.table.higher_outcome_is,
            "benefit_sign": self.benefit_sign,
            "decomposition": self.config.design.decomposition,
            "inference": {"ddf": self.config.inference.ddf, "label": ddf_label(self.config.inference.ddf),
                          "reference": ddf_reference(self.config.inference.ddf)},
            "options": self.config.to_dict(),
            "input": {"sessions": str(self.data.source), "therapists": self.therapists_source,
                      "counts": dict(self.data.counts)},
            "processes": [{"name": p, "label": self.label(p), "within": self.terms.within[p],
                           "between": self.terms.between[p], "components": dict(self.terms.components[p])}
                          for p in self.terms.processes],
            "moderators": [{"name": c, "label": str(mod_labels.get(c, c))} for c in self._moderator_names()],
            "n": {
                "therapists": counts.get("therapists"),
                "patients": counts.get("patients"),
                "assessments": counts.get("assessments"),
                "exclusions": self._exclusions(),
                **({"services": int(self._therapist_rows()["service"].nunique())}
                   if "service" in self._therapist_rows() else {}),
            },
            "aim1": records(self.aim1),
            "aim2": aim2,
            "aim3": records(self.aim3.table),
            "ancillary": records(self.ancillary),
            "therapists": self._therapist_entries(),
            "reliability": records(self.table.reliability_summary.assign(
                process_label=lambda d: d["process"].map(self.label))),
            "models": [self._model_entry(m) for m in self.models()],
            "fitted_lines": self._fitted_lines(),
            "diagnostics": self._diagnostics(),
            "sample": self.sample if self.sample is not None else sample_summary(
                self.data.sessions, tuple(self.terms.processes), tuple(self.table.covariates), self.data.time_kind),
            "warnings": list(self.warnings),
            "notes": list(self.notes),
        }
        if self.latent is not None:
            doc["latent"] = self._latent_section()
        return json_ready(doc)

    def _latent_section(self) -> dict[str, Any]:
        """The latent decomposition's own tables (aims 1 and 3, variances, reliability,
        therapist slopes) and the estimator's record."""
        lat = self.latent
        fits = []
        for role, f in lat.fits.items():
            if lat.estimator == "ml":
                fits.append({"role": role, "loglik": f.loglik, "converged": f.converged, "nodes": f.nodes,
                             "quadrature_change": f.quadrature_change, "gradient_max": f.gradient_max,
                             "evaluations": f.evaluations, "rounds": f.rounds, "messages": list(f.messages),
                             "therapists": int(f.stats.J), "patients": int(f.stats.n_patients)})
            else:
                fits.append({"role": role, "converged": f.converged, "divergences": f.divergences,
                             "max_r_hat": f.max_r_hat, "min_ess_bulk": f.min_ess_bulk, "min_ess_tail": f.min_ess_tail,
                             "chains": f.chains, "draws": f.draws, "warmup": f.warmup, "seed": f.seed,
                             "messages": list(f.messages), "priors": list(f.priors),
                             "summary": records(f.summary)})
        return {"estimator": lat.estimator, "bias_correction": lat.bias_correction, "aim1": records(lat.aim1),
                "aim3": records(lat.aim3),
                "variances": records(lat.variances), "reliability": records(lat.reliability),
                "therapists": records(lat.therapists), "fits": fits, "notes": list(lat.notes),
                "warnings": list(lat.warnings)}

    @property
    def therapists_source(self) -> str | None:
        """Where the therapist table came from (None without one)."""
        if self.moderators is None:
            return None
        return str(self.moderators.attrs.get("source", "therapist data"))

    def _moderator_names(self) -> list[str]:
        return [] if self.moderators is None else [c for c in self.moderators.columns if c != "therapist"]

    def _therapist_entries(self) -> list[dict[str, Any]]:
        rel = self.table.reliability
        lam = {(str(t), p): v for t, p, v in zip(rel["therapist"], rel["process"], rel["reliability"])} \
            if len(rel) else {}
        out = []
        for r in self.therapists().to_dict(orient="records"):
            t = r["therapist"]
            entry = {"therapist": t, "n_patients": r["n_patients"], "intercept_deviation": r["intercept_deviation"],
                     "intercept_sd": r["intercept_sd"],
                     "caseload_means": {p: r[f"mean_{p}"] for p in self.terms.processes},
                     "caseload_reliability": {p: lam.get((t, p)) for p in self.terms.processes},
                     "moderators": {m: r[f"moderator_{m}"] for m in self._moderator_names()}}
            if "service" in r:
                entry["service"] = r["service"]
            out.append(json_ready(entry))
        return out

    @staticmethod
    def _model_entry(m: ModelSpec) -> dict[str, Any]:
        f = m.fit
        opt = f.optimizer
        # estimates and SEs (by the [inference] ddf method) only: the tests of the aims (df, p) are in the
        # aim tables, and
        # the df of every coefficient of every model would cost more than the rest of the document
        fixed = pd.DataFrame({"term": f.fixed_names, "estimate": f.fixed_effects.to_numpy(),
                              "se": f.std_errors.to_numpy()})
        return json_ready({
            "role": m.role, "formula": m.formula, "nobs": f.nobs, "converged": f.converged,
            "singular": f.singular, "reml_criterion": f.reml_criterion,
            "evaluations": opt.evaluations, "gradient_norm": opt.gradient_norm, "note": m.note,
            "optimizer": {"method": opt.method, "gradient_evaluations": opt.gradient_evaluations,
                          "restarts": opt.restarts, "return_code": str(opt.return_code), "criterion": opt.criterion,
                          "messages": list(opt.messages), "theta_initial": np.asarray(opt.initial).tolist(),
                          "theta_final": np.asarray(opt.final).tolist()},
            "fixed_effects": records(fixed),
            "varcorr": records(f.varcorr),
        })

    def _fitted_lines(self) -> list[dict[str, Any]]:
        """The model-implied lines of the slope figures: a therapist's within slope against a
        moderator (aim 3) and against their caseload mean (the ancillary interaction)."""
        lines = []
        fits = {s.role: s for s in self.aim3.models}
        joint = self.config.therapist_moderators.joint
        for r in self.aim3.table.to_dict(orient="records"):
            if r["target"] != "within_slope":
                continue
            spec = fits.get("joint_moderators" if joint else f"moderator:{r['moderator']}")
            if spec is None:
                continue
            within = coef_name(spec.fit, self.terms.within[r["process"]])
            lines.append({"figure": "moderator", "process": r["process"], "moderator": r["moderator"],
                          "model": spec.role, "x": "moderator", "intercept": float(spec.fit.fixed_effects[within]),
                          "coefficient": float(r["estimate"]), "centre": float(r["centre"])})
        fit = self.ancillary_model.fit
        by = self._therapist_rows()
        for r in self.ancillary.to_dict(orient="records"):
            p = r["process"]
            centre = float((by[f"{p}_caseload_mean"] - by[self.terms.between[p]]).mean())
            lines.append({"figure": "ancillary", "process": p, "moderator": None, "model": self.ancillary_model.role,
                          "x": "caseload_mean",
                          "intercept": float(fit.fixed_effects[coef_name(fit, self.terms.within[p])]),
                          "coefficient": float(r["estimate"]), "centre": centre})
        return lines

    def _diagnostics(self) -> dict[str, Any]:
        """The main model's residual summaries and the Q-Q coordinates of the therapist
        intercepts (no patient identifiers)."""
        fit = self.main.fit
        re = fit.random_effects("therapist")
        u0 = re.loc[re["term"] == "(Intercept)", "estimate"].to_numpy(dtype=float)
        summary = self.diagnostics if self.diagnostics is not None else self._rows().diagnostics(fit)
        return {"model": self.main.role, **summary, "intercept_qq": normal_qq(u0)}

    def _rows(self) -> FrameRows:
        """The analysis table in memory as the aims' rows (a result built without ``therapist_rows``)."""
        frame = self.table.table.copy()
        frame["therapist"] = frame["therapist"].astype(str)
        frame["patient"] = frame["patient"].astype(str)
        return FrameRows(frame, self.terms.processes, self.terms.between)

    def _therapist_rows(self) -> pd.DataFrame:
        """One row per therapist (:meth:`AnalysisRows.therapists <theralens.study.rows.AnalysisRows.therapists>`),
        indexed by the therapist id."""
        t = self.therapist_rows if self.therapist_rows is not None else self._rows().therapists()
        return t.set_index("therapist")

    def _exclusions(self) -> list[dict[str, Any]]:
        """Exclusions; their examples (row numbers or patient ids) only with ``show_patient_ids``."""
        show = self.config.report.show_patient_ids
        return [e.to_dict(examples=show) for e in self.table.exclusions]

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, allow_nan=False)

    def write(self, out: str | Path, document: str | None = None) -> list[Path]:
        """Write ``results.json`` and ``tables/*.csv`` into ``out`` (atomically); ``document``
        is the text of ``results.json`` when it was made already (:meth:`to_json`)."""
        out = prepare_dir(out)
        written = [write_text(out / "results.json", self.to_json() if document is None else document)]
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
    def summary(self) -> Summary:
        """The summary of all aims: ``print()`` gives the text, ``.tables`` the aims' tables as
        DataFrames, ``as_html()`` the notebook view (:class:`~theralens.display.Summary`)."""
        sign = "a negative estimate means more benefit" if self.benefit_sign < 0 else \
            "a positive estimate means more benefit"
        c = self.table.counts
        lines = [
            f"theralens study analysis - {self.design}-level design ({sign}: higher outcome is "
            f"{self.table.higher_outcome_is})",
            f"{c.get('therapists')} therapists, {c.get('patients')} patients, {c.get('assessments')} assessments",
            "",
            f"Aim 1 - process-outcome associations ({ddf_label(self.config.inference.ddf)} df):",
            _display(self.aim1)[["process", "component", "estimate", "se", "df", "p", "ci_low", "ci_high"]].to_string(
                index=False, float_format=lambda v: f"{v:.4g}"),
            "",
            "Aim 2 - do within slopes differ between therapists?",
            _display(self.aim2.variance)[["process", "slope_variance", "slope_sd", "slope_sd_ci_low",
                                          "slope_sd_ci_high", "lrt_statistic", "p", "mean_slope_reliability"]]
            .to_string(index=False, float_format=lambda v: f"{v:.4g}"),
            "",
        ]
        if len(self.aim3.table):
            shown = _display(self.aim3.table)[["process", "moderator", "target", "estimate", "se", "df", "p"]]
            lines += [f"Aim 3 - therapist moderators ({ddf_label(self.config.inference.ddf)} df):",
                      shown.to_string(index=False, float_format=lambda v: f"{v:.4g}"), ""]
        else:
            lines += ["Aim 3 - no therapist moderators given.", ""]
        lines += [f"Ancillary - within x between interaction ({ddf_label(self.config.inference.ddf)} df):",
                  _display(self.ancillary)[["process", "estimate", "se", "df", "p"]].to_string(
                      index=False, float_format=lambda v: f"{v:.4g}")]
        if self.warnings:
            lines += ["", "Warnings:"] + [f"- {w}" for w in self.warnings]
        return Summary(self._status_lines()[0].strip("<>"), "\n".join(lines), self._view_tables(),
                       self._status_lines()[1:], index={name: False for name in self._view_tables()})

    def __str__(self) -> str:
        return str(self.summary())

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
                self.aim2.variance, ["process", "slope_variance", "slope_sd", "slope_sd_ci_low", "slope_sd_ci_high",
                                     "lrt_statistic", "p", "mean_slope_reliability"]),
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
