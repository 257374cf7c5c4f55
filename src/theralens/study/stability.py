"""Profile stability: does a therapist's process-outcome slope hold from one sample of their
patients to the next? (docs/stability_training.md; the criterion of Kraus et al. 2016, who judged
therapists' domain-specific effectiveness by whether it held across patient samples.)

Each therapist's patients are split into an earlier and a later half by treatment start (or at
random, repeatedly), and one model per process gives every therapist a slope in each half, as
correlated random effects (patient-level design; the session design alike on its within-patient
component)::

    Y_ij = b0j + b1j^(h) (X_ij - Xbar_j(h)) + g_s (Xbar_j(h) - Xbar_j) + g_h later_ij + ... + e_ij
    b1j^(h) = g10^(h) + u1j^(h),  h = earlier, later
    (u0j, u1j^(earlier), u1j^(later)) ~ N(0, T)

The stability of the profile is rho = corr(u1j^(earlier), u1j^(later)), the model's between-half
correlation of the true therapist slopes: unlike the correlation of two sets of shrunken
estimates, it is not attenuated by their sampling noise. Its interval is the profile-likelihood
interval of the correlation (lme4's ``confint(method = "profile")``,
:meth:`MixedResult.conf_int_varcorr`). The verdict follows the interval: profiles are
*supported* when the whole interval lies at or above :data:`STABLE_R`, *partly stable* when it
excludes zero only, and *not supported* when it includes zero.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from theralens.data.config import StudyConfig
from theralens.errors import InputError
from theralens.model import MixedResult
from theralens.study.aims import ModelSpec
from theralens.study.document import records
from theralens.study.periods import (
    PERIOD_MODES,
    SectionResult,
    analysed,
    centre_in_periods,
    fit_spec,
    half_split,
    model_entries,
    patient_starts,
    period_formula,
)
from theralens.study.result import StudyResult

__all__ = ["STABLE_R", "StabilityResult", "apa_r", "stability", "stability_verdict", "varcorr_interval"]

#: An interval wholly at or above this correlation supports individual profiles.
STABLE_R = 0.5
SUPPORTED = "supported"
PARTLY = "partly stable"
NOT_SUPPORTED = "not supported"
NO_INTERVAL = "no interval"


def apa_r(r: float | None) -> str:
    """A correlation as APA writes it: two decimals, no leading zero (``.21``, ``-.40``)."""
    if r is None or not math.isfinite(r):
        return "NA"
    text = f"{r:.2f}"
    return text.replace("0.", ".", 1) if abs(r) < 1 else text


def stability_verdict(label: str, r: float | None, low: float | None, high: float | None,
                      reason: str = "") -> tuple[str, str]:
    """(category, sentence) of the stability r with interval [low, high] of process ``label``."""
    shown = f"stability r = {apa_r(r)} [{apa_r(low)}, {apa_r(high)}]"
    if low is None or high is None or not (math.isfinite(low) and math.isfinite(high)):
        why = f" ({reason})" if reason else ""
        return NO_INTERVAL, (f"The stability of individual {label} profiles is r = {apa_r(r)}; its interval could not "
                             f"be computed{why}, so these data give no verdict on it.")
    if low >= STABLE_R:
        return SUPPORTED, (f"These data support individual {label} profiles: {shown}; the whole interval lies at or "
                           f"above {apa_r(STABLE_R)}.")
    if low > 0:
        return PARTLY, (f"Individual {label} profiles are partly stable: {shown}; the interval excludes zero but "
                        f"reaches below {apa_r(STABLE_R)}, so read a single therapist's profile with caution.")
    return NOT_SUPPORTED, f"These data cannot support individual {label} profiles: {shown}."


def varcorr_interval(fit: MixedResult, var1: str, var2: str | None, level: float = 0.95,
                     method: str = "profile") -> tuple[float | None, float | None, str]:
    """(low, high, note) of the therapist random-effect SD of ``var1`` (``var2`` None) or of the
    correlation of ``var1`` and ``var2``, from :meth:`MixedResult.conf_int_varcorr`; bounds are
    None with the reason in ``note`` when the interval cannot be had."""
    method_fn = getattr(fit, "conf_int_varcorr", None)
    if method_fn is None:
        return None, None, "this theralens has no variance-component intervals (MixedResult.conf_int_varcorr)"
    want = [("therapist", var1, var2)]
    try:
        try:
            ci = method_fn(level=level, method=method, rows=want, progress=False)
        except TypeError:  # a version without row selection
            ci = method_fn(level=level, method=method)
    except (InputError, ValueError, np.linalg.LinAlgError, RuntimeError) as exc:
        return None, None, f"the {method} interval failed: {exc}"
    ci = ci.reset_index() if "grp" not in ci.columns else ci
    cols = [c for c in ci.columns if str(c).endswith("%")]
    grp = ci["grp"] == "therapist"
    if var2 is None:
        rows = ci[grp & (ci["var1"] == var1) & ci["var2"].isna()]
    else:
        rows = ci[grp & (((ci["var1"] == var1) & (ci["var2"] == var2)) | ((ci["var1"] == var2) & (ci["var2"] == var1)))]
    if rows.empty or len(cols) < 2:
        return None, None, "the interval table has no row for this component"
    lo, hi = (float(rows[c].iloc[0]) for c in cols[:2])
    return (lo if math.isfinite(lo) else None), (hi if math.isfinite(hi) else None), f"{method} likelihood"


def _vc(fit: MixedResult, var1: str, var2: str | None) -> float:
    vc = fit.varcorr
    g = vc["grp"] == "therapist"
    if var2 is None:
        row = vc[g & (vc["var1"] == var1) & vc["var2"].isna()]
    else:
        row = vc[g & (((vc["var1"] == var1) & (vc["var2"] == var2)) | ((vc["var1"] == var2) & (vc["var2"] == var1)))]
    return float(row["sdcor"].iloc[0]) if len(row) else float("nan")


@dataclass
class StabilityResult(SectionResult):
    """The stability of therapist profiles (module docstring).

    Fields: ``study`` (the :class:`StudyResult` of the same data), ``split`` ("time" or
    "random"), ``repeats`` (random splits fitted), ``level``; ``correlations`` (one row per
    process: process, process_label, correlation, ci_low, ci_high, ci_method, slope_sd_earlier,
    slope_sd_later, therapists_both (therapists with two or more patients in each half),
    split_sd (spread over random splits), singular, verdict, verdict_text); ``therapists`` (one
    row per therapist and process: n_earlier, n_later, deviation_earlier, sd_earlier,
    deviation_later, sd_later: the conditional mode and SD of u1j in each half); ``splits``
    (one row per random split and process); ``models``; ``warnings``, ``notes``.
    Views: :meth:`section` (the ``stability`` section of ``results.json``), :meth:`to_dict`
    (the whole document), :meth:`tables`, :meth:`write`, :meth:`summary`.
    """

    section_name: ClassVar[str] = "stability"
    study: StudyResult
    split: str
    repeats: int
    level: float
    correlations: pd.DataFrame
    therapists: pd.DataFrame
    splits: pd.DataFrame
    models: list[ModelSpec] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def section(self) -> dict[str, Any]:
        """The ``stability`` section of ``results.json`` (JSON-ready)."""
        return {
            "split": self.split, "repeats": self.repeats, "level": self.level, "stable_r": STABLE_R,
            "rows": records(self.correlations), "therapists": records(self.therapists),
            "splits": records(self.splits),
            "models": model_entries(self.models),
            "warnings": list(self.warnings), "notes": list(self.notes),
        }



    def tables(self) -> dict[str, pd.DataFrame]:
        """The CSV tables of this section, by file name."""
        return {"stability.csv": self.correlations, "stability_therapists.csv": self.therapists,
                "stability_splits.csv": self.splits}


    def summary(self) -> str:
        how = "earlier vs later half by treatment start" if self.split == "time" else f"{self.repeats} random halves"
        lines = [f"Profile stability ({how}):"]
        shown = self.correlations[["process_label", "correlation", "ci_low", "ci_high", "verdict"]]
        lines.append(shown.to_string(index=False, float_format=lambda v: f"{v:.3g}"))
        lines += [f"- {t}" for t in self.correlations["verdict_text"]]
        if self.warnings:
            lines += ["Warnings:"] + [f"- {w}" for w in self.warnings]
        return "\n".join(lines)


    def __repr__(self) -> str:
        parts = "; ".join(f"{r['process_label']} r = {apa_r(r['correlation'])} [{apa_r(r['ci_low'])}, "
                          f"{apa_r(r['ci_high'])}] ({r['verdict']})" for r in self.correlations.to_dict("records"))
        return f"<StabilityResult: {parts}>"

    def _repr_html_(self) -> str:
        from theralens.display import html_view

        shown = self.correlations[["process_label", "correlation", "ci_low", "ci_high", "therapists_both", "verdict"]]
        return html_view("theralens profile stability", list(self.correlations["verdict_text"]) + [
            f"Warning: {w}" for w in self.warnings], {"stability": shown}, index={"stability": False})


def stability(
    data: StudyResult | pd.DataFrame,
    therapists: pd.DataFrame | None = None,
    config: StudyConfig | None = None,
    *,
    sessions: pd.DataFrame | None = None,
    split: str = "time",
    repeats: int = 20,
    seed: int = 1,
    level: float = 0.95,
    source: str = "sessions data",
    therapists_source: str = "therapist data",
) -> StabilityResult:
    """The between-half stability of every process's therapist slopes (module docstring).

    ``data``: a :class:`StudyResult` (its data and config are used, or ``config``'s
    ``[training]`` when given; pass the raw ``sessions`` when ``[training] start`` names a column
    of them) or the sessions DataFrame, analysed first with ``therapists`` and ``config`` as
    :func:`theralens.analyze` does. ``split``: ``"time"``
    (earlier and later half of each caseload by treatment start) or ``"random"`` (``repeats``
    random halves, seeded by ``seed``; the correlation and its bounds are the medians over the
    splits, and ``split_sd`` their spread).
    """
    if split not in PERIOD_MODES:
        raise InputError(f"split must be one of {', '.join(PERIOD_MODES)}; got {split!r}")
    if split == "random" and (isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1):
        raise InputError(f"repeats must be a whole number >= 1; got {repeats!r}")
    result, raw = analysed(data, therapists, config, source, therapists_source)
    cfg = config if config is not None else result.config  # its [training] names the start column
    starts = patient_starts(result.data, cfg, sessions if sessions is not None else raw,
                            source=str(result.data.source)) if split == "time" else None
    frame = result.table.table.copy()
    frame["therapist"] = frame["therapist"].astype(str)
    frame["patient"] = frame["patient"].astype(str)
    rng = np.random.default_rng(seed)
    n_splits = 1 if split == "time" else repeats
    split_rows, models, first_ther = [], [], None
    for r in range(n_splits):
        later = half_split(frame, starts, split, rng)  # type: ignore[arg-type]
        rows, ther, specs = _fit_halves(result, frame, later, level, keep_models=r == 0)
        split_rows += [{"split": r + 1, **row} for row in rows]
        models += specs
        if first_ther is None:
            first_ther = ther
    splits = pd.DataFrame(split_rows)
    rows = []
    for p in result.terms.processes:
        mine = splits[splits["process"] == p]
        med = mine[["correlation", "ci_low", "ci_high", "slope_sd_earlier", "slope_sd_later"]].median()
        label = result.label(p)
        first = mine.iloc[0]
        reason = str(first["ci_method"]) if pd.isna(first["ci_low"]) else ""
        r_, lo, hi = (_finite(med[c]) for c in ("correlation", "ci_low", "ci_high"))
        category, text = stability_verdict(label, r_, lo, hi, reason)
        rows.append({"process": p, "process_label": label, "correlation": r_, "ci_low": lo, "ci_high": hi,
                     "ci_method": first["ci_method"] if not reason else None,
                     "slope_sd_earlier": _finite(med["slope_sd_earlier"]),
                     "slope_sd_later": _finite(med["slope_sd_later"]),
                     "therapists_both": int(first["therapists_both"]),
                     "split_sd": float(mine["correlation"].std(ddof=1)) if len(mine) > 1 else None,
                     "singular": bool(mine["singular"].any()), "verdict": category, "verdict_text": text})
    correlations = pd.DataFrame(rows)
    warnings, notes = _messages(result, correlations, split, n_splits)
    return StabilityResult(study=result, split=split, repeats=n_splits, level=level, correlations=correlations,
                           therapists=first_ther if first_ther is not None else pd.DataFrame(), splits=splits,
                           models=models, warnings=warnings, notes=notes)


def _finite(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _fit_halves(result: StudyResult, frame: pd.DataFrame, later: pd.Series, level: float,
                keep_models: bool) -> tuple[list[dict[str, Any]], pd.DataFrame, list[ModelSpec]]:
    """One split: the half model of every process; its correlation row, therapist rows, models."""
    terms = result.terms
    rows, ther_rows, specs = [], [], []
    n_half = frame.drop_duplicates("patient").assign(later=later.loc[frame.drop_duplicates("patient").index])
    counts = n_half.groupby("therapist")["later"].agg(n_later="sum", n="size")
    counts["n_earlier"] = counts["n"] - counts["n_later"]
    both = int(((counts["n_earlier"] >= 2) & (counts["n_later"] >= 2)).sum())
    for p in terms.processes:
        d = frame.copy()
        c = centre_in_periods(d, terms, p, later)
        early, late = f"{p}_earlier_half", f"{p}_later_half"
        d["later_half"] = later
        d[early] = c["slope"] * (1 - later)
        d[late] = c["slope"] * later
        fixed = ["later_half"]
        if terms.level == "patient":
            d[f"{p}_half_shift"] = c["shift"]
            fixed.append(f"{p}_half_shift")
        formula = period_formula(terms, p, [*fixed, early, late], [early, late])
        spec = fit_spec(f"stability:{p}", formula, d, note="therapist slopes in the earlier and later half",
                        ddf=result.config.inference.ddf)
        fit = spec.fit
        lo, hi, method = varcorr_interval(fit, early, late, level)
        rows.append({"process": p, "correlation": _vc(fit, early, late), "ci_low": lo, "ci_high": hi,
                     "ci_method": method, "slope_sd_earlier": _vc(fit, early, None),
                     "slope_sd_later": _vc(fit, late, None), "therapists_both": both,
                     "converged": bool(fit.converged), "singular": bool(fit.singular)})
        if keep_models:
            specs.append(spec)
            re = fit.random_effects("therapist")
            e = re[re["term"] == early].set_index("level")
            lt = re[re["term"] == late].set_index("level")
            for t in counts.index:
                ther_rows.append({"process": p, "process_label": result.label(p), "therapist": str(t),
                                  "n_earlier": int(counts.loc[t, "n_earlier"]),
                                  "n_later": int(counts.loc[t, "n_later"]),
                                  "deviation_earlier": float(e.loc[t, "estimate"]),
                                  "sd_earlier": float(e.loc[t, "cond_sd"]),
                                  "deviation_later": float(lt.loc[t, "estimate"]),
                                  "sd_later": float(lt.loc[t, "cond_sd"])})
    return rows, pd.DataFrame(ther_rows), specs


def _messages(result: StudyResult, correlations: pd.DataFrame, split: str,
              n_splits: int) -> tuple[list[str], list[str]]:
    warnings, notes = [], []
    for r in correlations.to_dict(orient="records"):
        if r["singular"]:
            warnings.append(f"The stability model of {r['process_label']} is a boundary (singular) fit: a slope SD is "
                            "estimated at zero or the correlation at +-1 in at least one split, so the correlation is "
                            "poorly determined.")
        if r["therapists_both"] < 10:
            warnings.append(f"Only {r['therapists_both']} therapists have two or more patients in each half: the "
                            f"stability of {r['process_label']} profiles rests on very few therapists.")
    if split == "time":
        notes.append("Each therapist's patients were split by treatment start: the earlier ceil(n/2) and the later "
                     "floor(n/2); a therapist's slope in a half is the within-therapist association among that half's "
                     "patients (the process centred at the therapist's mean in the half).")
    else:
        notes.append(f"Each therapist's patients were split at random into two halves, {n_splits} times; the "
                     "correlation and its interval bounds are the medians over the splits (split_sd: their spread); "
                     "the therapist table is that of the first split.")
    notes.append("Stability r is the model-based correlation of the therapists' true slopes in the two halves "
                 "(correlated random slopes), not attenuated by the noise of each half's estimates; one model per "
                 "process, the other processes entering with fixed effects only.")
    return warnings, notes
