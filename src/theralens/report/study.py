"""The sections of ``report.html``, in the order of the study: data, decomposition and
reliability, aims 1-3, the ancillary interaction, therapist profiles, model diagnostics and
the methods.

Everything comes from the results document (``doc``, as ``results.json`` holds it) and the
profiles built from it; every number the document holds is marked with its ``data-key``
(stable names: processes and moderators by their formula-safe names, shown by their labels).
Labels follow Coyne et al. (2022): "within-therapist" and "between-therapist" process-outcome
associations.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from theralens.errors import InputError
from theralens.profiles import Profiles
from theralens.report import figures
from theralens.report.formatting import DASH, esc, is_missing, key, num
from theralens.report.methods import REFERENCES, methods_paragraphs
from theralens.report.page import table
from theralens.report.profile_page import badge, profile_filename

__all__ = ["COMPONENT_LABELS", "ReportContext", "report_body"]

COMPONENT_LABELS = {
    "within_therapist": "within-therapist association",
    "between_therapist": "between-therapist association",
    "within_patient": "within-patient association",
    "between_patient": "between-patient (within-therapist) association",
}
TARGET_LABELS = {
    "patient": {"within_slope": "within-therapist slope (cross-level interaction)",
                "between_association": "between-therapist association"},
    "session": {"within_slope": "within-patient slope (cross-level interaction)",
                "between_association": "between-therapist association"},
}


@dataclass
class ReportContext:
    """What the sections draw on: the results document and the profiles built from it, and the
    therapists with a profile page (``pages``, :func:`profile_selection`; ``chosen_by`` says how)."""

    doc: dict[str, Any]
    profiles: Profiles
    figures_made: int = 0
    tables_made: int = 0
    labels: dict[str, str] = field(init=False)
    pages: list[str] = field(init=False)
    chosen_by: str = field(init=False)

    def __post_init__(self) -> None:
        self.labels = {p["name"]: p["label"] for p in self.doc["processes"]}
        self.labels.update({m["name"]: m["label"] for m in self.doc["moderators"]})
        self.pages, self.chosen_by = profile_selection(self.doc)

    @property
    def n_therapists(self) -> int:
        return len(self.doc["therapists"])

    @property
    def every_therapist(self) -> bool:
        """Whether the report's HTML tables list every therapist (else those with a page; the CSV tables all)."""
        return self.n_therapists <= PAGES_ALL

    def label(self, name: str) -> str:
        """The user's name of the process or moderator ``name`` (for display)."""
        return self.labels.get(name, name)

    def process(self, name: str) -> dict[str, Any]:
        """The ``processes`` entry of process ``name``."""
        return next(p for p in self.doc["processes"] if p["name"] == name)

    @property
    def show_patient_ids(self) -> bool:
        return bool(self.doc["options"]["report"]["show_patient_ids"])

    @property
    def df_note(self) -> str:
        """The sentence naming the degrees of freedom of a table's tests (results.json ``inference``;
        a document from before it was recorded used Satterthwaite's)."""
        inf = self.doc.get("inference") or {"reference": "Satterthwaite (Kuznetsova et al., 2017)"}
        return f" Degrees of freedom (<em>df</em>): {esc(inf['reference'])}."

    def figure_label(self) -> str:
        """The next figure's label ("Figure 3")."""
        self.figures_made += 1
        return f"Figure {self.figures_made}"

    def table_label(self) -> str:
        """The next table's label ("Table 2")."""
        self.tables_made += 1
        return f"Table {self.tables_made}"

    @property
    def design(self) -> str:
        return str(self.doc["design"])

    @property
    def benefit_sign(self) -> int:
        return int(self.doc["benefit_sign"])

    @property
    def within(self) -> str:
        return "within_therapist" if self.design == "patient" else "within_patient"

    @property
    def processes(self) -> list[str]:
        """Stable names of the processes, in the study's order."""
        return [p["name"] for p in self.doc["processes"]]


def _fig(svg: figures.Svg, caption: str, fig_id: str) -> str:
    return f'<figure id="{esc(fig_id)}">{svg.markup}<figcaption>{caption}</figcaption></figure>'


def _est_ci(r: dict[str, Any], prefix: str) -> str:
    return (f"b = {num(r['estimate'], key(prefix, 'estimate'))}, "
            f"95% CI [{num(r['ci_low'], key(prefix, 'ci_low'))}, {num(r['ci_high'], key(prefix, 'ci_high'))}], "
            f"p {_p_rel(r['p'])}{num(r['p'], key(prefix, 'p'), kind='p')}")


def _p_rel(p: Any) -> str:
    return "" if not is_missing(p) and float(p) < 0.001 else "= "


def _clear(r: dict[str, Any]) -> bool | None:
    """True if the 95% CI excludes 0."""
    if is_missing(r.get("ci_low")) or is_missing(r.get("ci_high")):
        return None
    return float(r["ci_low"]) > 0 or float(r["ci_high"]) < 0


# ----------------------------------------------------------------------------------- header
def header(ctx: ReportContext) -> str:
    doc = ctx.doc
    n = doc["n"]
    source = doc["input"]["sessions"]
    return (
        '<header class="top"><h1>theralens study report</h1>'
        '<p class="subtitle">Which therapist benefits from which therapy process: within- and between-therapist '
        "process-outcome associations, therapist-specific slopes and their moderators (after Coyne, Constantino, "
        "Boswell &amp; Kraus, 2022).</p>"
        f'<p class="meta">Data: {esc(source)}. {num(n["therapists"], "n.therapists", kind="int")} therapists, '
        f'{num(n["patients"], "n.patients", kind="int")} patients, '
        f'{num(n["assessments"], "n.assessments", kind="int")} assessments. {esc(ctx.design.capitalize())}-level '
        f"design; higher outcome is {esc(doc['higher_outcome_is'])}; {esc(doc['decomposition'])} decomposition; "
        f"theralens {esc(doc['software'].get('theralens', ''))}.</p></header>"
    )


#: Where :func:`theralens.report.html.render_report` states the report's size (a fixed-width text
#: replaces it, so the page's own size is known before it is written).
REPORT_SIZE_MARK = "@@theralens-report-size@@"
#: Up to this many therapists, every one gets a profile page and a row in the report's tables by
#: default; above it, only the therapists chosen with ``[report] profiles`` / ``profiles_service``
#: (results.json and tables/*.csv always hold everyone).
PAGES_ALL = 500
#: A caterpillar figure draws at most this many therapists; above, a subset (the chosen therapists,
#: else evenly spaced by rank, both ends included) beside the distribution of every slope.
DRAWN_MAX = 60


def profile_selection(doc: dict[str, Any]) -> tuple[list[str], str]:
    """(the therapists with a profile page, in the document's order; how they were chosen):
    ``[report] profiles`` (ids) and ``profiles_service`` (a service's therapists), else every
    therapist up to :data:`PAGES_ALL`, else none."""
    opts = doc["options"]["report"]
    ids = [str(t["therapist"]) for t in doc["therapists"]]
    listed = [str(t) for t in opts.get("profiles") or []]
    service = str(opts.get("profiles_service") or "")
    if listed or service:
        unknown = sorted(set(listed) - set(ids))
        if unknown:
            raise InputError(f"[report] profiles names therapist {unknown[0]!r}, which is not in the analysed data"
                             f"{f' ({len(unknown) - 1} more)' if len(unknown) > 1 else ''}; list ids of the "
                             "therapists table (tables/therapists.csv)")
        chosen = set(listed)
        if service:
            of_service = {str(t["therapist"]) for t in doc["therapists"] if str(t.get("service", "")) == service}
            if not of_service:
                raise InputError(f"[report] profiles_service = {service!r} is not a service of the analysed data; "
                                 "give a value of the [columns] service column (tables/therapists.csv)")
            chosen |= of_service
        how = " and ".join(([f"{len(listed)} listed ([report] profiles)"] if listed else [])
                           + ([f"service {service} ([report] profiles_service)"] if service else []))
        return [i for i in ids if i in chosen], how
    if len(ids) <= PAGES_ALL:
        return ids, "every therapist"
    return [], (f"none by default above {PAGES_ALL} therapists: choose them with [report] profiles or "
                "profiles_service")


def drawn_subset(slopes: pd.DataFrame, chosen: list[str], benefit_sign: int) -> tuple[pd.DataFrame, str]:
    """The rows of ``slopes`` (estimable therapists) a caterpillar draws, and how they were chosen
    ("" when all are drawn): all up to :data:`DRAWN_MAX`; else the chosen therapists (evenly spaced
    by rank when more than DRAWN_MAX), else DRAWN_MAX evenly spaced by rank (both ends included)."""
    if len(slopes) <= DRAWN_MAX:
        return slopes, ""
    pool = slopes[slopes["therapist"].astype(str).isin(set(chosen))] if chosen else slopes.iloc[:0]
    how = "the therapists with a profile page"
    if not len(pool):
        pool, how = slopes, "evenly spaced by rank"
    pool = pool.sort_values("slope", ascending=benefit_sign < 0, kind="stable").reset_index(drop=True)
    if len(pool) > DRAWN_MAX:
        pool = pool.iloc[np.unique(np.round(np.linspace(0, len(pool) - 1, DRAWN_MAX)).astype(int))]
        if how.startswith("the"):
            how += f", {DRAWN_MAX} of them evenly spaced by rank"
    return pool, how


SECTIONS = [
    ("glance", "At a glance"), ("data", "Data"), ("decomposition", "Decomposition and reliability"),
    ("aim1", "Aim 1: within- and between-therapist associations"), ("aim2", "Aim 2: therapist slope variance"),
    ("aim3", "Aim 3: therapist moderators"), ("ancillary", "Ancillary: within \u00d7 between interaction"),
    ("profiles", "Therapist profiles"), ("diagnostics", "Model diagnostics"), ("methods", "Methods"),
]


#: Sections present when the document holds them (theralens stability / training), after the profiles.
LOOP_SECTIONS = [("stability", "Profile stability"), ("training", "Training evaluation")]


def toc(ctx: ReportContext | None = None) -> str:
    sections = list(SECTIONS)
    if ctx is not None:
        at = [k for k, _ in sections].index("profiles") + 1
        sections[at:at] = [(k, t) for k, t in LOOP_SECTIONS if k in ctx.doc]
    items = "".join(f'<li><a href="#{k}">{esc(t)}</a></li>' for k, t in sections)
    return f'<nav class="toc" aria-label="Contents"><strong>Contents</strong><ol>{items}</ol></nav>'


# ----------------------------------------------------------------------------------- glance
def _aim1_sentence(ctx: ReportContext, r: dict[str, Any]) -> str:
    p, comp = esc(ctx.label(r["process"])), r["component"]
    prefix = key("aim1", r["process"], comp)
    clear = _clear(r)
    more = (float(r["estimate"]) * ctx.benefit_sign > 0) if not is_missing(r.get("estimate")) else None
    amount = "more" if more else "less"
    subject = {
        "within_therapist": f"Within therapists, patients who rated {p} higher than the therapist's other patients",
        "between_therapist": f"Between therapists, therapists whose caseloads rated {p} higher on average",
        "within_patient": f"Within patients, assessments at which {p} was rated higher than the patient's own average",
        "between_patient": f"Within therapists, patients with higher average {p}",
    }.get(comp, f"{p} ({esc(comp)})")
    verb = {"within_patient": "were followed by", "between_therapist": "had"}.get(comp, "showed")
    what = "caseload-level improvement" if comp == "between_therapist" else "improvement"
    if clear:
        return f"{subject} {verb} {amount} {what} ({_est_ci(r, prefix)})."
    return f"{subject}: no clear association with {what} ({_est_ci(r, prefix)}; the interval includes 0)."


def glance(ctx: ReportContext) -> str:
    doc = ctx.doc
    items = [f"<li>{_aim1_sentence(ctx, r)}</li>" for r in doc["aim1"]]
    n_ther = doc["n"]["therapists"]
    for r in doc["aim2"]:
        prefix = key("aim2", r["process"])
        sig = not is_missing(r.get("p")) and float(r["p"]) < 0.05
        verdict = ("Therapists differed in this slope." if sig else
                   f"No detectable differences between therapists; with {n_ther} therapists this test has low power, "
                   "so this is inconclusive rather than evidence that therapists do not differ: the slope SD could "
                   f"be as large as {num(r['slope_sd_ci_high'], key(prefix, 'slope_sd_ci_high'))}.")
        items.append(
            f"<li>Therapist differences in the {esc(COMPONENT_LABELS[r['component']])} of "
            f"{esc(ctx.label(r['process']))}: "
            f"slope SD {num(r['slope_sd'], key(prefix, 'slope_sd'))} "
            f"[95% CI {num(r['slope_sd_ci_low'], key(prefix, 'slope_sd_ci_low'))}, "
            f"{num(r['slope_sd_ci_high'], key(prefix, 'slope_sd_ci_high'))}], likelihood-ratio "
            f"\u03c7\u0304\u00b2 = {num(r['lrt_statistic'], key(prefix, 'lrt_statistic'))}, "
            f"p {_p_rel(r['p'])}{num(r['p'], key(prefix, 'p'), kind='p')}. {verdict}</li>")
    sig3 = [r for r in doc["aim3"] if not is_missing(r.get("p")) and float(r["p"]) < 0.05]
    if doc["aim3"]:
        if sig3:
            for r in sig3:
                items.append(f"<li>{_aim3_sentence(ctx, r)}</li>")
            items.append(f"<li>{len(doc['aim3'])} moderator effects were tested without correction for multiple "
                         f"testing; about {0.05 * len(doc['aim3']):.1f} would reach p &lt; .05 by chance alone.</li>")
        else:
            items.append(f"<li>None of the {len(doc['aim3'])} moderator effects reached p &lt; .05.</li>")
    counts = ctx.profiles.category_counts()
    for p in ctx.processes:
        c = counts.loc[p]
        items.append(
            f"<li>Profiles for {esc(ctx.label(p))}: {int(c['strength'])} strength, {int(c['growth area'])} "
            "growth area, "
            f"{int(c['not distinguishable from the average'])} not distinguishable from the average, "
            f"{int(c['too uncertain to interpret'])} too uncertain to interpret.</li>")
    items += _loop_glance(ctx)
    warn = ""
    if doc["warnings"]:
        warn = ('<div class="box warn" id="warnings"><h3>Warnings</h3><ul>'
                + "".join(f"<li>{esc(w)}</li>" for w in doc["warnings"]) + "</ul></div>")
    return (f'<section id="glance"><h2>At a glance</h2><div class="box"><ul>{"".join(items)}</ul></div>{warn}'
            "</section>")


def _loop_glance(ctx: ReportContext) -> list[str]:
    """At-a-glance lines of the stability and training sections, when the document has them."""
    from theralens.report.training import change_phrase

    items = []
    for r in ctx.doc.get("stability", {}).get("rows", []):
        items.append(f'<li>{esc(r["verdict_text"])} (<a href="#stability">profile stability</a>)</li>')
    for r in ctx.doc.get("training", {}).get("rows", []):
        if r["term"] == "targeted_change":
            items.append(f"<li>Training on {esc(ctx.label(r['process']))}, compared with training on another process: "
                         f"{esc(ctx.label(r['process']))} slope after training "
                         f"{change_phrase(r, key('training', r['process'], r['term']))} "
                         '(<a href="#training">training evaluation</a>).</li>')
    return items


# ------------------------------------------------------------------------------------- data
def data_section(ctx: ReportContext) -> str:
    doc = ctx.doc
    n = doc["n"]
    caseloads = [int(t["n_patients"]) for t in doc["therapists"]]
    minc = ctx.profiles.min_caseload
    c = doc["input"]["counts"]
    arr = np.asarray(caseloads) if caseloads else np.asarray([0])
    overview = table(
        ["Quantity", "Value"],
        [
            ["Therapists analysed", num(n["therapists"], "n.therapists", kind="int")],
            ["Patients analysed", num(n["patients"], "n.patients", kind="int")],
            ["Assessments of analysed patients", num(n["assessments"], "n.assessments", kind="int")],
            ["Patients per therapist: median (range)",
             f"{float(np.median(arr)):g} ({int(arr.min())}\u2013{int(arr.max())})"],
            ["Therapists with a single analysed patient", str(int((arr == 1).sum()))],
            [f"Therapists with fewer than {minc} patients (profiles too uncertain)", str(int((arr < minc).sum()))],
            ["Rows read / used", f"{c.get('rows_read', DASH)} / {c.get('rows_used', DASH)}"],
        ],
        caption=ctx.table_label(), title="Data overview", numeric=[False, True], table_id="table-data",
    )
    fig = figures.caseload_distribution(caseloads, minc)
    parts = [f'<section id="data"><h2>Data</h2>{overview}',
             _fig(fig, f"{ctx.figure_label()}. Number of therapists by analysed caseload. Grey bars: caseloads "
                       f"below the minimum of {minc} patients for an interpretable profile.", "fig-caseload")]
    # missing data
    rows_used = c.get("rows_used")
    miss_rows = []
    if rows_used:
        out_n = c.get("outcome_assessments")
        if out_n is not None:
            miss_rows.append(["outcome", str(out_n), f"{100 * (1 - out_n / rows_used):.1f}%"])
        for p in ctx.processes:
            k = f"{p}_ratings"
            if k in c:
                miss_rows.append([esc(ctx.label(p)), str(c[k]), f"{100 * (1 - c[k] / rows_used):.1f}%"])
    if miss_rows:
        parts.append(table(["Variable", "Observed rows", "Missing"], miss_rows, caption=ctx.table_label(),
                           title=f"Missing values among the {rows_used} rows used",
                           note="Every observed value is used; rows with a missing value are not dropped as a whole "
                                "(maximum likelihood under missing at random).",
                           numeric=[False, True, True], table_id="table-missing"))
    ex = n.get("exclusions", [])
    if ex:
        show_ids = ctx.show_patient_ids
        ex_rows = []
        for i, e in enumerate(ex):
            examples = ", ".join(esc(x) for x in e.get("examples", [])) or DASH
            ex_rows.append([esc(e["reason"]), num(e["rows"], key("n", "exclusions", i, "rows"), kind="int"),
                            num(e["patients"], key("n", "exclusions", i, "patients"), kind="int"),
                            num(e["patients_removed"], key("n", "exclusions", i, "patients_removed"), kind="int"),
                            examples])
        parts.append(table(["Reason", "Rows", "Patients affected", "Patients removed", "Example rows"], ex_rows,
                           caption=ctx.table_label(), title="Exclusions", numeric=[False, True, True, True, False],
                           note="Nothing is dropped silently. " + (
                               "Examples are row numbers of the input file." if not show_ids else
                               "Examples are row numbers or patient ids ([report] show_patient_ids = true)."),
                           table_id="table-exclusions"))
    else:
        parts.append("<p>No rows or patients were excluded.</p>")
    if doc["notes"]:
        parts.append("<h3>Notes on the data</h3><ul>" + "".join(f"<li>{esc(x)}</li>" for x in doc["notes"]) + "</ul>")
    parts.append("</section>")
    return "".join(parts)


# ---------------------------------------------------------------------------- decomposition
def decomposition_section(ctx: ReportContext) -> str:
    doc = ctx.doc
    design = doc["options"]["design"]
    if ctx.design == "patient":
        formula = ("X<sub>ij</sub> = (X<sub>ij</sub> &minus; X&#772;<sub>j</sub>) [within-therapist] + "
                   "(X&#772;<sub>j</sub> &minus; X&#772;) [between-therapist] + X&#772;")
    else:
        formula = ("X<sub>tij</sub> = (X<sub>tij</sub> &minus; X&#772;<sub>ij</sub>) [within-patient] + "
                   "(X&#772;<sub>ij</sub> &minus; X&#772;<sub>j</sub>) [between-patient] + "
                   "(X&#772;<sub>j</sub> &minus; X&#772;) [between-therapist] + X&#772;")
    weighting = ("over patients (each patient weighs once)" if design.get("caseload_weighting") == "patient"
                 else "over ratings (session weighting)")
    rows = []
    for r in doc["reliability"]:
        pre = key("reliability", r["process"])
        low = not is_missing(r.get("mean_reliability")) and float(r["mean_reliability"]) < 0.7
        rows.append([esc(ctx.label(r["process"])), num(r.get("n_therapists"), key(pre, "n_therapists"), kind="int"),
                     num(r.get("tau2"), key(pre, "tau2")), num(r.get("sigma2"), key(pre, "sigma2")),
                     num(r.get("icc"), key(pre, "icc")), num(r.get("mean_reliability"), key(pre, "mean_reliability"))
                     + (" (low)" if low else ""),
                     num(r.get("min_reliability"), key(pre, "min_reliability"))])
    rel = table(["Process", "Therapists", "\u03c4\u00b2 (between)", "\u03c3\u00b2 (within)", "ICC", "Mean \u03bb",
                 "Min \u03bb"], rows, caption=ctx.table_label(), title="Reliability of therapist caseload means",
                note="\u03bb<sub>j</sub> = \u03c4\u00b2 / (\u03c4\u00b2 + \u03c3\u00b2 / n<sub>j</sub>), one-way "
                     "random-effects ANOVA of patient process scores. Mean reliability below .70 biases observed "
                     "between-therapist and cross-level effects toward zero (L\u00fcdtke et al., 2008).",
                numeric=[False] + [True] * 6, table_id="table-reliability")
    return ('<section id="decomposition"><h2>Decomposition and reliability of therapist means</h2>'
            "<p>Each process is split into parts that vary at different levels (observed decomposition):</p>"
            f'<p class="formula">{formula}</p>'
            f"<p>Caseload means X&#772;<sub>j</sub> are taken {weighting}; the grand mean X&#772; is the mean of the "
            f"therapist means. The between-therapist part is only as trustworthy as the caseload means are "
            f"reliable:</p>{rel}{_latent_paragraph(ctx)}</section>")


# ------------------------------------------------------------------- latent decomposition columns
def _has_latent(ctx: ReportContext) -> bool:
    return ctx.doc.get("decomposition", "manifest") != "manifest" and "latent" in ctx.doc


def _latent_head(ctx: ReportContext, reliability: bool = True) -> tuple[list[str], str]:
    """Extra column heads and table note when the latent decomposition ran (docs/latent.md)."""
    if not _has_latent(ctx):
        return [], ""
    lat = ctx.doc["latent"]
    est = ("Bayes, posterior mean and 95% interval" if lat.get("estimator") != "ml" else
           "ML, jackknife bias-corrected, jackknife SE and t interval" if lat.get("bias_correction") == "jackknife"
           else "ML, Wald")
    head = ["Latent <em>b</em>", "Latent <em>SE</em>", "Latent 95% CI"] + (["\u03bb"] if reliability else [])
    note = (f" Latent columns: the same effect with latent caseload means (multilevel SEM; {est}); "
            "\u03bb is the mean reliability of the observed caseload means, whose unreliability attenuates the "
            "manifest between-type estimates (L\u00fcdtke et al., 2008).")
    return head, note


def _latent_cells(ctx: ReportContext, r: dict[str, Any], pre: str, reliability: bool = True) -> list[str]:
    if not _has_latent(ctx):
        return []
    cells = [num(r.get("latent_estimate"), key(pre, "latent_estimate")), num(r.get("latent_se"), key(pre, "latent_se")),
             f"[{num(r.get('latent_ci_low'), key(pre, 'latent_ci_low'))}, "
             f"{num(r.get('latent_ci_high'), key(pre, 'latent_ci_high'))}]"]
    if reliability:
        cells.append(num(r.get("reliability"), key(pre, "reliability")))
    return cells


def _latent_paragraph(ctx: ReportContext) -> str:
    """What the latent decomposition adds, or the recommendation to use it (docs/latent.md)."""
    doc = ctx.doc
    if _has_latent(ctx):
        which = ("used for every result" if doc["decomposition"] == "latent"
                 else "shown beside the observed one in the aim 1 and aim 3 tables")
        return (f"<p>The latent decomposition is {which}: each therapist's caseload mean is a latent variable "
                "(multilevel SEM, as Coyne et al., 2022), so between-therapist effects are not attenuated by the "
                "unreliability of observed caseload means. The within &times; between interaction stays "
                "observed.</p>")
    low = [r for r in doc["reliability"] if not is_missing(r.get("mean_reliability"))
           and float(r["mean_reliability"]) < 0.7]
    if low:
        return ('<p class="warning">Caseload means are unreliable (mean &lambda; below .70): the observed '
                "between-therapist effects below are attenuated toward the within effects. Run with "
                "<code>[design] decomposition = \"latent\"</code> (or <code>\"both\"</code>) for estimates "
                "without this bias.</p>")
    return ""


# -------------------------------------------------------------------------------------- aim 1
def aim1_section(ctx: ReportContext) -> str:
    doc = ctx.doc
    rows = []
    for p in ctx.processes:
        rows.append([f"<strong>{esc(ctx.label(p))}</strong>"])
        for r in [r for r in doc["aim1"] if r["process"] == p]:
            pre = key("aim1", p, r["component"])
            t = float(r["estimate"]) / float(r["se"]) if not is_missing(r["se"]) and float(r["se"]) > 0 else None
            rows.append([
                "&nbsp;&nbsp;" + esc(COMPONENT_LABELS.get(r["component"], r["component"])),
                num(r["estimate"], key(pre, "estimate")), num(r["se"], key(pre, "se")),
                num(r["df"], key(pre, "df"), kind="df"), num(t), num(r["p"], key(pre, "p"), kind="p"),
                f"[{num(r['ci_low'], key(pre, 'ci_low'))}, {num(r['ci_high'], key(pre, 'ci_high'))}]",
                *_latent_cells(ctx, r, pre),
            ])
    benefit = ("negative" if ctx.benefit_sign < 0 else "positive")
    latent_head, latent_note = _latent_head(ctx)
    tab = table(["Process and component", "<em>b</em>", "<em>SE</em>", "<em>df</em>", "<em>t</em>", "<em>p</em>",
                 "95% CI", *latent_head], rows, caption=ctx.table_label(),
                title="Within- and between-therapist process-outcome associations (aim 1)",
                note=f"Unstandardized fixed effects of one model with every process. Higher outcome is "
                     f"{esc(doc['higher_outcome_is'])}: a {benefit} <em>b</em> means more improvement."
                     + ctx.df_note + latent_note,
                numeric=[False, True, True, True, True, True, True] + [True] * len(latent_head),
                table_id="table-aim1")
    fr = pd.DataFrame(doc["aim1"]).assign(process=lambda d: d["process"].map(ctx.label))
    fig = figures.effects_forest(fr, COMPONENT_LABELS, ctx.benefit_sign)
    sentences = "".join(f"<li>{_aim1_sentence(ctx, r)}</li>" for r in doc["aim1"])
    return (f'<section id="aim1"><h2>Aim 1: within- and between-therapist process-outcome associations</h2>'
            f"<p>Are patients who rate a process higher (within therapists) and therapists whose caseloads rate it "
            f"higher (between therapists) the ones with more improvement?</p>{tab}<ul>{sentences}</ul>"
            + _fig(fig, f"{ctx.figure_label()}. Aim 1 estimates with 95% confidence intervals.", "fig-aim1")
            + "</section>")


# -------------------------------------------------------------------------------------- aim 2
def aim2_section(ctx: ReportContext) -> str:
    doc = ctx.doc
    rows = []
    for r in doc["aim2"]:
        pre = key("aim2", r["process"])
        rows.append([esc(ctx.label(r["process"])), esc(COMPONENT_LABELS.get(r["component"], r["component"])),
                     num(r["slope_variance"], key(pre, "slope_variance")), num(r["slope_sd"], key(pre, "slope_sd")),
                     f"[{num(r['slope_sd_ci_low'], key(pre, 'slope_sd_ci_low'))}, "
                     f"{num(r['slope_sd_ci_high'], key(pre, 'slope_sd_ci_high'))}]"
                     f"{'<sup>a</sup>' if r.get('slope_sd_ci_one_sided') else ''}",
                     num(r["lrt_statistic"], key(pre, "lrt_statistic")),
                     num(r["lrt_df"], key(pre, "lrt_df"), kind="df"), num(r["p"], key(pre, "p"), kind="p"),
                     esc(r["reference"]), num(r["mean_slope_reliability"], key(pre, "mean_slope_reliability"))])
    tab = table(["Process", "Random slope of", "\u03c4\u00b2<sub>1</sub>", "SD", "SD 95% CI", "\u03c7\u0304\u00b2",
                 "<em>df</em>",
                 "<em>p</em>", "Reference distribution", "Mean slope reliability"], rows, caption=ctx.table_label(),
                title="Therapist-level variance of the within slopes (aim 2)",
                note="SD 95% CI: profile-likelihood interval of the slope SD (lme4's confint(method = "
                     "&quot;profile&quot;), which profiles the ML likelihood; a lower bound of 0 means the interval "
                     "reaches the boundary; <sup>a</sup> such an interval cannot miss the true SD from below, so its "
                     "upper bound is the one-sided 95% bound, lower than lme4's two-sided one, which over-covers "
                     "there). "
                     "REML likelihood-ratio test of each random slope against the model without it (same fixed "
                     "effects); the variance lies on the boundary of its parameter space, so the statistic is "
                     "referred to a chi-bar-square mixture (Self &amp; Liang, 1987; Stram &amp; Lee, 1994); "
                     "<em>df</em> = parameters removed (variance and covariances). Slope reliability = 1 &minus; "
                     "conditional variance / slope variance, averaged over therapists with a slope.",
                numeric=[False, False, True, True, True, True, True, False, True], table_id="table-aim2")
    parts = [f'<section id="aim2"><h2>Aim 2: do the within slopes differ between therapists?</h2>'
             "<p>\u201cA technique in the hands of one therapist may look very different in the hands of "
             "another.\u201d "
             "Each therapist gets a random slope for every process; its variance says how much therapists differ "
             f"in how strongly the process goes with improvement.</p>{tab}"]
    parts.append(random_effects_table(ctx))
    cats = {p: {t.therapist: t.process(p).category for t in ctx.profiles} for p in ctx.processes}
    for i, r in enumerate(doc["aim2"]):
        p = r["process"]
        d = pd.DataFrame(r["therapists"])
        avg = next((a["estimate"] for a in doc["aim1"] if a["process"] == p and a["component"] == ctx.within), None)
        n_est = int(d["estimable"].sum()) if len(d) else 0
        est = d[d["estimable"]] if len(d) else d
        shown, how = drawn_subset(est, ctx.pages, ctx.benefit_sign) if len(est) else (est, "")
        average = float(avg) if avg is not None else 0.0
        svg = figures.caterpillar(shown, average, ctx.label(p), cats.get(p, {}), ctx.benefit_sign,
                                  figures.process_colour(i))
        drawn = (f"{n_est} therapists with at least two patients" if not how else
                 f"{len(shown)} of the {n_est} therapists with at least two patients ({esc(how)}; the next figure "
                 "shows every slope)")
        parts.append(_fig(svg, f"{ctx.figure_label()}. Therapist slopes of {esc(ctx.label(p))} "
                               f"(b<sub>1j</sub> = \u03b3<sub>10</sub> + u<sub>1j</sub>) with 95% intervals, {drawn}. "
                               "Filled triangles: strength or growth area (interval entirely on one side of the "
                               "average); filled circles: not distinguishable from the average; hollow circles: "
                               "too uncertain to interpret (caseload below the minimum).", f"fig-caterpillar-{i + 1}"))
        if how:
            svg = figures.slope_distribution(est["slope"].to_numpy(dtype=float), average, ctx.label(p),
                                             ctx.benefit_sign, figures.process_colour(i))
            parts.append(_fig(svg, f"{ctx.figure_label()}. Distribution of the slopes of {esc(ctx.label(p))} of all "
                                   f"{n_est} therapists with at least two patients (dashed: the average slope).",
                              f"fig-slope-distribution-{i + 1}"))
    # a collapsed table with every therapist slope
    rows2 = []
    listed = set(ctx.pages)
    for r in doc["aim2"]:
        p = r["process"]
        for t in r["therapists"]:
            if not ctx.every_therapist and str(t["therapist"]) not in listed:
                continue
            pre = key("aim2", p, "therapists", t["therapist"])
            rows2.append([esc(ctx.label(p)), esc(t["therapist"]),
                          num(t["n_patients"], key(pre, "n_patients"), kind="int"),
                          num(t["slope"], key(pre, "slope") if t["slope"] is not None else None),
                          f"[{num(t['ci_low'])}, {num(t['ci_high'])}]",
                          num(t["prob_stronger_than_average"],
                              key(pre, "prob_stronger_than_average") if t["prob_stronger_than_average"] is not None
                              else None),
                          num(t["slope_reliability"])])
    which = "Every therapist's slope" if ctx.every_therapist else (
        f"The slopes of the {len(ctx.pages)} therapists with a profile page (all {ctx.n_therapists}: "
        "tables/aim2_therapist_slopes.csv)")
    parts.append(f'<details class="no-print"><summary>{esc(which)} (table)</summary>'
                 + table(["Process", "Therapist", "Patients", "Slope", "95% interval", "P(stronger)", "Reliability"],
                         rows2, numeric=[False, False, True, True, True, True, True], table_id="table-slopes")
                 + "</details></section>")
    return "".join(parts)


def random_effects_table(ctx: ReportContext) -> str:
    """Variances, SDs and correlations of the main model's random effects (lme4's VarCorr),
    and the therapists' share of the remaining outcome variance."""
    main = next(m for m in ctx.doc["models"] if m["role"] == "main")
    vc = main["varcorr"]
    names = {"(Intercept)": "intercept"}
    for p in ctx.doc["processes"]:
        names[p["within"]] = f"{p['label']}: within slope"

    def term(v: Any) -> str:
        return esc(names.get(v, v)) if isinstance(v, str) else ""

    rows = []
    for r in vc:
        group = {"therapist": "therapist", "therapist:patient": "patient (in therapist)"}.get(r["grp"], r["grp"])
        if r["grp"] == "Residual":
            rows.append(["residual", "", num(r["vcov"]), num(r["sdcor"]), ""])
        elif isinstance(r["var2"], str):
            rows.append([esc(group), f"{term(r['var1'])} \u00d7 {term(r['var2'])}", "", "", num(r["sdcor"])])
        else:
            rows.append([esc(group), term(r["var1"]), num(r["vcov"]), num(r["sdcor"]), ""])
    icpt = [r["vcov"] for r in vc if r["grp"] == "therapist" and r["var1"] == "(Intercept)" and r["var2"] is None]
    resid = [r["vcov"] for r in vc if r["grp"] == "Residual"]
    share = ""
    if icpt and resid and not is_missing(icpt[0]) and not is_missing(resid[0]) and float(icpt[0] + resid[0]) > 0:
        v = float(icpt[0] / (icpt[0] + resid[0]))
        share = (f" The therapist intercept holds {num(100 * v, kind='pct')} of the outcome variance left after the "
                 "fixed effects (for a patient at their therapist's process means; therapist effects are typically "
                 "about 5% of outcome variance).")
    return table(["Group", "Random effect", "Variance", "SD", "Correlation"], rows, caption=ctx.table_label(),
                 title="Random effects of the main model", numeric=[False, False, True, True, True],
                 note="Therapist-level random intercept and random within slopes with an unstructured covariance "
                      f"(lme4: VarCorr).{share}", table_id="table-random-effects")


# -------------------------------------------------------------------------------------- aim 3
def _aim3_sentence(ctx: ReportContext, r: dict[str, Any]) -> str:
    p, m = esc(ctx.label(r["process"])), esc(ctx.label(r["moderator"]))
    pre = key("aim3", r["process"], r["moderator"], r["target"])
    more = float(r["estimate"]) * ctx.benefit_sign > 0
    if r["target"] == "within_slope":
        within = "within-therapist" if ctx.design == "patient" else "within-patient"
        return (f"{m} moderated the {within} {p}-outcome slope ({_est_ci(r, pre)}): therapists higher on {m} "
                f"used {p} to {'more' if more else 'less'} benefit.")
    return (f"{m} moderated the between-therapist {p}-outcome association ({_est_ci(r, pre)}): among therapists "
            f"higher on {m}, a higher caseload mean of {p} went with {'more' if more else 'less'} caseload-level "
            "improvement than among the others.")


def aim3_section(ctx: ReportContext) -> str:
    doc = ctx.doc
    head = ('<section id="aim3"><h2>Aim 3: which therapist characteristics predict who uses a process to more '
            "benefit?</h2>")
    if not doc["aim3"]:
        return head + ("<p>No therapist characteristics were given (<code>[therapist_moderators] columns</code>), so "
                       "aim 3 was not estimated.</p></section>")
    tl = TARGET_LABELS[ctx.design]
    rows = []
    for p in ctx.processes:
        for r in [r for r in doc["aim3"] if r["process"] == p]:
            pre = key("aim3", p, r["moderator"], r["target"])
            rows.append([esc(ctx.label(p)), esc(ctx.label(r["moderator"])), esc(tl.get(r["target"], r["target"])),
                         num(r["estimate"], key(pre, "estimate")), num(r["se"], key(pre, "se")),
                         num(r["df"], key(pre, "df"), kind="df"), num(r["p"], key(pre, "p"), kind="p"),
                         f"[{num(r['ci_low'], key(pre, 'ci_low'))}, {num(r['ci_high'], key(pre, 'ci_high'))}]",
                         f"{num(r['therapists'], key(pre, 'therapists'), kind='int')}"
                         + (f" ({num(r['therapists_missing'], key(pre, 'therapists_missing'), kind='int')} missing)"
                            if r.get("therapists_missing") else ""),
                         *_latent_cells(ctx, r, pre, reliability=False)])
    joint = doc["options"].get("therapist_moderators", {}).get("joint", False)
    latent_head, latent_note = _latent_head(ctx, reliability=False)
    tab = table(["Process", "Moderator", "Moderates the", "<em>b</em>", "<em>SE</em>", "<em>df</em>", "<em>p</em>",
                 "95% CI", "Therapists", *latent_head], rows, caption=ctx.table_label(),
                title="Therapist-level moderators (aim 3)",
                note=("All moderators in one model" if joint else "One moderator per model") + "; moderators centred "
                     "at their mean over therapists. <em>b</em>: change in the slope (or association) per unit of the "
                     "moderator; the sign reads as in the aim 1 table. Uncorrected for multiple testing; with few "
                     "therapists cross-level effects have low power (Mathieu et al., 2012)." + ctx.df_note
                     + latent_note,
                numeric=[False, False, False, True, True, True, True, True, True] + [True] * len(latent_head),
                table_id="table-aim3")
    sig = [r for r in doc["aim3"] if not is_missing(r.get("p")) and float(r["p"]) < 0.05]
    sentences = ("<ul>" + "".join(f"<li>{_aim3_sentence(ctx, r)}</li>" for r in sig) + "</ul>") if sig else \
        "<p>No moderator effect reached p &lt; .05.</p>"
    parts = [head, tab, sentences]
    # slope-by-moderator figures: one per process, one panel per moderator
    for i, p in enumerate(ctx.processes):
        panels = [_panel(ctx, line, i, title=ctx.label(line["moderator"]), xlabel=ctx.label(line["moderator"]))
                  for line in doc["fitted_lines"] if line["figure"] == "moderator" and line["process"] == p]
        if panels:
            svg = figures.slope_by_covariate(panels, f"therapist moderators ({ctx.label(p)})", ctx.benefit_sign)
            parts.append(_fig(svg, f"{ctx.figure_label()}. Therapist slopes of {esc(ctx.label(p))} (main model, 95% "
                                   "intervals) by moderator, with the cross-level interaction's fitted "
                                   "line (from the moderator model). Slopes are shrunk toward the average, so the "
                                   "points spread less than the line implies.", f"fig-moderators-{i + 1}"))
    parts.append("</section>")
    return "".join(parts)


def _panel(ctx: ReportContext, line: dict[str, Any], i: int, title: str, xlabel: str) -> figures.Panel:
    """A panel of therapist slopes (main model, estimable therapists) against the x of a
    fitted line (a moderator or the caseload mean), with that line."""
    p = line["process"]
    slopes = pd.DataFrame(next(r["therapists"] for r in ctx.doc["aim2"] if r["process"] == p))
    slopes = slopes[slopes["estimable"]].set_index("therapist")
    if line["x"] == "moderator":
        values = {t["therapist"]: t["moderators"].get(line["moderator"]) for t in ctx.doc["therapists"]}
    else:
        values = {t["therapist"]: t["caseload_means"].get(p) for t in ctx.doc["therapists"]}
    x = pd.to_numeric(pd.Series(values, dtype=object), errors="coerce").astype(float)
    seen = set(np.unique(x.dropna().to_numpy()))
    return figures.Panel(
        title=title, xlabel=xlabel, x=x.reindex(slopes.index).to_numpy(dtype=float),
        slope=slopes["slope"].to_numpy(dtype=float), ci_low=slopes["ci_low"].to_numpy(dtype=float),
        ci_high=slopes["ci_high"].to_numpy(dtype=float), intercept=float(line["intercept"]),
        coef=float(line["coefficient"]), centre=float(line["centre"]), colour=figures.process_colour(i),
        ylabel=f"within slope of {ctx.label(p)}", binary=line["x"] == "moderator" and seen <= {0.0, 1.0})


# --------------------------------------------------------------------------------- ancillary
def ancillary_section(ctx: ReportContext) -> str:
    doc = ctx.doc
    rows = []
    for r in doc["ancillary"]:
        pre = key("ancillary", r["process"])
        rows.append([esc(ctx.label(r["process"])), num(r["estimate"], key(pre, "estimate")),
                     num(r["se"], key(pre, "se")),
                     num(r["df"], key(pre, "df"), kind="df"), num(r["p"], key(pre, "p"), kind="p"),
                     f"[{num(r['ci_low'], key(pre, 'ci_low'))}, {num(r['ci_high'], key(pre, 'ci_high'))}]"])
    within = "within-therapist" if ctx.design == "patient" else "within-patient"
    tab = table(["Process", "<em>b</em>", "<em>SE</em>", "<em>df</em>", "<em>p</em>", "95% CI"], rows,
                caption=ctx.table_label(),
                title=f"{within.capitalize()} \u00d7 between-therapist interaction (ancillary)",
                note=f"Coefficient of the product of the {within} and between-therapist components, added to the main "
                     "model: the change in a therapist's within slope per unit of their caseload mean." + ctx.df_note,
                numeric=[False, True, True, True, True, True], table_id="table-ancillary")
    parts = ['<section id="ancillary"><h2>Ancillary: does the within slope depend on the therapist\'s own average '
             "level of the process?</h2>", tab]
    sentences = []
    for r in doc["ancillary"]:
        pre = key("ancillary", r["process"])
        if _clear(r):
            more = float(r["estimate"]) * ctx.benefit_sign > 0
            sentences.append(f"<li>Therapists with higher caseload means of {esc(ctx.label(r['process']))} used it to "
                             f"{'more' if more else 'less'} benefit within their caseload ({_est_ci(r, pre)}).</li>")
        else:
            sentences.append(f"<li>{esc(ctx.label(r['process']))}: no clear within \u00d7 between interaction "
                             f"({_est_ci(r, pre)}).</li>")
    parts.append("<ul>" + "".join(sentences) + "</ul>")
    panels = [_panel(ctx, line, ctx.processes.index(line["process"]), title=ctx.label(line["process"]),
                     xlabel=f"caseload mean of {ctx.label(line['process'])}")
              for line in doc["fitted_lines"] if line["figure"] == "ancillary"]
    if panels:
        svg = figures.slope_by_covariate(panels, "the therapist's caseload mean", ctx.benefit_sign, share_y=False)
        parts.append(_fig(svg, f"{ctx.figure_label()}. Therapist slopes (main model, 95% intervals) by the therapist's "
                               "caseload mean of the same process, with the within \u00d7 between interaction's fitted "
                               "line.", "fig-ancillary"))
    parts.append("</section>")
    return "".join(parts)


# ---------------------------------------------------------------------------------- profiles
def profiles_section(ctx: ReportContext) -> str:
    rows = []
    pages = set(ctx.pages)
    for t in ctx.profiles:
        if not ctx.every_therapist and t.therapist not in pages:
            continue
        o = t.outcome
        link = (f'<a href="therapists/{esc(profile_filename(t.therapist))}" class="profile-link">{esc(t.therapist)}</a>'
                if t.therapist in pages else esc(t.therapist))
        rows.append([link, num(t.n_patients, key("therapists", t.therapist, "n_patients"), kind="int"),
                     f"{num(o.benefit)} [{num(o.benefit_ci_low)}, {num(o.benefit_ci_high)}]",
                     badge(o.category, short=True)]
                    + [badge(pp.category, short=True) for pp in t.processes])
    tab = table(["Therapist", "Patients", "Outcome vs average [95% interval]", "Overall outcome"]
                + [f"{esc(ctx.label(p))} slope" for p in ctx.processes], rows, caption=ctx.table_label(),
                title="Therapist profiles (follow a therapist's id for their page)",
                note="Outcome vs average: the therapist's random intercept in the benefit direction (positive = their "
                     "patients improved more than with the average therapist). Not distinguishable: from the average "
                     f"(the 95% interval includes it); too uncertain: fewer than {ctx.profiles.min_caseload} analysed "
                     "patients or no slope of their own.",
                numeric=[False, True, True, False] + [False] * len(ctx.processes), table_id="table-profiles")
    minc = ctx.profiles.min_caseload
    listed = "" if ctx.every_therapist else "; this table lists them, and tables/therapist_profiles.csv every therapist"
    return ('<section id="profiles"><h2>Therapist profiles</h2>'
            "<p>Each therapist has a page that says, with its uncertainty, where their patients gain most. A slope is "
            f"a <strong>strength</strong> or a <strong>growth area</strong> only when its whole 95% interval lies on "
            "one side of the average; otherwise it is <em>not distinguishable from the average</em> (never a "
            f"weakness). Therapists with fewer than {minc} analysed patients (<code>[report] min_caseload</code>) "
            f"are <em>too uncertain to interpret</em>.</p>"
            f"<p class=\"report-size\">Profile pages: {len(ctx.pages)} of {ctx.n_therapists} therapists "
            f"({esc(ctx.chosen_by)}){listed}. This report: {REPORT_SIZE_MARK}.</p>{tab}</section>")


# ------------------------------------------------------------------------------- diagnostics
def diagnostics_section(ctx: ReportContext) -> str:
    doc = ctx.doc
    svg = figures.residual_diagnostics(doc["diagnostics"], "Therapist intercepts")
    rows = []
    for i, m in enumerate(doc["models"]):
        pre = key("models", i)
        rows.append([esc(m["role"]), num(m["nobs"], key(pre, "nobs"), kind="int"),
                     "yes" if m["converged"] else "<strong>no</strong>",
                     "<strong>yes</strong>" if m["singular"] else "no",
                     num(m["reml_criterion"], key(pre, "reml_criterion"), text=f"{m['reml_criterion']:.2f}"
                         if not is_missing(m["reml_criterion"]) else None),
                     num(m["evaluations"], key(pre, "evaluations"), kind="int"),
                     num(m["gradient_norm"], key(pre, "gradient_norm"), text=f"{m['gradient_norm']:.1e}"
                         if not is_missing(m["gradient_norm"]) else None)])
        note = f' <span class="muted">({esc(m["note"])})</span>' if m.get("note") else ""
        rows.append([f'<span class="formula">{esc(m["formula"])}</span>{note}'])
    tab = table(["Model", "N", "Converged", "Singular", "REML criterion", "Evaluations", "max |gradient|"], rows,
                caption=ctx.table_label(), title="Every fitted model, with its formula (lme4 syntax)",
                note="Singular: a variance or correlation of the therapist random effects is estimated at its "
                     "boundary; fixed effects remain valid but that random-effect structure is not supported by the "
                     "data.", numeric=[False, True, False, False, True, True, True], table_id="table-models",
                span_class="formula-row")
    return ('<section id="diagnostics"><h2>Model diagnostics</h2>'
            + _fig(svg, f"{ctx.figure_label()}. Main model: residuals against fitted values (red: running mean), "
                        "normal Q-Q plots of the residuals and of the therapist random intercepts.", "fig-diagnostics")
            + tab + "</section>")


# ----------------------------------------------------------------------------------- methods
def methods_section(ctx: ReportContext) -> str:
    mods = [ctx.label(m) for m in dict.fromkeys(r["moderator"] for r in ctx.doc["aim3"])]
    paras = methods_paragraphs(ctx.doc, [ctx.label(p) for p in ctx.processes], mods, ctx.profiles.min_caseload,
                               ctx.profiles.draws, ctx.profiles.seed)
    refs = "".join(f"<li>{r}</li>" for r in REFERENCES)
    return ('<section id="methods" class="methods"><h2>Methods</h2>'
            + "".join(f"<p>{p}</p>" for p in paras)
            + "<h3>Options used</h3><p>The complete configuration of this run, as a <code>study.toml</code> file that "
              f'reproduces it:</p><pre class="formula config">{esc(_toml(ctx.doc["options"]))}</pre>'
            + f'<h3>References</h3><ol class="refs">{refs}</ol></section>')


def _toml(config: dict[str, Any]) -> str:
    """The configuration as TOML text."""
    lines = []
    for section, values in config.items():
        lines.append(f"[{section}]")
        for k, v in values.items():
            if isinstance(v, bool):
                text = "true" if v else "false"
            elif isinstance(v, (int, float)):
                text = str(v)
            else:
                text = json.dumps(v, ensure_ascii=False)
            lines.append(f"{k} = {text}")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def report_body(ctx: ReportContext) -> str:
    """The body markup of ``report.html``."""
    from theralens.report.stability import stability_section
    from theralens.report.training import training_section

    loop = ([stability_section] if "stability" in ctx.doc else []) + ([training_section] if "training" in ctx.doc
                                                                        else [])
    # built in reading order, so that tables and figures are numbered as they appear
    parts = [section(ctx) for section in (header, toc, glance, data_section, decomposition_section, aim1_section,
                                          aim2_section, aim3_section, ancillary_section, profiles_section, *loop,
                                          diagnostics_section, methods_section)]
    v = esc(ctx.doc["software"].get("theralens", ""))
    parts.append(f"<footer>Generated by theralens {v}. Every number marked in this report equals the one in "
                 "<code>results.json</code> beside it; tables as CSV in <code>tables/</code>. Patient identifiers "
                 + ("are shown where relevant ([report] show_patient_ids = true)." if ctx.show_patient_ids
                    else "never appear in this report.") + "</footer>")
    return "\n".join(parts)
