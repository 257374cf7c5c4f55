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

Inside the minimisation each term's correlation matrix is written through canonical partial
correlations (Lewandowski, Kurowicka & Joe 2009, J. Multivariate Anal. 100:1989), each in
[-1, 1], so that every point is a valid covariance matrix; the profiled correlation is made the
first partial correlation by ordering the term's columns (the deviance does not depend on the
order).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import optimize, stats

from theralens.errors import InputError
from theralens.model.criterion import NestedCriterion
from theralens.model.design import ThetaLayout, colmajor_tril
from theralens.model.satterthwaite import VarparFunctions

__all__ = ["VarcorrParameter", "profile_intervals", "profile_zeta", "varcorr_parameters"]


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


def _cpc_to_chol(z: np.ndarray, q: int) -> np.ndarray:
    """Lower Cholesky factor W of a correlation matrix from canonical partial correlations
    z[(i, j)], i > j, listed column-major (W[i, j] = z_ij sqrt(1 - sum_{m<j} W[i, m]^2))."""
    W = np.zeros((q, q))
    W[0, 0] = 1.0
    k = 0
    rest = np.ones(q)  # 1 - sum of squares so far, per row
    for j in range(q):
        if j:
            W[j, j] = np.sqrt(max(rest[j], 0.0))
        for i in range(j + 1, q):
            W[i, j] = z[k] * np.sqrt(max(rest[i], 0.0))
            rest[i] -= W[i, j] ** 2
            k += 1
    return W


def _chol_to_cpc(W: np.ndarray) -> np.ndarray:
    """Inverse of :func:`_cpc_to_chol` (0 where a row has no length left)."""
    q = W.shape[0]
    z = []
    rest = np.ones(q)
    for j in range(q):
        for i in range(j + 1, q):
            s = np.sqrt(max(rest[i], 0.0))
            z.append(float(np.clip(W[i, j] / s, -1.0, 1.0)) if s > 1e-12 else 0.0)
            rest[i] -= W[i, j] ** 2
    return np.array(z)


def _chol_psd(A: np.ndarray) -> np.ndarray:
    """Lower Cholesky factor of a positive semi-definite matrix (zero columns where a pivot
    vanishes, as a singular fit's relative covariance factor has them)."""
    q = A.shape[0]
    L = np.zeros((q, q))
    tol = 1e-14 * max(float(np.trace(A)), 1e-300)
    for j in range(q):
        d = A[j, j] - L[j, :j] @ L[j, :j]
        if d > tol:
            L[j, j] = np.sqrt(d)
            L[j + 1 :, j] = (A[j + 1 :, j] - L[j + 1 :, :j] @ L[j, :j]) / L[j, j]
    return L


_FAR = 1e30  # deviance given where it cannot be evaluated: the optimiser backs off


class _Profiler:
    """The deviance of a fit in the SD / correlation scale, and its profiles."""

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
        self.covs = []  # covariance of each term at the estimate
        for t, term in enumerate(self.terms):
            lam = np.zeros((term.q, term.q))
            r, c = self.tril[t]
            lam[r, c] = self.theta_hat[self.slices[t]]
            self.covs.append(self.sigma_hat**2 * lam @ lam.T)

    # -- the parameter vector of one profile ----------------------------------------------
    def layout_for(self, p: VarcorrParameter) -> _Coordinates:
        """Coordinates in which p is one entry: per term SDs and partial correlations (the
        profiled correlation's term ordered so that it is the first partial correlation), sigma."""
        perms = [np.arange(term.q) for term in self.terms]
        if p.kind == "cor":
            others = [c for c in range(self.terms[p.term].q) if c not in (p.j, p.i)]
            perms[p.term] = np.array([p.j, p.i, *others])
        x, lower, upper, scale, index = [], [], [], [], -1
        for t, term in enumerate(self.terms):
            perm = perms[t]
            cov = self.covs[t][np.ix_(perm, perm)]
            sd = np.sqrt(np.maximum(np.diag(cov), 0.0))
            pos = sd > 0
            corr = np.eye(term.q)
            corr[np.ix_(pos, pos)] = cov[np.ix_(pos, pos)] / np.outer(sd[pos], sd[pos])
            z = _chol_to_cpc(_chol_psd(corr))
            for c in range(term.q):
                if p.kind == "sd" and p.term == t and perm[c] == p.i:
                    index = len(x)
                x.append(sd[c])
                lower.append(0.0)
                upper.append(np.inf)
                scale.append(max(sd[c], 0.05 * self.sigma_hat))
            for m, v in enumerate(z):
                if p.kind == "cor" and p.term == t and m == 0:
                    index = len(x)
                x.append(v)
                lower.append(-1.0)
                upper.append(1.0)
                scale.append(1.0)
        if p.kind == "sigma":
            index = len(x)
        x.append(self.sigma_hat)
        lower.append(1e-10 * self.sigma_hat)
        upper.append(np.inf)
        scale.append(self.sigma_hat)
        return _Coordinates(perms, np.array(x), np.array(lower), np.array(upper), np.array(scale), index)

    def varpar(self, coords: _Coordinates, x: np.ndarray) -> np.ndarray:
        """(theta, sigma) of a point x in the coordinates ``coords``."""
        theta = np.empty_like(self.theta_hat)
        sigma = float(x[-1])
        off = 0
        for t, term in enumerate(self.terms):
            q = term.q
            sd = x[off : off + q]
            z = x[off + q : off + q + q * (q - 1) // 2]
            off += q + q * (q - 1) // 2
            Lp = sd[:, None] * _cpc_to_chol(z, q)  # Cholesky factor in the permuted order
            perm = coords.perms[t]
            if np.array_equal(perm, np.arange(q)):
                L = Lp
            else:
                inv = np.argsort(perm)
                L = _chol_psd((Lp @ Lp.T)[np.ix_(inv, inv)])
            r, c = self.tril[t]
            theta[self.slices[t]] = L[r, c] / sigma
        return np.r_[theta, sigma]

    def deviance(self, coords: _Coordinates, x: np.ndarray) -> float:
        try:
            return self.vf.deviance(self.varpar(coords, x))
        except (np.linalg.LinAlgError, FloatingPointError):
            return _FAR  # a point where the criterion cannot be evaluated (far from the estimate)

    def deviance_and_gradient(self, coords: _Coordinates, x: np.ndarray) -> tuple[float, np.ndarray]:
        """The deviance at x and its gradient in x: the exact gradient in (theta, sigma)
        (:meth:`~theralens.model.criterion.NestedCriterion.deviance_and_gradient_with_sigma`)
        times the Jacobian of the (cheap) map x -> (theta, sigma), by central differences."""
        vp = self.varpar(coords, x)
        try:
            dev, g_theta, g_sigma = self.vf.crit.deviance_and_gradient_with_sigma(vp[:-1], vp[-1], self.vf.reml)
        except (np.linalg.LinAlgError, FloatingPointError):
            return _FAR, np.zeros_like(x)
        if not np.isfinite(dev):
            return _FAR, np.zeros_like(x)
        g = np.r_[g_theta, g_sigma]
        J = np.empty((vp.size, x.size))
        for m in range(x.size):
            h = 1e-7 * max(abs(x[m]), coords.scale[m])
            lo, hi = x.copy(), x.copy()
            lo[m] = max(x[m] - h, coords.lower[m])
            hi[m] = min(x[m] + h, coords.upper[m])
            J[:, m] = (self.varpar(coords, hi) - self.varpar(coords, lo)) / (hi[m] - lo[m])
        return dev, J.T @ g


@dataclass
class _Coordinates:
    perms: list[np.ndarray]
    x_hat: np.ndarray
    lower: np.ndarray
    upper: np.ndarray
    scale: np.ndarray
    index: int  # position of the profiled parameter


class _Profile:
    """zeta(v) of one parameter, with warm starts from the nearest point already computed."""

    def __init__(self, profiler: _Profiler, p: VarcorrParameter) -> None:
        self.pr = profiler
        self.c = profiler.layout_for(p)
        self.free = np.array([m != self.c.index for m in range(len(self.c.x_hat))])
        self.hat = float(self.c.x_hat[self.c.index])
        self.points: dict[float, np.ndarray] = {self.hat: self.c.x_hat[self.free] / self.c.scale[self.free]}
        self.low = float(self.c.lower[self.c.index])
        self.high = float(self.c.upper[self.c.index])

    def deviance_at(self, v: float) -> float:
        c, free = self.c, self.free
        nearest = min(self.points, key=lambda u: abs(u - v))
        y0 = self.points[nearest]
        sc = c.scale[free]
        bounds = list(zip(c.lower[free] / sc, c.upper[free] / sc))

        def point(y: np.ndarray) -> np.ndarray:
            x = c.x_hat.copy()
            x[free] = y * sc
            x[c.index] = v
            return x

        def fg(y: np.ndarray) -> tuple[float, np.ndarray]:
            dev, grad = self.pr.deviance_and_gradient(c, point(y))
            return dev, grad[free] * sc

        if not free.any():
            return self.pr.deviance(c, point(y0))
        y0 = np.clip(y0, [b[0] for b in bounds], [b[1] for b in bounds])
        res = optimize.minimize(fg, y0, method="L-BFGS-B", jac=True, bounds=bounds,
                                options={"ftol": 1e-15, "gtol": 1e-8, "maxiter": 1000})
        self.points[v] = res.x
        return float(res.fun)

    def zeta(self, v: float) -> float:
        d = self.deviance_at(v) - self.pr.dev_hat
        return float(np.sign(v - self.hat) * np.sqrt(max(d, 0.0)))

    def bound(self, side: int, z: float, start_step: float) -> float:
        """The crossing of zeta = side * z beyond the estimate, or the edge of the space."""
        edge = self.low if side < 0 else self.high
        prev, step = self.hat, start_step
        for _ in range(60):
            v = self.hat + side * step
            if (side < 0 and v <= edge) or (side > 0 and v >= edge):
                v = edge
            zv = self.zeta(v)
            if side * zv >= z:
                return float(optimize.brentq(lambda u: self.zeta(u) - side * z, min(prev, v), max(prev, v),
                                             xtol=1e-9 * max(abs(self.hat), 1.0), rtol=1e-10))
            if v == edge:
                return float(edge)
            prev, step = v, step * 1.6
        return float("nan")


def profile_intervals(
    criterion: NestedCriterion,
    theta: np.ndarray,
    sigma: float,
    reml: bool,
    level: float = 0.95,
    parm: list[VarcorrParameter] | None = None,
) -> pd.DataFrame:
    """Profile-likelihood intervals of the variance components of a fit (module docstring).

    ``parm`` selects rows (default: every SD, correlation and sigma, in varcorr order).
    Returns grp, var1, var2, estimate and the two bounds, named as lme4 names them
    (``2.5 %``, ``97.5 %`` at level 0.95).
    """
    if not 0 < level < 1:
        raise InputError(f"level must lie between 0 and 1 (got {level}); e.g. 0.95 for 95% intervals")
    pr = _Profiler(criterion, theta, sigma, reml)
    params = parm if parm is not None else varcorr_parameters(pr.layout)
    z = float(stats.norm.ppf(0.5 + level / 2))
    low_name, high_name = (f"{np.format_float_positional(100 * a, precision=10, trim='-')} %"
                           for a in ((1 - level) / 2, (1 + level) / 2))
    rows = []
    for p in params:
        prof = _Profile(pr, p)
        if p.kind == "cor" and (not np.isfinite(prof.hat)):
            rows.append((p, prof.hat, np.nan, np.nan))
            continue
        step = 0.25 if p.kind == "cor" else 0.25 * max(prof.hat, 0.1 * pr.sigma_hat)
        rows.append((p, prof.hat, prof.bound(-1, z, step), prof.bound(1, z, step)))
    return pd.DataFrame({
        "grp": [p.grp for p, *_ in rows], "var1": [p.var1 for p, *_ in rows], "var2": [p.var2 for p, *_ in rows],
        "estimate": [e for _, e, _, _ in rows], low_name: [lo for *_, lo, _ in rows],
        high_name: [hi for *_, hi in rows],
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
