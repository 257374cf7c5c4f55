"""The study's aims under the latent decomposition (issue #10; models.md "Latent decomposition").

Coyne et al. (2022) fitted multilevel SEMs: a therapist's caseload mean of a process is a
latent variable. With about five patients per therapist the observed caseload mean has
reliability lambda = n rho / (1 + (n - 1) rho) well below 1, and the manifest between-therapist
coefficient converges to lambda b_between + (1 - lambda) b_within, its moderator to
lambda g03 + (1 - lambda) g11 (Luedtke et al. 2008; Grilli & Rampichini 2011). The latent
estimates (:mod:`theralens.latent.ml`, full-information ML with adaptive quadrature over the
therapist slopes) remove that bias at the price of precision when rho is low and therapists are
few (Zitzmann et al. 2015), which is why ``decomposition = "both"`` shows them side by side.

- Aim 1: g10 (within), b_between and the contextual effect b_between - g10, all processes jointly,
  with therapist random slopes on every process.
- Aim 3: each moderator (or all, ``joint``) on the within slope (G11) and on the between
  association (G03), therapists without a value left out, as in the manifest analysis.
- Aim 2 (slope variance tests) stays with the manifest REML model: the within-therapist slope is
  not biased by the manifest decomposition. The latent model's slope SDs and each therapist's
  slope (conditional mean and SD) are reported beside it and feed the profiles when
  ``decomposition = "latent"``.
- The within x between interaction is not estimated under the latent decomposition: the product
  of a latent mean with a latent deviation is not Gaussian given the slopes, so the likelihood
  would need quadrature over the latent means as well. The result says so.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from theralens.data.decompose import LOW_RELIABILITY, PatientTable, SessionTable
from theralens.latent.ml import LatentFit, fit_latent, latent_stats

__all__ = ["ANCILLARY_NOTE", "LatentResults", "aim2_therapists", "latent_aims", "latent_session_aims",
           "low_reliability_advice", "merge_side_by_side"]

Z975 = float(stats.norm.ppf(0.975))

ANCILLARY_NOTE = ("The within x between interaction is estimated under the manifest decomposition only: under the "
                  "latent decomposition it is the product of two latent variables, which this ML estimator does "
                  "not integrate.")


@dataclass
class LatentResults:
    """The aims under the latent decomposition.

    Tables are keyed by stable names (``process``, ``moderator``) with ``*_label`` for display.
    Fields: ``estimator`` ("ml" or "bayes"), ``bias_correction`` ("none", or "jackknife": the
    ML estimates of aims 1 and 3 are then jackknife bias-corrected, with jackknife SEs, t_{J-1}
    p-values and intervals, and the tables add ``ml_estimate``, ``ml_se``, ``jackknife_bias``
    and ``df``), ``aim1`` (process, component in within_therapist /
    between_therapist / contextual, estimate, se, z, p, ci_low, ci_high, reliability = mean
    lambda_j of the latent caseload means), ``aim3`` (process, moderator, column, target,
    estimate, se, z, p, ci_low, ci_high, therapists), ``variances`` (latent caseload-mean and
    patient-deviation variances, slope SDs with SEs, intercept and residual SDs), ``therapists``
    (per therapist and process: latent caseload mean and its SD, slope, se, ci, deviation,
    deviation_sd, prob_stronger_than_average, n_patients, estimable), ``reliability`` (per
    process: icc = T/(T+S), mean and min lambda_j), ``fits`` (role -> :class:`LatentFit`, or the
    ``BayesFit`` of the session design),
    ``notes`` and ``warnings`` (plain sentences).
    """

    estimator: str
    aim1: pd.DataFrame
    aim3: pd.DataFrame
    variances: pd.DataFrame
    therapists: pd.DataFrame
    reliability: pd.DataFrame
    fits: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    bias_correction: str = "none"


def _jackknifed(table: pd.DataFrame, fit: LatentFit, keys: list[str]) -> pd.DataFrame:
    """``table`` (rows of ``fit.effects`` or ``fit.moderators``) with the jackknife's
    bias-corrected estimates, SEs, t_{J-1} tests and intervals in place of the ML ones
    (:meth:`~theralens.latent.ml.LatentFit.jackknife`), the ML estimate and SE kept beside."""
    jk = fit.jackknife().rename(columns={"component": keys[-1]})
    jk = jk.drop(columns=[c for c in ("moderator",) if c not in keys])
    out = table.rename(columns={"estimate": "ml_estimate", "se": "ml_se"}).drop(columns=["z", "p", "ci_low", "ci_high"])
    out = out.merge(jk[[*keys, "jackknife_estimate", "jackknife_bias", "se", "df", "ci_low", "ci_high"]], on=keys,
                    how="left").rename(columns={"jackknife_estimate": "estimate"})
    with np.errstate(divide="ignore", invalid="ignore"):
        out["t"] = out["estimate"] / out["se"]
    out["p"] = 2.0 * stats.t.sf(np.abs(out["t"]), out["df"])
    return out


def _reliability(fit: LatentFit) -> pd.DataFrame:
    """lambda_j = T_pp / (T_pp + S_pp / n_j) per process at the latent estimates (models.md)."""
    T, S, n = fit.params["T"], fit.params["S"], fit.stats.n
    rows = []
    for i, p in enumerate(fit.stats.processes):
        lam = T[i, i] / (T[i, i] + S[i, i] / n)
        rows.append({"process": p, "icc": float(T[i, i] / (T[i, i] + S[i, i])),
                     "mean_reliability": float(lam.mean()), "min_reliability": float(lam.min())})
    return pd.DataFrame(rows)


def _check(fit: LatentFit, role: str, warnings: list[str]) -> None:
    if not fit.converged:
        warnings.append(f"The latent {role} model did not converge ({'; '.join(fit.messages) or 'optimizer'}): its "
                        "estimates are not an answer.")
    elif fit.messages:
        warnings.append(f"Latent {role} model: {'; '.join(fit.messages)}.")


def latent_aims(table: PatientTable, moderators: pd.DataFrame | None, labels: dict[str, str],
                joint: bool = False, bias_correction: str = "none") -> LatentResults:
    """Aims 1 and 3 (and the therapist slopes) under the latent decomposition of ``table``;
    ``bias_correction = "jackknife"`` reports the effects of aims 1 and 3 jackknife
    bias-corrected (:class:`LatentResults`; the therapist slopes stay the ML fit's)."""
    jackknife = bias_correction == "jackknife"
    frame = table.table
    procs = list(table.processes)
    adjust = [*table.adjust_for, *table.covariates]
    warnings: list[str] = []
    main = fit_latent(latent_stats(frame, procs, table.response, adjust))
    _check(main, "main", warnings)
    fits = {"main": main}
    rel = _reliability(main)
    for r in rel.itertuples():
        if r.icc < 1e-3:
            warnings.append(f"The latent caseload means of {labels.get(r.process, r.process)} show no variance between "
                            "therapists (ICC below .001): its latent between-therapist effect is not identified (see "
                            "its standard error).")
    a1 = _jackknifed(main.effects, main, ["process", "component"]) if jackknife and main.converged \
        else main.effects.copy()
    a1["reliability"] = a1["process"].map(rel.set_index("process")["mean_reliability"])
    a1.insert(1, "process_label", a1["process"].map(lambda p: labels.get(p, p)))
    rel.insert(1, "process_label", rel["process"].map(lambda p: labels.get(p, p)))

    rows = []
    if moderators is not None and moderators.shape[1] > 1:
        mod_labels = dict(moderators.attrs.get("labels", {}))
        cols = [c for c in moderators.columns if c != "therapist"]
        for wset in [cols] if joint else [[c] for c in cols]:
            m = moderators[["therapist", *wset]].copy()
            m["therapist"] = m["therapist"].astype(str)
            have = m.dropna(subset=wset)
            sub = frame[frame["therapist"].astype(str).isin(set(have["therapist"]))]
            role = "joint_moderators" if joint else f"moderator:{wset[0]}"
            fit = fit_latent(latent_stats(sub, procs, table.response, adjust, have, wset))
            _check(fit, role, warnings)
            fits[role] = fit
            mt = _jackknifed(fit.moderators, fit, ["process", "moderator", "target"]) if jackknife and fit.converged \
                else fit.moderators.copy()
            mt.insert(1, "process_label", mt["process"].map(lambda p: labels.get(p, p)))
            mt.insert(3, "moderator_label", mt["moderator"].map(lambda w: mod_labels.get(w, w)))
            mt["centre"] = mt["moderator"].map(dict(zip(fit.stats.moderators, fit.stats.moderator_centers)))
            mt["therapists"] = int(fit.stats.J)
            rows.append(mt)
    a3 = pd.concat(rows, ignore_index=True) if rows else pd.DataFrame(
        columns=["process", "process_label", "moderator", "moderator_label", "target", "estimate", "se", "z", "p",
                 "ci_low", "ci_high", "centre", "therapists"])

    var = main.variances.copy()
    var.insert(2, "process_label", var["process"].map(lambda p: labels.get(p, p) if p else p))
    ther = _therapist_slopes(main, table, labels)
    notes = [f"Latent decomposition: full-information maximum likelihood with {main.nodes}-point adaptive "
             f"Gauss-Hermite quadrature per therapist slope (log-likelihood stable to "
             f"{max(main.quadrature_change, 1e-12):.1g} against 4 more points); latent caseload means and patient "
             "deviations of every process are modelled jointly with the outcome (Rockwood 2020)."]
    if jackknife:
        notes.append(f"The latent effects of aims 1 and 3 are bias-corrected by the delete-one-therapist jackknife "
                     f"({main.stats.J} refits of the main model; Quenouille 1956, Efron & Tibshirani 1993), with "
                     "jackknife SEs and t tests and intervals on J - 1 df; the ML estimates are kept beside them "
                     "(ml_estimate).")
        if not all(f.converged for f in fits.values()):
            warnings.append("A latent model that did not converge is reported without the jackknife correction.")
    return LatentResults(estimator="ml", aim1=a1, aim3=a3, variances=var, therapists=ther, reliability=rel,
                         fits=fits, notes=notes, warnings=warnings, bias_correction=bias_correction)


def _therapist_slopes(fit: LatentFit, table: PatientTable, labels: dict[str, str]) -> pd.DataFrame:
    """Each therapist's within slope under the latent model, in aim 2's therapist layout.

    slope = E[b_j | data] and deviation_sd = SD[b_j | data] over the quadrature posterior; the
    SE adds Var(g10_hat), as the manifest table does; P(stronger) = Phi(sign * deviation / SD).
    """
    t = fit.therapists.copy()
    sign = table.benefit_sign
    first = fit.slices["g10"].start
    g10_var = {p: float(fit.vcov[first + i, first + i]) for i, p in enumerate(fit.stats.processes)}
    t["se"] = np.sqrt(t["process"].map(g10_var) + t["deviation_sd"] ** 2)
    t["ci_low"] = t["slope"] - Z975 * t["se"]
    t["ci_high"] = t["slope"] + Z975 * t["se"]
    with np.errstate(divide="ignore", invalid="ignore"):
        z = sign * t["deviation"] / t["deviation_sd"]
    t["prob_stronger_than_average"] = np.where(t["deviation_sd"] > 0, stats.norm.cdf(z), 0.5)
    t["estimable"] = t["n_patients"] >= 2
    t.insert(2, "process_label", t["process"].map(lambda p: labels.get(p, p)))
    return t


def latent_session_aims(table: SessionTable, moderators: pd.DataFrame | None, labels: dict[str, str],
                        *, seed: int = 1, **sampler: Any) -> LatentResults:
    """The session (lagged) design under the latent decomposition: Bayesian estimation
    (:func:`theralens.latent.bayes.fit_bayes`, the optional extra ``theralens[bayes]``).

    A run that has not converged keeps its tables in the result but adds nothing to the aim
    tables, and says so in the warnings. ``sampler``: ``chains``, ``warmup``, ``draws`` of
    :func:`~theralens.latent.bayes.fit_bayes` (defaults there).
    """
    from theralens.latent.bayes import fit_bayes  # optional extra: imported only here

    fit = fit_bayes(table, moderators, seed=seed, **sampler)
    stable = {labels.get(p, p): p for p in table.processes}

    def keyed(df: pd.DataFrame) -> pd.DataFrame:
        out = df.copy()
        if "process" in out:
            out.insert(1, "process_label", out["process"])
            out["process"] = out["process"].map(lambda x: stable.get(x, x))
        return out

    a1 = keyed(pd.concat([fit.effects, fit.contextual.rename(columns={"versus": "contrast_with"})],
                         ignore_index=True))
    a3 = keyed(fit.moderators)
    if "column" in a3:
        a3 = a3.rename(columns={"moderator": "moderator_label", "column": "moderator"})
    rel = table.reliability_summary.assign(process_label=lambda d: d["process"].map(lambda x: labels.get(x, x)))
    ther = keyed(fit.therapists)
    ther["estimable"] = ther["n_patients"] >= 2
    warnings = [] if fit.converged else [
        f"The Bayesian latent model {fit.messages[0] if fit.messages else 'did not converge'}; its estimates are "
        "not added to the aim tables (see the latent section's diagnostics)."]
    if not fit.converged:
        a1 = a1.iloc[0:0]
        a3 = a3.iloc[0:0]
    notes = [f"Latent decomposition of the session design: Bayesian estimation (NUTS, {fit.chains} chains x "
             f"{fit.draws} draws after {fit.warmup} warmup, seed {fit.seed}); max R-hat {fit.max_r_hat:.3f}, "
             f"min bulk ESS {fit.min_ess_bulk:.0f}, {fit.divergences} divergent transitions.", *fit.priors]
    return LatentResults(estimator="bayes", aim1=a1, aim3=a3, variances=keyed(fit.slope_sd), therapists=ther,
                         reliability=rel, fits={"main": fit}, notes=notes, warnings=warnings)


def aim2_therapists(latent: LatentResults, within_terms: dict[str, str]) -> pd.DataFrame:
    """The latent model's therapist slopes in aim 2's therapist layout (the table the profiles
    read), for ``decomposition = "latent"``: slope, se, ci, deviation and its SD,
    P(stronger than average), slope reliability 1 - SD(deviation)^2 / Var(u1p), n_patients and
    ``estimable`` (two or more patients; otherwise the slope columns are empty, as in the
    manifest table)."""
    t = latent.therapists.copy()
    var = latent.variances
    sd = var[var["component"] == "slope_sd"].set_index("process")["estimate"].astype(float)
    slope_var = t["process"].map(sd) ** 2
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = np.where(slope_var > 0, 1.0 - t["deviation_sd"] ** 2 / slope_var, 0.0)
    t["slope_reliability"] = np.clip(rel, 0.0, None)
    t["term"] = t["process"].map(within_terms)
    cols = ["process", "process_label", "term", "therapist", "slope", "se", "ci_low", "ci_high", "deviation",
            "deviation_sd", "prob_stronger_than_average", "slope_reliability", "n_patients", "estimable"]
    out = t[cols].astype(object)
    value_cols = cols[4:12]
    out.loc[~t["estimable"].astype(bool), value_cols] = None
    return out.reset_index(drop=True)


def merge_side_by_side(manifest: pd.DataFrame, latent: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """The manifest table with the latent estimate of each row beside it (``latent_*`` columns)."""
    cols = [c for c in ("estimate", "se", "p", "ci_low", "ci_high") if c in latent]
    right = latent[keys + cols + (["reliability"] if "reliability" in latent else [])].rename(
        columns={c: f"latent_{c}" for c in cols})
    return manifest.merge(right, on=keys, how="left")


def low_reliability_advice(rel: pd.DataFrame) -> str | None:
    """The recommendation of issue #10 for a manifest analysis: the latent decomposition
    whenever a process's mean caseload reliability is below .7."""
    low = rel[rel["mean_reliability"] < LOW_RELIABILITY]
    if low.empty:
        return None
    names = ", ".join(f"{r.process_label} ({r.mean_reliability:.2f})" for r in low.itertuples())
    return (f"Recommended: [design] decomposition = \"latent\" (or \"both\"): caseload means are below "
            f"{LOW_RELIABILITY} reliable for {names}, so the manifest between-therapist effects and their moderators "
            "are attenuated toward the within effects; the latent ones are not.")
