"""The study's aims as mixed models (Coyne, Constantino, Boswell & Kraus 2022; models.md).

Patient-level design (one row per patient, the published analysis)::

    Y_ij = b0j + sum_p b1jp (X_ijp - Xbar_jp) + g * baseline_ij + e_ij
    b0j  = g00 + sum_p g01p (Xbar_jp - Xbar_p) + u0j
    b1jp = g10p + u1jp

Session-level (lagged) design: Y_(t+1) on Y_t, time and the within-patient,
between-patient and between-therapist components of every process, with a therapist
intercept, therapist random slopes on the within-patient components and a patient
intercept.

- Aim 1: g10 (within) and g01 (between) for all processes in one model (``main``).
- Aim 2: Var(u1p) per process, its REML likelihood-ratio test against the model without
  that slope (chi-bar-square reference), and each therapist's slope b1jp = g10p + u1jp.
- Aim 3: cross-level moderation W x within component (g11) and W x between component (g03),
  one moderator at a time by default (``joint`` puts all in one model); moderators are
  centred at their mean over the therapists in the model.
- Ancillary: the within x between interaction (g12).

Every table is keyed by stable, formula-safe names (``process``, ``moderator``, ``term``);
``process_label`` and ``moderator_label`` hold the user's names, for display only.

Every model is fitted from the analysis table's rows (:mod:`theralens.study.rows`: a frame by
:func:`theralens.fit_mixed`, a DuckDB relation by :func:`~theralens.model.fit.fit_stats` on its
sufficient statistics, the same fit), so each number can be reproduced from the formula and the
analysis table; ``ddf`` (the study's ``[inference] ddf``) is the df method of
every fit's tests (:mod:`theralens.model.ddf`), and the reduced models of aim 2 take the main
model's.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import stats

from theralens.data.decompose import PatientTable, SessionTable
from theralens.errors import InputError, ModelSpecError
from theralens.model import MixedResult, lrt
from theralens.study.rows import AnalysisRows, as_rows

Z975 = float(stats.norm.ppf(0.975))


@dataclass
class ModelSpec:
    """One fitted model of the study: its role, formula and the table it was fitted on."""

    role: str  # "main", "without_slope:<p>", "moderator:<w>", "joint_moderators", "ancillary"
    formula: str
    fit: MixedResult
    note: str = ""


@dataclass
class DesignTerms:
    """Names of the columns the design uses (formula-safe) and the components of each process."""

    level: str
    response: str
    adjust: list[str]
    processes: tuple[str, ...]
    within: dict[str, str]  # process -> component with a therapist random slope
    between: dict[str, str]  # process -> between-therapist component
    components: dict[str, dict[str, str]]  # process -> {component label: column}
    patient_intercept: bool
    service: bool = False  # a service random intercept: therapists nested in services ([columns] service)

    def fixed_main(self) -> list[str]:
        terms = []
        for p in self.processes:
            terms += list(self.components[p].values())
        return terms + self.adjust

    def random_part(self, slopes: list[str]) -> str:
        inner = " + ".join(["1"] + slopes)
        part = f"({inner} | therapist)"
        if self.patient_intercept:
            part += " + (1 | therapist:patient)"
        if self.service:
            part += " + (1 | service)"
        return part

    def formula(self, extra: list[str] | None = None, slopes: list[str] | None = None) -> str:
        fixed = self.fixed_main() + (extra or [])
        slopes = [self.within[p] for p in self.processes] if slopes is None else slopes
        return f"{self.response} ~ {' + '.join(fixed)} + {self.random_part(slopes)}"


def design_terms(table: PatientTable | SessionTable) -> DesignTerms:
    """The columns and components for ``table``'s design."""
    if isinstance(table, PatientTable):
        comps = {p: {"within_therapist": f"{p}_within", "between_therapist": f"{p}_between"}
                 for p in table.processes}
        return DesignTerms(
            level="patient", response=table.response,
            adjust=list(table.adjust_for) + list(table.covariates), processes=table.processes,
            within={p: f"{p}_within" for p in table.processes},
            between={p: f"{p}_between" for p in table.processes},
            components=comps, patient_intercept=False,
        )
    comps = {}
    for p in table.processes:
        wp, bp, bt = table.components(p)
        comps[p] = {"within_patient": wp, "between_patient": bp, "between_therapist": bt}
    return DesignTerms(
        level="session", response=table.response,
        adjust=[table.lagged_outcome, "time"] + list(table.covariates), processes=table.processes,
        within={p: table.components(p)[0] for p in table.processes},
        between={p: table.components(p)[2] for p in table.processes},
        components=comps, patient_intercept=True,
    )


def coef_name(fit: MixedResult, *parts: str) -> str:
    """The lme4 name of the coefficient whose interaction parts are ``parts`` (any order)."""
    want = set(parts)
    for name in fit.fixed_names:
        if set(name.split(":")) == want:
            return name
    raise KeyError(":".join(parts))


def _row(fit: MixedResult, name: str) -> dict[str, float]:
    est = float(fit.fixed_effects[name])
    se = float(fit.std_errors[name])
    df = float(fit.df[name])
    q = float(stats.t.ppf(0.975, df))
    return {"estimate": est, "se": se, "df": df, "t": est / se,
            "p": float(2 * stats.t.sf(abs(est / se), df)), "ci_low": est - q * se, "ci_high": est + q * se}


def _fit(role: str, formula: str, data: pd.DataFrame | AnalysisRows, note: str = "",
         ddf: str = "satterthwaite") -> ModelSpec:
    """One model of the study, from a frame or the study's rows (:mod:`theralens.study.rows`: rows in memory
    by :func:`~theralens.model.fit.fit_mixed`, a DuckDB relation by its sufficient statistics)."""
    rows = data if isinstance(data, AnalysisRows) else as_rows(data, (), {})
    try:
        return ModelSpec(role=role, formula=formula, fit=rows.fit(formula, ddf), note=note)
    except np.linalg.LinAlgError as exc:
        raise ModelSpecError(f"the {role} model could not be fitted ({exc}); "
                             "check that every process varies within therapists") from None


def aim1(main: MixedResult, terms: DesignTerms, labels: dict[str, str]) -> pd.DataFrame:
    """Within and between effects of every process (one row per process and component)."""
    rows = []
    for p in terms.processes:
        for comp, col in terms.components[p].items():
            rows.append({"process": p, "process_label": labels.get(p, p), "component": comp, "term": col,
                         **_row(main, coef_name(main, col))})
    return pd.DataFrame(rows)


@dataclass
class SlopeResults:
    """Aim 2: ``variance`` (one row per process: slope_variance, slope_sd with its 95%
    profile-likelihood interval slope_sd_ci_low / slope_sd_ci_high (slope_sd_ci_one_sided: the
    interval reaches 0 and its upper bound is the one-sided one), lrt_statistic, lrt_df, p,
    reference, mean and min slope reliability) and ``therapists`` (one row per
    therapist and process: slope, se, ci, the deviation from the average with its
    conditional SD, probability of being stronger than average, n_patients, reliability,
    and ``estimable`` = False for therapists with fewer than two patients)."""

    variance: pd.DataFrame
    therapists: pd.DataFrame
    reduced: list[ModelSpec] = field(default_factory=list)


def aim2(main: ModelSpec, terms: DesignTerms, data: pd.DataFrame | AnalysisRows, labels: dict[str, str],
         benefit_sign: int) -> SlopeResults:
    """Therapist slope variances, their chi-bar-square LRTs, and each therapist's slope.

    The therapist's slope is b1j = g10 + u1j; its SE combines Var(g10_hat) and the
    conditional variance of u1j (lme4's condVar), ignoring their covariance. "Stronger"
    means more benefit: a more negative slope when a higher outcome is worse
    (``benefit_sign`` = -1). P(stronger) = Phi(benefit_sign * u_hat / cond_sd).

    The slope SD's interval is the profile-likelihood interval of lme4's ``confint(m, method =
    "profile")`` (:meth:`~theralens.model.fit.MixedResult.conf_int_varcorr`): how large the
    differences between therapists could be, which a non-significant test alone does not say.
    When that interval reaches 0 it cannot miss the truth from below, and its upper bound is the
    one-sided 95% bound (``boundary="one-sided"``; lme4's two-sided bound over-covers there:
    validation/slope_sd_interval.md); ``slope_sd_ci_one_sided`` says which rows.
    """
    fit = main.fit
    vc = fit.varcorr
    sd_ci = fit.conf_int_varcorr(level=0.95, rows=[("therapist", terms.within[p], None) for p in terms.processes],
                                 boundary="one-sided")
    one_sided = {terms.processes[i] for i in sd_ci.attrs["adjusted"]}
    sd_ci.index = list(terms.processes)
    re = fit.random_effects("therapist")
    rows = as_rows(data, terms.processes, terms.between)
    n_pat = rows.therapists().set_index("therapist")["n_patients"]
    var_rows, ther_rows, reduced = [], [], []
    for p in terms.processes:
        col = terms.within[p]
        name = coef_name(fit, col)
        own = (vc["grp"] == "therapist") & (vc["var1"] == col) & vc["var2"].isna()
        slope_var = float(vc.loc[own, "vcov"].iloc[0])
        others = [terms.within[o] for o in terms.processes if o != p]
        red = _fit(f"without_slope:{p}", terms.formula(slopes=others), rows,
                   note=f"as main, without the therapist random slope of {col}", ddf=fit.ddf)
        reduced.append(red)
        test = lrt(red.fit, fit)
        rows.used(red.fit)
        mine = re[re["term"] == col].set_index("level")
        g10 = float(fit.fixed_effects[name])
        var_g10 = float(fit.vcov.loc[name, name])
        u = mine["estimate"].astype(float)
        csd = mine["cond_sd"].astype(float)
        se = np.sqrt(var_g10 + csd**2)
        npat = n_pat.reindex(mine.index).fillna(0).astype(int)
        estimable = npat >= 2
        with np.errstate(divide="ignore", invalid="ignore"):
            prob = pd.Series(stats.norm.cdf(benefit_sign * u / csd), index=u.index)
            rel = 1.0 - csd**2 / slope_var if slope_var > 0 else pd.Series(0.0, index=u.index)
        rel = rel.clip(lower=0.0)
        var_rows.append({
            "process": p, "process_label": labels.get(p, p),
            "component": "within_therapist" if terms.level == "patient" else "within_patient",
            "term": col, "slope_variance": slope_var, "slope_sd": float(np.sqrt(max(slope_var, 0.0))),
            "slope_sd_ci_low": float(sd_ci.loc[p, "2.5 %"]), "slope_sd_ci_high": float(sd_ci.loc[p, "97.5 %"]),
            "slope_sd_ci_one_sided": p in one_sided,
            "lrt_statistic": test.statistic, "lrt_df": test.df, "p": test.p_value, "reference": test.reference,
            "mean_slope_reliability": float(rel[estimable].mean()) if estimable.any() else float("nan"),
            "min_slope_reliability": float(rel[estimable].min()) if estimable.any() else float("nan"),
        })
        for t in mine.index:
            ok = bool(estimable[t])
            ther_rows.append({
                "process": p, "process_label": labels.get(p, p), "term": col, "therapist": str(t),
                "slope": g10 + float(u[t]) if ok else None,
                "se": float(se[t]) if ok else None,
                "ci_low": g10 + float(u[t]) - Z975 * float(se[t]) if ok else None,
                "ci_high": g10 + float(u[t]) + Z975 * float(se[t]) if ok else None,
                "deviation": float(u[t]) if ok else None,
                "deviation_sd": float(csd[t]) if ok else None,
                "prob_stronger_than_average": float(prob[t]) if ok else None,
                "slope_reliability": float(rel[t]) if ok else None,
                "n_patients": int(npat[t]),
                "estimable": ok,
            })
    return SlopeResults(variance=pd.DataFrame(var_rows), therapists=pd.DataFrame(ther_rows), reduced=reduced)


@dataclass
class ModeratorResults:
    """Aim 3: ``table`` (process, moderator (the coded column), their labels, target, term,
    centre (the moderator's mean the model centred at), estimate, se, df, p, ci, therapists,
    therapists_missing) and the fitted models."""

    table: pd.DataFrame
    models: list[ModelSpec] = field(default_factory=list)


def aim3(terms: DesignTerms, data: pd.DataFrame | AnalysisRows, moderators: pd.DataFrame | None,
         labels: dict[str, str], joint: bool = False, ddf: str = "satterthwaite") -> ModeratorResults:
    """Therapist moderators W of the within slope (W x within component) and of the
    between association (W x between component); centred W enters as a main effect too."""
    if moderators is None or moderators.shape[1] <= 1:
        return ModeratorResults(table=pd.DataFrame(columns=[
            "process", "process_label", "moderator", "moderator_label", "target", "term", "centre", "estimate", "se",
            "df", "t", "p", "ci_low", "ci_high", "therapists", "therapists_missing"]))
    mod_labels = dict(moderators.attrs.get("labels", {}))
    cols = [c for c in moderators.columns if c != "therapist"]
    sets = [cols] if joint else [[c] for c in cols]
    rows, models = [], []
    source = as_rows(data, terms.processes, terms.between)
    for wset in sets:
        m = moderators[["therapist"] + wset].copy()
        m["therapist"] = m["therapist"].astype(str)
        missing = m[wset].isna().any(axis=1)
        have = m.loc[~missing].copy()
        centred, centres = {}, {}
        for w in wset:
            cname = f"{w}_c"
            centres[w] = float(have[w].mean())
            have[cname] = have[w] - centres[w]
            centred[w] = cname
        d = source.with_moderators(have)
        n_with = d.n_therapists
        extra = []
        for w in wset:
            extra.append(centred[w])
            for p in terms.processes:
                extra += [f"{terms.within[p]}:{centred[w]}", f"{terms.between[p]}:{centred[w]}"]
        if n_with < 3:
            raise InputError(f"moderator {', '.join(wset)}: fewer than 3 therapists have a value; "
                             "fill in the therapist table or drop the moderator")
        role = "joint_moderators" if joint else f"moderator:{wset[0]}"
        spec = _fit(role, terms.formula(extra=extra), d,
                    note=f"{int(missing.sum())} therapist(s) without a value left out", ddf=ddf)
        models.append(spec)
        for w in wset:
            for p in terms.processes:
                for target, comp in (("within_slope", terms.within[p]), ("between_association", terms.between[p])):
                    name = coef_name(spec.fit, comp, centred[w])
                    rows.append({"process": p, "process_label": labels.get(p, p), "moderator": w,
                                 "moderator_label": mod_labels.get(w, w), "target": target, "term": name,
                                 "centre": centres[w], **_row(spec.fit, name),
                                 "therapists": int(n_with),
                                 "therapists_missing": int(missing.sum())})
        d.used(spec.fit)
    return ModeratorResults(table=pd.DataFrame(rows), models=models)


def ancillary(terms: DesignTerms, data: pd.DataFrame | AnalysisRows, labels: dict[str, str],
              ddf: str = "satterthwaite") -> tuple[pd.DataFrame, ModelSpec]:
    """The within x between interaction of every process (g12), in one model."""
    extra = [f"{terms.within[p]}:{terms.between[p]}" for p in terms.processes]
    source = as_rows(data, terms.processes, terms.between)
    spec = _fit("ancillary", terms.formula(extra=extra), source, note="as main, plus within x between", ddf=ddf)
    rows = []
    for p in terms.processes:
        name = coef_name(spec.fit, terms.within[p], terms.between[p])
        rows.append({"process": p, "process_label": labels.get(p, p), "term": name, **_row(spec.fit, name)})
    source.used(spec.fit)
    return pd.DataFrame(rows), spec
