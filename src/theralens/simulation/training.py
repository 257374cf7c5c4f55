"""Studies with known profile stability and known training effects, for the training loop
(docs/stability_training.md; :mod:`theralens.study.stability`, :mod:`theralens.study.training`).

Both generators write what the analysis reads: a sessions table (therapist, patient, session,
outcome, alliance, expectancy, start_date) and a therapist table (therapist, trained_on,
trained_process), with the configuration that names the columns (:attr:`LoopStudy.config`).

Generative model (patient-level design, residualized change). Therapist j, patient i, process p;
patient i's true process level X*_ijp = m_p + mu_jp + w_ijp, rated at every one of ``sessions``
sessions with noise, X_ijp the mean of the ratings (the patient's score the analysis uses);
outcome assessed at the first and the last session::

    baseline_ij ~ N(1, 1)
    final_ij = g00 + 0.5 baseline_ij + u0j + sum_p b_jp(period_ij) (X_ijp - Xbar_jp(period_ij)) + e_ij

with the process centred at the therapist's mean in the patient's period, as the analysis centres
it (:mod:`theralens.study.periods`). So the truth is exactly the parameters of the analysis models:

- :func:`simulate_stability`: the period is the half of the therapist's patients by treatment start
  (earlier ceil(n/2), later floor(n/2)); b_jp(h) = g10_p + u_jp(h) with (u_jp(earlier), u_jp(later))
  bivariate normal, SD ``slope_sd[p]`` in both halves and correlation ``correlation``.
- :func:`simulate_training`: a share of therapists is trained, each on one process (alternating),
  at a date between their middle two patients' starts; untrained therapists' patients are split at
  the median training date (:func:`theralens.study.training.reference_date`), as the analysis does.
  b_jp(before) = g10_p + u_jp, b_jp(after) = b_jp(before) + delta_g + v_jp with g the therapist's
  group for p (``targeted``, ``untargeted``, ``untrained``) and v_jp ~ N(0, ``change_sd[p]``^2).

The truth (``LoopStudy.truth``) holds these parameters and the contrasts the analysis reports.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from theralens.study.training import CONTRASTS, reference_date

__all__ = ["LoopStudy", "demo_schedule", "simulate_stability", "simulate_training"]

PROCESSES = ("alliance", "expectancy")
#: Average within-therapist slopes (outcome z units per scale point; negative = more benefit).
SLOPES = {"alliance": -0.10, "expectancy": -0.15}
LEVELS = {"alliance": 5.0, "expectancy": 3.5}
#: Default SDs of the therapist slopes; the residual SD and the process SDs (between therapists,
#: within therapists, of a session rating around the patient's level).
SLOPE_SD = {"alliance": 0.30, "expectancy": 0.25}
RESIDUAL_SD = 0.4
PROCESS_SD = (0.5, 1.0, 0.5)
ORIGIN = pd.Timestamp("2024-01-01")


@dataclass
class LoopStudy:
    """A simulated study: ``sessions``, ``therapists``, ``config`` (the analysis configuration,
    a dict for :func:`theralens.data.config.config_from_dict`) and ``truth``."""

    sessions: pd.DataFrame
    therapists: pd.DataFrame
    config: dict[str, Any]
    truth: dict[str, Any] = field(default_factory=dict)


def _starts(rng: np.random.Generator, n_therapists: int, n_patients: int, days: int) -> pd.DataFrame:
    """Patients (therapist, patient, start day), each caseload sorted by start."""
    rows = []
    for j in range(n_therapists):
        offsets = np.sort(rng.choice(days, size=n_patients, replace=n_patients > days))
        for k, d in enumerate(offsets):
            rows.append({"therapist": f"T{j + 1:03d}", "patient": f"P{j + 1:03d}-{k + 1:02d}", "day": int(d),
                         "rank": k, "j": j})
    return pd.DataFrame(rows)


def _sessions(rng: np.random.Generator, pats: pd.DataFrame, period: np.ndarray, slopes: Mapping[str, np.ndarray],
              sessions: int, intercept_sd: float, residual_sd: float, process_sd: tuple[float, float, float]
              ) -> pd.DataFrame:
    """The long sessions table for patients ``pats`` whose outcome has slope ``slopes[p][i]`` on
    the process centred within therapist and ``period``."""
    n = len(pats)
    n_ther = int(pats["j"].max()) + 1
    between_sd, within_sd, rating_sd = process_sd
    u0 = rng.normal(0.0, intercept_sd, n_ther)[pats["j"].to_numpy()]
    baseline = rng.normal(1.0, 1.0, n)
    final = 0.5 * baseline + u0 + rng.normal(0.0, residual_sd, n)
    ratings = {}
    keys = [pats["j"].to_numpy(), period]
    for p in PROCESSES:
        level = LEVELS[p] + rng.normal(0.0, between_sd, n_ther)[pats["j"].to_numpy()] + rng.normal(0.0, within_sd, n)
        r = level[:, None] + rng.normal(0.0, rating_sd, (n, sessions))
        ratings[p] = r
        x = r.mean(axis=1)
        centred = x - pd.Series(x).groupby(keys).transform("mean").to_numpy()
        final = final + slopes[p] * centred
    rows = {"therapist": np.repeat(pats["therapist"].to_numpy(), sessions),
            "patient": np.repeat(pats["patient"].to_numpy(), sessions),
            "session": np.tile(np.arange(1, sessions + 1), n)}
    outcome = np.full((n, sessions), np.nan)
    outcome[:, 0] = baseline
    outcome[:, -1] = final
    rows["outcome"] = outcome.reshape(-1)
    for p in PROCESSES:
        rows[p] = ratings[p].reshape(-1)
    start = (ORIGIN + pd.to_timedelta(pats["day"].to_numpy(), unit="D")).strftime("%Y-%m-%d")
    rows["start_date"] = np.repeat(np.asarray(start), sessions)
    return pd.DataFrame(rows)


def _config() -> dict[str, Any]:
    """The analysis configuration of a simulated study (patient-level design, the defaults)."""
    return {"columns": {"process": list(PROCESSES)}, "training": {"start": "start_date"}}


def simulate_stability(
    n_therapists: int = 200,
    n_patients: int = 20,
    *,
    correlation: float = 0.6,
    slope_sd: Mapping[str, float] | None = None,
    sessions: int = 4,
    seed: int | None = None,
) -> LoopStudy:
    """A study whose therapist slopes correlate ``correlation`` between the earlier and the later
    half of each caseload (module docstring); no training."""
    if not -1 < correlation < 1:
        raise ValueError(f"correlation must lie strictly between -1 and 1; got {correlation}")
    if n_patients < 4:
        raise ValueError("each therapist needs at least 4 patients (two per half)")
    sd = {**SLOPE_SD, **(slope_sd or {})}
    rng = np.random.default_rng(seed)
    pats = _starts(rng, n_therapists, n_patients, days=730)
    later = (pats["rank"].to_numpy() >= np.ceil(n_patients / 2)).astype(int)
    slopes = {}
    cov = np.array([[1.0, correlation], [correlation, 1.0]])
    for p in PROCESSES:
        u = rng.multivariate_normal([0.0, 0.0], cov, n_therapists) * sd[p]
        slopes[p] = SLOPES[p] + u[pats["j"].to_numpy(), later]
    table = _sessions(rng, pats, later, slopes, sessions, 0.2, RESIDUAL_SD, PROCESS_SD)
    therapists = pd.DataFrame({"therapist": [f"T{j + 1:03d}" for j in range(n_therapists)]})
    truth = {"correlation": {p: correlation for p in PROCESSES}, "slope_sd": dict(sd),
             "slope": {p: SLOPES[p] for p in PROCESSES}, "n_therapists": n_therapists, "n_patients": n_patients}
    return LoopStudy(sessions=table, therapists=therapists, config=_config(), truth=truth)


def simulate_training(
    n_therapists: int = 200,
    n_patients: int = 20,
    *,
    share_trained: float = 2 / 3,
    change: Mapping[str, float] | None = None,
    change_sd: Mapping[str, float] | None = None,
    slope_sd: Mapping[str, float] | None = None,
    sessions: int = 4,
    seed: int | None = None,
) -> LoopStudy:
    """A study in which training changes the slope of the process it targets (module docstring).

    ``change``: the mean slope change of each group, ``{"targeted": -0.20, "untargeted": -0.05,
    "untrained": 0.0}`` by default (negative = a stronger slope when a higher outcome is worse);
    ``change_sd``: the SD of the therapists' changes per process (0.10). Trained therapists
    alternate between the two processes as target.
    """
    if not 0 < share_trained < 1:
        raise ValueError(f"share_trained must lie strictly between 0 and 1; got {share_trained}")
    if n_patients < 4:
        raise ValueError("each therapist needs at least 4 patients (two before and two after)")
    delta = {"targeted": -0.20, "untargeted": -0.05, "untrained": 0.0, **(change or {})}
    vsd = {p: 0.10 for p in PROCESSES} | dict(change_sd or {})
    sd = {**SLOPE_SD, **(slope_sd or {})}
    rng = np.random.default_rng(seed)
    pats = _starts(rng, n_therapists, n_patients, days=730)
    n_trained = int(round(share_trained * n_therapists))
    trained = np.zeros(n_therapists, dtype=bool)
    trained[rng.choice(n_therapists, n_trained, replace=False)] = True
    target = np.full(n_therapists, "", dtype=object)
    target[np.flatnonzero(trained)] = [PROCESSES[k % 2] for k in range(n_trained)]
    dates: list[Any] = [None] * n_therapists
    for j in np.flatnonzero(trained):
        days = pats.loc[pats["j"] == j, "day"].to_numpy()
        mid = n_patients // 2
        lo, hi = days[mid - 1], days[mid]  # between the middle two starts: patients on both sides
        dates[j] = ORIGIN + pd.Timedelta(days=int(lo + 1 + rng.integers(0, max(hi - lo, 1))))
    ref = reference_date([dates[j] for j in np.flatnonzero(trained)])
    start = ORIGIN + pd.to_timedelta(pats["day"].to_numpy(), unit="D")
    split_at = np.array([dates[j] if trained[j] else ref for j in pats["j"].to_numpy()], dtype="datetime64[ns]")
    after = (start.to_numpy() >= split_at).astype(int)
    jj = pats["j"].to_numpy()
    slopes = {}
    for p in PROCESSES:
        u = rng.normal(0.0, sd[p], n_therapists)
        v = rng.normal(0.0, vsd[p], n_therapists)
        group = np.where(~trained, "untrained", np.where(target == p, "targeted", "untargeted"))
        d = np.array([delta[g] for g in group])
        slopes[p] = SLOPES[p] + u[jj] + after * (d + v)[jj]
    table = _sessions(rng, pats, after, slopes, sessions, 0.2, RESIDUAL_SD, PROCESS_SD)
    therapists = pd.DataFrame({
        "therapist": [f"T{j + 1:03d}" for j in range(n_therapists)],
        "trained_on": [d.strftime("%Y-%m-%d") if d is not None else "" for d in dates],
        "trained_process": list(target),
    })
    effects = {}
    for p in PROCESSES:
        effects[p] = {f"change_{g}": delta[g] for g in ("untrained", "untargeted", "targeted")}
        for term, (a, b) in CONTRASTS.items():
            effects[p][term] = delta[a] - delta[b]
    truth = {"effects": effects, "change_sd": dict(vsd), "slope_sd": dict(sd),
             "slope": {p: SLOPES[p] for p in PROCESSES}, "reference_date": ref.strftime("%Y-%m-%d"),
             "n_trained": n_trained, "n_therapists": n_therapists,
             "n_patients": n_patients}
    return LoopStudy(sessions=table, therapists=therapists, config=_config(), truth=truth)


def demo_schedule(sessions: pd.DataFrame, therapists: pd.DataFrame, seed: int = 2022,
                  min_patients: int = 4) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Treatment starts and a training schedule for the demo study (datasets/README.md).

    Returns (sessions with a ``start_date`` column: patients start in the order of their ids,
    a therapist's patients spread over 2024-2025; the training table: therapist, trained_on,
    trained_process). Therapists with at least ``min_patients`` patients are trained with
    probability 2/3, alternately on alliance and expectancy, on a date between their middle two
    patients' starts; the others are untrained. The demo's outcomes were simulated without any
    training effect, so the true change is zero for every group.
    """
    rng = np.random.default_rng(seed)
    pats = sessions[["therapist", "patient"]].drop_duplicates("patient").sort_values(["therapist", "patient"])
    start: dict[str, pd.Timestamp] = {}
    rows = []
    k_trained = 0
    for t, group in pats.groupby("therapist", sort=True):
        ids = list(group["patient"])
        days = np.sort(rng.choice(730, size=len(ids), replace=False))
        for pid, d in zip(ids, days):
            start[pid] = ORIGIN + pd.Timedelta(days=int(d))
        date, target = "", ""
        if len(ids) >= min_patients and rng.random() < 2 / 3:
            mid = len(ids) // 2
            lo, hi = days[mid - 1], days[mid]
            date = (ORIGIN + pd.Timedelta(days=int(lo + 1 + rng.integers(0, max(hi - lo, 1))))).strftime("%Y-%m-%d")
            target = PROCESSES[k_trained % 2]
            k_trained += 1
        rows.append({"therapist": t, "trained_on": date, "trained_process": target})
    out = sessions.copy()
    out["start_date"] = out["patient"].map(start).dt.strftime("%Y-%m-%d")
    order = {t: i for i, t in enumerate(therapists["therapist"])}
    table = pd.DataFrame(rows).sort_values("therapist", key=lambda s: s.map(order)).reset_index(drop=True)
    return out, table
