"""The report's section on the training evaluation (the ``training`` section of
``results.json``; docs/stability_training.md) and the training line of each therapist's page.

Wording follows the interval: a change whose interval covers zero is "no detectable change",
never a failed training.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from theralens.report.formatting import esc, key, num
from theralens.report.page import table
from theralens.report.profile_page import profile_filename

if TYPE_CHECKING:  # pragma: no cover
    from theralens.report.study import ReportContext

__all__ = ["TERM_LABELS", "change_phrase", "training_cards", "training_section"]

TERM_LABELS = {
    "change_untrained": "Change after the reference date: untrained therapists",
    "change_untargeted": "Change after training: therapists trained on another process",
    "change_targeted": "Change after training: therapists trained on this process",
    "targeted_change": "Targeted minus untargeted (difference in differences)",
    "targeted_vs_untrained": "Targeted minus untrained",
    "untargeted_vs_untrained": "Untargeted minus untrained",
}


def change_phrase(r: dict[str, Any], prefix: str) -> str:
    """"stronger by 0.21 [0.02, 0.40]", "weaker (-0.21 [-0.40, -0.02] in the benefit direction)" or
    "no detectable change (0.05 [-0.10, 0.20])" for a row with benefit, benefit_ci_low/high and
    words; numbers carry their ``data-key`` under ``prefix``."""
    ci = f"[{num(r['benefit_ci_low'], key(prefix, 'benefit_ci_low'))}, " \
         f"{num(r['benefit_ci_high'], key(prefix, 'benefit_ci_high'))}]"
    b = num(r["benefit"], key(prefix, "benefit"))
    words = r.get("words")
    if words == "stronger":
        return f"stronger by {b} {ci}"
    if words == "weaker":
        return f"weaker ({b} {ci} in the benefit direction)"
    if words == "no detectable change":
        return f"no detectable change ({b} {ci})"
    return "no estimate"


def training_section(ctx: ReportContext) -> str:
    """The section ``#training``: the difference in differences per process, the variance of the
    change between therapists, and the trained therapists' own changes."""
    sec = ctx.doc["training"]
    sched = sec["schedule"]
    trained = [s for s in sched if s["trained"]]
    lines = []
    for p in ctx.processes:
        r = next((r for r in sec["rows"] if r["process"] == p and r["term"] == "targeted_change"), None)
        if r is None:
            lines.append(f"<li>{esc(ctx.label(p))}: the targeted change cannot be estimated from these data (it needs "
                         "therapists trained on it and therapists trained on another process).</li>")
            continue
        lines.append(f'<li class="training-verdict">Training on {esc(ctx.label(p))}, compared with training on '
                     f"another process: {esc(ctx.label(p))} slope after training "
                     f"{change_phrase(r, key('training', p, r['term']))}.</li>")
    rows = []
    for p in ctx.processes:
        for r in [r for r in sec["rows"] if r["process"] == p]:
            pre = key("training", p, r["term"])
            rows.append([esc(ctx.label(p)), esc(TERM_LABELS.get(r["term"], r["term"])),
                         num(r["estimate"], key(pre, "estimate")), num(r["se"], key(pre, "se")),
                         num(r["df"], key(pre, "df"), kind="df"), num(r["p"], key(pre, "p"), kind="p"),
                         f"[{num(r['ci_low'], key(pre, 'ci_low'))}, {num(r['ci_high'], key(pre, 'ci_high'))}]",
                         esc(r["words"])])
    sign = ("a negative estimate means a stronger slope (more benefit)" if ctx.benefit_sign < 0
            else "a positive estimate means a stronger slope (more benefit)")
    tab = table(["Process", "Comparison", "<em>b</em>", "<em>SE</em>", "<em>df</em>", "<em>p</em>", "95% CI",
                 "Reading"], rows, caption=ctx.table_label(),
                title="Change in the within-therapist slope after training (difference in differences)",
                note=f"<em>b</em>: change in the slope per unit of the process, in outcome units; {sign}. "
                     "Reading: stronger or weaker when the whole interval lies on one side of "
                     "zero, otherwise no detectable change." + ctx.df_note,
                numeric=[False, False, True, True, True, True, True, False], table_id="table-training")
    vrows = []
    for v in sec["variance"]:
        pre = key("training", "variance", v["process"])
        vrows.append([esc(ctx.label(v["process"])), num(v["change_sd"], key(pre, "change_sd")),
                      f"[{num(v['ci_low'], key(pre, 'ci_low'))}, {num(v['ci_high'], key(pre, 'ci_high'))}]"])
    vtab = table(["Process", "SD of the change between therapists", "95% CI (profile likelihood)"], vrows,
                 caption=ctx.table_label(), title="How much the change differs between therapists",
                 numeric=[False, True, True], table_id="table-training-variance")
    trows = []
    for r in sec["therapists"]:
        if r["group"] != "targeted":
            continue
        t = r["therapist"]
        link = (f'<a href="therapists/{esc(profile_filename(t))}" class="training-profile-link">{esc(t)}</a>'
                if t in ctx.pages else esc(t))  # a page only for the chosen therapists ([report] profiles)
        trows.append([link, esc(ctx.label(r["process"])),
                      num(r["n_before"], key("training", "therapists", r["process"], t, "n_before"), kind="int"),
                      num(r["n_after"], key("training", "therapists", r["process"], t, "n_after"), kind="int"),
                      change_phrase(r, key("training", "therapists", r["process"], t))])
    ttab = table(["Therapist", "Trained on", "Patients before", "Patients after", "Slope after training"], trows,
                 caption=ctx.table_label(), title="Each trained therapist's change in the slope they were trained on",
                 note="The therapist's change: their group's average change plus their own deviation (conditional "
                      "mode), with a 95% interval from both uncertainties. Few patients on either side make it wide.",
                 numeric=[False, False, True, True, False], table_id="table-training-therapists")
    warn = "".join(f"<li>{esc(w)}</li>" for w in sec["warnings"])
    notes = "".join(f"<li>{esc(n)}</li>" for n in sec["notes"])
    return ('<section id="training"><h2>Training evaluation: did training change the slope it targeted?</h2>'
            f"<p>{len(trained)} therapists were trained and {len(sched) - len(trained)} were not (comparison "
            f"therapists, whose patients are split at the reference date {esc(sec['reference_date'])}). A "
            "difference in differences compares each therapist's slope with later patients against the slope with "
            "earlier ones, for the process the training targeted and for the others. An interval that covers zero "
            "means no detectable change, not that the training failed.</p>"
            f'<div class="box" id="training-verdicts"><ul>{"".join(lines)}</ul></div>{tab}{vtab}{ttab}'
            + (f'<div class="box warn"><ul>{warn}</ul></div>' if warn else "")
            + f"<ul>{notes}</ul></section>")


def training_cards(ctx: ReportContext) -> dict[str, str]:
    """The training card of every therapist's page, by therapist id (none without a ``training``
    section): a line per process, the trained process first."""
    if "training" not in ctx.doc:
        return {}
    sched = {s["therapist"]: s for s in ctx.doc["training"]["schedule"]}
    by: dict[str, list[dict[str, Any]]] = {}
    for r in ctx.doc["training"]["therapists"]:
        by.setdefault(r["therapist"], []).append(r)
    cards = {}
    for t, rows in by.items():
        s = sched.get(t, {})
        if s.get("trained"):
            head = (f"<p>Trained on {esc(s.get('targets') or 'no named process')} on {esc(s.get('trained_on'))}; "
                    f"{rows[0]['n_before']} patients before, {rows[0]['n_after']} after.</p>")
        else:
            head = (f"<p>No training recorded: a comparison therapist, whose patients are split at the reference date "
                    f"{esc(ctx.doc['training']['reference_date'])}.</p>")
        items = []
        for r in sorted(rows, key=lambda r: r["group"] != "targeted"):
            what = "after training" if s.get("trained") else "after the reference date"
            tag = " (trained)" if r["group"] == "targeted" else ""
            items.append(f'<li class="training-line">{esc(ctx.label(r["process"]))} slope {what}{tag}: '
                         f"{change_phrase(r, key('training', 'therapists', r['process'], t))}</li>")
        cards[t] = ('<section id="training-profile"><h2>Training</h2>' + head + "<ul>" + "".join(items) + "</ul>"
                    '<p><a href="../report.html#training">The training section of the study report</a>.</p></section>')
    return cards
