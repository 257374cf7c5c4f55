"""Satterthwaite degrees of freedom for many fits: the engine's computation, as arrays.

The study tests fixed effects with Satterthwaite df as lmerTest does (Kuznetsova,
Brockhoff & Christensen 2017, JSS 82(13), sec. 3.1; :mod:`theralens.model.satterthwaite`):

    df_i = 2 C_ii^2 / (g_i' A g_i),   A = 2 H^{-1},

with C = Var(beta_hat), H the Hessian of the (REML) deviance in varpar = (theta, sigma),
g_i the gradient of C_ii in varpar, both by central differences with numDeriv's steps
(h = 0.1 |x|, or 1e-4 at zero) and Richardson extrapolation over 4 halvings. The engine
evaluates the profiled criterion at those ~300 theta points one after the other: two
thirds of the time of a power replicate. Here the same points are evaluated at once
(:func:`batched_profiles`: the engine's elimination with an axis over the points, every point
and every therapist in a few numpy calls, for designs with one grouping factor and for the
session design's patients nested in therapists), and the differences and extrapolations are
taken on arrays. :func:`prime_satterthwaite` stores the result where
:class:`~theralens.model.fit.MixedResult` keeps its own, so ``fit.df``, ``fit.p_values``
and ``fit.contrast`` use it; ``tests/planning/test_batched_satterthwaite.py`` holds it equal to the
engine's numbers (df to 1e-6; the session design to 1e-5, the rounding noise of the
engine's own differences there). Other designs fall back to the engine.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import special

from theralens.model import satterthwaite as _engine
from theralens.model.criterion import LOG2PI, NestedCriterion, Profile
from theralens.model.fit import MixedResult

__all__ = ["Profiles", "batched_profiles", "prime_satterthwaite", "satterthwaite_arrays", "t_tests"]

#: Largest number of (theta point, group) blocks handled in one numpy call.
BLOCK = 40_000
#: numDeriv's defaults, as :mod:`theralens.model.satterthwaite` uses them.
_D, _EPS, _R = 0.1, 1e-4, 4
_ZERO_TOL = float(np.sqrt(np.finfo(float).eps / 7e-7))


@dataclass
class Profiles:
    """The profiled pieces (as :class:`~theralens.model.criterion.Profile`) at T theta
    points, stacked: ``logdet`` (T,), ``RX`` (T, k, k), ``z`` (T, k), ``r2`` (T,)."""

    logdet: np.ndarray
    RX: np.ndarray
    z: np.ndarray
    r2: np.ndarray

    def __getitem__(self, t: int) -> Profile:
        return Profile(logdet=float(self.logdet[t]), RX=self.RX[t], z=self.z[t], r2=float(self.r2[t]))


def batched_profiles(crit: NestedCriterion, thetas: np.ndarray) -> Profiles | None:
    """:meth:`NestedCriterion.profile` at every row of ``thetas``, as arrays.

    The engine's own elimination with a leading axis over the points
    (:meth:`theralens.model.elimination.Elimination.batch`: every point and every group in a few
    numpy calls), taken in chunks of at most ``BLOCK`` (point, group) blocks; one batched
    Cholesky factor of the Schur complements left gives RX, z and r2. Returns None for designs
    the batch does not cover (more than two grouping factors, or two whose innermost has more than
    one random term), or when a point is not positive definite (the engine then evaluates, and
    reports, it itself).
    """
    k = crit.k
    G = crit.stats.levels[-1].ngroups  # the groups of the batched level step (the top)
    parts: list[tuple[np.ndarray, ...]] = []
    step = max(1, BLOCK // max(G, 1))
    for start in range(0, len(thetas), step):
        try:
            out = crit.elimination.batch(thetas[start:start + step])
            if out is None:
                return None
            logdet, top = out
            full = np.linalg.cholesky(top)
        except np.linalg.LinAlgError:
            return None
        if not np.all(np.isfinite(logdet)):  # |A_g| beyond the floating-point range
            return None
        parts.append((logdet, np.ascontiguousarray(full[:, :k, :k]), full[:, k, :k].copy(), full[:, k, k] ** 2))
    return Profiles(*(np.concatenate(a, axis=0) for a in zip(*parts)))


def _richardson(ests: np.ndarray) -> np.ndarray:
    """Extrapolate estimates at h, h/2, h/4, ... (last axis) with O(h^2) error terms."""
    table = [ests[..., r] for r in range(ests.shape[-1])]
    for k in range(1, len(table)):
        four = 4.0**k
        table = [(four * table[i + 1] - table[i]) / (four - 1) for i in range(len(table) - 1)]
    return table[0]


def satterthwaite_arrays(fit: MixedResult) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """``(df, A, jac)`` as :func:`theralens.model.satterthwaite.satterthwaite` returns them
    (df per coefficient, asymptotic covariance A of varpar, Jacobian of vec Var(beta) in
    varpar), or None where the batched profiles do not apply."""
    crit = fit.criterion
    theta = np.asarray(fit.solution.theta, dtype=float)
    sigma = float(fit.sigma)
    x = np.r_[theta, sigma]
    n, nt, k, R = x.size, theta.size, crit.k, _R
    h0 = np.abs(_D * x) + _EPS * (np.abs(x) < _ZERO_TOL)
    hr = h0[:, None] / 2.0 ** np.arange(R)[None, :]  # (n, R): steps of every varpar
    hs = hr[nt]  # sigma's steps
    eye = np.eye(nt)
    pairs = np.array([(i, j) for i in range(nt) for j in range(i)], dtype=int).reshape(-1, 2)
    pi, pj = pairs[:, 0], pairs[:, 1]
    # theta points: base; theta +- h_ir e_i; theta + s_i h_ir e_i + s_j h_jr e_j for pairs j < i
    steps = hr[:nt, :, None] * eye[:, None, :]  # (nt, R, nt)
    pair_steps = [si * steps[pi] + sj * steps[pj] for si, sj in ((1, 1), (1, -1), (-1, 1), (-1, -1))]
    thetas = np.concatenate([theta[None, :], (theta + steps).reshape(-1, nt), (theta - steps).reshape(-1, nt),
                             *[(theta + d).reshape(-1, nt) for d in pair_steps]], axis=0)
    profiles = batched_profiles(crit, thetas)
    if profiles is None:
        return None
    ldrx = 2.0 * np.log(np.abs(np.diagonal(profiles.RX, axis1=1, axis2=2))).sum(axis=1)
    N = crit.n

    def dev(idx: np.ndarray | int, s: np.ndarray | float) -> np.ndarray:
        """REML (ML) deviance at theta point ``idx`` and residual SD ``s`` (lmerTest's devfun_vp)."""
        s2 = np.asarray(s, dtype=float) ** 2
        d = profiles.logdet[idx] + profiles.r2[idx] / s2 + N * (LOG2PI + np.log(s2))
        if fit.reml and k:
            d = d + ldrx[idx] - k * (LOG2PI + np.log(s2))
        return d

    plus = 1 + np.arange(nt * R).reshape(nt, R)  # index of theta + h_ir e_i
    minus = plus + nt * R
    quad = [1 + 2 * nt * R + q * len(pairs) * R + np.arange(len(pairs) * R).reshape(-1, R) for q in range(4)]
    fx = dev(0, sigma)
    H = np.empty((n, n))
    d_all = dev(np.arange(len(thetas)), sigma)
    H[np.arange(nt), np.arange(nt)] = _richardson((d_all[plus] - 2 * fx + d_all[minus]) / hr[:nt] ** 2)
    H[nt, nt] = _richardson((dev(0, sigma + hs) - 2 * fx + dev(0, sigma - hs)) / hs**2)
    if len(pairs):
        v = (d_all[quad[0]] - d_all[quad[1]] - d_all[quad[2]] + d_all[quad[3]]) / (4 * hr[pi] * hr[pj])
        H[pi, pj] = H[pj, pi] = _richardson(v)
    up, down = sigma + hs[None, :], sigma - hs[None, :]
    v = (dev(plus, up) - dev(minus, up) - dev(plus, down) + dev(minus, down)) / (4 * hs[None, :] * hr[:nt])
    H[nt, :nt] = H[:nt, nt] = _richardson(v)
    try:
        A = 2.0 * np.linalg.inv(H)
    except np.linalg.LinAlgError:
        A = 2.0 * np.linalg.pinv(H)
    # Var(beta) = sigma^2 (RX RX')^{-1} at the points of the Jacobian
    used = np.r_[0, plus.ravel(), minus.ravel()]
    RXinv = np.linalg.inv(profiles.RX[used])
    P = np.matmul(RXinv.transpose(0, 2, 1), RXinv).reshape(len(used), k * k)
    Pp, Pm = P[1:1 + nt * R].reshape(nt, R, -1), P[1 + nt * R:].reshape(nt, R, -1)
    jac = np.empty((k * k, n))
    jac[:, :nt] = _richardson(((Pp - Pm) * sigma**2 / (2 * hr[:nt, :, None])).transpose(2, 0, 1))
    jac[:, nt] = _richardson((((sigma + hs) ** 2 - (sigma - hs) ** 2) / (2 * hs))[None, :] * P[0][:, None])
    C = sigma**2 * P[0].reshape(k, k)
    g = jac[np.arange(k) * (k + 1), :]
    denom = np.einsum("ia,ab,ib->i", g, A, g)
    with np.errstate(divide="ignore"):
        df = np.where(denom > 0, 2.0 * np.diag(C) ** 2 / np.where(denom > 0, denom, 1.0), np.inf)
    return df, A, jac


def t_tests(fit: MixedResult) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(estimate, SE, Satterthwaite df, p) of every fixed effect: what ``fit.fixed_effects``,
    ``fit.std_errors``, ``fit.df`` and ``fit.p_values`` give (t = estimate / SE, two-sided
    p from t(df)), on arrays."""
    prime_satterthwaite(fit)
    beta = np.asarray(fit.solution.beta, dtype=float)
    RX = fit.solution.profile.RX
    inv = np.linalg.inv(RX)
    se = np.sqrt(fit.solution.sigma2 * (inv * inv).sum(axis=0))
    df = np.asarray(fit.__dict__["_satterthwaite"][0], dtype=float)
    p = 2.0 * special.stdtr(df, -np.abs(beta / se))  # stats.t.sf(|t|, df), without its argument handling
    return beta, se, df, p


def prime_satterthwaite(fit: MixedResult) -> None:
    """Compute ``fit``'s Satterthwaite pieces on arrays and keep them in the fit (where its
    cached ``_satterthwaite`` lives); the engine computes them itself where this cannot."""
    if "_satterthwaite" in fit.__dict__:
        return
    out = satterthwaite_arrays(fit)
    if out is None:
        out = _engine.satterthwaite(fit.criterion, fit.solution.theta, fit.sigma, fit.reml)
    fit.__dict__["_satterthwaite"] = out
