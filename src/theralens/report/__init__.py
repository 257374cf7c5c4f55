"""The study report: ``report.html`` and one profile page per therapist (self-contained HTML,
inline SVG figures, no scripts, no network resources). Entry point: :func:`write_report`.
"""

from theralens.report.html import write_report

__all__ = ["write_report"]
