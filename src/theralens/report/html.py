"""Write the study report: ``OUT/report.html`` and one ``OUT/therapists/<file>.html`` per
therapist with a profile page (every therapist up to 500, else those chosen with ``[report]
profiles`` / ``profiles_service``: :func:`theralens.report.study.profile_selection`; the report
states its size), linked both ways, plus ``OUT/tables/therapist_profiles.csv`` (and
``OUT/tables/stability_labels.csv`` when the document has a ``stability`` section).

The report is drawn from the results document alone (:func:`render_report`; ``results.json``
as :meth:`StudyResult.write` saves it), so ``theralens report OUT/results.json`` rebuilds the
same bytes. Every page is one self-contained file: figures inline as SVG, the stylesheet
inline, no scripts, and a Content-Security-Policy that forbids loading anything. Data values
are escaped; patient identifiers never appear unless ``[report] show_patient_ids`` is set.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from theralens.atomic import prepare_dir, write_text
from theralens.profiles import Profiles, profiles_from_document
from theralens.profiles.stability import half_labels
from theralens.report.formatting import key
from theralens.report.page import page
from theralens.report.profile_page import peer_context, profile_filename, profile_page
from theralens.report.stability import stability_cards
from theralens.report.study import REPORT_SIZE_MARK, ReportContext, report_body
from theralens.report.training import training_cards

if TYPE_CHECKING:  # pragma: no cover
    from theralens.study.result import StudyResult

__all__ = ["render_report", "write_report"]

_OUR_PAGE = re.compile(r"^[A-Za-z0-9_-]*-[0-9a-f]{10}\.html$")


def render_report(doc: dict[str, Any], out: str | Path, profiles: Profiles | None = None) -> list[Path]:
    """Write ``report.html``, the therapist pages and ``tables/therapist_profiles.csv`` into
    ``out`` (atomically, file by file) from the results document ``doc`` alone; returns the
    paths written.

    ``profiles`` defaults to :func:`theralens.profiles.profiles_from_document` of ``doc``.
    Profile pages left from an earlier run for therapists no longer in the data are removed.
    """
    out = prepare_dir(out)
    profiles = profiles if profiles is not None else profiles_from_document(doc)
    ctx = ReportContext(doc=doc, profiles=profiles)
    text = page("theralens study report", report_body(ctx), description="theralens study report")
    written: list[Path] = []

    within = "within_therapist" if doc["design"] == "patient" else "within_patient"
    avg_keys = {r["process"]: key("aim1", r["process"], within, "estimate") for r in doc["aim1"]
                if r["component"] == within}
    peers = peer_context(profiles, n_therapists=int(doc["n"]["therapists"] or 0),
                         n_patients=int(doc["n"]["patients"] or 0), higher_outcome_is=str(doc["higher_outcome_is"]),
                         average_slope_keys=avg_keys, version=str(doc["software"].get("theralens", "")))
    stability, training = stability_cards(ctx), training_cards(ctx)
    folder = prepare_dir(out / "therapists")
    names = set()
    chosen = set(ctx.pages)
    page_bytes = 0
    for t in profiles:
        if t.therapist not in chosen:
            continue
        name = profile_filename(t.therapist)
        names.add(name)
        extra = stability.get(t.therapist, "") + training.get(t.therapist, "")
        html = profile_page(t, peers, profiles.min_caseload, extra=extra)
        page_bytes += len(html.encode("utf-8"))
        written.append(write_text(folder / name, html))
    for old in folder.glob("*.html"):
        if old.name not in names and _OUR_PAGE.match(old.name):
            old.unlink(missing_ok=True)
    written.insert(0, write_text(out / "report.html", _with_size(text, len(names), page_bytes)))
    frame = profiles.to_frame()
    written.append(write_text(out / "tables" / "therapist_profiles.csv", frame.to_csv(index=False)))
    if "stability" in doc:
        written.append(write_text(out / "tables" / "stability_labels.csv", half_labels(doc).to_csv(index=False)))
    return written


def _with_size(text: str, n_pages: int, page_bytes: int) -> str:
    """``text`` with :data:`~theralens.report.study.REPORT_SIZE_MARK` replaced by the size of
    report.html and the profile pages (fixed width, so the page's own size is known first)."""

    def size(total: int) -> str:
        return f"report.html and {n_pages} profile page(s), {total / 1e6:10.3f} MB in all"

    own = len(text.replace(REPORT_SIZE_MARK, size(0)).encode("utf-8"))
    return text.replace(REPORT_SIZE_MARK, size(own + page_bytes))


def write_report(result: StudyResult | dict[str, Any], out: str | Path, profiles: Profiles | None = None) -> list[Path]:
    """:func:`render_report` of a results document, or of a study result's document exactly as
    ``results.json`` holds it (written, then read back)."""
    doc = result if isinstance(result, dict) else json.loads(result.to_json())
    return render_report(doc, out, profiles=profiles)
