"""The study report: ``report.html`` and one profile page per therapist (self-contained HTML,
inline SVG figures, no scripts, no network resources), drawn from the results document alone.
Entry points: :func:`render_report` (a results document) and :func:`write_report` (a study
result or a document).
"""

from theralens.report.html import render_report, write_report

__all__ = ["render_report", "write_report"]
