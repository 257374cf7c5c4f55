"""Small hand-drawn SVG strips for the profile pages: an estimate with its 95% interval
against the average, and a rank with its 95% rank interval.

Drawn as plain SVG strings (no matplotlib) so that one page per therapist costs next to
nothing; colours and markers follow :mod:`theralens.report.figures`.
"""

from __future__ import annotations

import hashlib

from theralens.profiles.language import UNCERTAIN
from theralens.report.figures import CATEGORY_COLOURS, OKABE_ITO
from theralens.report.formatting import esc, fmt, is_missing

__all__ = ["interval_strip", "rank_strip"]

W, PAD = 420, 30


def _svg(height: int, alt: str, body: str) -> str:
    tid = "strip-" + hashlib.sha1((alt + body).encode("utf-8")).hexdigest()[:10]
    return (f'<svg class="strip" role="img" aria-labelledby="{tid}" viewBox="0 0 {W} {height}" '
            f'width="{W}" height="{height}"><title id="{tid}">{esc(alt)}</title>{body}</svg>')


def interval_strip(estimate: float | None, low: float | None, high: float | None, scale: float,
                   category: str, alt: str, left: str = "less benefit", right: str = "more benefit") -> str:
    """Estimate and interval on a symmetric axis [-scale, scale] centred on the average (0),
    benefit to the right."""
    scale = scale if scale and scale > 0 else 1.0

    def x(v: float) -> float:
        v = max(-scale, min(scale, v))
        return PAD + (v + scale) / (2 * scale) * (W - 2 * PAD)

    colour = CATEGORY_COLOURS.get(category, OKABE_ITO["grey"])
    parts = [
        f'<line x1="{PAD}" y1="30" x2="{W - PAD}" y2="30" stroke="#bbbbbb" stroke-width="1"/>',
        f'<line x1="{x(0):.1f}" y1="18" x2="{x(0):.1f}" y2="42" stroke="#333333" stroke-dasharray="3 2"/>',
        f'<text x="{x(0):.1f}" y="56" font-size="10" text-anchor="middle" fill="#333333">average</text>',
        f'<text x="{PAD}" y="56" font-size="10" fill="#555555">\u2190 {esc(left)}</text>',
        f'<text x="{W - PAD}" y="56" font-size="10" text-anchor="end" fill="#555555">{esc(right)} \u2192</text>',
    ]
    if not (is_missing(estimate) or is_missing(low) or is_missing(high)):
        lo, hi, est = float(low), float(high), float(estimate)  # type: ignore[arg-type]
        hollow = category == UNCERTAIN
        parts += [
            f'<line x1="{x(lo):.1f}" y1="30" x2="{x(hi):.1f}" y2="30" stroke="{colour}" stroke-width="4" '
            'stroke-linecap="round"/>',
            f'<circle cx="{x(est):.1f}" cy="30" r="6" fill="{"white" if hollow else colour}" stroke="{colour}" '
            'stroke-width="2"/>',
            f'<text x="{x(est):.1f}" y="14" font-size="10" text-anchor="middle" fill="#222222">{esc(fmt(est))}</text>',
        ]
    else:
        parts.append(f'<text x="{W / 2:.0f}" y="28" font-size="11" text-anchor="middle" fill="#555555">no estimate'
                     "</text>")
    return _svg(62, alt, "".join(parts))


def rank_strip(median: float | None, low: float | None, high: float | None, n: int, category: str,
               alt: str) -> str:
    """Rank 1..n (1 = most benefit, drawn on the right) with the 95% rank interval."""
    n = max(int(n), 1)

    def x(r: float) -> float:
        if n == 1:
            return W / 2
        return W - PAD - (r - 1) / (n - 1) * (W - 2 * PAD)

    colour = CATEGORY_COLOURS.get(category, OKABE_ITO["grey"])
    parts = [
        f'<line x1="{PAD}" y1="26" x2="{W - PAD}" y2="26" stroke="#bbbbbb" stroke-width="1"/>',
        f'<text x="{W - PAD}" y="50" font-size="10" text-anchor="end" fill="#555555">rank 1 (most benefit)</text>',
        f'<text x="{PAD}" y="50" font-size="10" fill="#555555">rank {n}</text>',
    ]
    if not (is_missing(median) or is_missing(low) or is_missing(high)):
        m, lo, hi = float(median), float(low), float(high)  # type: ignore[arg-type]
        hollow = category == UNCERTAIN
        parts += [
            f'<line x1="{x(lo):.1f}" y1="26" x2="{x(hi):.1f}" y2="26" stroke="{colour}" stroke-width="4" '
            'stroke-linecap="round"/>',
            f'<rect x="{x(m) - 5:.1f}" y="21" width="10" height="10" fill="{"white" if hollow else colour}" '
            f'stroke="{colour}" stroke-width="2"/>',
            f'<text x="{x(m):.1f}" y="14" font-size="10" text-anchor="middle" fill="#222222">{m:.0f}</text>',
        ]
    else:
        parts.append(f'<text x="{W / 2:.0f}" y="20" font-size="11" text-anchor="middle" fill="#555555">not ranked'
                     "</text>")
    return _svg(56, alt, "".join(parts))
