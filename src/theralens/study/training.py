"""Training evaluation: did training change the process-outcome slope it targeted, and for whom?
(docs/stability_training.md.)

A difference-in-differences on the within-therapist slopes. Each therapist's patients are
"before" or "after": for a trained therapist, by whether their treatment started before the
training date; for an untrained (comparison) therapist, before the reference date, the median
training date of the trained therapists. For process p, therapist j's slope after is the slope
before plus a change, and the change has a mean for each group of therapists and a random part
(patient-level design; the session design alike on its within-patient component)::

    Y_ij = b0j + (b1j + c_j after_ij) (X_ij - Xbar_j(period)) + g_s (Xbar_j(period) - Xbar_j)
           + g_a after_ij + g_t after_ij trained_j + ... + e_ij
    b1j = g10 + u1j,   c_j = delta_g(j) + v_j,   g(j) in {untrained, untargeted, targeted}
    (u0j, u1j, v_j) ~ N(0, T)

"targeted": trained on p; "untargeted": trained, on another process; "untrained": not trained.
The differences in differences are contrasts of the delta: ``targeted_change`` = delta_targeted
- delta_untargeted (training on p changed p's slope more than training on another process did),
``targeted_vs_untrained`` and ``untargeted_vs_untrained``; with Satterthwaite df, as lmerTest.
Var(v_j) is the between-therapist variance of the change (its SD with a profile-likelihood
interval), and c_j = delta_g(j) + v_j_hat each therapist's own change, with an interval from
Var(delta_hat) + the conditional variance of v_j (as the therapist slopes of aim 2). An interval
that covers zero is "no detectable change", never a failure of the training.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import pandas as pd
from scipy import stats

from theralens.data.config import StudyConfig
from theralens.data.validate import normalize_ids, parse_dates
from theralens.errors import InputError, closest
from theralens.study.aims import Z975, ModelSpec
from theralens.study.document import records
from theralens.study.periods import (
    PatientStarts,
    SectionResult,
    analysed,
    centre_in_periods,
    fit_spec,
    model_entries,
    patient_starts,
    period_formula,
)
from theralens.study.result import StudyResult
from theralens.study.stability import varcorr_interval

__all__ = ["CONTRASTS", "GROUPS", "TrainingResult", "change_words", "read_schedule", "reference_date", "training"]

#: The groups of (therapist, process) pairs whose mean slope change the model estimates.
GROUPS = ("untrained", "untargeted", "targeted")
#: The contrasts between groups: term -> (group, minus group).
CONTRASTS = {"targeted_change": ("targeted", "untargeted"), "targeted_vs_untrained": ("targeted", "untrained"),
             "untargeted_vs_untrained": ("untargeted", "untrained")}
TARGET_SEPARATORS = r"[;,|]"


def change_words(benefit: float | None, low: float | None, high: float | None) -> str:
    """"stronger", "weaker" or "no detectable change" for a slope change expressed in the
    benefit direction (positive = more benefit) with 95% interval [low, high]."""
    if benefit is None or low is None or high is None or not all(map(math.isfinite, (benefit, low, high))):
        return "no estimate"
    if low > 0:
        return "stronger"
    if high < 0:
        return "weaker"
    return "no detectable change"


@dataclass
class TrainingResult(SectionResult):
    """The training evaluation (module docstring).

    Fields: ``study`` (:class:`StudyResult` of the same data); ``schedule`` (one row per
    therapist: therapist, trained, trained_on (ISO date or number), targets (process names,
    ";"-separated), reference (the date that splits their patients), n_before, n_after);
    ``reference_date`` (the comparison therapists' split); ``effects`` (rows process,
    process_label, term, estimate, se, df, t, p, ci_low, ci_high, benefit, words: the mean
    change of each group and the contrasts, ``term == "targeted_change"`` the difference in
    differences); ``variance`` (per process: change_variance, change_sd with ci_low/ci_high of
    the SD); ``therapists`` (per therapist and process: group, n_before, n_after, change, se,
    ci_low, ci_high, benefit, benefit_ci_low, benefit_ci_high, words); ``models``;
    ``warnings``, ``notes``. Views: :meth:`section`, :meth:`to_dict`, :meth:`tables`,
    :meth:`write`, :meth:`summary`.
    """

    section_name: ClassVar[str] = "training"
    study: StudyResult
    schedule: pd.DataFrame
    reference_date: str
    effects: pd.DataFrame
    variance: pd.DataFrame
    therapists: pd.DataFrame
    models: list[ModelSpec] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def section(self) -> dict[str, Any]:
        """The ``training`` section of ``results.json`` (JSON-ready): ``rows`` are the effects."""
        return {
            "reference_date": self.reference_date, "rows": records(self.effects),
            "variance": records(self.variance),
            "therapists": records(self.therapists), "schedule": records(self.schedule),
            "models": model_entries(self.models),
            "warnings": list(self.warnings), "notes": list(self.notes),
        }



    def tables(self) -> dict[str, pd.DataFrame]:
        """The CSV tables of this section, by file name."""
        return {"training_effects.csv": self.effects, "training_variance.csv": self.variance,
                "training_therapists.csv": self.therapists, "training_schedule.csv": self.schedule}


    def summary(self) -> str:
        n_trained = int(self.schedule["trained"].sum())
        lines = [f"Training evaluation: {n_trained} trained and {len(self.schedule) - n_trained} comparison "
                 f"therapists (comparison split at {self.reference_date}); change in the within slope after training:"]
        shown = self.effects[["process_label", "term", "estimate", "se", "df", "ci_low", "ci_high", "words"]]
        lines.append(shown.to_string(index=False, float_format=lambda v: f"{v:.3g}"))
        if len(self.variance):
            lines.append(self.variance[["process_label", "change_sd", "ci_low", "ci_high"]].to_string(
                index=False, float_format=lambda v: f"{v:.3g}"))
        if self.warnings:
            lines += ["Warnings:"] + [f"- {w}" for w in self.warnings]
        return "\n".join(lines)


    def __repr__(self) -> str:
        parts = "; ".join(f"{r['process_label']} targeted_change {r['estimate']:.3g} [{r['ci_low']:.3g}, "
                          f"{r['ci_high']:.3g}] ({r['words']})" for r in self.effects.to_dict("records")
                          if r["term"] == "targeted_change")
        return f"<TrainingResult: {int(self.schedule['trained'].sum())} trained therapists; {parts}>"

    def _repr_html_(self) -> str:
        from theralens.display import html_view

        shown = self.effects[["process_label", "term", "estimate", "se", "df", "ci_low", "ci_high", "words"]]
        return html_view("theralens training evaluation", [f"Warning: {w}" for w in self.warnings],
                         {"training": shown, "variance of the change": self.variance},
                         index={"training": False, "variance of the change": False})


def read_schedule(table: pd.DataFrame, result: StudyResult, config: StudyConfig, starts: PatientStarts,
                  source: str = "therapist data") -> pd.DataFrame:
    """Check the training columns of the therapist ``table`` and return one row per analysed
    therapist: therapist, trained, date (Timestamp or number; NaT/NaN when untrained) and
    targets (tuple of process names). Therapists not in the table are untrained."""
    tc = config.training
    id_col = config.columns.therapist
    needed = ((id_col, "therapist id", "[columns] therapist"), (tc.date, "training date", "[training] date"),
              (tc.target, "training target", "[training] target"))
    for col, what, key in needed:
        if col not in table.columns:
            near = closest(col, [str(c) for c in table.columns])
            hint = f' (did you mean "{near}"?)' if near else ""
            raise InputError(f'{source}: no column "{col}" for the {what}{hint}; add it to the therapist table or set '
                             f"{key} in the config")
    first_row = int(table.attrs.get("first_data_row", 2))
    rows = np.arange(len(table)) + first_row
    ids = normalize_ids(table[id_col]).astype("string")
    raw = table[tc.date]
    if pd.api.types.is_datetime64_any_dtype(raw):
        dates, kind = pd.to_datetime(raw).astype("datetime64[ns]"), "date"
    elif pd.api.types.is_numeric_dtype(raw) and not pd.api.types.is_bool_dtype(raw):
        dates, kind = pd.to_numeric(raw, errors="coerce").astype(float), "number"
    else:
        text = raw.astype("string").str.strip().replace("", pd.NA)
        numbers = pd.to_numeric(text, errors="coerce")
        if starts.kind == "number" and text.notna().any() and numbers[text.notna()].notna().all():
            dates, kind = numbers.astype(float), "number"
        else:
            dates = parse_dates(text, tc.date, rows, source, role="training date",
                                fix="write each training date like 2021-03-15, or leave it empty for an untrained "
                                    "therapist")
            kind = "date"
    if dates.notna().any() and kind != starts.kind:
        raise InputError(f"{source}: the training dates in column {tc.date!r} are {kind}s but the treatment starts "
                         f"(column {starts.column!r}) are {starts.kind}s; give both as dates, or both as numbers")
    labels = {result.label(p): p for p in result.terms.processes}
    out = []
    by_id = {}
    for i, tid in enumerate(ids):
        if pd.isna(tid):
            continue
        target_text = table[tc.target].iloc[i]
        targets: list[str] = []
        if isinstance(target_text, str) or (target_text is not None and not pd.isna(target_text)):
            for part in re.split(TARGET_SEPARATORS, str(target_text)):
                name = part.strip()
                if not name:
                    continue
                if name not in labels:
                    valid = ", ".join(repr(k) for k in labels)
                    raise InputError(f"{source}: row {rows[i]}: training target {name!r} of therapist {tid} (column "
                                     f"{tc.target!r}) is not a configured process; use one of {valid} ([columns] "
                                     "process), several separated by ';'")
                targets.append(labels[name])
        date = dates.iloc[i]
        if targets and pd.isna(date):
            raise InputError(f"{source}: row {rows[i]}: therapist {tid} has a training target but no training date in "
                             f"column {tc.date!r}; fill in the date, or clear the target of an untrained therapist")
        by_id[str(tid)] = (not pd.isna(date), date, tuple(dict.fromkeys(targets)))
    for t in sorted(result.table.table["therapist"].astype(str).unique()):
        trained, date, targets = by_id.get(t, (False, None, ()))
        out.append({"therapist": t, "trained": bool(trained), "date": date if trained else None, "targets": targets})
    frame = pd.DataFrame(out)
    if not frame["trained"].any():
        raise InputError(f"{source}: no analysed therapist has a training date in column {tc.date!r}; the training "
                         "evaluation needs trained therapists (and, ideally, untrained ones to compare with)")
    return frame


def reference_date(dates: list[Any]) -> Any:
    """Where the patients of untrained therapists are split: the median of the trained
    therapists' training dates (the midpoint of the middle two for an even count; a date is
    taken at the start of its day)."""
    ref = pd.Series(dates).sort_values().reset_index(drop=True)
    if ref.empty:
        raise InputError("no training dates: the reference date of untrained therapists needs trained ones")
    mid = len(ref) // 2
    value = ref.iloc[mid] if len(ref) % 2 else ref.iloc[mid - 1] + (ref.iloc[mid] - ref.iloc[mid - 1]) / 2
    return value.normalize() if isinstance(value, pd.Timestamp) else float(value)


def _iso(v: Any) -> Any:
    if v is None or (not isinstance(v, str) and pd.isna(v)):
        return None
    return v.strftime("%Y-%m-%d") if isinstance(v, pd.Timestamp) else float(v)


def training(
    data: StudyResult | pd.DataFrame,
    therapists: pd.DataFrame,
    config: StudyConfig | None = None,
    *,
    sessions: pd.DataFrame | None = None,
    level: float = 0.95,
    intervals: bool = True,
    source: str = "sessions data",
    therapists_source: str = "therapist data",
) -> TrainingResult:
    """The difference-in-differences of the therapist slopes around training (module docstring).

    ``data``: a :class:`StudyResult` (its config is used, or ``config``'s ``[training]`` when
    given; pass the raw ``sessions`` when ``[training] start`` names one of their columns) or the
    sessions DataFrame, analysed first with ``therapists`` and ``config``; ``therapists``: the
    therapist table with the columns of ``[training] date`` and ``target`` (and any moderators).
    ``intervals=False`` leaves out the profile-likelihood interval of the change SD (its bounds
    are then None, with the reason in ``ci_note``): the effects are the same, computed sooner
    (what a power study needs, :mod:`theralens.planning.loop`).
    """
    if therapists is None:
        raise InputError("the training evaluation needs the therapist table with the training date and target "
                         "columns ([training] date, target); pass --therapists FILE")
    result, raw = analysed(data, therapists, config, source, therapists_source)
    cfg = config if config is not None else result.config  # its [training] names the columns
    starts = patient_starts(result.data, cfg, sessions if sessions is not None else raw, source=str(result.data.source))
    schedule = read_schedule(therapists, result, cfg, starts, source=therapists_source)
    reference = reference_date(list(schedule.loc[schedule["trained"], "date"]))
    frame = result.table.table.copy()
    frame["therapist"] = frame["therapist"].astype(str)
    frame["patient"] = frame["patient"].astype(str)
    sched = schedule.set_index("therapist")
    split_at = sched["date"].where(sched["trained"], reference)
    start = frame["patient"].map(starts.values)
    after = pd.Series(np.asarray(start >= frame["therapist"].map(split_at)).astype(int), index=frame.index)
    pats = frame.drop_duplicates("patient").assign(after=after.loc[frame.drop_duplicates("patient").index])
    n_after = pats.groupby("therapist")["after"].sum()
    n_all = pats.groupby("therapist").size()
    schedule = schedule.assign(
        n_before=schedule["therapist"].map(n_all - n_after).astype(int),
        n_after=schedule["therapist"].map(n_after).astype(int),
        reference=[_iso(split_at[t]) for t in schedule["therapist"]])
    for r in schedule[schedule["trained"]].to_dict(orient="records"):
        for side, n in (("before", r["n_before"]), ("after", r["n_after"])):
            if n == 0:
                raise InputError(
                    f"{therapists_source}: therapist {r['therapist']} was trained on {_iso(r['date'])} but has no "
                    f"analysed patient whose treatment started {side} it; a change needs patients on both sides of the "
                    f"training date: check the date (column {cfg.training.date!r}) or leave it empty for an untrained "
                    "therapist")
    effects, variance, ther_rows, models = [], [], [], []
    terms = result.terms
    sign = result.benefit_sign
    is_trained = frame["therapist"].map(sched["trained"]).astype(bool)
    for p in terms.processes:
        targeted = frame["therapist"].map(sched["targets"].map(lambda ts, p=p: p in ts)).astype(bool)
        group = np.where(~is_trained, "untrained", np.where(targeted, "targeted", "untargeted"))
        d = frame.copy()
        c = centre_in_periods(d, terms, p, after)
        slope, change = f"{p}_slope", f"{p}_change"
        d["after_training"] = after
        d[slope] = c["slope"]
        d[change] = c["slope"] * after
        fixed = ["after_training"]
        if (~is_trained).any():
            d["after_x_trained"] = after * is_trained.astype(int)
            fixed.append("after_x_trained")
        if terms.level == "patient":
            d[f"{p}_period_shift"] = c["shift"]
            fixed.append(f"{p}_period_shift")
        fixed.append(slope)
        present = [g for g in GROUPS if ((group == g) & (after == 1)).any() and ((group == g) & (after == 0)).any()]
        for g in present:
            d[f"{p}_change_{g}"] = d[change] * (group == g)
            fixed.append(f"{p}_change_{g}")
        formula = period_formula(terms, p, fixed, [slope, change])
        spec = fit_spec(f"training:{p}", formula, d, note="therapist slopes before and after training",
                        ddf=result.config.inference.ddf)
        models.append(spec)
        fit = spec.fit
        label = result.label(p)
        coefs = {g: f"{p}_change_{g}" for g in present}
        for g in present:
            effects.append(_effect_row(fit, {coefs[g]: 1.0}, p, label, f"change_{g}", sign, level))
        for term, (a, b) in CONTRASTS.items():
            if a in coefs and b in coefs:
                effects.append(_effect_row(fit, {coefs[a]: 1.0, coefs[b]: -1.0}, p, label, term, sign, level))
        vc = fit.varcorr
        own = (vc["grp"] == "therapist") & (vc["var1"] == change) & vc["var2"].isna()
        var = float(vc.loc[own, "vcov"].iloc[0])
        lo, hi, method = (varcorr_interval(fit, change, None, level) if intervals else
                          (None, None, "not computed (intervals=False)"))
        variance.append({"process": p, "process_label": label, "change_variance": var,
                         "change_sd": math.sqrt(max(var, 0.0)), "ci_low": lo, "ci_high": hi,
                         "ci_method": method if lo is not None else None,
                         "ci_note": None if lo is not None else method})
        re = fit.random_effects("therapist")
        v = re[re["term"] == change].set_index("level")
        therapist_group = pd.Series(group, index=frame.index).groupby(frame["therapist"]).first()
        for t in schedule["therapist"]:
            g = str(therapist_group[t])
            row = sched.loc[t]
            base = {"process": p, "process_label": label, "therapist": t, "group": g,
                    "trained": bool(row["trained"]), "targeted": g == "targeted",
                    "n_before": int(schedule.loc[schedule["therapist"] == t, "n_before"].iloc[0]),
                    "n_after": int(schedule.loc[schedule["therapist"] == t, "n_after"].iloc[0])}
            if g not in coefs or t not in v.index:
                ther_rows.append({**base, "change": None, "se": None, "ci_low": None, "ci_high": None,
                                  "benefit": None, "benefit_ci_low": None, "benefit_ci_high": None,
                                  "words": "no estimate"})
                continue
            name = coefs[g]
            est = float(fit.fixed_effects[name]) + float(v.loc[t, "estimate"])
            se = math.sqrt(float(fit.vcov.loc[name, name]) + float(v.loc[t, "cond_sd"]) ** 2)
            lo_t, hi_t = est - Z975 * se, est + Z975 * se
            b_lo, b_hi = sorted((sign * lo_t, sign * hi_t))
            ther_rows.append({**base, "change": est, "se": se, "ci_low": lo_t, "ci_high": hi_t, "benefit": sign * est,
                              "benefit_ci_low": b_lo, "benefit_ci_high": b_hi,
                              "words": change_words(sign * est, b_lo, b_hi)})
    shown = schedule.assign(trained_on=[_iso(x) for x in schedule["date"]],
                            targets=[";".join(result.label(p) for p in ts) for ts in schedule["targets"]])
    shown = shown[["therapist", "trained", "trained_on", "targets", "reference", "n_before", "n_after"]]
    warnings, notes = _messages(result, schedule, effects, _iso(reference), variance)
    return TrainingResult(study=result, schedule=shown, reference_date=str(_iso(reference)),
                          effects=pd.DataFrame(effects), variance=pd.DataFrame(variance),
                          therapists=pd.DataFrame(ther_rows), models=models, warnings=warnings, notes=notes)


def _effect_row(fit: Any, weights: dict[str, float], process: str, label: str, term: str, sign: int,
                level: float) -> dict[str, Any]:
    c = fit.contrast(weights)
    q = float(stats.t.ppf(0.5 + level / 2, c["df"]))
    lo, hi = c["estimate"] - q * c["se"], c["estimate"] + q * c["se"]
    b_lo, b_hi = sorted((sign * lo, sign * hi))
    return {"process": process, "process_label": label, "term": term, "estimate": c["estimate"], "se": c["se"],
            "df": c["df"], "t": c["t"], "p": c["p"], "ci_low": lo, "ci_high": hi, "benefit": sign * c["estimate"],
            "benefit_ci_low": b_lo, "benefit_ci_high": b_hi, "words": change_words(sign * c["estimate"], b_lo, b_hi)}


def _messages(result: StudyResult, schedule: pd.DataFrame, effects: list[dict[str, Any]], reference: Any,
              variance: list[dict[str, Any]]) -> tuple[list[str], list[str]]:
    warnings, notes = [], []
    n_trained = int(schedule["trained"].sum())
    n_control = len(schedule) - n_trained
    if n_control == 0:
        warnings.append("Every therapist was trained: there is no untrained comparison group, so a change after "
                        "training cannot be told from a change over time that all therapists share.")
    for p in result.terms.processes:
        if not any(e["process"] == p and e["term"] == "targeted_change" for e in effects):
            warnings.append(f"No targeted_change for {result.label(p)}: it needs therapists trained on it and "
                            "therapists trained on another process, each with patients before and after.")
    for v in variance:
        if v["change_variance"] <= 1e-10:
            warnings.append(f"The between-therapist variance of the change in the {v['process_label']} slope is "
                            "estimated at zero: each therapist's change equals their group's average.")
    notes.append(f"Patients of a trained therapist are 'after' when their treatment started on or after the training "
                 f"date; patients of the {n_control} untrained therapist(s) when it started on or after {reference}, "
                 f"the median training date of the {n_trained} trained therapists.")
    notes.append("Each period's slope is the within-therapist association among that period's patients (the process "
                 "centred at the therapist's mean in the period); one model per process, the other processes with "
                 "fixed effects only. An interval that covers zero is no detectable change, not a failed training.")
    return warnings, notes
