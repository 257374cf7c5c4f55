"""The truth of a power study taken from an analysed study (a pilot): its results document.

``theralens.power(result, ...)`` and ``theralens power --from OUT/results.json`` simulate
studies whose parameters are the analysed study's estimates (docs/power.md, "Power from a
fitted study"); :func:`study_parameters` reads them from ``results.json`` (or a
:class:`~theralens.study.result.StudyResult`, through the same document):

- design and options: ``design`` ("patient" or "session"), ``options`` (the analysis config;
  a replicate is analysed with it), ``options.inference.ddf``;
- processes: the names of ``processes``; per process the grand mean of the therapists'
  caseload means, ``process_sd_therapist`` = sqrt(tau2) and ``process_sd_patient`` =
  sqrt(max(sigma2 - s^2 / m, 0)) from ``reliability`` (the one-way ANOVA of the patient scores;
  s the pooled within-patient SD of the ratings and m the mean number of ratings behind a
  patient score, so that the simulated patient scores have the pilot's between- and
  within-therapist variances), ``process_sd_session`` = s, no trend, ratings clipped to the
  observed range, the correlation of the therapists' caseload means between processes
  (``process_corr``);
- fixed effects of the main model (patient design: intercept, baseline, within, between;
  session design: intercept, lag, time and the three components), covariate effects (the
  intercept moved to covariates centred at their means), g12 from ``ancillary``;
- therapist random effects of the main model: intercept SD, slope SDs, their correlation
  matrix (``random_corr``; a singular one, from a boundary fit, is moved toward the identity
  just enough to be positive definite, smallest eigenvalue 1e-3), the residual SD and, in the
  session design, the patient intercept SD. The main model has no moderator, so its slope SD
  is the marginal one: the simulated conditional SD is sqrt(max(s^2 - sum_W g11^2 Var W, 0)),
  which gives the simulation the pilot's marginal slope SD;
- moderators: each ``moderators`` entry with the therapists' values (binary when every value
  is 0 or 1, else continuous with their mean, SD, range and decimals), its main effect g02
  (``W_c`` in its model) and the cross-level effects of ``aim3`` (g11, g03);
- sample: caseloads (``n.therapists``, ``n.patients`` and the Dirichlet concentration of the
  caseloads by moments, :func:`caseload_shape`), sessions per patient (most and fewest), the
  dropout hazard (the censored geometric MLE, :func:`dropout_hazard`), the outcome spacing,
  baseline moments, missing ratings and covariates, from the ``sample`` section.

Everything can be overridden afterwards (settings ``--set``, keyword overrides), e.g. the
smallest effect worth detecting instead of the estimate: ``--set within.alliance=-0.1``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from theralens.data.config import StudyConfig, config_from_dict
from theralens.errors import InputError
from theralens.simulation.generate import Variable

__all__ = ["StudyTruth", "caseload_shape", "dropout_hazard", "load_study", "study_parameters"]

#: Smallest eigenvalue a correlation matrix taken from a fit is moved to (boundary fits).
MIN_EIGENVALUE = 1e-3


@dataclass
class StudyTruth:
    """What :func:`study_parameters` returns: ``overrides`` (keyword parameters of
    :func:`theralens.simulation.generate.simulate`), ``config`` (the analysis options),
    ``ddf`` (the study's ``[inference] ddf``), ``source`` (where the study came from) and
    ``notes`` (what could not be taken from the document and what was assumed instead)."""

    overrides: dict[str, Any]
    config: StudyConfig
    ddf: str
    source: str
    notes: list[str] = field(default_factory=list)


def load_study(study: Any) -> tuple[dict[str, Any], str]:
    """The results document of ``study`` (a path to ``results.json``, a StudyResult or the
    document itself) and a description of where it came from."""
    if isinstance(study, Mapping):
        return dict(study), "a results document"
    if hasattr(study, "to_json") and hasattr(study, "aim1"):
        return json.loads(study.to_json()), "an analysed study (StudyResult)"
    if isinstance(study, str | Path):
        from theralens.study.document import read_document

        return read_document(study), str(study)
    raise InputError(f"power from a study: give a results.json path, a StudyResult or its document; got "
                     f"{type(study).__name__}")


def caseload_shape(caseloads: np.ndarray) -> float | None:
    """Dirichlet concentration a of caseloads n_j = 1 + Multinomial(N - J, p), p ~ Dirichlet(a),
    by moments: with M = N - J trials over J therapists the variance of n_j is
    M (1/J)(1 - 1/J)(M + J a) / (1 + J a); solved for a from the observed variance v relative to
    the multinomial's, r = v / (M (1/J)(1 - 1/J)): J a = (M - r) / (r - 1). None (equal
    caseloads) when the caseloads vary no more than a multinomial's."""
    n = np.asarray(caseloads, dtype=float)
    J, M = len(n), float(n.sum() - len(n))
    if J < 2 or M <= 1:
        return None
    base = M * (1.0 / J) * (1.0 - 1.0 / J)
    r = float(n.var(ddof=1)) / base
    if r <= 1.0 + 1e-9:
        return None
    if r >= M:
        return 1e-3
    return float(max((M - r) / (r - 1.0) / J, 1e-3))


def dropout_hazard(sessions_per_patient: list[list[int]]) -> tuple[int, int, float]:
    """(fewest, most, hazard h) of the simulator's S_i = min(most, fewest + G), G ~ Geometric(h)
    failures, from the histogram [[k, patients], ...]: the censored MLE h = d / (d + sum G_i),
    d the patients who stopped before the most sessions."""
    ks = np.array([k for k, _ in sessions_per_patient], dtype=float)
    ns = np.array([n for _, n in sessions_per_patient], dtype=float)
    lo, hi = int(ks.min()), int(ks.max())
    stopped = float(ns[ks < hi].sum())
    extra = float((ns * (ks - lo)).sum())
    return lo, hi, (stopped / (stopped + extra) if stopped > 0 else 0.0)


def _positive_definite(c: np.ndarray) -> np.ndarray:
    w = float(np.linalg.eigvalsh(c).min())
    if w >= MIN_EIGENVALUE:
        return c
    t = (MIN_EIGENVALUE - w) / (1.0 - w)  # (1 - t) c + t I has smallest eigenvalue MIN_EIGENVALUE
    return (1.0 - t) * c + t * np.eye(len(c))


def _decimals(values: np.ndarray) -> int | None:
    for d in range(7):
        if np.allclose(np.round(values, d), values, rtol=0, atol=1e-9):
            return d
    return None


def _variable(values: list[Any]) -> Variable:
    v = np.array([x for x in values if x is not None], dtype=float)
    v = v[np.isfinite(v)]
    if not len(v):
        raise InputError("a moderator has no value for any therapist")
    if np.isin(v, (0.0, 1.0)).all():
        return Variable("binary", float(v.mean()))
    return Variable("continuous", float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0,
                    float(v.min()), float(v.max()), _decimals(v))


def _model(doc: Mapping[str, Any], role: str) -> dict[str, Any] | None:
    return next((m for m in doc.get("models", []) if m["role"] == role), None)


def study_parameters(study: Any) -> StudyTruth:
    """Simulation parameters that make a study like ``study`` (module docstring)."""
    doc, source = load_study(study)
    design = doc["design"]
    session = design == "session"
    notes: list[str] = []
    procs = tuple(p["name"] for p in doc["processes"])
    comps = {p["name"]: p["components"] for p in doc["processes"]}
    main = _model(doc, "main")
    if main is None:
        raise InputError(f"{source}: the results document has no main model")
    fe = {r["term"]: float(r["estimate"]) for r in main["fixed_effects"]}
    options = dict(doc.get("options", {}))
    config = config_from_dict(options) if options else StudyConfig()
    if design == "patient" and config.design.change != "residualized":
        raise InputError(f"{source}: power from a fitted study simulates the residualized-change design "
                         f"(final outcome adjusted for baseline); this study used change = "
                         f"{config.design.change!r}")
    sample = doc.get("sample")
    out: dict[str, Any] = {"design": design, "processes": procs, "n_therapists": int(doc["n"]["therapists"]),
                           "n_patients": int(doc["n"]["patients"])}
    ther = doc.get("therapists", [])
    out["caseload_shape"] = caseload_shape(np.array([t["n_patients"] for t in ther])) if ther else None

    # moderators and their effects
    mods: dict[str, Variable] = {}
    for m in doc.get("moderators", []):
        mods[m["name"]] = _variable([t.get("moderators", {}).get(m["name"]) for t in ther])
    out["moderators"] = mods
    out["moderator_main"] = {}
    for w in mods:
        mm = _model(doc, f"moderator:{w}") or _model(doc, "joint_moderators")
        est = {r["term"]: float(r["estimate"]) for r in mm["fixed_effects"]} if mm else {}
        out["moderator_main"][w] = est.get(f"{w}_c", 0.0)
    effects = {(r["moderator"], r["process"], r["target"]): float(r["estimate"]) for r in doc.get("aim3", [])
               if r["moderator"] in mods and r.get("estimate") is not None}
    out["session_moderator_effects" if session else "moderator_effects"] = effects

    # fixed effects
    covs: dict[str, Variable] = {}
    for c, info in ((sample or {}).get("covariates") or {}).items():
        covs[c] = (Variable("binary", float(info["mean"])) if info["kind"] == "binary" else
                   Variable("continuous", float(info["mean"]), float(info["sd"] or 0.0),
                            float(info["min"]), float(info["max"])))
    cov_effects = {c: fe.get(c, 0.0) for c in covs}
    shift = sum(cov_effects[c] * covs[c].mean for c in covs)
    if session:
        out.update(session_intercept=fe["(Intercept)"] + shift, lag_coef=fe["outcome"], time_coef=fe["time"])
        out["session_within_patient"] = {p: fe[comps[p]["within_patient"]] for p in procs}
        out["session_between_patient"] = {p: fe[comps[p]["between_patient"]] for p in procs}
        out["session_between_therapist"] = {p: fe[comps[p]["between_therapist"]] for p in procs}
    else:
        out.update(intercept=fe["(Intercept)"] + shift, baseline_coef=fe["baseline"])
        out["within"] = {p: fe[comps[p]["within_therapist"]] for p in procs}
        out["between"] = {p: fe[comps[p]["between_therapist"]] for p in procs}
    out["covariates"], out["covariate_effects"] = covs, cov_effects
    out["session_within_x_between" if session else "within_x_between"] = {
        r["process"]: float(r["estimate"]) for r in doc.get("ancillary", []) if r["process"] in procs}

    # random effects
    vc = main["varcorr"]
    within = {p["name"]: p["within"] for p in doc["processes"]}  # the component with a therapist slope
    names = ["(Intercept)", *[within[p] for p in procs]]

    def sd(group: str, var: str) -> float:
        row = next((r for r in vc if r["grp"] == group and r["var1"] == var and r["var2"] is None), None)
        return float(row["sdcor"]) if row is not None and row["sdcor"] is not None else 0.0

    corr = np.eye(len(names))
    for r in vc:
        if r["grp"] == "therapist" and r["var2"] is not None and r["var1"] in names and r["var2"] in names:
            i, j = names.index(r["var1"]), names.index(r["var2"])
            value = r["sdcor"] if r["sdcor"] is not None and math.isfinite(r["sdcor"]) else 0.0
            corr[i, j] = corr[j, i] = float(value)
    fixed_corr = _positive_definite(corr)
    if not np.allclose(fixed_corr, corr):
        notes.append("The therapist random-effect correlations of the study are singular (a boundary fit); the "
                     "simulation moves them toward zero just enough to be positive definite.")
    out["random_corr"] = tuple(tuple(float(x) for x in row) for row in fixed_corr)
    out["therapist_intercept_sd"] = sd("therapist", "(Intercept)")
    slopes = {}
    for p in procs:
        s2 = sd("therapist", within[p]) ** 2
        s2 -= sum(v**2 * mods[w].variance for (w, q, t), v in effects.items() if q == p and t == "within_slope")
        slopes[p] = math.sqrt(max(s2, 0.0))
    out["session_slope_sd" if session else "slope_sd"] = slopes
    out["session_residual_sd" if session else "residual_sd"] = next(float(r["sdcor"]) for r in vc
                                                                     if r["grp"] == "Residual")
    if session:
        out["patient_intercept_sd"] = sd("therapist:patient", "(Intercept)")

    # processes
    rel = {r["process"]: r for r in doc.get("reliability", [])}
    counts = doc.get("input", {}).get("counts", {})
    sp = (sample or {}).get("processes") or {}
    means, sd_t, sd_p, sd_s, ranges = {}, {}, {}, {}, {}
    for p in procs:
        cm = [t["caseload_means"].get(p) for t in ther if t.get("caseload_means", {}).get(p) is not None]
        means[p] = float(np.mean(cm)) if cm else float(sp.get(p, {}).get("mean") or 0.0)
        s_sess = float(sp.get(p, {}).get("within_patient_sd") or 0.0)
        if session:
            per = max(float((sample or {}).get("outcome_assessments") or 2.0) - 1.0, 1.0)
        else:
            per = max(float(counts.get(f"{p}_ratings", 0)) / max(float(counts.get("patients", 1)), 1.0), 1.0)
        tau2, sigma2 = float(rel.get(p, {}).get("tau2") or 0.0), float(rel.get(p, {}).get("sigma2") or 0.0)
        sd_t[p], sd_s[p] = math.sqrt(max(tau2, 0.0)), s_sess
        sd_p[p] = math.sqrt(max(sigma2 - s_sess**2 / per, 0.0))
        lo, hi = sp.get(p, {}).get("min"), sp.get(p, {}).get("max")
        ranges[p] = (float(lo) if lo is not None else -math.inf, float(hi) if hi is not None else math.inf)
    out.update(process_mean=means, process_sd_therapist=sd_t, process_sd_patient=sd_p, process_sd_session=sd_s,
               process_range=ranges, process_trend=dict.fromkeys(procs, 0.0))
    if len(procs) > 1 and len(ther) > 2:
        cm = np.array([[t["caseload_means"][p] for p in procs] for t in ther], dtype=float)
        c = np.corrcoef(cm, rowvar=False)
        out["process_corr"] = tuple(tuple(float(x) for x in row) for row in _positive_definite(np.nan_to_num(c)))

    # schedule and sample
    if sample:
        lo, hi, h = dropout_hazard(sample["sessions_per_patient"])
        gap = sample.get("outcome_gap")
        every = max(1, int(round(gap))) if gap else 1
        out.update(min_sessions=max(lo, 1), max_sessions=max(hi, 1), dropout_hazard=min(h, 0.99),
                   outcome_every=every)
        if sample["baseline"].get("mean") is not None:
            out["baseline_mean"] = float(sample["baseline"]["mean"])
            out["baseline_sd"] = float(sample["baseline"].get("sd") or 0.0)
        shares = [v.get("missing_share") for v in sp.values() if v.get("missing_share") is not None]
        out["process_missing_rate"] = min(float(np.mean(shares)), 0.95) if shares else 0.0
        if not session:
            ks = np.array([k for k, _ in sample["sessions_per_patient"]], dtype=float)
            ns = np.array([n for _, n in sample["sessions_per_patient"]], dtype=float)
            expected = float((ns * np.ceil(ks / every)).sum() / ns.sum())
            observed = float(sample["outcome_assessments"])
            out["outcome_missing_rate"] = (float(np.clip(1.0 - (observed - 1.0) / (expected - 1.0), 0.0, 0.9))
                                           if expected > 1 else 0.0)
    else:
        notes.append("The results document has no 'sample' section (written before theralens recorded it): "
                     "sessions per patient, dropout, outcome spacing, baseline, rating noise and covariates are the "
                     "coyne2022 preset's; re-run theralens analyze to take them from the data.")
        if config.columns.covariates:
            notes.append("Without it the patient covariates (" + ", ".join(config.columns.covariates) + ") are not "
                         "simulated; the intercept is the study's at covariate value 0.")
    ddf = str(options.get("inference", {}).get("ddf", "satterthwaite"))
    return StudyTruth(overrides=out, config=config, ddf=ddf, source=source, notes=notes)
