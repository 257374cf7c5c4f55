"""Power under the latent decomposition (issue #10; docs/latent.md).

With ``decomposition="latent"`` a power study simulates the preset with the outcome generated
from the latent caseload means (:func:`theralens.simulation.generate.simulate`, ``decomposition=
"latent"``) and tests the within effect (g10), the between effect (b_between) and the
cross-level moderator (G11 on the within slope or G03 on the between association) with the
latent ML fit (:func:`theralens.latent.ml.fit_latent`: Wald z tests), one fit per replicate
with the moderator in it when one is configured (moderator centred over the analysed
therapists). The slope-variance tests stay with the manifest REML models, as in the study.
A latent fit costs about a second where the manifest models cost milliseconds, so
:func:`estimate_seconds` times one replicate before the run starts.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import stats

from theralens.latent.ml import LatentFit, fit_latent, stats_from_arrays
from theralens.planning.table import PatientArrays

__all__ = ["LATENT_KINDS", "estimate_seconds", "latent_fit", "latent_test"]

#: The tests a latent fit answers; the others (slope variances) stay manifest.
LATENT_KINDS = ("within", "between", "moderator")


def latent_fit(arrays: PatientArrays, processes: Sequence[str], covariates: Sequence[str],
               moderator_values: np.ndarray | None, moderator: str | None) -> LatentFit:
    """The latent ML fit of one simulated study (``moderator_values``: one per analysed
    therapist, in ``arrays.therapist_ids`` order)."""
    adjust = np.column_stack([arrays.baseline, *[arrays.covariates[c] for c in covariates]])
    x = np.column_stack([arrays.scores[p] for p in processes])
    W, centers, names = None, (), ()
    if moderator is not None and moderator_values is not None:
        w = np.asarray(moderator_values, dtype=float)
        W, centers, names = (w - w.mean())[:, None], (float(w.mean()),), (moderator,)
    st = stats_from_arrays(arrays.therapist, arrays.therapist_ids, arrays.final, adjust, x, W,
                           processes=tuple(processes), adjust_names=("baseline", *covariates), moderators=names,
                           moderator_centers=centers)
    return fit_latent(st)


def latent_test(fit: LatentFit, kind: str, process: str, target: str = "within_slope") -> tuple[float, float, float]:
    """(p, estimate, se) of a two-sided Wald z test of one effect of ``fit``."""
    if kind == "moderator":
        row = fit.moderators[(fit.moderators["process"] == process) & (fit.moderators["target"] == target)].iloc[0]
    else:
        comp = "within_therapist" if kind == "within" else "between_therapist"
        row = fit.effects[(fit.effects["process"] == process) & (fit.effects["component"] == comp)].iloc[0]
    est, se = float(row["estimate"]), float(row["se"])
    p = float(2 * stats.norm.sf(abs(est / se))) if se > 0 else float("nan")
    return p, est, se


def estimate_seconds(run: Any, replicates: int, workers: int) -> tuple[float, float]:
    """(seconds of one timed replicate ``run()``, estimated seconds for ``replicates`` of them
    on ``workers`` processes)."""
    t0 = time.perf_counter()
    run()
    one = time.perf_counter() - t0
    return one, one * replicates / max(1, workers)
