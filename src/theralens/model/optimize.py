"""Minimise the profiled criterion over theta, and keep the optimizer's record.

BOBYQA (Powell 2009), through NLopt, is lme4's default optimizer for ``lmer``; it is
derivative-free and respects the bounds theta_ii >= 0. engine.md records that
finite-difference L-BFGS-B stalls on therapist data, so it is not used. After the first run
the fit restarts from its optimum (as lme4's ``restart_edge`` does at the boundary) until the
criterion stops improving, then the gradient at the end is measured by central differences
and the fit is declared converged only when that (projected) gradient is small.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import nlopt
import numpy as np


@dataclass
class OptimizerRecord:
    """What the optimizer did (cf. MixedModels.jl's ``OptSummary``).

    Attributes: ``method``; ``initial`` and ``final`` theta; ``evaluations`` of the
    criterion; ``criterion`` at the end; ``gradient`` (central differences, projected onto
    the feasible set at bounds) and its max-norm ``gradient_norm``; ``restarts``;
    ``return_code`` from NLopt; ``converged``; ``messages`` explaining any doubt.
    """

    method: str
    initial: np.ndarray
    final: np.ndarray
    evaluations: int
    criterion: float
    gradient: np.ndarray
    gradient_norm: float
    restarts: int
    return_code: str
    converged: bool
    messages: list[str] = field(default_factory=list)


GRADIENT_TOL = 2e-3  # lme4 checks max|grad| < 2e-3 (check.conv.grad)


def _bobyqa(
    f: Callable[[np.ndarray], float], x0: np.ndarray, lower: np.ndarray, step: float
) -> tuple[np.ndarray, float, str]:
    n = len(x0)
    if n == 1:
        # NLopt's BOBYQA needs two or more variables: use Brent's method on a bracket
        from scipy.optimize import minimize_scalar

        lo = max(lower[0], 0.0) if np.isfinite(lower[0]) else -1e3
        hi = max(10.0, 10 * abs(x0[0]) + 1)
        res = minimize_scalar(lambda t: f(np.array([t])), bounds=(lo, hi), method="bounded",
                              options={"xatol": 1e-10, "maxiter": 2000})
        x = np.array([res.x])
        fx = f(x)
        if f(np.array([lo])) <= fx:
            x, fx = np.array([lo]), f(np.array([lo]))
        return x, fx, "brent"
    opt = nlopt.opt(nlopt.LN_BOBYQA, n)
    opt.set_lower_bounds([float(v) if np.isfinite(v) else -np.inf for v in lower])
    opt.set_min_objective(lambda x, grad: f(np.asarray(x)))
    opt.set_ftol_abs(1e-10)
    opt.set_ftol_rel(1e-14)
    opt.set_xtol_abs(1e-9)
    opt.set_maxeval(20000)
    opt.set_initial_step(step)
    x0c = np.maximum(x0, np.where(np.isfinite(lower), lower, -np.inf))
    try:
        x = opt.optimize(x0c)
        code = {1: "success", 2: "stopval", 3: "ftol", 4: "xtol", 5: "maxeval", 6: "maxtime"}.get(
            opt.last_optimize_result(), str(opt.last_optimize_result()))
    except nlopt.RoundoffLimited:
        x = x0c
        code = "roundoff-limited"
    return np.asarray(x), float(opt.last_optimum_value()) if code != "roundoff-limited" else f(x), code


def gradient(f: Callable[[np.ndarray], float], x: np.ndarray, lower: np.ndarray, h: float = 1e-5) -> np.ndarray:
    """Central-difference gradient; one-sided (forward) where x sits on its lower bound."""
    g = np.empty(len(x))
    for i in range(len(x)):
        e = np.zeros(len(x))
        hi = h * max(1.0, abs(x[i]))
        e[i] = hi
        if np.isfinite(lower[i]) and x[i] - hi < lower[i]:
            g[i] = (f(x + e) - f(x)) / hi
        else:
            g[i] = (f(x + e) - f(x - e)) / (2 * hi)
    return g


def projected(g: np.ndarray, x: np.ndarray, lower: np.ndarray, tol: float = 1e-6) -> np.ndarray:
    """Zero the components that push against an active lower bound (KKT)."""
    out = g.copy()
    at_bound = np.isfinite(lower) & (x - lower <= tol)
    out[at_bound & (g > 0)] = 0.0
    return out


def minimize_theta(
    f: Callable[[np.ndarray], float],
    x0: np.ndarray,
    lower: np.ndarray,
    scale: np.ndarray | None = None,
    max_restarts: int = 4,
) -> OptimizerRecord:
    """Minimise ``f`` over theta from ``x0`` with bounds ``lower`` (BOBYQA + restarts).

    The optimizer works on phi = theta * scale (``scale``: the RMS of the Z column that
    each theta entry's row multiplies), so that a covariate measured in seconds or in
    thousands does not make the problem badly scaled; the gradient reported and checked is
    with respect to phi.
    """
    scale = np.ones(len(x0)) if scale is None else np.asarray(scale, dtype=float)
    count = [0]

    def g_phi(phi: np.ndarray) -> float:
        count[0] += 1
        return f(phi / scale)

    phi, fx, code = _bobyqa(g_phi, np.asarray(x0, dtype=float) * scale, lower,
                            step=0.2 if len(x0) > 1 else 1.0)
    restarts = 0
    messages: list[str] = []
    while True:
        # snap tiny diagonal entries to the bound when that does not worsen the criterion
        at = np.isfinite(lower) & (np.abs(phi - lower) < 1e-6) & (phi != lower)
        if at.any():
            ps = phi.copy()
            ps[at] = lower[at]
            fs = g_phi(ps)
            if fs <= fx + 1e-10:
                phi, fx = ps, fs
        g = projected(gradient(g_phi, phi, lower), phi, lower)
        gnorm = float(np.max(np.abs(g))) if len(g) else 0.0
        at_bound = bool(np.any(np.isfinite(lower) & (phi - lower <= 1e-6)))
        # lme4 restarts at the boundary (restart_edge); we also restart on a large gradient
        if restarts >= max_restarts or (gnorm < GRADIENT_TOL and not (at_bound and restarts == 0)):
            break
        phi_new, f_new, code_new = _bobyqa(g_phi, phi, lower, step=0.02)
        restarts += 1
        improved = f_new < fx - 1e-9
        if f_new <= fx:
            phi, fx, code = phi_new, f_new, code_new
        if not improved and gnorm < GRADIENT_TOL:
            break
    converged = gnorm < GRADIENT_TOL and code not in ("maxeval", "maxtime")
    if not converged:
        messages.append(
            f"the optimizer stopped ({code}) with max|gradient| = {gnorm:.2g} "
            f"(tolerance {GRADIENT_TOL:g}); the estimates may not be at the optimum"
        )
    return OptimizerRecord(
        method="BOBYQA (NLopt) with restarts" if len(x0) > 1 else "Brent (bounded)",
        initial=np.asarray(x0, dtype=float),
        final=phi / scale,
        evaluations=count[0],
        criterion=float(fx),
        gradient=g,
        gradient_norm=gnorm,
        restarts=restarts,
        return_code=code,
        converged=converged,
        messages=messages,
    )
