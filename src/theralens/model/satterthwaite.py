"""Satterthwaite degrees of freedom for fixed-effect contrasts, as lmerTest computes them.

Kuznetsova, Brockhoff & Christensen (2017), JSS 82(13), sec. 3.1: for a contrast L,

    df = 2 (L' C L)^2 / (g' A g),

with C = Var(beta_hat) as a function of the variance parameters varpar = (theta, sigma),
g the gradient of L' C(varpar) L and A = 2 H^{-1} the asymptotic covariance of varpar,
H the Hessian of the (REML or ML) deviance as a function of varpar, not profiled over sigma.
Derivatives are Richardson-extrapolated central differences with numDeriv's default steps
(d = 0.1 relative, eps = 1e-4 at zero, 4 halvings), which lmerTest uses: of Var(beta) for g,
and of the exact gradient of the deviance for H (lmerTest differences the deviance twice).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy.linalg import solve_triangular

from theralens.model.criterion import NestedCriterion, Profile, deviance_with_sigma

_D, _EPS, _R = 0.1, 1e-4, 4
_ZERO_TOL = float(np.sqrt(np.finfo(float).eps / 7e-7))


def _steps(x: np.ndarray) -> np.ndarray:
    return np.abs(_D * x) + _EPS * (np.abs(x) < _ZERO_TOL)


def _richardson(values: list[np.ndarray]) -> np.ndarray:
    """Extrapolate estimates at h, h/2, h/4, ... with O(h^2) error terms."""
    table = list(values)
    for k in range(1, len(table)):
        four = 4.0**k
        table = [(four * table[i + 1] - table[i]) / (four - 1) for i in range(len(table) - 1)]
    return table[0]


def jacobian(f: Callable[[np.ndarray], np.ndarray], x: np.ndarray) -> np.ndarray:
    """Jacobian of vector-valued f (columns = components of x), Richardson central differences."""
    h0 = _steps(x)
    f0 = np.asarray(f(x), dtype=float).ravel()
    J = np.empty((f0.size, x.size))
    for i in range(x.size):
        ests = []
        for r in range(_R):
            h = h0[i] / 2**r
            e = np.zeros(x.size)
            e[i] = h
            ests.append((np.asarray(f(x + e)).ravel() - np.asarray(f(x - e)).ravel()) / (2 * h))
        J[:, i] = _richardson(ests)
    return J


def central_jacobian(f: Callable[[np.ndarray], np.ndarray], x: np.ndarray, rel_step: float = 1e-5) -> np.ndarray:
    """Jacobian of vector-valued f (columns = components of x) by one central difference per
    component, step ``rel_step * max(|x_m|, 1)``: 2 evaluations per component, for a Hessian from
    an exact gradient where :func:`jacobian`'s Richardson steps are not needed (a starting
    curvature, an observed information)."""
    cols = []
    for m in range(x.size):
        h = rel_step * max(abs(float(x[m])), 1.0)
        e = np.zeros(x.size)
        e[m] = h
        cols.append((np.asarray(f(x + e), dtype=float) - np.asarray(f(x - e), dtype=float)) / (2 * h))
    return np.column_stack(cols)


def hessian(gradient: Callable[[np.ndarray], np.ndarray], x: np.ndarray) -> np.ndarray:
    """Hessian of a scalar function from its exact gradient: the Richardson-extrapolated
    Jacobian of the gradient (:func:`jacobian`, numDeriv's steps), symmetrised.

    2 x 4 gradient evaluations per parameter instead of the about 8 n deviance evaluations
    per parameter of second differences of the deviance (numDeriv's ``hessian``, which
    lmerTest calls); both approximate the same matrix to far better than the 1e-4 of the
    parity tests (tests/model/test_ddf.py)."""
    H = jacobian(gradient, x)
    return (H + H.T) / 2.0


class VarparFunctions:
    """Deviance and Var(beta) as functions of varpar = (theta, sigma) (lmerTest's devfun_vp)."""

    def __init__(self, crit: NestedCriterion, reml: bool) -> None:
        self.crit = crit
        self.reml = reml
        self._cache: dict[bytes, Profile] = {}

    def _profile(self, theta: np.ndarray) -> Profile:
        key = np.asarray(theta, dtype=float).tobytes()
        p = self._cache.get(key)
        if p is None:
            p = self.crit.profile(theta)
            if len(self._cache) > 4096:
                self._cache.clear()
            self._cache[key] = p
        return p

    def deviance(self, varpar: np.ndarray) -> float:
        theta, sigma = varpar[:-1], float(varpar[-1])
        return deviance_with_sigma(self._profile(theta), sigma, self.crit.n, self.crit.k, self.reml)

    def gradient(self, varpar: np.ndarray) -> np.ndarray:
        """The exact gradient of :meth:`deviance` in varpar (criterion.py,
        ``deviance_and_gradient_with_sigma``)."""
        _, g_theta, g_sigma = self.crit.deviance_and_gradient_with_sigma(varpar[:-1], float(varpar[-1]), self.reml)
        return np.r_[g_theta, g_sigma]

    def vcov_beta(self, varpar: np.ndarray) -> np.ndarray:
        theta, sigma = varpar[:-1], varpar[-1]
        p = self._profile(theta)
        RXinv = solve_triangular(p.RX, np.eye(p.RX.shape[0]), lower=True)
        return sigma**2 * (RXinv.T @ RXinv)


def satterthwaite(
    crit: NestedCriterion, theta: np.ndarray, sigma: float, reml: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Satterthwaite df of every fixed-effect coefficient.

    Returns ``(df, A, jac)``: the df per coefficient, the asymptotic covariance A of varpar,
    and the Jacobian of vec(Var(beta)) with respect to varpar (for other contrasts).
    """
    vf = VarparFunctions(crit, reml)
    varpar = np.r_[np.asarray(theta, dtype=float), float(sigma)]
    H = hessian(vf.gradient, varpar)
    try:
        A = 2.0 * np.linalg.inv(H)
    except np.linalg.LinAlgError:
        A = 2.0 * np.linalg.pinv(H)
    jac = jacobian(vf.vcov_beta, varpar)
    k = crit.k
    C = vf.vcov_beta(varpar)
    df = np.empty(k)
    for i in range(k):
        g = jac[i * k + i, :]
        denom = float(g @ A @ g)
        df[i] = 2.0 * C[i, i] ** 2 / denom if denom > 0 else np.inf
    return df, A, jac


def contrast_df(L: np.ndarray, C: np.ndarray, A: np.ndarray, jac: np.ndarray) -> float:
    """Satterthwaite df of the 1-df contrast L' beta from the pieces of :func:`satterthwaite`."""
    k = C.shape[0]
    var = float(L @ C @ L)
    g = np.array([float(L @ jac[:, j].reshape(k, k) @ L) for j in range(jac.shape[1])])
    denom = float(g @ A @ g)
    return 2.0 * var**2 / denom if denom > 0 else float("inf")
