"""The patient-level analysis table of a simulated study, built with numpy alone.

A power study analyses thousands of simulated data sets. The study pipeline's pandas steps
(:func:`theralens.data.validate.validate_sessions` then
:func:`theralens.data.decompose.patient_level`) cost about 30 ms per data set, more than the
model fits; this module builds the same table in well under a millisecond for data from
:func:`theralens.simulation.generate.simulate` (ids are text, times are session numbers, no
value is malformed, so validation has nothing to drop that the table keeps).

With the default study config (residualized change, process score = mean of all ratings,
caseload means over patients, each weighing once; models.md), per patient i of therapist j:

    baseline, final   first and last observed outcome (time order)
    X_ij              mean of the patient's ratings of the process
    within            X_ij - Xbar_j      (Xbar_j: mean of X_ij over analysed patients of j)
    between           Xbar_j - Xbar      (Xbar: mean of the therapist means)

Patients with fewer than two outcome assessments or without a rating of a process are left
out (as :func:`~theralens.data.decompose.patient_level` does). Rows come sorted by
therapist id, then patient id. ``tests/planning/test_patient_arrays.py`` holds the result equal to the
study pipeline's table.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from theralens.errors import InputError

__all__ = ["PatientArrays", "patient_arrays"]

MIN_THERAPISTS = 3  # as theralens.study.analysis


@dataclass
class PatientArrays:
    """The analysed patients, one entry per patient, sorted by therapist and patient id.

    Fields: ``therapist`` (code 0..J-1 of the patient's therapist, codes in id order),
    ``therapist_ids`` (id of each code), ``patient_ids``, ``n_outcome``, ``time_baseline``,
    ``time_final``, ``baseline``, ``final``, ``covariates`` (name -> values), and per process
    ``scores`` (X_ij), ``n_ratings``, ``caseload_mean`` (Xbar_j), ``within``, ``between``;
    ``n_patients`` (analysed caseload of the patient's therapist); ``all_therapist_ids``
    (every therapist in the sessions data, analysed or not: moderators are centred over them,
    as :func:`theralens.study.aims.aim3` does).
    """

    therapist: np.ndarray
    therapist_ids: np.ndarray
    patient_ids: np.ndarray
    n_outcome: np.ndarray
    time_baseline: np.ndarray
    time_final: np.ndarray
    baseline: np.ndarray
    final: np.ndarray
    covariates: dict[str, np.ndarray]
    scores: dict[str, np.ndarray]
    n_ratings: dict[str, np.ndarray]
    caseload_mean: dict[str, np.ndarray]
    within: dict[str, np.ndarray]
    between: dict[str, np.ndarray]
    n_patients: np.ndarray
    all_therapist_ids: np.ndarray

    @property
    def n(self) -> int:
        return len(self.final)

    @property
    def n_therapists(self) -> int:
        return len(self.therapist_ids)

    def frame(self) -> pd.DataFrame:
        """The table with the study pipeline's column names (``PatientTable.table``; the
        per-patient ``slope`` column of the slope-change design is not built)."""
        out = pd.DataFrame({
            "therapist": self.therapist_ids[self.therapist],
            "patient": self.patient_ids,
            "n_outcome": self.n_outcome,
            "time_baseline": self.time_baseline,
            "time_final": self.time_final,
            "baseline": self.baseline,
            "final": self.final,
            "change": self.final - self.baseline,
        })
        for c, v in self.covariates.items():
            out[c] = v
        for p in self.scores:
            out[p] = self.scores[p]
            out[f"{p}_n"] = self.n_ratings[p]
        for p in self.scores:
            out[f"{p}_caseload_mean"] = self.caseload_mean[p]
            out[f"{p}_within"] = self.within[p]
            out[f"{p}_between"] = self.between[p]
        out["n_patients"] = self.n_patients
        return out


def _codes(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    codes, uniques = pd.factorize(values, sort=True)
    return codes.astype(np.int64), np.asarray(uniques, dtype=object)


def patient_arrays(
    sessions: pd.DataFrame,
    processes: tuple[str, ...] = ("alliance", "expectancy"),
    covariates: tuple[str, ...] = (),
    time: str = "session",
) -> PatientArrays:
    """Patient-level table of simulated ``sessions`` (columns therapist, patient, ``time``,
    outcome, the processes and covariates); see the module docstring.

    Raises :class:`InputError` where the study would refuse the data: fewer than
    3 therapists left, no therapist with two analysed patients, or a process whose
    within-therapist component is zero everywhere.
    """
    t_code, t_ids = _codes(sessions["therapist"].to_numpy())
    p_code, p_ids = _codes(sessions["patient"].to_numpy())
    tm = sessions[time].to_numpy(dtype=float)
    y = sessions["outcome"].to_numpy(dtype=float)
    order = np.lexsort((tm, p_code))  # patients contiguous, each in time order
    pc, tc, tm, y = p_code[order], t_code[order], tm[order], y[order]
    P = len(p_ids)
    starts = np.searchsorted(pc, np.arange(P), side="left")
    ther_of = tc[starts]

    obs = np.flatnonzero(~np.isnan(y))
    po = pc[obs]
    n_outcome = np.bincount(po, minlength=P)
    first = np.searchsorted(po, np.arange(P), side="left")
    last = np.searchsorted(po, np.arange(P), side="right") - 1
    has = n_outcome > 0
    fi, la = obs[np.where(has, first, 0)], obs[np.where(has, last, 0)]
    nan = np.full(P, np.nan)
    baseline = np.where(has, y[fi], nan)
    final = np.where(has, y[la], nan)
    t_base = np.where(has, tm[fi], nan)
    t_final = np.where(has, tm[la], nan)

    keep = n_outcome >= 2
    scores, counts = {}, {}
    for p in processes:
        v = sessions[p].to_numpy(dtype=float)[order]
        ok = ~np.isnan(v)
        n = np.bincount(pc[ok], minlength=P)
        s = np.bincount(pc[ok], weights=v[ok], minlength=P)
        with np.errstate(invalid="ignore", divide="ignore"):
            scores[p] = np.where(n > 0, s / np.maximum(n, 1), np.nan)
        counts[p] = n
        keep &= n > 0
    covs = {}
    for c in covariates:
        v = sessions[c].to_numpy(dtype=float)[order][starts]
        covs[c] = v
        keep &= ~np.isnan(v)

    # analysed patients, sorted by therapist id then patient id
    idx = np.flatnonzero(keep)
    idx = idx[np.lexsort((idx, ther_of[idx]))]
    used_t, tcode = np.unique(ther_of[idx], return_inverse=True)
    J = len(used_t)
    if J < MIN_THERAPISTS:
        raise InputError(f"only {J} therapist(s) have analysed patients; at least {MIN_THERAPISTS} are needed")
    npat = np.bincount(tcode, minlength=J)
    if not (npat >= 2).any():
        raise InputError("every therapist has a single analysed patient, so nothing varies within therapists")
    caseload, within, between = {}, {}, {}
    for p in processes:
        x = scores[p][idx]
        xbar_j = np.bincount(tcode, weights=x, minlength=J) / npat
        grand = float(xbar_j.mean())
        caseload[p] = xbar_j[tcode]
        within[p] = x - caseload[p]
        between[p] = caseload[p] - grand
        if float(np.abs(within[p]).max()) == 0.0:
            raise InputError(f"process {p!r} has the same score for all patients of each therapist")
    return PatientArrays(
        therapist=tcode.astype(np.int64),
        therapist_ids=t_ids[used_t],
        patient_ids=p_ids[idx],
        n_outcome=n_outcome[idx],
        time_baseline=t_base[idx],
        time_final=t_final[idx],
        baseline=baseline[idx],
        final=final[idx],
        covariates={c: v[idx] for c, v in covs.items()},
        scores={p: scores[p][idx] for p in processes},
        n_ratings={p: counts[p][idx] for p in processes},
        caseload_mean=caseload,
        within=within,
        between=between,
        n_patients=npat[tcode],
        all_therapist_ids=t_ids,
    )
