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
    "patient_table",
    "reliability_table",
    "session_level",
    "session_table",
]

#: Mean reliability of therapist means below which a warning is issued.
LOW_RELIABILITY = 0.7


class _BenefitDirection:
    """``benefit_sign`` of an analysis table from its ``higher_outcome_is`` setting."""

    higher_outcome_is: str

    @property
    def benefit_sign(self) -> int:
        """-1 if higher outcome = worse (benefit is a decrease), +1 otherwise."""
        return -1 if self.higher_outcome_is == "worse" else 1


@dataclass
class PatientTable(_BenefitDirection):
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

    def components(self, process: str) -> tuple[str, str]:
        """(within-therapist, between-therapist) column names of ``process``."""
        return f"{process}_within", f"{process}_between"


@dataclass
class SessionTable(_BenefitDirection):
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
        relation: on the DuckDB path, the DuckDB table holding the rows (``table`` then has
            the columns and no rows: :func:`theralens.data.scan.decompose_scan`); else None.
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
    relation: str | None = None

    def components(self, process: str) -> tuple[str, str, str]:
        """(within-patient, between-patient, between-therapist) column names."""
        return (
            f"{process}_within_patient",
            f"{process}_between_patient",
            f"{process}_between_therapist",
        )


# ---------------------------------------------------------------------------- helpers
# Group operations run on integer codes with numpy (bincount), not pandas groupby: the
# decomposition runs once per replicate in power simulations, so it must be cheap.


def _first_last(codes: np.ndarray, mask: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Row index of the first and last masked row of each group (-1 if none).

    Rows must be ordered by group and time."""
    first = np.full(n, -1)
    last = np.full(n, -1)
    idx = np.flatnonzero(mask)
    if len(idx):
        c = codes[idx]
        start = np.r_[True, c[1:] != c[:-1]]
        end = np.r_[c[1:] != c[:-1], True]
        first[c[start]] = idx[start]
        last[c[end]] = idx[end]
    return first, last


def _take(values: np.ndarray, index: np.ndarray) -> np.ndarray:
    out = np.full(len(index), np.nan)
    ok = index >= 0
    out[ok] = values[index[ok]]
    return out


def _group_mean(codes: np.ndarray, x: np.ndarray, n: int, w: np.ndarray | None = None) -> np.ndarray:
    w = np.ones(len(x)) if w is None else w
    num = np.bincount(codes, weights=x * w, minlength=n)
    den = np.bincount(codes, weights=w, minlength=n)
    with np.errstate(invalid="ignore", divide="ignore"):
        return num / den


def _anova(codes: np.ndarray, x: np.ndarray, n: int) -> tuple[np.ndarray, float, float]:
    """(n_j, tau2, sigma2): one-way random-effects ANOVA (method of moments), see module doc."""
    n_j = np.bincount(codes, minlength=n).astype(float)
    N, J = float(n_j.sum()), int((n_j > 0).sum())
    m_j = _group_mean(codes, x, n)
    m = float(x.mean()) if len(x) else np.nan
    ssw = float(((x - m_j[codes]) ** 2).sum())
    msw = ssw / (N - J) if N > J else np.nan
    if J > 1:
        ok = n_j > 0
        msb = float((n_j[ok] * (m_j[ok] - m) ** 2).sum()) / (J - 1)
        n0 = (N - float((n_j**2).sum()) / N) / (J - 1)
        tau2 = max(0.0, (msb - msw) / n0) if np.isfinite(msw) and n0 > 0 else np.nan
    else:
        tau2 = np.nan
    return n_j, tau2, msw


def reliability_table(
    scores: pd.DataFrame, processes: tuple[str, ...] | list[str], labels: dict[str, str]
) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    """Reliability of therapist means of patient scores (one-way random-effects ANOVA).

    ``scores`` has one row per patient: ``therapist`` and one column per process.
    lambda_j = tau2 / (tau2 + sigma2 / n_j) (models.md). Returns (per-therapist table:
    therapist, process, n_patients, tau2, sigma2, reliability; per-process summary:
    process, n_therapists, n_patients, tau2, sigma2, icc, mean_reliability,
    min_reliability; warnings).
    """
    per_therapist = []
    summary = []
    warnings: list[str] = []
    for p in processes:
        x_all = scores[p].to_numpy(float)
        ok = ~np.isnan(x_all)
        codes, therapists = pd.factorize(scores["therapist"].to_numpy()[ok], sort=True)
        J = len(therapists)
        n_j, tau2, msw = _anova(codes, x_all[ok], J)
        if np.isfinite(tau2) and np.isfinite(msw):
            lam = tau2 / (tau2 + msw / n_j) if tau2 > 0 else np.zeros(J)
        else:
            lam = np.full(J, np.nan)
        per_therapist.append(
            pd.DataFrame(
                {
                    "therapist": np.asarray(therapists, dtype=object).astype(str),
                    "process": p,
                    "n_patients": n_j.astype(int),
                    "tau2": tau2,
                    "sigma2": msw,
                    "reliability": lam,
                }
            )
        )
        icc = tau2 / (tau2 + msw) if np.isfinite(tau2) and np.isfinite(msw) and tau2 + msw > 0 else np.nan
        finite = np.isfinite(lam)
        mean_rel = float(lam[finite].mean()) if finite.any() else np.nan
        summary.append(
            {
                "process": p,
                "n_therapists": J,
                "n_patients": int(n_j.sum()),
                "tau2": tau2,
                "sigma2": msw,
                "icc": icc,
                "mean_reliability": mean_rel,
                "min_reliability": float(lam[finite].min()) if finite.any() else np.nan,
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
                f"{LOW_RELIABILITY:.2f}; ICC {icc:.2f}, median caseload {float(np.median(n_j)):g}): "
                "observed between-therapist and cross-level effects are biased toward zero "
                "(Luedtke et al., 2008)."
            )
    cols = ["therapist", "process", "n_patients", "tau2", "sigma2", "reliability"]
    table = pd.concat(per_therapist, ignore_index=True) if per_therapist else pd.DataFrame(columns=cols)
    return table, pd.DataFrame(summary), warnings


def _patient_exclusion(
    exclusions: list[Exclusion], mask: np.ndarray, reason: str, patients: np.ndarray, rows: np.ndarray
) -> None:
    """Record the patients in ``mask`` (whole patients) as left out for ``reason``."""
    if not mask.any():
        return
    exclusions.append(
        Exclusion(
            reason=reason,
            rows=int(rows[mask].sum()),
            patients=int(mask.sum()),
            patients_removed=int(mask.sum()),
            examples=tuple(str(p) for p in patients[mask][:5]),
        )
    )


def _single_patient_warning(n_patients: np.ndarray, level: str) -> list[str]:
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


def _check_enough(n_per_therapist: np.ndarray, data: ValidatedData, level: str, exclusions: list[Exclusion]) -> None:
    n_t = int((n_per_therapist > 0).sum())
    lost = sum(e.patients_removed for e in exclusions)
    if n_t < 3:
        raise InputError(
            f"{data.source}: after leaving out {lost} patient(s) without usable data, only "
            f"{n_t} therapist(s) remain for the {level}-level design; at least 3 are needed "
            "(check the exclusions: missing outcome or process values)"
        )
    if level == "patient" and (n_per_therapist >= 2).sum() == 0:
        raise InputError(
            f"{data.source}: every therapist has a single analysed patient, so nothing varies "
            "within therapists; the patient-level design needs therapists with two or more "
            "patients"
        )


class _Sessions:
    """The validated sessions as numpy arrays ordered by patient and time."""

    def __init__(self, data: ValidatedData) -> None:
        s = data.sessions
        pcode, patients = pd.factorize(s["patient"].to_numpy(), sort=True)
        time = s["time"].to_numpy(float)
        order = np.lexsort((time, pcode))
        self.order = order
        self.pcode = pcode[order]
        self.patients = np.asarray(patients, dtype=object)
        self.n = len(self.patients)
        self.time = time[order]
        self.therapist = s["therapist"].to_numpy(dtype=object)[order]
        self.row = s["row"].to_numpy()[order] if "row" in s else np.arange(len(s))[order] + 2
        self.frame = s
        self.rows_per_patient = np.bincount(self.pcode, minlength=self.n)
        first, _ = _first_last(self.pcode, np.ones(len(order), dtype=bool), self.n)
        self.therapist_of = self.therapist[first]

    def column(self, name: str) -> np.ndarray:
        return self.frame[name].to_numpy(float)[self.order]

    def first_value(self, name: str) -> np.ndarray:
        """The patient's first non-missing value of ``name`` (NaN if none)."""
        x = self.column(name)
        first, _ = _first_last(self.pcode, ~np.isnan(x), self.n)
        return _take(x, first)


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
    processes, covariates = data.processes, data.covariates
    S = _Sessions(data)
    n, pc, t = S.n, S.pcode, S.time

    y = S.column("outcome")
    ym = ~np.isnan(y)
    n_out = np.bincount(pc[ym], minlength=n)
    first, last = _first_last(pc, ym, n)
    cols: dict[str, np.ndarray] = {
        "therapist": S.therapist_of,
        "patient": S.patients,
        "n_outcome": n_out,
        "time_baseline": _take(t, first),
        "time_final": _take(t, last),
        "baseline": _take(y, first),
        "final": _take(y, last),
    }
    cols["change"] = cols["final"] - cols["baseline"]
    tm = _group_mean(pc[ym], t[ym], n)
    ymean = _group_mean(pc[ym], y[ym], n)
    dt = t[ym] - tm[pc[ym]]
    sxy = np.bincount(pc[ym], weights=dt * (y[ym] - ymean[pc[ym]]), minlength=n)
    sxx = np.bincount(pc[ym], weights=dt * dt, minlength=n)
    with np.errstate(invalid="ignore", divide="ignore"):
        cols["slope"] = np.where(sxx > 0, sxy / np.where(sxx > 0, sxx, 1.0), np.nan)
    for c in covariates:
        cols[c] = S.first_value(c)
    k = design.process_sessions
    for p in processes:
        x = S.column(p)
        xm = ~np.isnan(x)
        if k > 0:
            idx = np.flatnonzero(xm)
            c = pc[idx]
            start = np.r_[0, np.flatnonzero(c[1:] != c[:-1]) + 1]
            group_start = np.repeat(start, np.diff(np.r_[start, len(idx)]))
            xm[idx[(np.arange(len(idx)) - group_start) >= k]] = False
        cnt = np.bincount(pc[xm], minlength=n)
        with np.errstate(invalid="ignore", divide="ignore"):
            cols[p] = np.bincount(pc[xm], weights=x[xm], minlength=n) / cnt
        cols[f"{p}_n"] = cnt
    return patient_table(cols, S.rows_per_patient, data, config)


def patient_table(
    cols: dict[str, np.ndarray], rows_per_patient: np.ndarray, data: ValidatedData, config: StudyConfig
) -> PatientTable:
    """The patient-level table from per-patient aggregates (the second half of :func:`patient_level`).

    ``cols`` holds one array per column of :attr:`PatientTable.table` that is a patient
    aggregate (``therapist``, ``patient`` sorted by id, ``n_outcome``, ``time_baseline``,
    ``time_final``, ``baseline``, ``final``, ``change``, ``slope``, the covariates at the first
    assessment, per process ``p`` and ``p_n``); ``rows_per_patient`` counts each patient's
    rows. Exclusions, caseload means, the within/between components and the reliability are
    computed here, whichever adapter (numpy or SQL) produced the aggregates.
    """
    design = config.design
    processes, covariates = data.processes, data.covariates
    patients, therapist_of = np.asarray(cols["patient"], dtype=object), np.asarray(cols["therapist"], dtype=object)
    n_out = np.asarray(cols["n_outcome"])
    k = design.process_sessions
    exclusions = list(data.exclusions)
    keep = np.ones(len(patients), dtype=bool)
    few = n_out < 2
    _patient_exclusion(
        exclusions,
        few,
        "fewer than two outcome assessments (no change can be computed)",
        patients,
        rows_per_patient,
    )
    keep &= ~few
    window = f" in the first {k} ratings" if k else ""
    for p in processes:
        miss = keep & np.isnan(cols[p])
        _patient_exclusion(
            exclusions, miss, f"no {data.labels.get(p, p)} rating{window}", patients, rows_per_patient
        )
        keep &= ~miss
    for c in covariates:
        miss = keep & np.isnan(cols[c])
        _patient_exclusion(
            exclusions, miss, f"covariate {data.labels.get(c, c)} missing", patients, rows_per_patient
        )
        keep &= ~miss

    tcode, therapists = pd.factorize(therapist_of[keep], sort=True)
    J = len(therapists)
    order = np.lexsort((np.flatnonzero(keep), tcode))  # therapist, then patient id
    tcode = tcode[order]
    kept = {name: np.asarray(v)[keep][order] for name, v in cols.items()}
    n_per = np.bincount(tcode, minlength=J)
    _check_enough(n_per, data, "patient", exclusions)

    table = pd.DataFrame(kept)
    weighted = design.caseload_weighting == "session"
    for p in processes:
        x = kept[p]
        xbar_j = _group_mean(tcode, x, J, kept[f"{p}_n"].astype(float) if weighted else None)
        grand = float(xbar_j.mean())
        table[f"{p}_caseload_mean"] = xbar_j[tcode]
        table[f"{p}_within"] = x - xbar_j[tcode]
        table[f"{p}_between"] = xbar_j[tcode] - grand
        if float(np.abs(table[f"{p}_within"]).max()) == 0.0:
            raise InputError(
                f"{data.source}: process {data.labels.get(p, p)!r} has the same score for all "
                "patients of each therapist; its within-therapist effect cannot be estimated"
            )
    table["n_patients"] = n_per[tcode]
    for name in ("n_outcome", *(f"{p}_n" for p in processes)):
        table[name] = table[name].astype(int)

    rel, rel_sum, warnings = reliability_table(table, processes, data.labels)
    warnings += _single_patient_warning(n_per, "patient")
    dropped_t = sorted(set(therapist_of) - set(therapists))
    if dropped_t:
        warnings.append(
            f"{len(dropped_t)} therapist(s) have no analysed patient left and are not in the "
            f"analysis ({', '.join(map(str, dropped_t[:5]))}{', ...' if len(dropped_t) > 5 else ''})."
        )
    response = {"residualized": "final", "slope": "slope", "post_minus_pre": "change"}[design.change]
    counts = {
        "therapists": J,
        "patients": len(table),
        "assessments": int(rows_per_patient[keep].sum()),
    }
    return PatientTable(
        table=table,
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
    processes, covariates = data.processes, data.covariates
    S = _Sessions(data)
    n, pc = S.n, S.pcode

    y = S.column("outcome")
    occ = np.flatnonzero(~np.isnan(y))
    n_occ = np.bincount(pc[occ], minlength=n)
    has_next = np.r_[pc[occ][1:] == pc[occ][:-1], False]
    cur, nxt = occ[has_next], occ[np.flatnonzero(has_next) + 1]
    pairs: dict[str, np.ndarray] = {
        "pcode": pc[cur],
        "row": S.row[cur],
        "time": S.time[cur],
        "time_next": S.time[nxt],
        "outcome": y[cur],
        "outcome_next": y[nxt],
    }
    for p in processes:
        pairs[p] = S.column(p)[cur]
    for c in covariates:
        pairs[c] = S.first_value(c)[pc[cur]]
    return session_table(pairs, S.patients, S.therapist_of, S.rows_per_patient, n_occ, data, config)


def session_table(
    pairs: dict[str, np.ndarray],
    patients: np.ndarray,
    therapist_of: np.ndarray,
    rows_per_patient: np.ndarray,
    n_occ: np.ndarray,
    data: ValidatedData,
    config: StudyConfig,
) -> SessionTable:
    """The lagged table from the pairs of consecutive outcome assessments (second half of
    :func:`session_level`).

    ``pairs``: per pair, ordered by patient then time: ``pcode`` (index into ``patients``),
    ``row``, ``time``, ``time_next``, ``outcome``, ``outcome_next``, the process values at t
    and the patient's covariates (first observed value). ``therapist_of``,
    ``rows_per_patient`` and ``n_occ`` (outcome assessments) are per patient. Exclusions,
    the three components and the reliability are computed here, whichever adapter (numpy
    or SQL) produced the pairs.
    """
    design = config.design
    processes, covariates = data.processes, data.covariates
    patients = np.asarray(patients, dtype=object)
    therapist_of = np.asarray(therapist_of, dtype=object)
    exclusions = list(data.exclusions)
    few_outcomes_exclusion(exclusions, n_occ, patients, rows_per_patient)
    pc_pair = np.asarray(pairs["pcode"], dtype=np.int64)
    keep = np.ones(len(pc_pair), dtype=bool)
    process_values = {p: np.asarray(pairs[p], dtype=float) for p in processes}
    cov_values = {c: np.asarray(pairs[c], dtype=float) for c in covariates}

    def drop_rows(miss: np.ndarray, reason: str, patient_examples: bool = False) -> None:
        nonlocal keep
        miss = keep & miss
        if not miss.any():
            return
        before = set(pc_pair[keep])
        after = set(pc_pair[keep & ~miss])
        touched = pc_pair[miss]
        examples = (
            tuple(str(patients[i]) for i in np.unique(touched)[:5])
            if patient_examples
            else tuple(int(r) for r in np.asarray(pairs["row"])[miss][:5])
        )
        exclusions.append(
            Exclusion(
                reason=reason,
                rows=int(miss.sum()),
                patients=len(np.unique(touched)),
                patients_removed=len(before - after),
                examples=examples,
            )
        )
        keep &= ~miss

    for p in processes:
        drop_rows(
            np.isnan(process_values[p]),
            f"no {data.labels.get(p, p)} rating at the assessment that predicts the next outcome",
        )
    for c in covariates:
        drop_rows(np.isnan(cov_values[c]), f"covariate {data.labels.get(c, c)} missing", True)
    process_values = {p: v[keep] for p, v in process_values.items()}
    cov_values = {c: v[keep] for c, v in cov_values.items()}

    row_p = pc_pair[keep]
    pcode_l, pat_index = pd.factorize(row_p, sort=True)  # analysed patients
    n_pat = len(pat_index)
    pat_ther = therapist_of[np.asarray(pat_index, dtype=int)]
    tcode_p, therapists = pd.factorize(pat_ther, sort=True)
    J = len(therapists)
    tcode_r = tcode_p[pcode_l]
    n_per = np.bincount(tcode_p, minlength=J)
    _check_enough(n_per, data, "session", exclusions)  # before the table is built (session_summary checks again)

    # the columns in table order, gathered first and made into one frame (not inserted one by one)
    time = np.asarray(pairs["time"], dtype=float)[keep]
    time_next = np.asarray(pairs["time_next"], dtype=float)[keep]
    columns: dict[str, np.ndarray] = {
        "therapist": therapist_of[row_p],
        "patient": patients[row_p],
        "row": np.asarray(pairs["row"])[keep],
        "time": time,
        "time_next": time_next,
        "gap": time_next - time,
        "outcome": np.asarray(pairs["outcome"], dtype=float)[keep],
        "outcome_next": np.asarray(pairs["outcome_next"], dtype=float)[keep],
    }
    for c in covariates:
        columns[c] = cov_values[c]
    n_lags = np.bincount(pcode_l, minlength=n_pat)
    weighted = design.caseload_weighting == "session"
    pm_frame = {"therapist": pat_ther}
    for p in processes:
        x = process_values[p]
        xbar_i = _group_mean(pcode_l, x, n_pat)
        if weighted:
            xbar_j = _group_mean(tcode_p, xbar_i, J, n_lags.astype(float))
        else:
            xbar_j = _group_mean(tcode_p, xbar_i, J)
        grand = float(xbar_j.mean())
        columns[p] = x
        columns[f"{p}_within_patient"] = x - xbar_i[pcode_l]
        columns[f"{p}_between_patient"] = xbar_i[pcode_l] - xbar_j[tcode_r]
        columns[f"{p}_between_therapist"] = xbar_j[tcode_r] - grand
        columns[f"{p}_patient_mean"] = xbar_i[pcode_l]
        columns[f"{p}_caseload_mean"] = xbar_j[tcode_r]
        pm_frame[p] = xbar_i
    columns["n_lags"] = n_lags[pcode_l]
    columns["n_patients"] = n_per[tcode_r]
    order = np.lexsort((time, pcode_l, tcode_r))
    table = pd.DataFrame({name: values[order] for name, values in columns.items()})

    return session_summary(table, pd.DataFrame(pm_frame), n_lags, n_per,
                           int(rows_per_patient[np.asarray(pat_index, dtype=int)].sum()), exclusions, data, config)


def few_outcomes_exclusion(exclusions: list[Exclusion], n_occ: np.ndarray, patients: np.ndarray,
                           rows_per_patient: np.ndarray) -> None:
    """Record the patients with fewer than two outcome assessments (no lagged pair) as left out
    (``n_occ``, ``patients`` and ``rows_per_patient`` per patient, sorted by id)."""
    _patient_exclusion(exclusions, np.asarray(n_occ) < 2, "fewer than two outcome assessments (no lagged pair)",
                       np.asarray(patients, dtype=object), np.asarray(rows_per_patient))


def session_summary(
    table: pd.DataFrame,
    patient_means: pd.DataFrame,
    n_lags: np.ndarray,
    n_per: np.ndarray,
    assessments: int,
    exclusions: list[Exclusion],
    data: ValidatedData,
    config: StudyConfig,
    relation: str | None = None,
) -> SessionTable:
    """The session table from what both adapters compute (numpy: :func:`session_table`; SQL:
    :func:`theralens.data.scan.decompose_scan`): the rows (``table``; on the SQL path a frame
    without rows and the DuckDB ``relation`` that holds them), per analysed patient (sorted
    by id) the ``patient_means`` (``therapist`` and one column per process) and ``n_lags``,
    per therapist ``n_per`` (analysed patients), the analysed patients' ``assessments`` and
    the exclusions. Reliability, warnings and counts are computed here, once."""
    processes = data.processes
    _check_enough(np.asarray(n_per), data, "session", exclusions)
    rel, rel_sum, warnings = reliability_table(patient_means, processes, data.labels)
    warnings += _single_patient_warning(np.asarray(n_per), "session")
    singles = int((np.asarray(n_lags) == 1).sum())
    if singles:
        warnings.append(f"{singles} patient(s) have a single lagged pair: their within-patient component is 0.")
    counts = {
        "therapists": len(n_per),
        "patients": len(n_lags),
        "lagged_rows": int(np.asarray(n_lags).sum()),
        "assessments": int(assessments),
    }
    return SessionTable(
        table=table,
        response="outcome_next",
        lagged_outcome="outcome",
        processes=processes,
        covariates=data.covariates,
        labels=dict(data.labels),
        reliability=rel,
        reliability_summary=rel_sum,
        exclusions=exclusions,
        warnings=warnings,
        caseload_weighting=config.design.caseload_weighting,
        higher_outcome_is=config.columns.higher_outcome_is,
        counts=counts,
        relation=relation,
    )
