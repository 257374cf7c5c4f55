"""One HTML page per therapist: where their patients gain most, told with its uncertainty
(models.md "Profiles"; the numbers come from :mod:`theralens.profiles`).

File names are safe for any therapist id (:func:`profile_filename`); the id itself is shown
as escaped text only.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from theralens.profiles import AVERAGE, GROWTH, STRENGTH, UNCERTAIN, Profiles, TherapistProfile
from theralens.profiles.profile import ProcessProfile
from theralens.report.formatting import DASH, esc, fmt, fmt_ci, is_missing, key, num
from theralens.report.page import page
from theralens.report.strips import interval_strip, rank_strip

__all__ = ["PeerContext", "badge", "profile_filename", "profile_page"]

_SLUG = re.compile(r"[^A-Za-z0-9_-]+")
_BADGE_CLASS = {STRENGTH: "strength", GROWTH: "growth", AVERAGE: "average", UNCERTAIN: "uncertain"}


def profile_filename(therapist: str) -> str:
    """A file name safe on every file system for any therapist id: an ASCII slug of the id
    (at most 40 characters) and the first 10 hex digits of its SHA-256, so distinct ids never
    collide."""
    tid = str(therapist)
    slug = _SLUG.sub("-", tid).strip("-_")[:40].strip("-_") or "therapist"
    digest = hashlib.sha256(tid.encode("utf-8")).hexdigest()[:10]
    return f"{slug}-{digest}.html"


_SHORT = {AVERAGE: "not distinguishable", UNCERTAIN: "too uncertain"}


def badge(category: str, short: bool = False) -> str:
    """The category as a small labelled badge (text, not colour alone); ``short`` abbreviates
    it for tables (the full wording in the ``title``)."""
    text = _SHORT.get(category, category) if short else category
    return (f'<span class="badge {_BADGE_CLASS.get(category, "uncertain")}" title="{esc(category)}">'
            f"{esc(text)}</span>")


@dataclass(frozen=True)
class PeerContext:
    """What a profile page needs about the whole study: counts, design wording, the common
    scales of the strips, peer medians of the moderators, the average slopes and their
    ``results.json`` keys, the footer text, and the user's names of processes and moderators
    (``labels``: stable name -> label)."""

    n_therapists: int
    n_patients: int
    design: str
    higher_outcome_is: str
    benefit_sign: int
    median_caseload: float
    process_scales: Mapping[str, float]
    outcome_scale: float
    moderator_medians: Mapping[str, float | None]
    average_slope_keys: Mapping[str, str]
    version: str
    labels: Mapping[str, str] = field(default_factory=dict)

    def label(self, name: str) -> str:
        """The user's name of the process or moderator ``name``."""
        return self.labels.get(name, name)


def peer_context(profiles: Profiles, n_therapists: int, n_patients: int, higher_outcome_is: str,
                 average_slope_keys: Mapping[str, str], version: str) -> PeerContext:
    """The shared context of all profile pages of ``profiles``."""
    scales = {}
    for p in profiles.processes:
        vals = [abs(v) for t in profiles for pp in t.processes if pp.process == p
                for v in (pp.benefit_ci_low, pp.benefit_ci_high) if not is_missing(v)]
        scales[p] = 1.05 * max(vals) if vals else 1.0
    ovals = [abs(v) for t in profiles for v in (t.outcome.benefit_ci_low, t.outcome.benefit_ci_high)
             if not is_missing(v)]
    mods: dict[str, list[float]] = {}
    for t in profiles:
        for m, v in t.moderators.items():
            mods.setdefault(m, [])
            if not is_missing(v):
                mods[m].append(float(v))  # type: ignore[arg-type]
    return PeerContext(
        n_therapists=n_therapists, n_patients=n_patients, design=profiles.design, higher_outcome_is=higher_outcome_is,
        benefit_sign=profiles.benefit_sign,
        median_caseload=float(np.median([t.n_patients for t in profiles])) if len(profiles) else 0.0,
        process_scales=scales, outcome_scale=1.05 * max(ovals) if ovals else 1.0,
        moderator_medians={m: (float(np.median(v)) if v else None) for m, v in mods.items()},
        average_slope_keys=average_slope_keys, version=version, labels=dict(profiles.labels),
    )


def _pk(t: str, *parts: str) -> str:
    return key("profile", t, *parts)


def _dl(items: list[tuple[str, str]]) -> str:
    return '<dl class="kv">' + "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in items) + "</dl>"


def _ci(lo: float | None, hi: float | None, k_lo: str | None, k_hi: str | None) -> str:
    return f"[{num(lo, k_lo)}, {num(hi, k_hi)}]"


def _process_card(t: TherapistProfile, pp: ProcessProfile, ctx: PeerContext, index: int) -> str:
    tid, p = t.therapist, pp.process
    shown = ctx.label(p)
    ak = lambda field: key("aim2", p, "therapists", tid, field)  # noqa: E731
    scale = ctx.process_scales.get(p, 1.0)
    alt_int = (f"{shown}: benefit relative to the average therapist {fmt(pp.benefit)}, 95% interval "
               f"{fmt_ci(pp.benefit_ci_low, pp.benefit_ci_high)}; {pp.category}.")
    alt_rank = (f"{shown}: median rank {fmt(pp.rank_median)} of {pp.n_ranked}, 95% rank interval "
                f"{fmt(pp.rank_low)} to {fmt(pp.rank_high)} (1 = most benefit).")
    dev_sign = "a negative value means more benefit" if ctx.benefit_sign < 0 else "a positive value means more benefit"
    pct = (f"higher than {num(pp.caseload_percentile, _pk(tid, p, 'caseload_percentile'), kind='pct')} of peers "
           f"(peer median {num(pp.peer_median, _pk(tid, p, 'peer_median'))})"
           if not is_missing(pp.caseload_percentile) else DASH)
    items = [
        ("Benefit relative to the average therapist (95% interval)",
         f"{num(pp.benefit, _pk(tid, p, 'benefit'))} "
         f"{_ci(pp.benefit_ci_low, pp.benefit_ci_high, _pk(tid, p, 'benefit_ci_low'), _pk(tid, p, 'benefit_ci_high'))}"
         ' <span class="muted">(positive = more benefit)</span>'),
        ("Probability of a stronger slope than average",
         num(pp.prob_stronger, ak("prob_stronger_than_average") if pp.prob_stronger is not None else None,
             kind="prob")),
        ("Rank among peers (95% rank interval)",
         (f"{num(pp.rank_median, _pk(tid, p, 'rank_median'), kind='int')} of {pp.n_ranked} "
          f"({num(pp.rank_low, _pk(tid, p, 'rank_low'), kind='int')} to "
          f"{num(pp.rank_high, _pk(tid, p, 'rank_high'), kind='int')}; 1 = most benefit)")
         if not is_missing(pp.rank_median) else "not ranked"),
        ("Slope relative to the average, b<sub>1j</sub> &minus; &gamma;<sub>10</sub> (95% interval)",
         (f"{num(pp.deviation, ak('deviation'))} "
          + _ci(pp.deviation_ci_low, pp.deviation_ci_high, _pk(tid, p, "deviation_ci_low"),
                _pk(tid, p, "deviation_ci_high"))
          + f', conditional SD {num(pp.deviation_sd, ak("deviation_sd"))}'
          f' <span class="muted">({dev_sign})</span>') if pp.deviation is not None else DASH),
        ("This therapist's slope b<sub>1j</sub> (95% interval)",
         (f"{num(pp.slope, ak('slope'))} {_ci(pp.slope_ci_low, pp.slope_ci_high, ak('ci_low'), ak('ci_high'))}; "
          f"average therapist {num(pp.average_slope, ctx.average_slope_keys.get(p))}")
         if pp.slope is not None else f"{DASH}; average therapist "
                                      f"{num(pp.average_slope, ctx.average_slope_keys.get(p))}"),
        ("Reliability of this therapist's slope",
         num(pp.slope_reliability, ak("slope_reliability") if pp.slope_reliability is not None else None)),
        (f"Caseload mean of {esc(shown)}",
         f"{num(pp.caseload_mean, key('therapists', tid, 'caseload_means', p))}; {pct}"),
        ("Reliability of the caseload mean (&lambda;<sub>j</sub>)",
         num(pp.caseload_reliability, _pk(tid, p, "caseload_reliability"))),
    ]
    return (
        f'<section class="card" id="process-{index + 1}">'
        f"<h3>{esc(shown)} {badge(pp.category)}</h3>"
        f"<p>{esc(pp.statement)}</p>"
        f'<p class="suggestion"><strong>Training suggestion:</strong> {esc(pp.suggestion)}</p>'
        f"{interval_strip(pp.benefit, pp.benefit_ci_low, pp.benefit_ci_high, scale, pp.category, alt_int)}"
        f"{rank_strip(pp.rank_median, pp.rank_low, pp.rank_high, pp.n_ranked, pp.category, alt_rank)}"
        f"{_dl(items)}</section>"
    )


def profile_page(t: TherapistProfile, ctx: PeerContext, min_caseload: int, extra: str = "") -> str:
    """The complete HTML page of therapist ``t``; ``extra``: markup of further sections (the
    stability and training cards), placed before "How to read this profile"."""
    tid = t.therapist
    o = t.outcome
    within = "within-therapist" if ctx.design == "patient" else "within-patient"
    parts = [
        '<p class="back"><a href="../report.html#profiles" id="back-to-report">&larr; Back to the study report</a></p>',
        '<header class="top">',
        f'<h1>Therapist profile: <span class="therapist-id">{esc(tid)}</span></h1>',
        '<p class="subtitle">Where this therapist\'s patients gain most, with the uncertainty of every estimate.</p>',
        f'<p class="meta">Study: {ctx.n_therapists} therapists, {ctx.n_patients} patients; {esc(ctx.design)}-level '
        f"design; higher outcome is {esc(ctx.higher_outcome_is)}. theralens {esc(ctx.version)}.</p>",
        "</header>",
    ]
    if not t.interpretable:
        parts.append(f'<div class="box alert" id="too-uncertain"><h2>Too uncertain to interpret</h2>'
                     f"<p>This profile is too uncertain to interpret: {esc(t.reason)}. The numbers below are shown "
                     "for completeness only; they are not a basis for conclusions about this therapist.</p></div>")
    summary = "".join(f"<li><strong>{esc(ctx.label(pp.process))}</strong>: {badge(pp.category)}</li>"
                      for pp in t.processes)
    parts.append(
        '<section><h2>Summary</h2>'
        + _dl([
            ("Analysed patients", f"{num(t.n_patients, key('therapists', tid, 'n_patients'), kind='int')} "
                                  f"(peer median {ctx.median_caseload:g}; profiles need at least {min_caseload})"),
            ("Overall outcome", badge(o.category)),
        ])
        + f"<ul>{summary}</ul></section>"
    )
    alt_o = (f"Overall outcome: benefit relative to the average therapist {fmt(o.benefit)}, 95% interval "
             f"{fmt_ci(o.benefit_ci_low, o.benefit_ci_high)}; {o.category}.")
    raw_sign = "a negative value means more benefit" if ctx.benefit_sign < 0 else "a positive value means more benefit"
    parts.append(
        '<section id="outcome"><h2>Overall outcome relative to peers</h2>'
        f"<p>{esc(o.statement)}</p>"
        + interval_strip(o.benefit, o.benefit_ci_low, o.benefit_ci_high, ctx.outcome_scale, o.category, alt_o,
                         left="less improvement", right="more improvement")
        + _dl([
            ("Benefit relative to the average therapist (95% interval)",
             f"{num(o.benefit, _pk(tid, 'outcome', 'benefit'))} "
             + _ci(o.benefit_ci_low, o.benefit_ci_high, _pk(tid, "outcome", "benefit_ci_low"),
                   _pk(tid, "outcome", "benefit_ci_high"))
             + ' <span class="muted">(outcome units; positive = more improvement)</span>'),
            ("Therapist intercept u<sub>0j</sub> (conditional SD)",
             f"{num(o.intercept_deviation, key('therapists', tid, 'intercept_deviation'))} "
             f"({num(o.intercept_sd, key('therapists', tid, 'intercept_sd'))}) "
             f'<span class="muted">({raw_sign})</span>'),
            ("Probability of better outcomes than average", num(o.prob_better, _pk(tid, "outcome", "prob_better"),
                                                                kind="prob")),
            ("Rank among peers (95% rank interval)",
             f"{num(o.rank_median, _pk(tid, 'outcome', 'rank_median'), kind='int')} of {o.n_ranked} "
             f"({num(o.rank_low, _pk(tid, 'outcome', 'rank_low'), kind='int')} to "
             f"{num(o.rank_high, _pk(tid, 'outcome', 'rank_high'), kind='int')}; 1 = most improvement)"),
        ])
        + '<p class="muted">The intercept is the therapist\'s outcome for a typical patient, after accounting for '
          "baseline severity (where used) and for the caseload's average process levels.</p></section>"
    )
    parts.append(f'<section id="processes"><h2>Processes: {within} slopes</h2>'
                 f'<p>Each card says how strongly a process goes with improvement among this therapist\'s patients, '
                 f"compared with the average therapist.</p><div class=\"cards\">"
                 + "".join(_process_card(t, pp, ctx, i) for i, pp in enumerate(t.processes)) + "</div></section>")
    if t.moderators:
        rows = "".join(
            f"<tr><td>{esc(ctx.label(m))}</td><td class=\"n\">{num(v, _pk(tid, 'moderators', m))}</td>"
            f"<td class=\"n\">{num(ctx.moderator_medians.get(m))}</td></tr>"
            for m, v in t.moderators.items())
        parts.append('<section id="moderators"><h2>Therapist characteristics</h2><div class="table-wrap"><table>'
                     '<thead><tr><th scope="col">Characteristic</th><th class="n" scope="col">This therapist</th>'
                     '<th class="n" scope="col">Peer median</th></tr></thead>'
                     f"<tbody>{rows}</tbody></table></div>"
                     '<p class="table-note">Characteristics as given in the therapist table; the study report '
                     "(aim 3) says whether any of them predicts who uses a process to more benefit.</p></section>")
    if extra:
        parts.append(extra)
    parts.append(
        '<section id="how-to-read"><h2>How to read this profile</h2><ul>'
        "<li>Estimates come from a mixed model fitted to all therapists: each therapist's slope is pulled toward the "
        "average in proportion to its uncertainty (shrinkage), so small caseloads look average.</li>"
        "<li><strong>Strength</strong> and <strong>growth area</strong> are used only when the whole 95% interval lies "
        "on one side of the average. Otherwise the slope is <em>not distinguishable from the average</em>, which is "
        "not a weakness.</li>"
        "<li>The probability of a stronger slope than average is P(u<sub>1j</sub> on the benefit side) under the "
        "model's conditional distribution.</li>"
        f"<li>Ranks: therapists' slopes were drawn jointly from their conditional distributions; the rank interval "
        f"holds 95% of the simulated ranks (1 = most benefit).</li>"
        f"<li>Profiles of therapists with fewer than {min_caseload} analysed patients are too uncertain to "
        "interpret.</li>"
        "<li>These profiles support reflection, supervision and training. They are not a basis for evaluating, "
        "paying or ranking therapists.</li></ul></section>"
    )
    parts.append(f'<footer>Generated by theralens {esc(ctx.version)}. Numbers marked in this page equal those in '
                 '<code>results.json</code>. <a href="../report.html#profiles">Back to the study report</a>.</footer>')
    return page(f"Therapist profile: {tid}", "\n".join(parts), description=f"theralens therapist profile {tid}")
