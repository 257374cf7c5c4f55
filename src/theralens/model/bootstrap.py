"""Parametric bootstrap of a fitted model, as lme4's ``bootMer`` / ``confint(m, method = "boot")``.

Each replicate draws a new response from the fitted model (Bates et al. 2015, JSS 67(1), eq. 2:
y* = X beta_hat + sum_l Z_l b*_l + e*, with b*_l = sigma_hat Lambda_l(theta_hat) u, u ~ N(0, I)
per group and e* ~ N(0, sigma_hat^2 I)), refits the same model to it from the estimates, and
records a statistic (here the varcorr SDs and correlations). Percentile intervals are the
(1 - L)/2 and (1 + L)/2 quantiles of the replicates that converged (Davison & Hinkley 1997,
sec. 5.3; lme4's default ``type = "perc"``). The seed alone fixes the draws.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np
from tqdm.auto import tqdm

from theralens.model.design import Design

__all__ = ["bootstrap_statistics", "percentile_bounds", "simulate_response"]


def simulate_response(design: Design, beta: np.ndarray, theta: np.ndarray, sigma: float,
                      rng: np.random.Generator) -> np.ndarray:
    """One response vector drawn from the model with these parameters (module docstring)."""
    y = design.X @ beta if design.k else np.zeros(design.n)
    for lv in design.levels:
        lam = lv.lambda_matrix(theta)
        b = sigma * rng.standard_normal((lv.ngroups, lv.q)) @ lam.T
        Z = np.hstack([t.Z for t in lv.terms])  # type: ignore[misc]
        y = y + np.einsum("ij,ij->i", Z, b[lv.codes])
    return y + sigma * rng.standard_normal(design.n)


def bootstrap_statistics(
    design: Design,
    beta: np.ndarray,
    theta: np.ndarray,
    sigma: float,
    refit: Callable[[Design], np.ndarray | None],
    nsim: int,
    seed: int | None,
    progress: bool,
) -> tuple[np.ndarray, int]:
    """Statistics of ``nsim`` parametric-bootstrap refits: ``refit`` maps the design with a
    simulated response to the statistic vector, or None when the refit failed. Returns the
    (successes x statistics) array and the number of failed refits."""
    rng = np.random.default_rng(seed)
    out, failed = [], 0
    for _ in tqdm(range(nsim), desc="parametric bootstrap", unit="fit", disable=not progress):
        ystar = simulate_response(design, beta, theta, sigma, rng)
        stat = refit(dataclasses.replace(design, y=ystar))
        if stat is None or np.isinf(stat).any():  # (a correlation is NaN where an SD is 0)
            failed += 1
            continue
        out.append(stat)
    return (np.array(out) if out else np.empty((0, 0))), failed


def percentile_bounds(samples: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray]:
    """The (1 - level)/2 and (1 + level)/2 quantiles of each column (NaN values ignored)."""
    if samples.size == 0:
        return np.array([]), np.array([])
    a = (1 - level) / 2
    return np.nanquantile(samples, a, axis=0), np.nanquantile(samples, 1 - a, axis=0)
