"""Figures of the study report: matplotlib, drawn straight to inline SVG.

One consistent style: the colour-blind-safe Okabe-Ito palette, categories told apart by
marker shape as well as colour, text kept as SVG text (searchable, escaped by
matplotlib), no math parsing of data values. Figures are made with
:class:`matplotlib.figure.Figure` (no pyplot, no global state, no GUI backend). Each
function returns a :class:`Svg`: markup ready to place in the page, with ``role="img"`` and a
``<title>`` giving the alt text, and all external references (XML prolog, DOCTYPE, metadata,
namespace URIs) removed.
"""

from __future__ import annotations

import hashlib
import io
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from theralens.profiles.language import AVERAGE, GROWTH, STRENGTH, UNCERTAIN
from theralens.report.formatting import esc

__all__ = [
    "CATEGORY_COLOURS",
    "OKABE_ITO",
    "Svg",
    "caseload_distribution",
    "caterpillar",
    "effects_forest",
    "process_colour",
    "residual_diagnostics",
    "slope_by_covariate",
]

#: Okabe & Ito (2008) colour-blind-safe palette.
OKABE_ITO = {
    "black": "#000000", "orange": "#E69F00", "sky": "#56B4E9", "green": "#009E73", "yellow": "#F0E442",
    "blue": "#0072B2", "vermillion": "#D55E00", "purple": "#CC79A7", "grey": "#7A7A7A", "light": "#BBBBBB",
}
CATEGORY_COLOURS = {STRENGTH: OKABE_ITO["blue"], GROWTH: OKABE_ITO["vermillion"], AVERAGE: OKABE_ITO["grey"],
                    UNCERTAIN: OKABE_ITO["light"]}
CATEGORY_MARKERS = {STRENGTH: "^", GROWTH: "v", AVERAGE: "o", UNCERTAIN: "o"}
#: Above this many therapists a caterpillar plot drops the therapist labels.
MAX_LABELLED = 80
_PROCESS_CYCLE = ["blue", "orange", "green", "purple", "sky", "vermillion", "black"]

FONT = ["DejaVu Sans", "Liberation Sans", "Arial", "Helvetica"]
STYLE = {
    "svg.fonttype": "none",
    "svg.hashsalt": "theralens",
    "text.parse_math": False,
    "font.family": "sans-serif",
    "font.sans-serif": FONT,
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.labelsize": 9,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.edgecolor": "#444444",
    "axes.grid": True,
    "grid.color": "#E5E5E5",
    "grid.linewidth": 0.6,
    "axes.axisbelow": True,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
    "legend.fontsize": 8,
    "legend.frameon": False,
    "figure.dpi": 72,
}


@dataclass(frozen=True)
class Svg:
    """An inline SVG figure: ``markup`` (the ``<svg>`` element) and its ``alt`` text."""

    markup: str
    alt: str

    def __str__(self) -> str:
        return self.markup


def process_colour(i: int) -> str:
    """Colour of the i-th process (Okabe-Ito order)."""
    return OKABE_ITO[_PROCESS_CYCLE[i % len(_PROCESS_CYCLE)]]


_ID_ATTR = re.compile(r'\bid="([^"]+)"')


def _to_svg(fig: Figure, alt: str, name: str) -> Svg:
    """Render ``fig`` to self-contained inline SVG with alt text."""
    buf = io.StringIO()
    with matplotlib.rc_context(STYLE):
        fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": None})
    raw = buf.getvalue()
    s = raw[raw.index("<svg"):]
    s = re.sub(r"<metadata>.*?</metadata>\s*", "", s, flags=re.S)
    s = re.sub(r"<style[^>]*>.*?</style>\s*", "", s, flags=re.S)
    s = re.sub(r'\s+xmlns(?::\w+)?="[^"]*"', "", s)
    s = re.sub(r'\s+version="1\.1"', "", s, count=1)
    digest = hashlib.sha1(s.encode("utf-8")).hexdigest()[:8]  # deterministic, distinct per figure
    prefix = f"{re.sub(r'[^a-z0-9]+', '-', name.lower()).strip('-')[:24]}-{digest}-"
    ids = set(_ID_ATTR.findall(s))
    if ids:
        alternatives = "|".join(re.escape(i) for i in sorted(ids, key=len, reverse=True))
        s = re.sub(rf'(\bid="|href="#|url\(#)({alternatives})(?=["\)])', lambda m: m.group(1) + prefix + m.group(2), s)
    title_id = f"{prefix}title"
    s = s.replace("<svg", f'<svg class="fig" role="img" aria-labelledby="{title_id}"', 1)
    head_end = s.index(">") + 1
    s = s[:head_end] + f'<title id="{title_id}">{esc(alt)}</title>' + s[head_end:]
    return Svg(markup=s, alt=alt)


def _figure(width: float, height: float, left: float = 0.6, right: float = 0.2, bottom: float = 0.5,
            top: float = 0.3, wspace: float | None = None, hspace: float | None = None) -> Figure:
    """A figure with fixed margins in inches (no automatic layout engine: it costs more than
    the drawing itself)."""
    with matplotlib.rc_context(STYLE):
        fig = Figure(figsize=(width, height))
    fig.subplots_adjust(left=left / width, right=1 - right / width, bottom=bottom / height, top=1 - top / height,
                        wspace=wspace, hspace=hspace)
    return fig


def _label_width(labels: Sequence[str], fontsize: float = 8) -> float:
    """Approximate width in inches of the longest of ``labels`` (DejaVu Sans averages about
    0.6 em per character)."""
    longest = max((len(str(x)) for x in labels), default=0)
    return longest * 0.6 * fontsize / 72


def caseload_distribution(n_patients: Sequence[int], min_caseload: int) -> Svg:
    """Bar chart: number of therapists by number of analysed patients, the minimum caseload
    for interpretable profiles marked."""
    n = np.asarray(list(n_patients), dtype=int)
    with matplotlib.rc_context(STYLE):
        fig = _figure(8.0, 2.6, left=0.6, bottom=0.5, top=0.2)
        ax = fig.add_subplot()
        sizes, counts = np.unique(n, return_counts=True) if len(n) else (np.array([]), np.array([]))
        colours = [OKABE_ITO["blue"] if s >= min_caseload else OKABE_ITO["light"] for s in sizes]
        ax.bar(sizes, counts, width=0.8, color=colours, edgecolor="#333333", linewidth=0.5)
        ax.axvline(min_caseload - 0.5, color=OKABE_ITO["vermillion"], linestyle="--", linewidth=1)
        ymax = counts.max() if len(counts) else 1
        ax.text(min_caseload - 0.4, ymax * 0.95, f"minimum caseload for a profile: {min_caseload}",
                color=OKABE_ITO["vermillion"], va="top", fontsize=8)
        ax.set_xlabel("analysed patients per therapist")
        ax.set_ylabel("therapists")
        ax.yaxis.get_major_locator().set_params(integer=True)
        ax.xaxis.get_major_locator().set_params(integer=True)
    below = int((n < min_caseload).sum())
    alt = (f"Bar chart of caseload sizes: {len(n)} therapists with {int(n.min()) if len(n) else 0} to "
           f"{int(n.max()) if len(n) else 0} analysed patients (median {float(np.median(n)) if len(n) else 0:g}); "
           f"{below} therapists have fewer than {min_caseload} patients.")
    return _to_svg(fig, alt, "caseload")


def effects_forest(rows: pd.DataFrame, component_labels: Mapping[str, str], benefit_sign: int) -> Svg:
    """Forest plot of the aim 1 effects: estimate and 95% CI per process and component.

    ``rows``: process, component, estimate, ci_low, ci_high (as ``results.json`` aim1)."""
    comps = list(dict.fromkeys(rows["component"]))
    procs = list(dict.fromkeys(rows["process"]))
    names = [f"{p}: {component_labels.get(c, c)}" for p in procs for c in comps]
    left = min(4.0, 0.3 + _label_width(names))
    with matplotlib.rc_context(STYLE):
        fig = _figure(8.6, 0.9 + 0.42 * len(rows), left=left, bottom=0.5, top=0.3)
        ax = fig.add_subplot()
        ylabels, y = [], 0
        for ci, comp in enumerate(comps):
            for pi, proc in enumerate(procs):
                r = rows[(rows["component"] == comp) & (rows["process"] == proc)]
                if not len(r):
                    continue
                r = r.iloc[0]
                c = process_colour(pi)
                ax.plot([r["ci_low"], r["ci_high"]], [y, y], color=c, linewidth=2)
                ax.plot([r["estimate"]], [y], marker="os^Dv"[ci % 5], color=c, markersize=6)
                ylabels.append(f"{proc}: {component_labels.get(comp, comp)}")
                y += 1
        ax.axvline(0, color="#333333", linewidth=0.8)
        ax.set_yticks(range(len(ylabels)), ylabels)
        ax.invert_yaxis()
        ax.set_xlabel("fixed effect (outcome units per process unit), 95% CI")
        ax.grid(axis="y", visible=False)
        _benefit_arrow(ax, benefit_sign)
    alt = ("Forest plot of the aim 1 process-outcome associations: " + "; ".join(
        f"{r.process} {component_labels.get(r.component, r.component)} {r.estimate:.3g} "
        f"[{r.ci_low:.3g}, {r.ci_high:.3g}]" for r in rows.itertuples()) + ".")
    return _to_svg(fig, alt, "aim1")


def _benefit_arrow(ax: Axes, benefit_sign: int) -> None:
    """Annotate which direction of the x axis means more benefit."""
    side, ha = (0.0, "left") if benefit_sign < 0 else (1.0, "right")
    arrow = "\u2190 more benefit" if benefit_sign < 0 else "more benefit \u2192"
    ax.text(side, 1.01, arrow, transform=ax.transAxes, ha=ha, va="bottom", fontsize=8, color="#333333")


def caterpillar(
    slopes: pd.DataFrame,
    average: float,
    process: str,
    categories: Mapping[str, str],
    benefit_sign: int,
    colour: str,
) -> Svg:
    """Caterpillar plot of therapist slopes b1j = g10 + u1j with 95% intervals (aim 2).

    ``slopes``: therapist, slope, ci_low, ci_high (estimable therapists); ``categories``:
    therapist -> profile category (colour and marker)."""
    d = slopes.dropna(subset=["slope"]).sort_values("slope", ascending=benefit_sign < 0).reset_index(drop=True)
    n = len(d)
    left = min(3.0, 0.3 + _label_width([str(t) for t in d["therapist"]])) if n <= MAX_LABELLED else 0.6
    height = max(2.4, 1.1 + 0.17 * n) if n <= MAX_LABELLED else 1.1 + 0.05 * n
    with matplotlib.rc_context(STYLE):
        fig = _figure(8.6, height, left=left, bottom=0.85, top=0.3)
        ax = fig.add_subplot()
        y = np.arange(n)
        for cat in (UNCERTAIN, AVERAGE, GROWTH, STRENGTH):
            m = np.array([categories.get(t, UNCERTAIN) == cat for t in d["therapist"]], dtype=bool)
            if not m.any():
                continue
            col = CATEGORY_COLOURS[cat]
            ax.hlines(y[m], d.loc[m, "ci_low"], d.loc[m, "ci_high"], color=col if cat != AVERAGE else colour,
                      linewidth=1.4, alpha=0.9)
            face = "white" if cat == UNCERTAIN else (colour if cat == AVERAGE else col)
            ax.scatter(d.loc[m, "slope"], y[m], marker=CATEGORY_MARKERS[cat], s=22, zorder=3,
                       facecolors=face, edgecolors=colour if cat in (AVERAGE, UNCERTAIN) else col, linewidths=1)
        ax.axvline(average, color="#333333", linewidth=1, linestyle="--")
        ax.axvline(0, color="#999999", linewidth=0.6)
        if n <= MAX_LABELLED:
            ax.set_yticks(y, [str(t) for t in d["therapist"]])
        else:
            ax.set_yticks([])
            ax.set_ylabel(f"{n} therapists (ids on their profile pages)")
        ax.set_ylim(n - 0.5, -0.5)
        ax.grid(axis="y", visible=False)
        ax.set_xlabel(f"therapist's within slope of {process} (95% interval); dashed: average slope")
        _benefit_arrow(ax, benefit_sign)
        handles = [
            Line2D([], [], marker=CATEGORY_MARKERS[c], linestyle="", markersize=5,
                   markerfacecolor="white" if c == UNCERTAIN else (colour if c == AVERAGE else CATEGORY_COLOURS[c]),
                   markeredgecolor=colour if c in (AVERAGE, UNCERTAIN) else CATEGORY_COLOURS[c], label=c)
            for c in (STRENGTH, GROWTH, AVERAGE, UNCERTAIN)
        ]
        fig.legend(handles=handles, loc="lower center", ncols=4, fontsize=7, bbox_to_anchor=(0.5, 0.0))
    counts = {c: sum(1 for t in d["therapist"] if categories.get(t, UNCERTAIN) == c)
              for c in (STRENGTH, GROWTH, AVERAGE, UNCERTAIN)}
    alt = (f"Caterpillar plot of {n} therapists' within slopes of {process}, sorted from most to least benefit, "
           f"each with its 95% interval, against the average slope {average:.3g}. "
           + ", ".join(f"{v} {k}" for k, v in counts.items()) + ".")
    return _to_svg(fig, alt, f"caterpillar-{process}")


def slope_distribution(slopes: np.ndarray, average: float, process: str, benefit_sign: int, colour: str) -> Svg:
    """Histogram of every therapist's slope (aim 2), for studies with more therapists than a
    caterpillar can draw: the average slope dashed, zero marked."""
    x = np.asarray(slopes, dtype=float)
    x = x[np.isfinite(x)]
    with matplotlib.rc_context(STYLE):
        fig = _figure(8.6, 2.6, left=0.7, bottom=0.55, top=0.2)
        ax = fig.add_subplot()
        bins = int(min(60, max(10, np.sqrt(len(x))))) if len(x) else 10
        ax.hist(x, bins=bins, color=colour, alpha=0.85, edgecolor="white", linewidth=0.4)
        ax.axvline(average, color="#333333", linewidth=1, linestyle="--")
        ax.axvline(0, color="#999999", linewidth=0.6)
        ax.set_xlabel(f"therapist's within slope of {process}; dashed: average slope")
        ax.set_ylabel("therapists")
        _benefit_arrow(ax, benefit_sign)
    q = np.quantile(x, [0.1, 0.5, 0.9]) if len(x) else np.zeros(3)
    alt = (f"Histogram of {len(x)} therapists' within slopes of {process}: 10th, 50th and 90th percentiles "
           f"{q[0]:.3g}, {q[1]:.3g} and {q[2]:.3g}; average slope {average:.3g}.")
    return _to_svg(fig, alt, f"slope-distribution-{process}")


@dataclass(frozen=True)
class Panel:
    """One panel of :func:`slope_by_covariate`: ``x`` and ``slope`` per therapist (and the
    slope's ``ci_low``/``ci_high``), and the model-implied line ``intercept + coef * (x -
    centre)`` over the range of x; ``binary`` jitters x; ``colour`` and ``ylabel`` style it."""

    title: str
    xlabel: str
    x: np.ndarray
    slope: np.ndarray
    ci_low: np.ndarray
    ci_high: np.ndarray
    intercept: float
    coef: float
    centre: float
    colour: str = OKABE_ITO["blue"]
    ylabel: str = "therapist slope"
    binary: bool = False


#: Above this many therapists a slope-by-covariate panel shows their density (hexagonal bins)
#: instead of every therapist's point and interval (the figure stays small at 10,000+ therapists).
MAX_POINTS_DRAWN = 1000


def slope_by_covariate(panels: Sequence[Panel], what: str, benefit_sign: int, share_y: bool = True) -> Svg:
    """Therapist slopes against a therapist-level variable (a moderator for aim 3, the
    caseload mean for the ancillary within x between interaction), with the fitted line;
    above :data:`MAX_POINTS_DRAWN` therapists in a panel, their density (hexagonal bins)."""
    k = max(1, len(panels))
    cols = min(3, k)
    rows = int(np.ceil(k / cols))
    note = "lower = more benefit" if benefit_sign < 0 else "higher = more benefit"
    with matplotlib.rc_context(STYLE):
        width = 3.0 * cols + 0.6 if cols > 1 else 4.6
        fig = _figure(width, 2.6 * rows + 0.3, left=0.9, right=0.15, bottom=0.5, top=0.35,
                      wspace=0.12 if share_y else 0.45, hspace=0.6)
        axes = fig.subplots(rows, cols, squeeze=False, sharey=share_y)
        rng = np.random.default_rng(1)
        for i, ax in enumerate(axes.flat):
            if i >= len(panels):
                ax.set_visible(False)
                continue
            p = panels[i]
            ok = np.isfinite(p.x) & np.isfinite(p.slope)
            x = p.x[ok] + (rng.uniform(-0.06, 0.06, ok.sum()) if p.binary else 0.0)
            if ok.sum() > MAX_POINTS_DRAWN:  # many therapists: their density, not every point and interval
                ax.hexbin(x, p.slope[ok], gridsize=40, mincnt=1, cmap="Blues", linewidths=0.2)
            else:
                ax.vlines(x, p.ci_low[ok], p.ci_high[ok], color=p.colour, alpha=0.25, linewidth=1)
                ax.scatter(x, p.slope[ok], s=12, color=p.colour, zorder=3)
            if ok.any():
                xs = np.linspace(np.nanmin(p.x[ok]), np.nanmax(p.x[ok]), 20)
                ax.plot(xs, p.intercept + p.coef * (xs - p.centre), color="#222222", linewidth=1.4)
            ax.axhline(0, color="#999999", linewidth=0.6)
            ax.set_title(p.title, fontsize=9)
            ax.set_xlabel(p.xlabel)
            if p.binary:
                ax.set_xticks([0, 1])
            if i % cols == 0 or not share_y:
                ax.set_ylabel(f"{p.ylabel}\n({note})")
    alt = (f"Scatter plots of therapist slopes against {what}, one panel each "
           f"({', '.join(p.title for p in panels)}), with the model's fitted line: "
           + "; ".join(f"{p.title} coefficient {p.coef:.3g}" for p in panels) + ".")
    return _to_svg(fig, alt, f"slopes-{what}")


def residual_diagnostics(diagnostics: Mapping[str, Any], intercept_label: str) -> Svg:
    """Residuals against fitted values with their running mean, and normal Q-Q plots of the
    residuals and of the therapist random intercepts, as the results document's
    ``diagnostics`` holds them (:func:`theralens.study.document.residual_summary`)."""
    f = np.asarray(diagnostics["fitted"], dtype=float)
    r = np.asarray(diagnostics["residual"], dtype=float)
    smooth = np.asarray([np.nan if v is None else v for v in diagnostics["running_mean"]], dtype=float)
    n = int(diagnostics["n"])
    n_u = len(diagnostics["intercept_qq"]["sample"])
    with matplotlib.rc_context(STYLE):
        fig = _figure(9.2, 2.8, left=0.6, right=0.15, bottom=0.5, top=0.3, wspace=0.3)
        a1, a2, a3 = fig.subplots(1, 3)
        a1.scatter(f, r, s=6, color=OKABE_ITO["blue"], alpha=0.6, linewidths=0)
        a1.axhline(0, color="#333333", linewidth=0.8)
        if np.isfinite(smooth).any():
            a1.plot(f, smooth, color=OKABE_ITO["vermillion"], linewidth=1.2)
        a1.set_xlabel("fitted")
        a1.set_ylabel("residual")
        a1.set_title("Residuals vs fitted", fontsize=9)
        for ax, qq, title in ((a2, diagnostics["residual_qq"], "Residuals (normal Q-Q)"),
                              (a3, diagnostics["intercept_qq"], f"{intercept_label} (normal Q-Q)")):
            q = np.asarray(qq["theoretical"], dtype=float)
            v = np.asarray(qq["sample"], dtype=float)
            if len(v) >= 2:
                ax.scatter(q, v, s=6, color=OKABE_ITO["blue"], alpha=0.7, linewidths=0)
                sd = float(qq["sd"]) if qq["sd"] is not None else 0.0
                ax.plot(q, float(qq["mean"]) + sd * q, color="#333333", linewidth=0.8)
            ax.set_xlabel("normal quantile")
            ax.set_title(title, fontsize=9)
    shown = "" if len(f) == n else f" ({len(f)} of them drawn, evenly spaced in fitted order)"
    alt = (f"Model diagnostics of the main model: residuals against fitted values for {n} rows{shown} with a running "
           f"mean, and normal Q-Q plots of the residuals and of {n_u} therapist random intercepts.")
    return _to_svg(fig, alt, "diagnostics")
