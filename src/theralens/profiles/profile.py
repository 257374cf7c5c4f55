"""Therapist profiles: for each therapist and process, where their patients gain most, with
the uncertainty told honestly (models.md "Profiles").

For each therapist j and process p:

- the slope relative to the average, u1j = b1j - g10, with its 95% interval
  u1j_hat +/- 1.96 cond_sd (lme4's conditional SD), also expressed in the benefit direction
  (``benefit_sign`` * u1j: positive = more benefit than the average therapist);
- the probability that the slope is stronger (more benefit) than average,
  Phi(benefit_sign * u1j_hat / cond_sd), as in ``results.json``;
- the rank among peers with its 95% interval (:func:`theralens.profiles.ranks.rank_intervals`;
  1 = most benefit);
- the caseload mean of the process, its percentile among all therapists and its
  reliability lambda_j (models.md "Decomposition of a process");
- a classification that follows the interval (:mod:`theralens.profiles.language`) and a
  training suggestion.

For each therapist: caseload size, the overall outcome effect u0j in the benefit direction
with its interval, rank and classification, and their moderator values. Below
``min_caseload`` patients (``[report] min_caseload``, default 5), or without a slope of their
own, every classification is "too uncertain to interpret" and says why.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from scipy import stats

from theralens.profiles.language import (
    AVERAGE,
    CATEGORIES,
    UNCERTAIN,
    classify_interval,
    outcome_statement,
    process_kind,
    process_statement,
    training_suggestion,
)
from theralens.profiles.ranks import DEFAULT_DRAWS, DEFAULT_SEED, rank_intervals

if TYPE_CHECKING:  # pragma: no cover
    from theralens.study.result import StudyResult

__all__ = [
    "OutcomeProfile",
    "ProcessProfile",
    "Profiles",
    "TherapistProfile",
    "build_profiles",
    "profiles_from_document",
    "profiles_from_tables",
]

Z975 = float(stats.norm.ppf(0.975))
#: A slope variance at or below this is "estimated at zero".
ZERO_VARIANCE = 1e-10


def _num(v: Any) -> float | None:
    """A finite float, or None."""
    if v is None:
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


@dataclass(frozen=True)
class ProcessProfile:
    """One therapist's profile for one process (models.md "Profiles").

    Fields: ``process`` (its stable, formula-safe name), ``label`` (the user's name, shown)
    and ``kind`` (alliance, expectancy, other);
    ``slope`` b1j with ``slope_ci_low``/``slope_ci_high`` (as in ``results.json``);
    ``average_slope`` g10; ``deviation`` u1j = b1j - g10 with ``deviation_sd`` (conditional SD)
    and 95% interval ``deviation_ci_low``/``deviation_ci_high``; ``benefit``,
    ``benefit_ci_low``, ``benefit_ci_high``: the same in the benefit direction (positive = more
    benefit than average); ``prob_stronger`` (P(stronger than average)); ``slope_reliability``;
    ``rank_median``, ``rank_low``, ``rank_high`` among ``n_ranked`` therapists (1 = most
    benefit); ``caseload_mean`` (Xbar_j), ``caseload_percentile`` (percent of peers with a
    lower mean, ties counted half), ``peer_median``, ``caseload_reliability`` (lambda_j);
    ``category`` (one of :data:`theralens.profiles.language.CATEGORIES`), ``statement``,
    ``suggestion`` and ``reason`` (why it is too uncertain, or a caveat).
    """

    process: str
    kind: str
    slope: float | None
    slope_ci_low: float | None
    slope_ci_high: float | None
    average_slope: float | None
    deviation: float | None
    deviation_sd: float | None
    deviation_ci_low: float | None
    deviation_ci_high: float | None
    benefit: float | None
    benefit_ci_low: float | None
    benefit_ci_high: float | None
    prob_stronger: float | None
    slope_reliability: float | None
    rank_median: float | None
    rank_low: float | None
    rank_high: float | None
    n_ranked: int
    caseload_mean: float | None
    caseload_percentile: float | None
    peer_median: float | None
    caseload_reliability: float | None
    category: str
    statement: str
    suggestion: str
    reason: str = ""
    label: str = ""


@dataclass(frozen=True)
class OutcomeProfile:
    """The therapist's overall outcome effect u0j (random intercept, outcome units).

    Fields: ``intercept_deviation`` u0j and ``intercept_sd`` (conditional SD); ``benefit`` =
    benefit_sign * u0j with its 95% interval ``benefit_ci_low``/``benefit_ci_high`` (positive =
    patients improved more than with the average therapist); ``prob_better``; ``rank_median``,
    ``rank_low``, ``rank_high`` among ``n_ranked``; ``category``, ``statement``, ``reason``.
    """

    intercept_deviation: float | None
    intercept_sd: float | None
    benefit: float | None
    benefit_ci_low: float | None
    benefit_ci_high: float | None
    prob_better: float | None
    rank_median: float | None
    rank_low: float | None
    rank_high: float | None
    n_ranked: int
    category: str
    statement: str
    reason: str = ""


@dataclass(frozen=True)
class TherapistProfile:
    """Everything a profile page shows for one therapist.

    Fields: ``therapist`` (id as text), ``n_patients`` (analysed caseload),
    ``interpretable`` (caseload at least ``min_caseload``), ``reason`` (why not),
    ``outcome`` (:class:`OutcomeProfile`), ``processes`` (:class:`ProcessProfile` per
    process, in the study's order), ``moderators`` (name -> value, None when missing).
    """

    therapist: str
    n_patients: int
    interpretable: bool
    reason: str
    outcome: OutcomeProfile
    processes: tuple[ProcessProfile, ...]
    moderators: Mapping[str, float | None] = field(default_factory=dict)

    def process(self, name: str) -> ProcessProfile:
        """The profile of process ``name``."""
        for p in self.processes:
            if p.process == name:
                return p
        known = ", ".join(p.process for p in self.processes)
        raise KeyError(f"no process {name!r} in the profile of therapist {self.therapist!r}; known: {known}")

    def to_frame(self) -> pd.DataFrame:
        """One row per process (all :class:`ProcessProfile` fields plus the therapist)."""
        rows = [{"therapist": self.therapist, "n_patients": self.n_patients, **asdict(p)} for p in self.processes]
        return pd.DataFrame(rows)


@dataclass(frozen=True)
class Profiles:
    """Profiles of every therapist of a study (models.md "Profiles").

    Fields: ``therapists`` (:class:`TherapistProfile`, in the study's order), ``processes``,
    ``design`` ("patient" or "session"), ``benefit_sign`` (-1 when a higher outcome is worse),
    ``min_caseload``, the Monte Carlo settings of the rank intervals ``draws`` and
    ``seed``, and ``labels`` (stable name of a process or moderator -> the user's name).
    Views: :meth:`to_frame` (therapist x process), :meth:`overview` (one row per therapist),
    :meth:`category_counts` and :meth:`summary`.
    """

    therapists: tuple[TherapistProfile, ...]
    processes: tuple[str, ...]
    design: str
    benefit_sign: int
    min_caseload: int
    draws: int = DEFAULT_DRAWS
    seed: int = DEFAULT_SEED
    labels: Mapping[str, str] = field(default_factory=dict)

    def label(self, name: str) -> str:
        """The user's name of the process or moderator ``name``."""
        return self.labels.get(name, name)

    def __iter__(self) -> Iterator[TherapistProfile]:
        return iter(self.therapists)

    def __len__(self) -> int:
        return len(self.therapists)

    def __getitem__(self, therapist: str) -> TherapistProfile:
        for t in self.therapists:
            if t.therapist == str(therapist):
                return t
        raise KeyError(f"no therapist {therapist!r} in these profiles")

    def to_frame(self) -> pd.DataFrame:
        """Tidy: one row per therapist and process."""
        frames = [t.to_frame() for t in self.therapists]
        if not frames:
            return pd.DataFrame(columns=["therapist", "n_patients", *ProcessProfile.__dataclass_fields__])
        return pd.concat(frames, ignore_index=True)

    def overview(self) -> pd.DataFrame:
        """One row per therapist: caseload, interpretability, outcome effect, and the category
        of every process (column ``category_<process>``)."""
        rows = []
        for t in self.therapists:
            row: dict[str, Any] = {
                "therapist": t.therapist, "n_patients": t.n_patients, "interpretable": t.interpretable,
                "outcome_benefit": t.outcome.benefit, "outcome_ci_low": t.outcome.benefit_ci_low,
                "outcome_ci_high": t.outcome.benefit_ci_high, "outcome_category": t.outcome.category,
            }
            for p in t.processes:
                row[f"category_{p.process}"] = p.category
            rows.append(row)
        return pd.DataFrame(rows)

    def category_counts(self) -> pd.DataFrame:
        """Number of therapists in each category, per process (rows) and category (columns)."""
        tidy = self.to_frame()
        counts = pd.crosstab(tidy["process"], tidy["category"]) if len(tidy) else pd.DataFrame()
        return counts.reindex(index=list(self.processes), columns=list(CATEGORIES), fill_value=0)

    def summary(self) -> str:
        """Plain-text overview of the categories per process."""
        lines = [f"Therapist profiles: {len(self)} therapists, minimum caseload {self.min_caseload}; "
                 f"rank intervals from {self.draws} draws (seed {self.seed})."]
        counts = self.category_counts()
        for p in self.processes:
            parts = [f"{int(counts.loc[p, c])} {c}" for c in CATEGORIES]
            lines.append(f"  {p}: " + ", ".join(parts))
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()


def _percentile(values: pd.Series) -> pd.Series:
    """Percent of the other therapists with a lower value (ties count half)."""
    v = pd.to_numeric(values, errors="coerce").astype(float)
    ok = v.notna()
    n = int(ok.sum())
    out = pd.Series(np.nan, index=v.index)
    if n < 2:
        return out
    x = v[ok].to_numpy()
    lower = (x[None, :] < x[:, None]).sum(axis=1)
    ties = (x[None, :] == x[:, None]).sum(axis=1) - 1
    out[ok] = 100.0 * (lower + 0.5 * ties) / (n - 1)
    return out


def _uncertain_reason(n_patients: int, estimable: bool, min_caseload: int, design: str) -> str:
    if not estimable:
        what = "within-therapist" if design == "patient" else "within-patient"
        return (f"only {n_patients} analysed patient{'s' if n_patients != 1 else ''}; at least two are needed for a "
                f"{what} slope of their own")
    if n_patients < min_caseload:
        return (f"only {n_patients} analysed patients, fewer than the minimum caseload of {min_caseload} "
                "([report] min_caseload) for interpreting a profile")
    return ""


def profiles_from_tables(
    slopes: pd.DataFrame,
    therapists: pd.DataFrame,
    *,
    processes: Sequence[str],
    average_slopes: Mapping[str, float],
    benefit_sign: int,
    design: str = "patient",
    slope_variances: Mapping[str, float] | None = None,
    caseload_reliability: pd.DataFrame | None = None,
    min_caseload: int = 5,
    draws: int = DEFAULT_DRAWS,
    seed: int = DEFAULT_SEED,
    labels: Mapping[str, str] | None = None,
) -> Profiles:
    """Profiles from tidy tables (the seam :func:`profiles_from_document` uses; handy in tests).

    ``slopes``: one row per therapist and process as ``StudyResult.aim2.therapists``
    (process, therapist, slope, ci_low, ci_high, deviation, deviation_sd,
    prob_stronger_than_average, slope_reliability, n_patients, estimable).
    ``therapists``: one row per therapist as ``StudyResult.therapists()`` (therapist,
    n_patients, intercept_deviation, intercept_sd, ``mean_<process>``, ``moderator_<name>``).
    ``average_slopes``: g10 per process; ``slope_variances``: Var(u1j) per process (a zero
    variance is explained in the reason); ``caseload_reliability``: therapist, process,
    reliability (lambda_j); ``labels``: the user's names of processes and moderators (stable
    name -> label; wording and pages use them).
    """
    if benefit_sign not in (-1, 1):
        raise ValueError(f"benefit_sign must be -1 or +1, got {benefit_sign!r}")
    ther = therapists.copy()
    ther["therapist"] = ther["therapist"].astype(str)
    ther = ther.set_index("therapist")
    sl = slopes.copy()
    sl["therapist"] = sl["therapist"].astype(str)
    variances = dict(slope_variances or {})
    labels = dict(labels or {})
    rel = None
    if caseload_reliability is not None and len(caseload_reliability):
        rel = caseload_reliability.assign(therapist=caseload_reliability["therapist"].astype(str)).set_index(
            ["therapist", "process"])["reliability"]

    # outcome effect u0j: benefit direction, interval, rank
    u0 = pd.to_numeric(ther["intercept_deviation"], errors="coerce").astype(float)
    u0sd = pd.to_numeric(ther["intercept_sd"], errors="coerce").astype(float)
    out_ranks = rank_intervals(u0, u0sd, benefit_sign, draws=draws, seed=seed)

    per_process: dict[str, dict[str, Any]] = {}
    for p in processes:
        mine = sl[sl["process"] == p].set_index("therapist")
        est = mine["estimable"].astype(bool) if "estimable" in mine else pd.Series(True, index=mine.index)
        dev = pd.to_numeric(mine["deviation"], errors="coerce").astype(float).where(est)
        dsd = pd.to_numeric(mine["deviation_sd"], errors="coerce").astype(float).where(est)
        col = f"mean_{p}"
        means = ther[col] if col in ther else pd.Series(np.nan, index=ther.index)
        per_process[p] = {
            "rows": mine,
            "ranks": rank_intervals(dev, dsd, benefit_sign, draws=draws, seed=seed),
            "means": pd.to_numeric(means, errors="coerce").astype(float),
            "percentile": _percentile(means),
            "peer_median": float(pd.to_numeric(means, errors="coerce").median()),
        }

    mod_cols = [c for c in ther.columns if c.startswith("moderator_")]
    profiles = []
    for t in ther.index:
        n = int(ther.loc[t, "n_patients"])
        interpretable = n >= min_caseload
        reason_t = _uncertain_reason(n, n >= 2, min_caseload, design) if not interpretable else ""

        dev0, sd0 = _num(u0[t]), _num(u0sd[t])
        if dev0 is not None and sd0 is not None:
            b = benefit_sign * dev0
            o_lo, o_hi, o_prob = b - Z975 * sd0, b + Z975 * sd0, (float(stats.norm.cdf(b / sd0)) if sd0 > 0 else None)
        else:
            b, o_lo, o_hi, o_prob = None, None, None, None
        o_cat = classify_interval(o_lo, o_hi) if interpretable else UNCERTAIN
        o_reason = reason_t if not interpretable else ("" if dev0 is not None else "no estimate")
        r0 = out_ranks.loc[t]
        outcome = OutcomeProfile(
            intercept_deviation=dev0, intercept_sd=sd0, benefit=b, benefit_ci_low=o_lo, benefit_ci_high=o_hi,
            prob_better=o_prob, rank_median=_num(r0["rank_median"]), rank_low=_num(r0["rank_low"]),
            rank_high=_num(r0["rank_high"]), n_ranked=int(r0["n_ranked"]), category=o_cat,
            statement=outcome_statement(o_cat, o_reason), reason=o_reason,
        )

        procs = []
        for p in processes:
            info = per_process[p]
            rows = info["rows"]
            row = rows.loc[t] if t in rows.index else None
            estimable = bool(row["estimable"]) if row is not None and "estimable" in row else row is not None
            dev = _num(row["deviation"]) if row is not None and estimable else None
            dsd = _num(row["deviation_sd"]) if row is not None and estimable else None
            reason = _uncertain_reason(n, estimable, min_caseload, design)
            if dev is not None and dsd is not None:
                d_lo, d_hi = dev - Z975 * dsd, dev + Z975 * dsd
                ben = benefit_sign * dev
                b_lo, b_hi = sorted((benefit_sign * d_lo, benefit_sign * d_hi))
            else:
                d_lo = d_hi = ben = b_lo = b_hi = None
                reason = reason or "no estimate of this therapist's slope"
            category = UNCERTAIN if reason else classify_interval(b_lo, b_hi)
            var = _num(variances.get(p))
            if category == AVERAGE and var is not None and var <= ZERO_VARIANCE:
                reason = ("the model found no detectable differences between therapists in this slope (its variance "
                          "is estimated at zero), so every therapist's slope equals the average")
            rk = info["ranks"].loc[t] if t in info["ranks"].index else None
            ok_rank = rk is not None and estimable
            cm_rel = None
            if rel is not None and (t, p) in rel.index:
                cm_rel = _num(rel.loc[(t, p)])
            label = labels.get(p, p)
            procs.append(ProcessProfile(
                process=p, label=label, kind=process_kind(label),
                slope=_num(row["slope"]) if row is not None and estimable else None,
                slope_ci_low=_num(row["ci_low"]) if row is not None and estimable else None,
                slope_ci_high=_num(row["ci_high"]) if row is not None and estimable else None,
                average_slope=_num(average_slopes.get(p)),
                deviation=dev, deviation_sd=dsd, deviation_ci_low=d_lo, deviation_ci_high=d_hi,
                benefit=ben, benefit_ci_low=b_lo, benefit_ci_high=b_hi,
                prob_stronger=_num(row["prob_stronger_than_average"]) if row is not None and estimable else None,
                slope_reliability=_num(row.get("slope_reliability")) if row is not None and estimable else None,
                rank_median=_num(rk["rank_median"]) if ok_rank else None,
                rank_low=_num(rk["rank_low"]) if ok_rank else None,
                rank_high=_num(rk["rank_high"]) if ok_rank else None,
                n_ranked=int(rk["n_ranked"]) if rk is not None else 0,
                caseload_mean=_num(info["means"].get(t)),
                caseload_percentile=_num(info["percentile"].get(t)),
                peer_median=_num(info["peer_median"]),
                caseload_reliability=cm_rel,
                category=category,
                statement=process_statement(label, category, design, reason),
                suggestion=training_suggestion(label, category),
                reason=reason,
            ))
        moderators = {c[len("moderator_"):]: _num(ther.loc[t, c]) for c in mod_cols}
        profiles.append(TherapistProfile(therapist=str(t), n_patients=n, interpretable=interpretable,
                                         reason=reason_t, outcome=outcome, processes=tuple(procs),
                                         moderators=moderators))
    return Profiles(therapists=tuple(profiles), processes=tuple(processes), design=design,
                    benefit_sign=benefit_sign, min_caseload=min_caseload, draws=draws, seed=seed, labels=labels)


def profiles_from_document(
    doc: Mapping[str, Any],
    *,
    min_caseload: int | None = None,
    draws: int = DEFAULT_DRAWS,
    seed: int = DEFAULT_SEED,
) -> Profiles:
    """Profiles of every therapist from a results document (``results.json``; models.md
    "Profiles"). ``min_caseload`` defaults to the document's ``[report] min_caseload``;
    ``draws`` and ``seed`` set the Monte Carlo rank intervals."""
    processes = [p["name"] for p in doc["processes"]]
    labels = {p["name"]: p["label"] for p in doc["processes"]}
    labels.update({m["name"]: m["label"] for m in doc["moderators"]})
    within = "within_therapist" if doc["design"] == "patient" else "within_patient"
    slope_cols = ["process", "therapist", "slope", "ci_low", "ci_high", "deviation", "deviation_sd",
                  "prob_stronger_than_average", "slope_reliability", "n_patients", "estimable"]
    slopes = pd.DataFrame([{**t, "process": r["process"]} for r in doc["aim2"] for t in r["therapists"]],
                          columns=None if any(r["therapists"] for r in doc["aim2"]) else slope_cols)
    rows, rel = [], []
    for t in doc["therapists"]:
        row = {"therapist": t["therapist"], "n_patients": t["n_patients"],
               "intercept_deviation": t["intercept_deviation"], "intercept_sd": t["intercept_sd"]}
        row.update({f"mean_{p}": v for p, v in t["caseload_means"].items()})
        row.update({f"moderator_{m}": v for m, v in t["moderators"].items()})
        rows.append(row)
        rel += [{"therapist": t["therapist"], "process": p, "reliability": v}
                for p, v in t["caseload_reliability"].items()]
    therapists = pd.DataFrame(rows, columns=None if rows else ["therapist", "n_patients", "intercept_deviation",
                                                                "intercept_sd"])
    options = doc["options"]["report"]
    return profiles_from_tables(
        slopes, therapists, processes=processes,
        average_slopes={r["process"]: r["estimate"] for r in doc["aim1"] if r["component"] == within},
        benefit_sign=int(doc["benefit_sign"]), design=doc["design"],
        slope_variances={r["process"]: r["slope_variance"] for r in doc["aim2"]},
        caseload_reliability=pd.DataFrame(rel) if rel else None,
        min_caseload=int(options["min_caseload"]) if min_caseload is None else min_caseload,
        draws=draws, seed=seed, labels=labels,
    )


def build_profiles(
    result: StudyResult,
    *,
    min_caseload: int | None = None,
    draws: int = DEFAULT_DRAWS,
    seed: int = DEFAULT_SEED,
) -> Profiles:
    """Profiles of every therapist of a study result: :func:`profiles_from_document` of its
    results document."""
    return profiles_from_document(result.to_dict(), min_caseload=min_caseload, draws=draws, seed=seed)
