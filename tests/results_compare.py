"""Comparing two results.json documents number by number (the engines, the cluster path)."""

from __future__ import annotations

import math

#: Satterthwaite df are Richardson finite differences of Var(beta) in theta: they turn the last-bit
#: differences of sums taken in another row order (DuckDB's parallel scan does not fix the order)
#: into about 1e-8 of the df (seen: 1.1e-8 on an ancillary df in one of three CI runs); the engine's
#: statistics-vs-frame test holds df to 1e-6 for the same reason. Every other number: 1e-8.
DF_RTOL = 1e-6
#: The DuckDB path fits from statistics summed by SQL (another summation order than numpy's, so
#: they differ in the last bits). BFGS alone stopped at max|gradient| < 1e-6 in the scaled theta,
#: where such differences moved its end point: up to 1.4e-6 relative on the main model's
#: theta_final[5] of the simulated session study, a flat direction near the boundary (a74b836), so
#: this bound was 1e-5. Since every converged fit ends with a Newton step on the exact gradient
#: (model/optimize.py ``_newton``), the end points agree where the gradient vanishes to ~1e-11:
#: measured (demo and simulated, both designs, one Newton step) at most 4.8e-11 relative, on a
#: random-effect correlation of a moderator model, and 5.4e-11 (an LRT statistic) after the start
#: change of 604ca56; so both designs are held to 1e-8, as the issue asks.
#: The optimizer's record of its path (not results): how many evaluations it took and the gradient
#: norm where it stopped (rounding noise) differ with the last bits of the statistics; ``converged``
#: and ``singular`` are compared exactly.
PATH_KEYS = {"gradient_norm", "return_code", "evaluations", "gradient_evaluations"}


def numbers_equal(a, b, path: str = "", rtol: float = 1e-8, atol: float = 1e-12) -> None:
    """Every number of two JSON documents equal to ``rtol`` relative (Satterthwaite ``df``:
    :data:`DF_RTOL`); the optimizer's path records
    (:data:`PATH_KEYS`) are not compared; strings may differ only in the notes."""
    key = path.rsplit(".", 1)[-1].split("[")[0]
    if key in PATH_KEYS:
        return
    if isinstance(a, dict):
        assert set(a) == set(b), path
        for k in a:
            numbers_equal(a[k], b[k], f"{path}.{k}", rtol, atol)
    elif isinstance(a, list):
        if path.endswith(".notes"):  # which engine ran, and how
            return
        assert len(a) == len(b), path
        for k, (x, y) in enumerate(zip(a, b, strict=True)):
            numbers_equal(x, y, f"{path}[{k}]", rtol, atol)
    elif isinstance(a, bool) or a is None or isinstance(a, str):
        assert a == b, (path, a, b)
    else:
        tol = max(DF_RTOL, rtol) if path.endswith(".df") else rtol
        assert math.isclose(a, b, rel_tol=tol, abs_tol=atol), (path, a, b)
