"""Profile-likelihood intervals for the variance components, as lme4's ``confint(m, method =
"profile")``.

Bates et al. (2015, JSS 67(1), sec. 5.1) profile the deviance in the standard-deviation /
correlation scale: for one parameter p (a random-effect SD, a correlation or the residual SD
sigma) held at a value v, the deviance is minimised over all other variance parameters (the
fixed effects are profiled out as in every evaluation), and the signed square root

    zeta(v) = sign(v - p_hat) sqrt(dev_p(v) - dev(p_hat))

is compared with the normal quantile: the level-L interval is {v : |zeta(v)| <= z_{(1+L)/2}}.
The deviance is the criterion of the fit (REML for REML fits, as lme4 profiles them), with
sigma explicit rather than profiled (lmerTest's ``devfun_vp``,
:class:`~theralens.model.satterthwaite.VarparFunctions`).

lme4 evaluates zeta on a grid and interpolates a spline (linear where the spline is not
monotonic); here the crossings are found by root finding on zeta itself, so the bounds are the
exact solutions of |zeta| = z to about 1e-7 of the parameter. A bound that is not reached before
the edge of the parameter space is the edge: 0 for an SD, -1 or 1 for a correlation, as lme4
reports them.

``boundary="one-sided"`` (not lme4's) treats an SD whose two-sided interval reaches the boundary 0
differently: such an interval cannot miss the truth from below, so the whole 1 - L goes to the
upper side, and the upper bound solves zeta = z_L (the one-sided level-L upper confidence bound;
for a variance at its boundary the likelihood-ratio statistic is a chi-bar-square mixture, Self
& Liang 1987, JASA 82:605). Intervals whose lower bound is above 0 stay two-sided. The measured
coverage of the rules is in validation/slope_sd_interval.md.

``boundary="boundary-aware"`` (not lme4's) inverts the likelihood-ratio test with the null
distribution it has near the boundary. In the local normal approximation (the SD estimate
unconstrained is v + SE * Z, truncated at 0) the statistic LR(v) = zeta(v)^2 at the true value v
is Z^2 when the estimate is positive and -2 delta Z - delta^2 when it is 0, delta = v / SE; its
level-L quantile c(delta) solves

    Phi(sqrt(c)) - Phi(-(c + delta^2) / (2 delta)) = L,        z_L^2 <= c <= z_{(1+L)/2}^2,

and c = z_{(1+L)/2}^2 for delta >= z_{(1+L)/2} (:func:`boundary_cutoff`). The interval is
{v : zeta(v)^2 <= c(v / SE)}: Feldman & Cousins' (1998, Phys. Rev. D 57:3873) unified interval
for a normal mean bounded at 0, whose coverage in that model is L for every true value, where
lme4's two-sided interval covers up to (1 + L) / 2 (its lower tail only, once the interval
reaches 0). It reaches 0 exactly when the boundary test of the SD (LR(0) against z_L^2, the
chi-bar-square 50:50 mixture's critical value) does not reject. SE comes from the profile's
curvature: LR is quadratic in v in that model, so delta(v)^2 = 2 (LR(v) - 2 LR(v / 2) + LR(0)),
taken at the two-sided upper bound (one more profile point). Far from the boundary (delta >= z)
the interval is lme4's.

Inside the minimisation the other parameters are the fit's own (the relative covariance
factors, unconstrained, and log sigma; :class:`_Profiler`), so a singular fit (a correlation of
+-1, an SD of 0) is an interior point and the minimisation has no boundary to stall on.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import optimize, stats

from theralens.display import interval_columns
from theralens.errors import InputError
from theralens.model.criterion import NestedCriterion
from theralens.model.design import ThetaLayout, colmajor_tril
from theralens.model.satterthwaite import VarparFunctions, central_jacobian

_FAR = 1e30  # deviance given where it cannot be evaluated: the optimiser backs off

__all__ = ["BOUNDARY_RULES", "VarcorrParameter", "boundary_cutoff", "profile_intervals", "profile_zeta",
           "varcorr_parameters"]

#: The rules for an SD interval near its boundary 0: lme4's two-sided one, the one-sided upper
#: bound when the interval reaches 0, or the boundary-aware interval (module docstring).
BOUNDARY_RULES = ("two-sided", "one-sided", "boundary-aware")


@dataclass(frozen=True)
class VarcorrParameter:
    """One row of the varcorr layout: an SD (``var2`` None), a correlation, or sigma."""

    grp: str
    var1: str | None
    var2: str | None
    term: int  # index in the layout's terms; -1 for the residual
    i: int  # column of the term (SD), or the later column of a correlation
    j: int  # -1 (SD), or the earlier column of a correlation

    @property
    def kind(self) -> str:
        return "sigma" if self.term < 0 else ("sd" if self.j < 0 else "cor")


def varcorr_parameters(layout: ThetaLayout) -> list[VarcorrParameter]:
    """The parameters in the row order of ``MixedResult.varcorr`` (per term its SDs, then its
    correlations in column-major order of the lower triangle, then the residual SD)."""
    out = []
    for t, term in enumerate(layout.terms):
        for i, c in enumerate(term.columns):
            out.append(VarcorrParameter(term.name, c, None, t, i, -1))
        for j in range(term.q):
            for i in range(j + 1, term.q):
                out.append(VarcorrParameter(term.name, term.columns[j], term.columns[i], t, i, j))
    out.append(VarcorrParameter("Residual", None, None, -1, -1, -1))
    return out


#: what evaluating the criterion at a far trial point of a line search can raise: a singular
#: factor, a residual SD whose square overflows a float, or one that underflows to 0 (x = log sigma)
FAR_ERRORS = (np.linalg.LinAlgError, FloatingPointError, OverflowError, ZeroDivisionError)


class _Profiler:
    """The deviance of a fit as a function of its variance parameters, and their profiles.

    The free parameters of a profile are those of the fit itself, unconstrained: the entries of
    every relative covariance factor Lambda_t (the covariance sigma^2 Lambda_t Lambda_t' does not
    depend on the signs of its diagonal, so no bounds are needed, and a singular fit, whose rows
    of Lambda_t are dependent, is an interior point) and log sigma. The profiled parameter is
    imposed on one row of its term's factor (module docstring: every point is a valid covariance
    matrix, and the map is smooth where the profile is evaluated):

    - the SD of column i held at v: row i is rescaled to length v / sigma;
    - the correlation of columns j < i held at r: row i is rebuilt as |row i| (r u + sqrt(1 - r^2)
      w), u the unit row j and w the unit part of row i orthogonal to u;
    - sigma held at v: log sigma is not free.
    """

    def __init__(self, criterion: NestedCriterion, theta: np.ndarray, sigma: float, reml: bool) -> None:
        self.layout = criterion.design
        self.vf = VarparFunctions(criterion, reml)
        self.terms = self.layout.terms
        offs = np.cumsum([0] + [t.ntheta for t in self.terms])
        self.slices = [slice(int(offs[i]), int(offs[i + 1])) for i in range(len(self.terms))]
        self.tril = [colmajor_tril(t.q) for t in self.terms]
        self.theta_hat = np.asarray(theta, dtype=float)
        self.sigma_hat = float(sigma)
        self.dev_hat = self.vf.deviance(np.r_[self.theta_hat, self.sigma_hat])

    def factor(self, theta: np.ndarray, t: int) -> np.ndarray:
        """Lambda_t of term t from theta."""
        q = self.terms[t].q
        lam = np.zeros((q, q))
        r, c = self.tril[t]
        lam[r, c] = theta[self.slices[t]]
        return lam

    def estimate(self, p: VarcorrParameter) -> float:
        """The parameter at the fit's estimates."""
        if p.kind == "sigma":
            return self.sigma_hat
        lam = self.factor(self.theta_hat, p.term)
        if p.kind == "sd":
            return float(self.sigma_hat * np.linalg.norm(lam[p.i]))
        ni, nj = np.linalg.norm(lam[p.i]), np.linalg.norm(lam[p.j])
        return float(lam[p.i] @ lam[p.j] / (ni * nj)) if ni > 0 and nj > 0 else float("nan")

    def start(self, p: VarcorrParameter) -> np.ndarray:
        """The free vector at the estimates: theta, then log sigma (unless sigma is profiled).
        Diagonals of Lambda at zero (a singular fit) start slightly off zero, where the
        unconstrained factor has a saddle; for a correlation the row it rebuilds gets a small
        part orthogonal to the other row, so that its direction w is defined even where the
        estimate is a correlation of +-1."""
        theta = self.theta_hat.copy()
        for t in range(len(self.terms)):  # a zero diagonal of Lambda is a saddle of the unconstrained
            lam = self.factor(theta, t)    # factor (the sign of a diagonal does not matter): step off it
            d = np.arange(len(lam))
            norms = np.linalg.norm(lam, axis=1)
            lam[d, d] = np.where(np.abs(lam[d, d]) < 1e-3 * np.maximum(norms, 0.1), 1e-3 * np.maximum(norms, 0.1),
                                 lam[d, d])
            r, c = self.tril[t]
            theta[self.slices[t]] = lam[r, c]
        if p.kind == "cor":
            lam = self.factor(theta, p.term)
            row, other = lam[p.i].copy(), lam[p.j]
            size = max(np.linalg.norm(row), 1e-3)
            u = other / np.linalg.norm(other) if np.linalg.norm(other) > 0 else np.eye(len(row))[0]
            e = np.zeros(len(row))
            for m in range(p.i + 1):  # the first coordinate of row i's span farthest from u
                cand = np.eye(len(row))[m]
                cand = cand - (cand @ u) * u
                if np.linalg.norm(cand) > np.linalg.norm(e):
                    e = cand
            lam[p.i] = row + 1e-3 * size * e / np.linalg.norm(e)
            r, c = self.tril[p.term]
            theta[self.slices[p.term]] = lam[r, c]
        return theta if p.kind == "sigma" else np.r_[theta, np.log(self.sigma_hat)]

    def varpar(self, p: VarcorrParameter, x: np.ndarray, v: float) -> np.ndarray:
        """(theta, sigma) of the free vector x with the parameter p held at v."""
        if p.kind == "sigma":
            return np.r_[x, v]
        theta, sigma = x[:-1].copy(), float(np.exp(x[-1]))
        lam = self.factor(theta, p.term)
        row = lam[p.i]
        if p.kind == "sd":
            norm = np.linalg.norm(row)
            lam[p.i] = (v / sigma) * (row / norm if norm > 0 else np.eye(len(row))[p.i])
        else:
            other = lam[p.j]
            no = np.linalg.norm(other)
            u = other / no if no > 0 else np.eye(len(row))[p.j]
            w = row - (row @ u) * u
            nw = np.linalg.norm(w)
            w = w / nw if nw > 0 else np.eye(len(row))[p.i]
            lam[p.i] = np.linalg.norm(row) * (v * u + np.sqrt(max(1.0 - v * v, 0.0)) * w)
        r, c = self.tril[p.term]
        theta[self.slices[p.term]] = lam[r, c]
        return np.r_[theta, sigma]

    def deviance(self, p: VarcorrParameter, x: np.ndarray, v: float) -> float:
        try:
            return self.vf.deviance(self.varpar(p, x, v))
        except FAR_ERRORS:
            return _FAR  # a point where the criterion cannot be evaluated (far from the estimate)

    def deviance_and_gradient(self, p: VarcorrParameter, x: np.ndarray, v: float) -> tuple[float, np.ndarray]:
        """The deviance and its gradient in x: the exact gradient in (theta, sigma)
        (:meth:`~theralens.model.criterion.NestedCriterion.deviance_and_gradient_with_sigma`)
        times the Jacobian of the (cheap) map x -> (theta, sigma), by central differences."""
        try:
            # far trial points of the line search overflow or underflow (sigma = exp(x) of 0 or
            # beyond a float); they are rejected, silently
            with np.errstate(over="ignore", invalid="ignore"):
                vp = self.varpar(p, x, v)
                dev, g_theta, g_sigma = self.vf.crit.deviance_and_gradient_with_sigma(vp[:-1], vp[-1], self.vf.reml)
                g = np.r_[g_theta, g_sigma]
                if not (np.isfinite(dev) and np.all(np.isfinite(g))):
                    return _FAR, np.zeros_like(x)
                J = np.empty((vp.size, x.size))
                for m in range(x.size):
                    h = 1e-7 * max(abs(x[m]), 1.0)
                    lo, hi = x.copy(), x.copy()
                    lo[m] -= h
                    hi[m] += h
                    J[:, m] = (self.varpar(p, hi, v) - self.varpar(p, lo, v)) / (2 * h)
        except FAR_ERRORS:
            return _FAR, np.zeros_like(x)
        return dev, J.T @ g


#: Stop a profile minimisation when the predicted decrease of the deviance is below this (or,
#: for a deviance so large that this is below its rounding, 64 units in its last place): zeta =
#: sqrt(deviance - minimum) is then exact to about 1e-10 / (2 zeta), far below the 1e-3 of the
#: parity tests (tests/model/test_profile_intervals.py); at a million rows (deviance ~4e6) to
#: about 3e-8 / (2 zeta).
DECREMENT = 1e-10


class _Profile:
    """zeta(v) of one parameter, with warm starts from the nearest point already computed:
    its minimiser and its BFGS inverse-Hessian approximation (scipy's ``hess_inv0``), so the
    minimisation at a neighbouring point starts almost as Newton's method would."""

    def __init__(self, profiler: _Profiler, p: VarcorrParameter) -> None:
        self.pr = profiler
        self.p = p
        self.hat = profiler.estimate(p)
        x0 = profiler.start(p)
        self.points: dict[float, tuple[np.ndarray, np.ndarray | None]] = {self.hat: (x0, self._inverse_hessian(x0))}
        self.low, self.high = (-1.0, 1.0) if p.kind == "cor" else (0.0, float("inf"))
        self.limit = max(DECREMENT, 64 * np.finfo(float).eps * abs(profiler.dev_hat))
        self.known: dict[float, float] = {self.hat: 0.0}  # zeta at the points computed
        if p.kind == "sigma":
            self.low = 1e-8 * profiler.sigma_hat

    def _inverse_hessian(self, x: np.ndarray) -> np.ndarray | None:
        """The inverse of the deviance's Hessian in the free parameters at the estimate, by central
        differences of the exact gradient (2 evaluations per parameter): the first step to either
        side then starts as Newton's method would, instead of BFGS learning the curvature from
        scratch (50-120 evaluations). None where it is not positive semi-definite (the estimate
        is not a minimum in these coordinates)."""
        if not np.isfinite(self.hat):
            return None
        def gradient(y: np.ndarray) -> np.ndarray:
            dev, g = self.pr.deviance_and_gradient(self.p, y, self.hat)
            return g if dev < _FAR else np.full(y.size, np.nan)  # not evaluable: no starting curvature

        H = central_jacobian(gradient, x)
        if not np.all(np.isfinite(H)):
            return None
        H = (H + H.T) / 2
        try:
            w, V = np.linalg.eigh(H)
        except np.linalg.LinAlgError:
            return None
        if not (np.all(np.isfinite(w)) and w.max() > 0 and w.min() > -1e-6 * w.max()):
            return None
        # a direction the deviance does not depend on (the length of a Lambda row whose SD is
        # held fixed) has curvature 0: it gets a small positive one, so H0 is positive definite
        w = np.maximum(w, 1e-6 * w.max())
        M = (V / w) @ V.T
        M = (M + M.T) / 2
        try:
            np.linalg.cholesky(M)
        except np.linalg.LinAlgError:
            return None
        return M

    def deviance_at(self, v: float) -> float:
        nearest = min(self.points, key=lambda u: abs(u - v))
        x0, h0 = self.points[nearest]
        grads: dict[bytes, np.ndarray] = {}

        def fun(x: np.ndarray) -> tuple[float, np.ndarray]:
            dev, g = self.pr.deviance_and_gradient(self.p, x, v)
            if len(grads) > 64:
                grads.clear()
            grads[x.tobytes()] = g
            return dev, g

        options: dict = {"gtol": 1e-6, "maxiter": 2000}
        callback = None
        if h0 is not None:
            # Near the minimum the finite-difference Jacobian leaves a noise floor in the gradient
            # that no line search gets below; stop instead when the predicted decrease of the
            # deviance, g' H0 g / 2 with the neighbour's inverse Hessian H0, is below the limit.
            dev0, g0 = fun(x0)
            if 0.5 * float(g0 @ h0 @ g0) < self.limit:
                self.points[v] = (x0, h0)
                return float(dev0)
            options["hess_inv0"] = h0

            def callback(intermediate_result: optimize.OptimizeResult) -> None:
                g = grads.get(np.asarray(intermediate_result.x).tobytes())
                if g is not None and 0.5 * float(g @ h0 @ g) < self.limit:
                    raise StopIteration

        try:
            res = optimize.minimize(fun, x0, method="BFGS", jac=True, options=options, callback=callback)
        except ValueError:  # scipy's own test finds the warm start's matrix not positive definite: start cold
            options.pop("hess_inv0", None)
            res = optimize.minimize(fun, x0, method="BFGS", jac=True, options=options)
        hess_inv = np.asarray(res.hess_inv)
        hess_inv = (hess_inv + hess_inv.T) / 2
        self.points[v] = (res.x, hess_inv if _positive_definite(hess_inv, x0.size) else h0)
        return float(res.fun)

    def zeta(self, v: float) -> float:
        """zeta(v), each v computed once."""
        if v not in self.known:
            d = self.deviance_at(v) - self.pr.dev_hat
            self.known[v] = float(np.sign(v - self.hat) * np.sqrt(max(d, 0.0)))
        return self.known[v]

    def boundary_aware(self, lo: float, hi: float, z: float, level: float) -> tuple[float, float]:
        """The boundary-aware interval of an SD (module docstring) from its two-sided bounds ``lo``,
        ``hi`` at z = z_{(1+L)/2}: SE from the curvature at ``hi``, then the crossings of
        zeta(v) = -+sqrt(c(v / SE)) between the two-sided bounds and the estimate."""
        if not (np.isfinite(hi) and hi > 0 and np.isfinite(self.hat)):
            return lo, hi
        lr0 = self.zeta(0.0) ** 2
        d2 = 2.0 * (z * z - 2.0 * self.zeta(hi / 2) ** 2 + lr0)
        if not d2 > 0:
            return lo, hi
        se = hi / np.sqrt(d2)

        def cut(v: float) -> float:
            return float(np.sqrt(boundary_cutoff(v / se, level)))

        def root(a: float, b: float, side: int) -> float:
            f = lambda u: self.zeta(u) - side * cut(u)  # noqa: E731
            slope = abs(self.zeta(b) - self.zeta(a)) / abs(b - a)
            return float(optimize.brentq(f, a, b, xtol=ZETA_TOL / slope if slope > 0 else 1e-12))

        if hi / se < z and hi > self.hat:
            hi = root(self.hat, hi, 1)
        if lr0 <= boundary_cutoff(0.0, level):
            lo = 0.0
        elif lo / se < z and self.hat > lo:
            lo = root(lo, self.hat, -1)
        return lo, hi

    def bound(self, side: int, z: float, start_step: float) -> float:
        """The crossing of zeta = side * z beyond the estimate, or the edge of the space.

        zeta is close to linear in the parameter (exactly so for a quadratic log-likelihood), so
        after the first step each next point is the secant's predicted crossing, 25% beyond it
        (at least 1.6 and at most 8 times the last step), which brackets the crossing in one or two
        steps where doubling steps needed three to six; the root in the bracket is found by
        Brent's method to ZETA_TOL in zeta, i.e. to about ZETA_TOL standard errors of the
        parameter (zeta's slope is about 1 / SE), and every zeta is computed once."""
        edge = self.low if side < 0 else self.high
        known, zeta = self.known, self.zeta
        prev, step = self.hat, start_step
        v = self.hat + side * step
        for _ in range(60):
            if (side < 0 and v <= edge) or (side > 0 and v >= edge):
                v = edge
            zv = zeta(v)
            if side * zv >= z:
                slope = abs(zv - known[prev]) / abs(v - prev)
                return float(optimize.brentq(lambda u: zeta(u) - side * z, min(prev, v), max(prev, v),
                                             xtol=ZETA_TOL / slope if slope > 0 else 1e-12))
            if v == edge:
                return float(edge)
            last = abs(v - prev)
            slope = (zv - known[prev]) / (v - prev)
            ahead = 1.25 * (side * z - zv) / slope if side * slope > 0 else np.inf
            step = float(np.clip(side * ahead, 1.6 * last, 8.0 * last)) if np.isfinite(ahead) else 1.6 * last
            prev, v = v, v + side * step
        return float("nan")


def _positive_definite(M: np.ndarray, n: int) -> bool:
    """Whether M is a finite n x n matrix with a Cholesky factor (the test scipy's BFGS applies to
    ``hess_inv0``; an eigenvalue test can pass a matrix that fails it by rounding)."""
    if M.shape != (n, n) or not np.all(np.isfinite(M)):
        return False
    try:
        np.linalg.cholesky(M)
    except np.linalg.LinAlgError:
        return False
    return True


def boundary_cutoff(delta: float, level: float = 0.95) -> float:
    """c(delta): the level-``level`` quantile of the likelihood-ratio statistic of an SD whose true
    value lies ``delta`` standard errors above the boundary 0, in the local normal approximation
    (module docstring): z_level^2 at delta = 0 (the chi-bar-square 50:50 mixture's critical value,
    2.706 at 0.95), rising to z_{(1+level)/2}^2 (3.841) at delta >= z_{(1+level)/2}."""
    z = float(stats.norm.ppf(0.5 + level / 2))
    low = float(stats.norm.ppf(level)) ** 2
    if not delta > 0:
        return low
    if delta >= z:
        return z * z

    def coverage(c: float) -> float:
        return float(stats.norm.cdf(np.sqrt(c)) - stats.norm.cdf(-(c + delta * delta) / (2 * delta))) - level

    return float(optimize.brentq(coverage, low, z * z, xtol=1e-12))


#: The tolerance of a profile bound in zeta (in standard errors of the parameter, roughly).
ZETA_TOL = 1e-6
FIRST_STEP = 0.25


def profile_intervals(
    criterion: NestedCriterion,
    theta: np.ndarray,
    sigma: float,
    reml: bool,
    level: float = 0.95,
    parm: list[VarcorrParameter] | None = None,
    boundary: str = "two-sided",
) -> pd.DataFrame:
    """Profile-likelihood intervals of the variance components of a fit (module docstring).

    ``parm`` selects rows (default: every SD, correlation and sigma, in varcorr order).
    ``boundary``: "two-sided" (lme4's intervals), "one-sided" (an SD interval that reaches 0
    gets the one-sided upper bound) or "boundary-aware" (the SD intervals invert the
    likelihood-ratio test with its distribution near the boundary; module docstring); the
    column ``adjusted`` says which rows the rule changed.
    Returns grp, var1, var2, estimate and the two bounds, named as lme4 names them
    (``2.5 %``, ``97.5 %`` at level 0.95).
    """
    if not 0 < level < 1:
        raise InputError(f"level must lie between 0 and 1 (got {level}); e.g. 0.95 for 95% intervals")
    pr = _Profiler(criterion, theta, sigma, reml)
    params = parm if parm is not None else varcorr_parameters(pr.layout)
    if boundary not in BOUNDARY_RULES:
        raise InputError(f"boundary must be one of {', '.join(BOUNDARY_RULES)} (got {boundary!r})")
    z = float(stats.norm.ppf(0.5 + level / 2))
    z_one = float(stats.norm.ppf(level))
    low_name, high_name = interval_columns(level)
    rows = []
    for p in params:
        prof = _Profile(pr, p)
        if p.kind == "cor" and (not np.isfinite(prof.hat)):
            rows.append((p, prof.hat, np.nan, np.nan, False))
            continue
        step = FIRST_STEP * (1.0 if p.kind == "cor" else max(prof.hat, 0.1 * pr.sigma_hat))
        lo = prof.bound(-1, z, step)
        if boundary == "one-sided" and p.kind == "sd" and lo == 0.0:
            rows.append((p, prof.hat, lo, prof.bound(1, z_one, step), True))
            continue
        hi = prof.bound(1, z, step)
        if boundary == "boundary-aware" and p.kind == "sd":
            lo_b, hi_b = prof.boundary_aware(lo, hi, z, level)
            rows.append((p, prof.hat, lo_b, hi_b, (lo_b, hi_b) != (lo, hi)))
            continue
        rows.append((p, prof.hat, lo, hi, False))
    return pd.DataFrame({
        "grp": [r[0].grp for r in rows], "var1": [r[0].var1 for r in rows], "var2": [r[0].var2 for r in rows],
        "estimate": [r[1] for r in rows], low_name: [r[2] for r in rows], high_name: [r[3] for r in rows],
        "adjusted": [r[4] for r in rows],
    })


def profile_zeta(
    criterion: NestedCriterion,
    theta: np.ndarray,
    sigma: float,
    reml: bool,
    parameter: VarcorrParameter,
    values: np.ndarray,
) -> np.ndarray:
    """The signed square root zeta(v) of the profiled deviance of one parameter at ``values``
    (lme4's ``as.data.frame(profile(m))$.zeta`` at ``.focal`` = v, for an ML fit)."""
    prof = _Profile(_Profiler(criterion, theta, sigma, reml), parameter)
    return np.array([prof.zeta(float(v)) for v in np.asarray(values, dtype=float)])
