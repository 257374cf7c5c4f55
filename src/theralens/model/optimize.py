"""Minimise the profiled criterion over theta, and keep the optimizer's record.

With the exact gradient of the profiled criterion (gradient.py, eqs. G1-G5) the fit runs BFGS
(Nocedal & Wright 2006, ch. 6) on the scaled parameters, unconstrained: the criterion depends
on Lambda only through Lambda Lambda', so a column of Lambda with a negative diagonal is the
same model as the column negated, and the end point is mapped back onto theta_ii >= 0. A
variance parameter can then cross zero smoothly instead of being projected onto the bound,
where the gradient vanishes (engine.md's warning about L-BFGS-B concerned finite-difference
gradients; a bounded quasi-Newton method also stops at such spurious stationary points). Every
end point is checked: a zero diagonal is probed from inside (lme4's ``restart_edge``), and when
the gradient at the end is not small, or BFGS runs away towards an infinite variance ratio
(degenerate data), BOBYQA (Powell 2009, NLopt; lme4's default) takes over. Without a gradient,
BOBYQA with restarts is used: after the first run the fit restarts from its optimum until the
criterion stops improving, then the gradient at the end is measured by central differences.
Either way the fit is declared converged only when the (projected) gradient at the end is small.
A converged gradient run ends with a Newton step (``_newton``: the Hessian of the free parameters
from differences of the exact gradient), which place the end point where the gradient vanishes to
about 1e-10 instead of BFGS's 1e-6, so that statistics equal up to their last bits give fits equal
far beyond what the optimizer's stopping rule alone would allow.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import nlopt
import numpy as np


@dataclass
class OptimizerRecord:
    """What the optimizer did (cf. MixedModels.jl's ``OptSummary``).

    Attributes: ``method``; ``initial`` and ``final`` theta; ``evaluations`` of the
    criterion (every value computed, with or without its gradient); ``gradient_evaluations``
    (how many of those also computed the analytic gradient, each costing two to three plain
    evaluations); ``criterion`` at the end; ``gradient`` (with respect to the scaled
    parameters phi, analytic or by central differences, projected onto the feasible set at
    bounds) and its max-norm ``gradient_norm``; ``restarts`` (boundary restarts and BOBYQA
    polishing runs); ``return_code`` of the last optimizer run; ``converged``; ``messages``
    explaining any doubt.
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
    gradient_evaluations: int = 0


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
    fg: Callable[[np.ndarray], tuple[float, np.ndarray]] | None = None,
) -> OptimizerRecord:
    """Minimise ``f`` over theta from ``x0`` with bounds ``lower``.

    The optimizer works on phi = theta * scale (``scale``: the RMS of the Z column that
    each theta entry's row multiplies), so that a covariate measured in seconds or in
    thousands does not make the problem badly scaled; the gradient reported and checked is
    with respect to phi (d/dphi = d/dtheta / scale).

    ``fg(theta)`` returns the criterion and its exact gradient in theta; with it the fit
    runs BFGS, checked and if need be polished by BOBYQA; without it (or when ``lower`` does
    not have lme4's pattern of one bounded diagonal entry per column of Lambda), BOBYQA with
    restarts and a central-difference gradient at the end. A converged gradient run ends with
    a Newton step on a Hessian from differences of the gradient (:func:`_newton`).
    """
    scale = np.ones(len(x0)) if scale is None else np.asarray(scale, dtype=float)
    columns = lambda_columns(np.asarray(lower, dtype=float))
    if fg is None or columns is None:
        return _minimize_bobyqa(f, x0, lower, scale, max_restarts)
    return _minimize_gradient(f, fg, x0, lower, scale, max_restarts, columns)


BFGS_GTOL = 1e-6  # BFGS stops at max|gradient| below this (in phi)
ROUNDOFF = 1e-14  # relative size of criterion changes that are rounding noise (sums over clusters)
SNAP_TOL = 1e-2  # diagonal entries of Lambda (phi scale) this close to zero are tried at exactly zero
ZERO_TOL = 1e-6  # a diagonal entry this close to zero is at the boundary (probed from inside)
#: A snap to zero may raise the criterion by max(SNAP_SLACK, SNAP_SLACK_REL |criterion|): what
#: the other parameters, stopped at BFGS_GTOL in a flat valley, leave undetermined anyway.
SNAP_SLACK, SNAP_SLACK_REL = 1e-9, 1e-12


def _snap_allowed(f_zero: float, f: float) -> bool:
    """Whether a snap to zero that moves the criterion from ``f`` to ``f_zero`` is kept."""
    return f_zero <= f + max(SNAP_SLACK, SNAP_SLACK_REL * abs(f))
PROBE_STEP = 1e-3  # step inside the feasible set to test a zero diagonal (phi scale)
STALL_GTOL = 1e-4  # with max|gradient| below this, a few evaluations without progress end the run
STALL_EVALS = 3
PHI_MAX = 1e4  # |phi| beyond this: a variance ratio of 1e8, the criterion is diverging (degenerate data)


class _StalledError(Exception):
    """The line search is working at roundoff level near an optimum: stop it."""


class _DivergedError(Exception):
    """BFGS follows the criterion down towards an infinite variance parameter."""


def lambda_columns(lower: np.ndarray) -> list[np.ndarray] | None:
    """Indices of the theta entries of every column of Lambda, read off the bounds.

    theta fills each lower-triangular block column by column (lme4), so every diagonal entry
    (the only ones with a finite lower bound, 0) starts a new column, followed by the entries
    below it. Returns None when ``lower`` does not have that pattern.
    """
    finite = np.isfinite(lower)
    starts = np.flatnonzero(finite)
    if len(starts) == 0 or starts[0] != 0 or np.any(lower[finite] != 0):
        return None
    return np.split(np.arange(len(lower)), starts[1:])


def _canonical(phi: np.ndarray, g: np.ndarray, columns: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Flip the sign of every column of Lambda whose diagonal is negative (and its gradient).

    The criterion depends on Lambda only through Lambda Lambda' (b = Lambda u with spherical u,
    so flipping a column of Lambda flips one u_j, whose distribution is symmetric); flipping a
    column maps a point and its gradient onto the feasible set theta_ii >= 0 unchanged.
    """
    phi, g = phi.copy(), g.copy()
    for col in columns:
        if phi[col[0]] < 0:
            phi[col] = -phi[col]
            g[col] = -g[col]
    return phi, g


def _wolfe(
    fg: Callable[[np.ndarray], tuple[float, np.ndarray]],
    x: np.ndarray,
    f0: float,
    g0: np.ndarray,
    p: np.ndarray,
    ftol: float,
    c1: float = 1e-4,
    c2: float = 0.9,
    maxeval: int = 20,
) -> tuple[float, float, np.ndarray] | None:
    """Step length along ``p`` satisfying the strong Wolfe conditions (Nocedal & Wright 2006,
    algorithms 3.5 and 3.6, cubic interpolation); None when none is found.

    The sufficient-decrease test allows ``ftol`` of rounding noise in the criterion.
    """
    d0 = float(g0 @ p)
    evals = 0

    def phi(a: float) -> tuple[float, float, np.ndarray]:
        nonlocal evals
        evals += 1
        fa, ga = fg(x + a * p)
        return fa, float(ga @ p), ga

    def armijo(a: float, fa: float) -> bool:
        return fa <= f0 + c1 * a * d0 + ftol

    def zoom(lo: tuple[float, float, float, np.ndarray], hi: tuple[float, float, float, np.ndarray]
             ) -> tuple[float, float, np.ndarray] | None:
        while evals < maxeval:
            a_lo, f_lo, d_lo, _ = lo
            a_hi, f_hi, d_hi, _ = hi
            a = _cubic_min(a_lo, f_lo, d_lo, a_hi, f_hi, d_hi)
            width = abs(a_hi - a_lo)
            if width < 1e-12 * max(1.0, abs(a_lo)):
                break
            lo_b, hi_b = min(a_lo, a_hi), max(a_lo, a_hi)
            a = min(max(a, lo_b + 0.1 * width), hi_b - 0.1 * width)
            fa, da, ga = phi(a)
            if not armijo(a, fa) or fa >= f_lo:
                hi = (a, fa, da, ga)
            else:
                if abs(da) <= -c2 * d0:
                    return a, fa, ga
                if da * (a_hi - a_lo) >= 0:
                    hi = lo
                lo = (a, fa, da, ga)
        a_lo, f_lo, _, g_lo = lo
        return (a_lo, f_lo, g_lo) if a_lo > 0 else None

    prev = (0.0, f0, d0, g0)
    a = 1.0
    while evals < maxeval:
        fa, da, ga = phi(a)
        if not np.isfinite(fa) or not armijo(a, fa) or (prev[0] > 0 and fa >= prev[1]):
            if not np.isfinite(fa):
                fa, da = np.inf, np.inf
            return zoom(prev, (a, fa, da, ga))
        if abs(da) <= -c2 * d0:
            return a, fa, ga
        if da >= 0:
            return zoom((a, fa, da, ga), prev)
        prev = (a, fa, da, ga)
        a *= 4.0
    return None


def _cubic_min(a: float, fa: float, da: float, b: float, fb: float, db: float) -> float:
    """Minimiser of the cubic interpolating f and f' at a and b (bisection if degenerate)."""
    if not (np.isfinite(fb) and np.isfinite(db)):
        return 0.5 * (a + b)
    d1 = da + db - 3 * (fa - fb) / (a - b)
    disc = d1 * d1 - da * db
    if disc < 0:
        return 0.5 * (a + b)
    d2 = np.sign(b - a) * np.sqrt(disc)
    denom = db - da + 2 * d2
    if denom == 0:
        return 0.5 * (a + b)
    return float(b - (b - a) * (db + d2 - d1) / denom)


def _norm(v: np.ndarray) -> float:
    """Euclidean norm of a vector (as ``np.linalg.norm`` computes it, with less overhead)."""
    return math.sqrt(float(v @ v))


def _bfgs(
    fg: Callable[[np.ndarray], tuple[float, np.ndarray]], x0: np.ndarray, gtol: float, maxiter: int = 500
) -> str:
    """BFGS on the inverse Hessian (Nocedal & Wright 2006, algorithm 6.1, with the initial
    scaling of eq. 6.20); the caller's ``fg`` keeps the best point.

    Near the optimum of a large data set the criterion (a sum over all clusters) cannot resolve
    the decrease of a quasi-Newton step any more while the gradient still can: when the
    predicted decrease is below rounding noise, a full step is taken if it shrinks the gradient.
    """
    n = len(x0)
    x = np.asarray(x0, dtype=float)
    f, g = fg(x)
    eye = np.eye(n)
    H = eye
    first = True
    for _ in range(maxiter):
        gnorm = float(np.abs(g).max())
        if gnorm < gtol:
            return "success"
        p = -H @ g
        if float(g @ p) >= 0:  # not a descent direction: restart from steepest descent
            H = eye
            first = True
            p = -g
        pnorm = _norm(p)
        if first:
            p = p / max(1.0, pnorm)  # first step of length at most one in phi
        elif pnorm > 10.0 * max(1.0, _norm(x)):
            p = p * (10.0 * max(1.0, _norm(x)) / pnorm)  # a poor Hessian estimate
        ftol = ROUNDOFF * (abs(f) + 1.0)
        if -0.5 * float(g @ p) < ftol:
            f1, g1 = fg(x + p)
            if not (np.isfinite(f1) and f1 <= f + ftol and np.max(np.abs(g1)) < gnorm):
                return "success (gradient at rounding level of the criterion)"
            x1 = x + p
        else:
            found = _wolfe(fg, x, f, g, p, ftol)
            if found is None:
                return "line search failed"
            a, f1, g1 = found
            x1 = x + a * p
        s, y = x1 - x, g1 - g
        sy = float(s @ y)
        if sy > 1e-12 * _norm(s) * _norm(y):
            if first:
                H = (sy / float(y @ y)) * eye
            rho = 1.0 / sy
            V = eye - rho * np.outer(s, y)
            H = V @ H @ V.T + rho * np.outer(s, s)
            first = False
        x, f, g = x1, f1, g1
    return "maxiter"


NEWTON_GTOL = 1e-10  # no Newton step from a max|gradient| (phi) below this
NEWTON_H = 1e-6  # forward-difference step of the polish's Hessian, relative to max(1, |phi_i|)
NEWTON_MAX_STEP = 1e-2  # a polish, not a search: longer Newton steps (phi) are not taken
NEWTON_NOISE = 100.0  # the criterion may rise by this many ROUNDOFF in a polish step (rounding)


def _newton(fg: Callable[[np.ndarray], tuple[float, np.ndarray]], phi: np.ndarray, f: float, g: np.ndarray,
            lower: np.ndarray) -> tuple[np.ndarray, float, np.ndarray] | None:
    """One Newton step from BFGS's end point: the point reached (phi, criterion, gradient), or
    None when the step is not kept.

    BFGS stops at max|gradient| < BFGS_GTOL, where a flat direction (a variance near its
    boundary) leaves the end point uncertain by far more than the data's last bits: statistics
    summed in another order (the DuckDB path) then moved estimates by up to 1.4e-6 relative. The
    exact gradient resolves the optimum much further than the criterion does: with the Hessian
    of the free parameters (entries at a bound stay there) from forward differences of the
    gradient (Nocedal & Wright 2006, eq. 8.7), the step -H^-1 g is kept when H is positive
    definite, the step is short (NEWTON_MAX_STEP) and feasible, the criterion does not rise
    beyond rounding noise (NEWTON_NOISE) and the gradient shrinks. It costs one gradient per free
    parameter and one for the new point, and takes a gradient of 1e-6 to about 1e-11 (engines'
    results then agree to about 5e-11); a second step cost about 10% of a fit at 440k rows
    (benchmarks/RESULTS.md, 2026-12-03)."""
    free = np.flatnonzero(~(np.isfinite(lower) & (phi <= lower)))
    if not len(free) or float(np.abs(g[free]).max()) < NEWTON_GTOL:
        return None
    H = np.empty((len(free), len(free)))
    for c, i in enumerate(free):
        h = NEWTON_H * max(1.0, abs(float(phi[i])))
        probe = phi.copy()
        probe[i] += h
        _, gi = fg(probe)
        if not np.all(np.isfinite(gi)):
            return None
        H[:, c] = (gi[free] - g[free]) / h
    try:
        chol = np.linalg.cholesky(0.5 * (H + H.T))
    except np.linalg.LinAlgError:  # not a strict local minimum in the free parameters
        return None
    step = np.linalg.solve(chol.T, np.linalg.solve(chol, g[free]))
    new = phi.copy()
    new[free] -= step
    if float(np.abs(step).max()) > NEWTON_MAX_STEP or np.any(new < lower):
        return None
    f1, g1 = fg(new)
    # the step's predicted decrease, g' H^-1 g / 2, is far below the criterion's rounding (about
    # 1e-18 of it from a gradient of 1e-6): the criterion may show noise of a few ROUNDOFF either
    # way (seen: 1.5 ROUNDOFF), so it only guards against a real rise; the gradient decides
    if not (np.isfinite(f1) and f1 <= f + NEWTON_NOISE * ROUNDOFF * (abs(f) + 1.0)
            and float(np.abs(g1[free]).max()) < float(np.abs(g[free]).max())):
        return None
    return new, f1, g1


def _minimize_gradient(
    f: Callable[[np.ndarray], float],
    fg: Callable[[np.ndarray], tuple[float, np.ndarray]],
    x0: np.ndarray,
    lower: np.ndarray,
    scale: np.ndarray,
    max_restarts: int,
    columns: list[np.ndarray],
) -> OptimizerRecord:
    """BFGS with the exact gradient on phi; zero diagonals probed; BOBYQA when in doubt.

    Because the criterion is invariant to flipping a column of Lambda (see ``_canonical``),
    BFGS runs without the bounds theta_ii >= 0 and its end point is mapped back onto the
    feasible set. Without bounds a variance parameter crosses zero smoothly instead of being
    projected onto the bound, where the gradient of an even function of theta_ii vanishes and a
    bounded quasi-Newton method stops (a spurious stationary point: engine.md's warning about
    L-BFGS-B). Of the points evaluated, the one kept is the lowest, or among those within
    rounding noise of the lowest, the one with the smallest gradient.
    """
    counts = {"f": 0, "fg": 0}
    best: dict[str, Any] = {"f": np.inf, "phi": None, "g": None, "gnorm": np.inf, "stale": 0, "armed": False}

    def f_phi(phi: np.ndarray) -> float:
        counts["f"] += 1
        return f(phi / scale)

    def fg_phi(phi: np.ndarray) -> tuple[float, np.ndarray]:
        if best["armed"] and float(np.abs(phi).max(initial=0.0)) > PHI_MAX:
            raise _DivergedError
        counts["fg"] += 1
        try:
            val, g = fg(phi / scale)
        except np.linalg.LinAlgError:
            val, g = np.inf, np.full(len(phi), np.nan)
        g = np.asarray(g, dtype=float) / scale
        gnorm = float(np.abs(g).max(initial=0.0))  # NaN or inf when any component is
        if not (np.isfinite(val) and np.isfinite(gnorm)):
            return np.inf, np.full(len(phi), np.nan)
        noise = ROUNDOFF * (abs(val) + 1.0)
        if val < best["f"] - noise or (val <= best["f"] + noise and gnorm < best["gnorm"]):
            best.update(f=float(val), phi=phi.copy(), g=g.copy(), gnorm=gnorm, stale=0)
        else:
            best["stale"] += 1
            if best["armed"] and best["stale"] >= STALL_EVALS and best["gnorm"] < STALL_GTOL:
                raise _StalledError
        return float(val), g

    def run(start: np.ndarray) -> str:
        best.update(stale=0, armed=True)
        try:
            return _bfgs(fg_phi, start, BFGS_GTOL)
        except _StalledError:
            return "success (stopped at rounding level)"
        finally:
            best["armed"] = False

    def current() -> tuple[np.ndarray, float, np.ndarray, float]:
        phi, g = _canonical(np.asarray(best["phi"], dtype=float), np.asarray(best["g"], dtype=float), columns)
        best.update(phi=phi, g=g)
        g = projected(g, phi, lower)
        return phi, float(best["f"]), g, float(np.max(np.abs(g))) if len(g) else 0.0

    def fallback(why: str) -> OptimizerRecord:
        rec = _minimize_bobyqa(f, x0, lower, scale, max_restarts)
        rec.method = "BOBYQA (NLopt) with restarts, after BFGS " + why
        rec.evaluations += counts["f"] + counts["fg"]
        rec.gradient_evaluations = counts["fg"]
        return rec

    try:
        code = run(np.maximum(np.asarray(x0, dtype=float) * scale, np.where(np.isfinite(lower), lower, -np.inf)))
    except _DivergedError:
        # the criterion decreases towards an infinite variance ratio (degenerate data): do what
        # BOBYQA does there, whose trust region keeps the parameters finite
        return fallback("diverged")
    restarts = 0
    method = "BFGS (analytic gradient)"
    messages: list[str] = []
    if best["phi"] is None:  # the criterion is not finite at the start
        return fallback("could not start")
    diag = np.isfinite(lower)

    def snap() -> tuple[np.ndarray, float, np.ndarray, float]:
        """Set small diagonal entries to zero when that does not worsen the criterion beyond
        :data:`SNAP_SLACK`: near a boundary optimum the criterion is flat (even in a
        single-column term's entry), so BFGS stops wherever the gradient falls below its
        tolerance, up to ~1e-2 from the zero. All small entries at once are tried, else one at
        a time."""
        phi, fx, g, gnorm = current()
        tiny = np.flatnonzero(diag & (phi != lower) & (np.abs(phi - lower) < SNAP_TOL))
        candidates = [] if not len(tiny) else [tiny] if len(tiny) == 1 else [tiny, *([i] for i in tiny)]
        for group in candidates:
            ps = phi.copy()
            ps[group] = lower[group]
            fs, gs = fg_phi(ps)
            if _snap_allowed(fs, fx):
                best.update(f=fs, phi=ps, g=gs, gnorm=float(np.max(np.abs(gs))))
                phi, fx, g, gnorm = current()
                if len(group) == len(tiny):
                    break
        return current()

    polished = False
    while True:
        phi, fx, g, gnorm = snap()
        if restarts >= max_restarts:
            break
        # a zero diagonal with a zero gradient may be a saddle: probe inside (lme4's restart_edge)
        moved = False
        for i in np.flatnonzero(diag & (phi - lower <= ZERO_TOL)):
            probe = phi.copy()
            probe[i] = lower[i] + PROBE_STEP
            if f_phi(probe) < fx - ROUNDOFF * (abs(fx) + 1.0):
                restarts += 1
                try:
                    code = run(probe)
                except _DivergedError:
                    return fallback("diverged")
                moved = True
                break
        if moved:
            continue
        if gnorm >= GRADIENT_TOL:
            # the gradient method did not reach a stationary point: let BOBYQA polish from here
            phi_b, f_b, code_b = _bobyqa(f_phi, phi, lower, step=0.02)
            restarts += 1
            polished = True
            method = "BFGS (analytic gradient), then BOBYQA (NLopt)"
            code = code_b
            if f_b < fx:
                fg_phi(phi_b)  # records the gradient at BOBYQA's end point
                if f_b < fx - 1e-9 and restarts < max_restarts:
                    try:
                        code = run(np.asarray(best["phi"], dtype=float))
                    except _DivergedError:
                        return fallback("diverged")
                    continue
        break
    phi, fx, g, gnorm = snap() if polished else current()
    if gnorm < GRADIENT_TOL:
        end = _newton(fg_phi, phi, fx, g, lower)
        if end is not None:  # kept even where fg_phi's rule saw only rounding noise in the criterion
            best.update(f=end[1], phi=end[0], g=end[2], gnorm=float(np.abs(end[2]).max()))
            phi, fx, g, gnorm = current()
    return _record(method, x0, phi / scale, counts["f"] + counts["fg"], fx, g, gnorm, restarts, code,
                   gnorm < GRADIENT_TOL, messages, gradient_evaluations=counts["fg"])


def _minimize_bobyqa(
    f: Callable[[np.ndarray], float],
    x0: np.ndarray,
    lower: np.ndarray,
    scale: np.ndarray,
    max_restarts: int,
) -> OptimizerRecord:
    """BOBYQA + restarts on phi = theta * scale, gradient by central differences."""
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
        at = np.isfinite(lower) & (np.abs(phi - lower) < SNAP_TOL) & (phi != lower)
        if at.any():
            ps = phi.copy()
            ps[at] = lower[at]
            fs = g_phi(ps)
            if _snap_allowed(fs, fx):
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
    return _record("BOBYQA (NLopt) with restarts" if len(x0) > 1 else "Brent (bounded)", x0, phi / scale, count[0],
                   fx, g, gnorm, restarts, code, gnorm < GRADIENT_TOL and code not in ("maxeval", "maxtime"),
                   messages)


def _record(method: str, x0: np.ndarray, final: np.ndarray, evaluations: int, fx: float, g: np.ndarray,
            gnorm: float, restarts: int, code: str, converged: bool, messages: list[str],
            gradient_evaluations: int = 0) -> OptimizerRecord:
    """The optimizer record of a finished fit; a fit that did not converge says so in ``messages``."""
    if not converged:
        messages.append(
            f"the optimizer stopped ({code}) with max|gradient| = {gnorm:.2g} "
            f"(tolerance {GRADIENT_TOL:g}); the estimates may not be at the optimum"
        )
    return OptimizerRecord(method=method, initial=np.asarray(x0, dtype=float), final=final, evaluations=evaluations,
                           criterion=float(fx), gradient=g, gradient_norm=gnorm, restarts=restarts, return_code=code,
                           converged=converged, messages=messages, gradient_evaluations=gradient_evaluations)
