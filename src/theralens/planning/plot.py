"""Power curves: power against the number of therapists, one panel per test.

One line per caseload (patients per therapist) in the Okabe-Ito palette (distinguishable
with the common colour-vision deficiencies; lines also differ in marker), a band of
its 95% Wilson score interval around each curve (:func:`theralens.planning.result.wilson_interval`:
inside [0, 1], not empty at power 0 or 1), a dashed line at 80% power and a dotted one at
alpha. Cells with failed replicates show their usable share next to the point.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from theralens.planning.result import PowerResult

__all__ = ["OKABE_ITO", "power_curves"]

OKABE_ITO = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000"]
MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*"]


def power_curves(result: PowerResult) -> Any:
    """A matplotlib Figure of ``result``'s power curves (made without pyplot, so no GUI
    backend is touched; it renders with Agg when saved)."""
    from matplotlib.figure import Figure

    t = result.table
    tests = result.tests
    ncol = min(4, len(tests))
    nrow = int(np.ceil(len(tests) / ncol))
    fig = Figure(figsize=(3.4 * ncol, 2.9 * nrow + 0.6), layout="constrained")
    axes = fig.subplots(nrow, ncol, squeeze=False, sharex=True, sharey=True)
    caseloads = sorted(t["patients_per_therapist"].unique())
    for k, x in enumerate(tests):
        ax = axes[k // ncol][k % ncol]
        sub = t[(t["test"] == x.kind) & (t["process"] == x.process)]
        for i, m in enumerate(caseloads):
            d = sub[sub["patients_per_therapist"] == m].sort_values("n_therapists")
            colour = OKABE_ITO[i % len(OKABE_ITO)]
            xs, ys = d["n_therapists"].to_numpy(), d["power"].to_numpy(dtype=float)
            ax.fill_between(xs, d["power_low"].to_numpy(dtype=float), d["power_high"].to_numpy(dtype=float),
                            color=colour, alpha=0.18, linewidth=0)
            ax.plot(xs, ys, color=colour, marker=MARKERS[i % len(MARKERS)], markersize=4, linewidth=1.6,
                    label=f"{m:g}")
            for xv, yv, share in zip(xs, ys, d["usable_share"].to_numpy(dtype=float)):
                if share < 1 and np.isfinite(yv):
                    ax.annotate(f"{share:.0%}", (xv, yv), textcoords="offset points", xytext=(3, -9), fontsize=6,
                                color=colour)
        ax.axhline(0.8, color="0.45", linestyle="--", linewidth=0.8)
        ax.axhline(result.spec.alpha, color="0.45", linestyle=":", linewidth=0.8)
        true = sub["true_value"].iloc[0] if len(sub) else float("nan")
        ax.set_title(f"{x.label}\n(true {true:g})", fontsize=8.5)
        ax.set_ylim(-0.02, 1.02)
        ax.grid(True, color="0.92", linewidth=0.6)
        if k % ncol == 0:
            ax.set_ylabel("power")
        if k // ncol == nrow - 1 or k + ncol >= len(tests):
            ax.set_xlabel("therapists")
            ax.xaxis.set_tick_params(labelbottom=True)
    for k in range(len(tests), nrow * ncol):
        axes[k // ncol][k % ncol].set_visible(False)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, title="patients per therapist", loc="outside lower center", ncol=len(caseloads),
               fontsize=8, title_fontsize=8, frameon=False)
    s = result.spec
    fig.suptitle(f"Power by simulation ({s.origin}, {result.nsim} replicates per cell, alpha {s.alpha:g}); "
                 "bands: 95% Wilson intervals", fontsize=9)
    return fig
