"""The report's section on profile stability (the ``stability`` section of ``results.json``;
docs/stability_training.md) and the stability lines of each therapist's page."""

from __future__ import annotations

from typing import TYPE_CHECKING

from theralens.profiles.stability import NOT_JUDGED, half_labels, label_agreement
from theralens.report.formatting import esc, key, num
from theralens.report.page import table
from theralens.report.profile_page import badge

if TYPE_CHECKING:  # pragma: no cover
    from theralens.report.study import ReportContext

__all__ = ["stability_cards", "stability_section"]

_VERDICT_CLASS = {"supported": "strength", "partly stable": "average", "not supported": "growth",
                  "no interval": "uncertain"}


def _verdict_badge(verdict: str) -> str:
    cls = _VERDICT_CLASS.get(verdict, "uncertain")
    return f'<span class="badge {cls}" title="{esc(verdict)}">{esc(verdict)}</span>'


def stability_section(ctx: ReportContext) -> str:
    """The section ``#stability``: the verdict per process, the correlations with their intervals,
    and how often a therapist's label held across the halves."""
    sec = ctx.doc["stability"]
    how = ("the earlier and the later half of each therapist's patients by treatment start" if sec["split"] == "time"
           else f"{sec['repeats']} random halves of each therapist's patients (medians over the splits)")
    verdicts = "".join(f'<li class="stability-verdict">{esc(r["verdict_text"])}</li>' for r in sec["rows"])
    rows = []
    for r in sec["rows"]:
        pre = key("stability", r["process"])
        rows.append([esc(ctx.label(r["process"])), num(r["correlation"], key(pre, "correlation")),
                     f"[{num(r['ci_low'], key(pre, 'ci_low'))}, {num(r['ci_high'], key(pre, 'ci_high'))}]",
                     num(r.get("slope_sd_earlier"), key(pre, "slope_sd_earlier")),
                     num(r.get("slope_sd_later"), key(pre, "slope_sd_later")),
                     num(r["therapists_both"], key(pre, "therapists_both"), kind="int"),
                     _verdict_badge(r["verdict"])])
    level = round(100 * float(sec["level"]))
    tab = table(["Process", "Stability <em>r</em>", f"{level}% CI", "Slope SD earlier", "Slope SD later",
                 "Therapists<sup>a</sup>", "Verdict"], rows, caption=ctx.table_label(),
                title="Stability of the therapist slopes between the two halves of each caseload",
                note="Stability <em>r</em>: the model-based correlation of each therapist's true slope in the two "
                     "halves (correlated random slopes; not attenuated by the noise of each half's estimate). "
                     f"Interval: profile likelihood. Supported: the whole interval at or above {sec['stable_r']:g}; "
                     "partly stable: it excludes zero only; not supported: it includes zero. <sup>a</sup> With two "
                     "or more patients in each half.",
                numeric=[False, True, True, True, True, True, False], table_id="table-stability")
    agree = label_agreement(half_labels(ctx.doc))
    arows = [[esc(ctx.label(a["process"])), str(a["judged"]), str(a["agree"]), str(a["differ"]),
              f"{a['kept_strength_growth']} of {a['strength_or_growth']}"] for a in agree.to_dict(orient="records")]
    atab = table(["Process", "Judged", "Same label", "Different label", "Strength or growth kept<sup>b</sup>"],
                 arows, caption=ctx.table_label(),
                 title="Does each therapist's profile label hold across the halves?",
                 note="Each half's slope labelled by the rule of the profiles (strength, growth area, or not "
                      "distinguishable from the average, by its 95% interval). Therapists with fewer than two patients "
                      "in a half are not judged. <sup>b</sup> Of the therapists labelled a strength or growth area "
                      "in either half, how many carry the same label in the other. Per therapist: "
                      "tables/stability_labels.csv and the profile pages.",
                 numeric=[False, True, True, True, True], table_id="table-stability-labels")
    warn = "".join(f"<li>{esc(w)}</li>" for w in sec["warnings"])
    notes = "".join(f"<li>{esc(n)}</li>" for n in sec["notes"])
    models = "".join(f'<li><span class="formula">{esc(m["formula"])}</span>'
                     + (" (singular)" if m["singular"] else "") + ("" if m["converged"] else " (not converged)")
                     + "</li>" for m in sec["models"])
    return ('<section id="stability"><h2>Profile stability: can these data support individual profiles?</h2>'
            f"<p>A therapist's slope is compared between {esc(how)}. Kraus et al. (2016) judged therapists' "
            "domain-specific effectiveness by whether it held from one sample of patients to the next; a profile "
            "that does not hold is mostly noise and shrinkage, and should not decide anyone's training.</p>"
            f'<div class="box" id="stability-verdicts"><ul>{verdicts}</ul></div>{tab}{atab}'
            + (f'<div class="box warn"><ul>{warn}</ul></div>' if warn else "")
            + f"<h3>Models</h3><ul>{models}</ul><ul>{notes}</ul></section>")


def stability_cards(ctx: ReportContext) -> dict[str, str]:
    """The stability card of every therapist's page, by therapist id (none without a
    ``stability`` section)."""
    if "stability" not in ctx.doc:
        return {}
    labels = half_labels(ctx.doc)
    verdict = {r["process"]: r for r in ctx.doc["stability"]["rows"]}
    items: dict[str, list[str]] = {}
    for r in labels.to_dict(orient="records"):
        v = verdict.get(r["process"], {})
        pre = key("stability", r["process"])
        judged = r["agreement"] != NOT_JUDGED
        items.setdefault(r["therapist"], []).append(
            f"<li><strong>{esc(ctx.label(r['process']))}</strong>: earlier half "
            f"{badge(r['label_earlier'], short=True)} "
            f"({r['n_earlier']} patients), later half {badge(r['label_later'], short=True)} ({r['n_later']} "
            f"patients): {'the label ' + esc(r['agreement']) if judged else esc(r['agreement'])}. Study-wide "
            f"stability r = {num(v.get('correlation'), key(pre, 'correlation'))} "
            f"[{num(v.get('ci_low'), key(pre, 'ci_low'))}, {num(v.get('ci_high'), key(pre, 'ci_high'))}]: "
            f"{esc(v.get('verdict', ''))}.</li>")
    return {t: ('<section id="stability-profile"><h2>How stable is this profile?</h2><ul>' + "".join(lines)
                + '</ul><p><a href="../report.html#stability" id="to-stability">The stability section of the study '
                "report</a> says whether these data can support individual profiles at all.</p></section>")
            for t, lines in items.items()}
