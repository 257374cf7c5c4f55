"""Decomposition of a process into within- and between-therapist parts (models.md).

Patient-level design (the published analysis; models.md "Decomposition of a process" and
"Patient-level design"): each patient i of therapist j gets a process score X_ij, the mean
of their ratings (all ratings, or the first k: ``[design] process_sessions``), and

    within-therapist   X_ij  - Xbar_j
    between-therapist  Xbar_j - Xbar

Session-level (lagged) design: the process rated at outcome assessment t, X_tij, predicts
the outcome at the patient's next outcome assessment, and splits into three parts

    within-patient                     X_tij  - Xbar_ij
    between-patient, within-therapist  Xbar_ij - Xbar_j
    between-therapist                  Xbar_j  - Xbar

Definitions used (stated in the report):

- Xbar_ij (session level) is the mean of X_tij over the patient's lagged rows, so the
  within-patient part averages exactly zero for every patient in the analysed data.
- Caseload means Xbar_j are taken over patients, each patient weighing once
  (``caseload_weighting = "patient"``, models.md); ``"session"`` weighs every rating once
  (patient level: every rating that entered some X_ij; session level: every lagged row).
- The grand mean Xbar is the mean of the therapist means, each therapist weighing once, so
  the between-therapist part is centred at the therapist level, where it varies. (Centring
  only moves the intercept and the main effects of variables interacting with it.)
- All means are computed on the analysed patients and rows, after exclusions, so that the
  components sum exactly to the process score used: X = within + between (+ ...) + Xbar.

Reliability of therapist means (models.md): lambda_j = tau2 / (tau2 + sigma2 / n_j), with
n_j the number of analysed patients of therapist j and tau2, sigma2 the between- and
within-therapist variances of the patient scores (X_ij; Xbar_ij at session level),
estimated by the one-way random-effects ANOVA (method of moments) estimator:

    sigma2 = MSW = sum_j sum_i (X_ij - m_j)^2 / (N - J)
    tau2   = max(0, (MSB - MSW) / n0),  MSB = sum_j n_j (m_j - m)^2 / (J - 1),
    n0     = (N - sum_j n_j^2 / N) / (J - 1)

where m_j is therapist j's mean over patients and m the mean over all N patients. Low
reliability (mean over therapists below 0.7) biases observed between-therapist and
cross-level effects toward zero (Luedtke et al., 2008); the tables carry a warning.

Column names are formula-safe identifiers: the validated process names (see
:func:`theralens.data.validate.safe_name`), with suffixes ``_within``, ``_between``
(patient level), ``_within_patient``, ``_between_patient``, ``_between_therapist``
(session level) and ``_patient_mean``, ``_caseload_mean``. ``labels`` maps each process
name back to the user's column name.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from theralens.data.config import StudyConfig
from theralens.data.validate import Exclusion, ValidatedData
from theralens.errors import InputError

__all__ = [
    "LOW_RELIABILITY",
    "PatientTable",
    "SessionTable",
    "patient_level",
    "reliability_table",
    "session_level",
]

#: Mean reliability of therapist means below which a warning is issued.
LOW_RELIABILITY = 0.7


@dataclass
class PatientTable:
    """The patient-level analysis table (one row per analysed patient).

    Fields:
        table: columns ``therapist``, ``patient``, ``n_outcome`` (outcome assessments),
            ``time_baseline``, ``time_final``, ``baseline`` (first outcome), ``final`` (last
            outcome), ``change`` (final - baseline), ``slope`` (per-patient OLS slope of the
            outcome on time), covariates, and per process p: ``p`` (X_ij), ``p_n`` (ratings
            averaged), ``p_within`` (X_ij - Xbar_j), ``p_between`` (Xbar_j - Xbar),
            ``p_caseload_mean`` (Xbar_j); and ``n_patients`` (the therapist's analysed
            caseload).
        response: column holding the change measure of ``[design] change``: ``"final"``
            (residualized: with ``baseline`` as covariate), ``"slope"`` or ``"change"``.
        adjust_for: covariates the change measure needs (``("baseline",)`` for
            residualized change, else empty).
        processes, covariates, labels: names in ``table``; labels map to the user's names.
        reliability: per therapist and process: ``therapist``, ``process``,
            ``n_patients``, ``tau2``, ``sigma2``, ``reliability`` (lambda_j).
        reliability_summary: per process: ``process``, ``n_therapists``, ``n_patients``,
            ``tau2``, ``sigma2``, ``icc``, ``mean_reliability``, ``min_reliability``.
        exclusions: those of validation followed by the patients left out here.
        warnings: plain sentences (low reliability, single-patient therapists, ...).
        change, caseload_weighting, process_sessions, higher_outcome_is: options used.
        benefit_sign: -1 when a higher outcome is worse (a decrease is benefit), else +1.
        counts: therapists, patients, assessments (rows of analysed patients).
    """

    table: pd.DataFrame
    response: str
    adjust_for: tuple[str, ...]
    processes: tuple[str, ...]
    covariates: tuple[str, ...]
    labels: dict[str, str]
    reliability: pd.DataFrame
    reliability_summary: pd.DataFrame
    exclusions: list[Exclusion]
    warnings: list[str]
    change: str
    caseload_weighting: str
    process_sessions: int
    higher_outcome_is: str
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def benefit_sign(self) -> int:
        """-1 if higher outcome = worse (benefit is a decrease), +1 otherwise."""
        return -1 if self.higher_outcome_is == "worse" else 1

    def components(self, process: str) -> tuple[str, str]:
        """(within-therapist, between-therapist) column names of ``process``."""
        return f"{process}_within", f"{process}_between"


@dataclass
class SessionTable:
    """The session-level (lagged) analysis table: one row per pair of consecutive outcome
    assessments t -> t+1 of a patient.

    Fields:
        table: columns ``therapist``, ``patient``, ``row`` (user's row of assessment t),
            ``time``, ``time_next``, ``gap`` (time_next - time), ``outcome`` (Y_t),
            ``outcome_next`` (Y_t+1, the response), covariates, and per process p: ``p``
            (X_tij), ``p_within_patient``, ``p_between_patient``, ``p_between_therapist``,
            ``p_patient_mean`` (Xbar_ij), ``p_caseload_mean`` (Xbar_j); ``n_lags`` (rows
            of the patient), ``n_patients`` (analysed caseload of the therapist).
        response: ``"outcome_next"``; lagged_outcome: ``"outcome"``.
        processes, covariates, labels, reliability (on the patient means Xbar_ij),
        reliability_summary, exclusions, warnings, caseload_weighting,
        higher_outcome_is, counts: as in :class:`PatientTable`.
    """

    table: pd.DataFrame
    response: str
    lagged_outcome: str
    processes: tuple[str, ...]
    covariates: tuple[str, ...]
    labels: dict[str, str]
    reliability: pd.DataFrame
    reliability_summary: pd.DataFrame
    exclusions: list[Exclusion]
    warnings: list[str]
    caseload_weighting: str
    higher_outcome_is: str
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def benefit_sign(self) -> int:
        """-1 if higher outcome = worse (benefit is a decrease), +1 otherwise."""
        return -1 if self.higher_outcome_is == "worse" else 1

    def components(self, process: str) -> tuple[str, str, str]:
        """(within-patient, between-patient, between-therapist) column names."""
        return (
            f"{process}_within_patient",
            f"{process}_between_patient",
            f"{process}_between_therapist",
        )


# ---------------------------------------------------------------------------- helpers


def reliability_table(
    scores: pd.DataFrame, processes: tuple[str, ...] | list[str], labels: dict[str, str]
) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    """Reliability of therapist means of patient scores (one-way random-effects ANOVA).

    ``scores`` has one row per patient: ``therapist`` and one column per process.
    Returns (per-therapist table, per-process summary, warnings); see module docstring.
    """
    per_therapist = []
    summary = []
    warnings: list[str] = []
    for p in processes:
        d = scores[["therapist", p]].dropna()
        g = d.groupby("therapist", sort=True)[p]
        n_j = g.size()
        m_j = g.mean()
        N, J = int(n_j.sum()), len(n_j)
        m = float(d[p].mean())
        ssw = float(((d[p] - g.transform("mean")) ** 2).sum())
        msw = ssw / (N - J) if N > J else np.nan
        msb = float((n_j * (m_j - m) ** 2).sum()) / (J - 1) if J > 1 else np.nan
        n0 = (N - float((n_j**2).sum()) / N) / (J - 1) if J > 1 else np.nan
        tau2 = max(0.0, (msb - msw) / n0) if np.isfinite(msb - msw) and n0 > 0 else np.nan
        lam = tau2 / (tau2 + msw / n_j) if np.isfinite(tau2) and np.isfinite(msw) else n_j * np.nan
        if np.isfinite(tau2) and tau2 == 0.0:
            lam = n_j * 0.0
        per_therapist.append(
            pd.DataFrame(
                {
                    "therapist": n_j.index.astype(str),
                    "process": p,
                    "n_patients": n_j.to_numpy(),
                    "tau2": tau2,
                    "sigma2": msw,
                    "reliability": np.asarray(lam, dtype=float),
                }
            )
        )
        icc = tau2 / (tau2 + msw) if np.isfinite(tau2) and (tau2 + msw) > 0 else np.nan
        mean_rel = float(np.nanmean(lam)) if np.isfinite(np.asarray(lam, dtype=float)).any() else np.nan
        summary.append(
            {
                "process": p,
                "n_therapists": J,
                "n_patients": N,
                "tau2": tau2,
                "sigma2": msw,
                "icc": icc,
                "mean_reliability": mean_rel,
                "min_reliability": float(np.nanmin(lam)) if np.isfinite(mean_rel) else np.nan,
            }
        )
        name = labels.get(p, p)
        if np.isfinite(tau2) and tau2 == 0.0:
            warnings.append(
                f"Therapist means of {name!r} show no variance beyond what differences between "
                "patients explain (tau2 estimated at 0, reliability 0): between-therapist "
                "effects of this process cannot be told from noise."
            )
        elif np.isfinite(mean_rel) and mean_rel < LOW_RELIABILITY:
            warnings.append(
                f"Therapist means of {name!r} have low reliability (mean {mean_rel:.2f} < "
                f"{LOW_RELIABILITY:.2f}; ICC {icc:.2f}, median caseload {float(n_j.median()):g}): "
                "observed between-therapist and cross-level effects are biased toward zero "
                "(Luedtke et al., 2008)."
            )
    cols = ["therapist", "process", "n_patients", "tau2", "sigma2", "reliability"]
    table = pd.concat(per_therapist, ignore_index=True) if per_therapist else pd.DataFrame(columns=cols)
    return table, pd.DataFrame(summary), warnings


def _caseload_means(
    patient_means: pd.DataFrame,
    weights: pd.DataFrame | None,
    processes: tuple[str, ...],
) -> pd.DataFrame:
    """Therapist means of patient means; ``weights`` (per patient and process) gives
    session weighting: weighted by the number of ratings."""
    out = {}
    for p in processes:
        if weights is None:
            out[p] = patient_means.groupby("therapist")[p].mean()
        else:
            w = weights[p]
            num = (patient_means[p] * w).groupby(patient_means["therapist"]).sum()
            den = w.groupby(patient_means["therapist"]).sum()
            out[p] = num / den
    return pd.DataFrame(out)


def _add_exclusion(exclusions: list[Exclusion], mask: pd.Series, reason: str, rows_per_patient: pd.Series) -> None:
    """Record patients (index of ``mask``) dropped for ``reason``."""
    ids = mask.index[mask.to_numpy()]
    if len(ids) == 0:
        return
    exclusions.append(
        Exclusion(
            reason=reason,
            rows=int(rows_per_patient.reindex(ids).fillna(0).sum()),
            patients=len(ids),
            patients_removed=len(ids),
            examples=tuple(str(i) for i in ids[:5]),
        )
    )


def _single_patient_warning(n_patients: pd.Series, level: str) -> list[str]:
    singles = int((n_patients == 1).sum())
    if not singles:
        return []
    if level == "patient":
        tail = "their within-therapist component is 0 and they get no slope of their own."
    else:
        tail = "their between-patient component is 0."
    return [
        f"{singles} therapist(s) have a single analysed patient: they contribute to the "
        f"between-therapist part, but {tail}"
    ]


def _check_enough(table: pd.DataFrame, data: ValidatedData, level: str, exclusions: list[Exclusion]) -> None:
    n_t = table["therapist"].nunique()
    lost = sum(e.patients_removed for e in exclusions)
    if n_t < 3:
        raise InputError(
            f"{data.source}: after leaving out {lost} patient(s) without usable data, only "
            f"{n_t} therapist(s) remain for the {level}-level design; at least 3 are needed "
            "(check the exclusions: missing outcome or process values)"
        )
    per = table.groupby("therapist")["patient"].nunique()
    if level == "patient" and (per >= 2).sum() == 0:
        raise InputError(
            f"{data.source}: every therapist has a single analysed patient, so nothing varies "
            "within therapists; the patient-level design needs therapists with two or more "
            "patients"
        )


# ----------------------------------------------------------------------- patient level


def patient_level(data: ValidatedData, config: StudyConfig | None = None) -> PatientTable:
    """Patient-level table and process decomposition (models.md, patient-level design).

    Change per ``[design] change``: residualized (response ``final``, adjusted for
    ``baseline``), ``slope`` (OLS slope of outcome on time per patient) or
    ``post_minus_pre`` (``change`` = final - baseline). Patients with fewer than two
    outcome assessments, no rating of a process, or a missing covariate are left out and
    listed in ``exclusions``.
    """
    config = config or data.config
    design = config.design
    s = data.sessions
    processes, covariates = data.processes, data.covariates
    rows_per_patient = s.groupby("patient").size()
    therapist_of = s.groupby("patient")["therapist"].first()

    y = s.loc[s["outcome"].notna(), ["patient", "time", "outcome"]]
    g = y.groupby("patient")
    pt = pd.DataFrame({"therapist": therapist_of})
    pt["n_outcome"] = g.size().reindex(pt.index).fillna(0).astype(int)
    pt["time_baseline"] = g["time"].first()
    pt["time_final"] = g["time"].last()
    pt["baseline"] = g["outcome"].first()
    pt["final"] = g["outcome"].last()
    pt["change"] = pt["final"] - pt["baseline"]
    t_c = y["time"] - g["time"].transform("mean")
    y_c = y["outcome"] - g["outcome"].transform("mean")
    sxy = (t_c * y_c).groupby(y["patient"]).sum()
    sxx = (t_c * t_c).groupby(y["patient"]).sum()
    pt["slope"] = (sxy / sxx.where(sxx > 0)).reindex(pt.index)
    for c in covariates:
        pt[c] = s.groupby("patient")[c].first()

    weights = {}
    for p in processes:
        r = s.loc[s[p].notna(), ["patient", "time", p]]
        if design.process_sessions > 0:
            r = r.groupby("patient", sort=False).head(design.process_sessions)
        gp = r.groupby("patient")[p]
        pt[p] = gp.mean()
        pt[f"{p}_n"] = gp.size().reindex(pt.index).fillna(0).astype(int)
        weights[p] = pt[f"{p}_n"]

    exclusions = list(data.exclusions)
    keep = pd.Series(True, index=pt.index)
    few = keep & (pt["n_outcome"] < 2)
    _add_exclusion(
        exclusions,
        few,
        "fewer than two outcome assessments (no change can be computed)",
        rows_per_patient,
    )
    keep &= ~few
    window = f" in the first {design.process_sessions} ratings" if design.process_sessions else ""
    for p in processes:
        miss = keep & pt[p].isna()
        _add_exclusion(exclusions, miss, f"no {data.labels.get(p, p)} rating{window}", rows_per_patient)
        keep &= ~miss
    for c in covariates:
        miss = keep & pt[c].isna()
        _add_exclusion(exclusions, miss, f"covariate {data.labels.get(c, c)} missing", rows_per_patient)
        keep &= ~miss
    pt = pt.loc[keep].copy()
    pt.index.name = "patient"
    pt = pt.reset_index()
    _check_enough(pt, data, "patient", exclusions)

    w = pd.DataFrame({p: pt[f"{p}_n"] for p in processes})
    means = _caseload_means(pt, w if design.caseload_weighting == "session" else None, processes)
    for p in processes:
        xbar_j = pt["therapist"].map(means[p])
        grand = float(means[p].mean())
        pt[f"{p}_caseload_mean"] = xbar_j
        pt[f"{p}_within"] = pt[p] - xbar_j
        pt[f"{p}_between"] = xbar_j - grand
    pt["n_patients"] = pt.groupby("therapist")["patient"].transform("size").astype(int)
    pt = pt.sort_values(["therapist", "patient"], kind="stable").reset_index(drop=True)

    rel, rel_sum, warnings = reliability_table(pt, processes, data.labels)
    n_pat = pt.groupby("therapist").size()
    warnings += _single_patient_warning(n_pat, "patient")
    dropped_t = sorted(set(s["therapist"]) - set(pt["therapist"]))
    if dropped_t:
        warnings.append(
            f"{len(dropped_t)} therapist(s) have no analysed patient left and are not in the "
            f"analysis ({', '.join(dropped_t[:5])}{', ...' if len(dropped_t) > 5 else ''})."
        )
    for p in processes:
        if float(pt[f"{p}_within"].abs().max()) == 0.0:
            raise InputError(
                f"{data.source}: process {data.labels.get(p, p)!r} has the same score for all "
                "patients of each therapist; its within-therapist effect cannot be estimated"
            )
    response = {"residualized": "final", "slope": "slope", "post_minus_pre": "change"}[design.change]
    counts = {
        "therapists": int(pt["therapist"].nunique()),
        "patients": len(pt),
        "assessments": int(rows_per_patient.reindex(pt["patient"]).sum()),
    }
    return PatientTable(
        table=pt,
        response=response,
        adjust_for=("baseline",) if design.change == "residualized" else (),
        processes=processes,
        covariates=covariates,
        labels=dict(data.labels),
        reliability=rel,
        reliability_summary=rel_sum,
        exclusions=exclusions,
        warnings=warnings,
        change=design.change,
        caseload_weighting=design.caseload_weighting,
        process_sessions=design.process_sessions,
        higher_outcome_is=config.columns.higher_outcome_is,
        counts=counts,
    )


# ----------------------------------------------------------------------- session level


def session_level(data: ValidatedData, config: StudyConfig | None = None) -> SessionTable:
    """Lagged session-level table and three-part decomposition (models.md, session design).

    Outcome assessments (rows with an outcome) of each patient are paired in time order;
    the process rated at the same row as Y_t predicts Y_t+1. A pair whose row t lacks a
    process rating is left out (counted); a patient with fewer than two outcome
    assessments, or left with no pair, is left out (counted). Covariates are patient
    covariates: the patient's first observed value. ``process_sessions`` applies to the
    patient-level design only.
    """
    config = config or data.config
    design = config.design
    s = data.sessions
    processes, covariates = data.processes, data.covariates
    rows_per_patient = s.groupby("patient").size()

    occ = s.loc[s["outcome"].notna()].copy()
    occ = occ.sort_values(["therapist", "patient", "time"], kind="stable")
    nxt = occ.groupby("patient")[["time", "outcome"]].shift(-1)
    occ["time_next"] = nxt["time"]
    occ["outcome_next"] = nxt["outcome"]
    for c in covariates:
        occ[c] = occ["patient"].map(s.groupby("patient")[c].first())

    exclusions = list(data.exclusions)
    n_occ = occ.groupby("patient").size().reindex(rows_per_patient.index).fillna(0)
    few = n_occ < 2
    _add_exclusion(exclusions, few, "fewer than two outcome assessments (no lagged pair)", rows_per_patient)
    lag = occ.loc[occ["outcome_next"].notna()].copy()
    patients_before = set(lag["patient"])
    for p in processes:
        miss = lag[p].isna()
        if miss.any():
            exclusions.append(
                Exclusion(
                    reason=f"no {data.labels.get(p, p)} rating at the assessment that predicts the next outcome",
                    rows=int(miss.sum()),
                    patients=int(lag.loc[miss, "patient"].nunique()),
                    patients_removed=len(patients_before - set(lag.loc[~miss, "patient"])),
                    examples=tuple(int(r) for r in lag.loc[miss, "row"].to_numpy()[:5]),
                )
            )
            lag = lag.loc[~miss]
            patients_before = set(lag["patient"])
    for c in covariates:
        miss = lag[c].isna()
        if miss.any():
            exclusions.append(
                Exclusion(
                    reason=f"covariate {data.labels.get(c, c)} missing",
                    rows=int(miss.sum()),
                    patients=int(lag.loc[miss, "patient"].nunique()),
                    patients_removed=int(lag.loc[miss, "patient"].nunique()),
                    examples=tuple(str(i) for i in lag.loc[miss, "patient"].unique()[:5]),
                )
            )
            lag = lag.loc[~miss]
    keep_cols = ["therapist", "patient", "row", "time", "time_next", "outcome", "outcome_next"]
    lag = lag[keep_cols + list(covariates) + list(processes)].reset_index(drop=True)
    lag.insert(lag.columns.get_loc("time_next") + 1, "gap", lag["time_next"] - lag["time"])
    _check_enough(lag, data, "session", exclusions)

    lag["n_lags"] = lag.groupby("patient")["patient"].transform("size").astype(int)
    pm = lag.groupby("patient")[list(processes)].mean()
    pm["therapist"] = lag.groupby("patient")["therapist"].first()
    pm = pm.reset_index()
    w = None
    if design.caseload_weighting == "session":
        nl = lag.groupby("patient").size()
        w = pd.DataFrame({p: pm["patient"].map(nl) for p in processes})
    means = _caseload_means(pm, w, processes)
    for p in processes:
        xbar_ij = lag["patient"].map(pm.set_index("patient")[p])
        xbar_j = lag["therapist"].map(means[p])
        grand = float(means[p].mean())
        lag[f"{p}_within_patient"] = lag[p] - xbar_ij
        lag[f"{p}_between_patient"] = xbar_ij - xbar_j
        lag[f"{p}_between_therapist"] = xbar_j - grand
        lag[f"{p}_patient_mean"] = xbar_ij
        lag[f"{p}_caseload_mean"] = xbar_j
    lag["n_patients"] = lag["therapist"].map(pm.groupby("therapist").size()).astype(int)

    rel, rel_sum, warnings = reliability_table(pm, processes, data.labels)
    warnings += _single_patient_warning(pm.groupby("therapist").size(), "session")
    singles = int((pm["patient"].map(lag.groupby("patient").size()) == 1).sum())
    if singles:
        warnings.append(f"{singles} patient(s) have a single lagged pair: their within-patient component is 0.")
    counts = {
        "therapists": int(lag["therapist"].nunique()),
        "patients": int(lag["patient"].nunique()),
        "lagged_rows": len(lag),
        "assessments": int(rows_per_patient.reindex(lag["patient"].unique()).sum()),
    }
    return SessionTable(
        table=lag,
        response="outcome_next",
        lagged_outcome="outcome",
        processes=processes,
        covariates=covariates,
        labels=dict(data.labels),
        reliability=rel,
        reliability_summary=rel_sum,
        exclusions=exclusions,
        warnings=warnings,
        caseload_weighting=design.caseload_weighting,
        higher_outcome_is=config.columns.higher_outcome_is,
        counts=counts,
    )
