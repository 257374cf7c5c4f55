"""The profiled REML/ML criterion from per-cluster sufficient statistics.

For nested random effects with residual covariance sigma^2 I, the penalized least-squares
system of lme4 (Bates et al. 2015, JSS 67(1), eqs. 10-36) depends on the data only through
the sufficient statistics (:class:`~theralens.model.stats.SufficientStats`). One evaluation
eliminates the random effects level by level (:class:`~theralens.model.elimination.Elimination`,
a block Cholesky that follows the nesting tree: innermost clusters, then their parents, ...),
leaving the Schur complement on [X, y]:

    REML(theta) = log|L_theta|^2 + log|R_X|^2 + (n - k) (1 + log(2 pi r^2 / (n - k)))
    ML(theta)   = log|L_theta|^2 + n (1 + log(2 pi r^2 / n))

with r^2 the penalized residual sum of squares (eqs. 34 and 42 of Bates et al. 2015). Every
step costs O(#clusters), not O(#rows). The exact gradient in theta is the same elimination's
adjoint (gradient.py, ``value_and_gradient``); the conditional modes come from its factors.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from theralens.model.design import Design
from theralens.model.elimination import Elimination, Profile, finish, mm, solve_lower, solve_upper
from theralens.model.stats import SufficientStats

if TYPE_CHECKING:
    from theralens.model.gradient import ProfiledGradient

LOG2PI = float(np.log(2 * np.pi))


@dataclass
class Factors:
    """Per-level factors kept for conditional modes and variances."""

    L: list[np.ndarray]  # per level: (G_l, q_l, q_l) lower Cholesky factors
    S: list[np.ndarray]  # per level: (G_l, q_l, r_l) L^{-1} Lambda_l' M_zr (rest unscaled)
    profile: Profile


class NestedCriterion:
    """The criterion as a function of theta, from :class:`~theralens.model.stats.SufficientStats`
    (or a :class:`Design`, whose statistics are built first).

    This is lme4's ``mkLmerDevfun`` step for nested models: build once, evaluate often. Groups
    are numbered as in the statistics (the children of every parent contiguous); ``design`` is
    the statistics' layout (theta, names), ``stats`` the statistics themselves.
    """

    def __init__(self, source: SufficientStats | Design) -> None:
        stats = source if isinstance(source, SufficientStats) else SufficientStats.from_design(source)
        self.stats = stats
        self.design = stats
        D = stats.D
        self.D = D
        self.q = stats.q
        self.k = stats.k
        self.n = stats.n
        self.d = stats.d
        self.labels = [lv.labels for lv in stats.levels]
        self.parent: list[np.ndarray] = list(stats.parents)
        self.starts: list[np.ndarray] = [np.flatnonzero(np.r_[True, np.diff(par) != 0]) for par in self.parent]
        self.starts.append(np.array([0]))  # the top level sums into one block
        # ancestor maps: anc[l][m] = index at level m (> l) of each level-l group
        self.anc: list[dict[int, np.ndarray]] = []
        for l in range(D):
            maps: dict[int, np.ndarray] = {}
            cur = np.arange(stats.levels[l].ngroups)
            for m in range(l + 1, D):
                cur = self.parent[m - 1][cur]
                maps[m] = cur
            self.anc.append(maps)
        self.yy = stats.yy
        self.evaluations = 0
        self.elimination = Elimination(stats)
        self._gradient: ProfiledGradient | None = None

    # -- Lambda -----------------------------------------------------------------------
    def lambdas(self, theta: np.ndarray) -> list[np.ndarray]:
        return [lv.lambda_matrix(theta) for lv in self.design.levels]

    def profile(self, theta: np.ndarray) -> Profile:
        """Evaluate the profiled pieces (log-determinant, R_X, r^2) at ``theta``."""
        self.evaluations += 1
        fw = self.elimination.forward(np.asarray(theta, dtype=float))
        return finish(fw.logdet, fw.top, self.k)

    def criterion(self, theta: np.ndarray, reml: bool = True) -> float:
        """lme4's REML criterion (REMLcrit) or ML deviance at ``theta`` (eqs. 34, 42)."""
        try:
            p = self.profile(theta)
        except np.linalg.LinAlgError:
            return float("inf")
        return criterion_from_profile(p, self.n, self.k, reml)

    def value_and_gradient(self, theta: np.ndarray, reml: bool = True) -> tuple[float, np.ndarray]:
        """The criterion and its exact gradient in theta (gradient.py, eqs. G1-G5)."""
        if self._gradient is None:
            from theralens.model.gradient import ProfiledGradient

            # a proxy: the helper lives in this criterion, and a strong reference back would be a cycle
            # that only the cyclic garbage collector frees (a fit's statistics, GBs at millions of patients,
            # stayed in memory after the fit was dropped until it ran)
            self._gradient = ProfiledGradient(weakref.proxy(self))  # type: ignore[arg-type]
        return self._gradient(np.asarray(theta, dtype=float), reml)

    def deviance_and_gradient_with_sigma(self, theta: np.ndarray, sigma: float,
                                         reml: bool = True) -> tuple[float, np.ndarray, float]:
        """The deviance with an explicit sigma (:func:`deviance_with_sigma`) and its exact
        gradient in theta and sigma (gradient.py, ``ProfiledGradient.with_sigma``)."""
        if self._gradient is None:
            from theralens.model.gradient import ProfiledGradient

            self._gradient = ProfiledGradient(weakref.proxy(self))  # type: ignore[arg-type]
        return self._gradient.with_sigma(np.asarray(theta, dtype=float), float(sigma), reml)

    def factors(self, theta: np.ndarray) -> Factors:
        """The elimination's factors L_g, S_g of every level at ``theta`` and the profile."""
        fw = self.elimination.forward(np.asarray(theta, dtype=float))
        L, S = self.elimination.factors(fw)
        return Factors(L=L, S=S, profile=finish(fw.logdet, fw.top, self.k))

    # -- solutions ------------------------------------------------------------------------
    def solve(self, theta: np.ndarray, reml: bool = True) -> Solution:
        """Fixed effects, conditional modes b and their conditional covariances at ``theta``.

        Back-substitution through the stored factors (Bates et al. 2015, eqs. 16-19);
        conditional covariances are sigma^2 Lambda (L L')^{-1} Lambda' blocks obtained by
        selected inversion down the nesting tree, as lme4's ``ranef(condVar = TRUE)``.
        """
        theta = np.asarray(theta, dtype=float)
        fac = self.factors(theta)
        prof = fac.profile
        k, D = self.k, self.D
        beta = np.linalg.solve(prof.RX.T, prof.z) if k else np.zeros(0)
        lams = self.lambdas(theta)
        dof = self.n - k if reml else self.n
        sigma2 = prof.r2 / dof
        b: list[np.ndarray] = [np.empty(0)] * D
        u_sq = 0.0
        for l in reversed(range(D)):
            Lc, S = fac.L[l], fac.S[l]
            nz = sum(self.q[l + 1 :])
            S2 = S.reshape(-1, S.shape[2])
            rhs = S[:, :, -1] - (mm(S2[:, nz : nz + k], beta).reshape(S.shape[:2]) if k else 0.0)
            off = 0
            for m in range(l + 1, D):
                qm = self.q[m]
                rhs = rhs - np.einsum("gij,gj->gi", S[:, :, off : off + qm], b[m][self.anc[l][m]])
                off += qm
            u = solve_upper(Lc, rhs)
            u_sq += float((u * u).sum())
            b[l] = mm(u, lams[l].T)
        # selected inversion of Lambda'Z'Z Lambda + I along each group's ancestor chain
        chain_cov: list[np.ndarray] = [np.empty(0)] * D
        condvar: list[np.ndarray] = [np.empty(0)] * D
        for l in reversed(range(D)):
            Lc, S = fac.L[l], fac.S[l]
            G, q = Lc.shape[0], self.q[l]
            if q == 1:  # scalar blocks: products by broadcasting
                Linv = 1.0 / Lc
                own = Linv * Linv
            else:
                Linv = solve_lower(Lc, np.broadcast_to(np.eye(q), Lc.shape))
                own = np.matmul(Linv.transpose(0, 2, 1), Linv)
            if l == D - 1:
                Sgg = chain_cov[l] = own
            else:
                nz = sum(self.q[l + 1 :])
                scale = _block_diag([lams[m] for m in range(l + 1, D)])
                St = mm(np.ascontiguousarray(S[:, :, :nz]).reshape(G * q, nz), scale).reshape(G, q, nz)
                Saa = chain_cov[l + 1][self.parent[l]]
                LtSt = Linv * St if q == 1 else np.matmul(Linv.transpose(0, 2, 1), St)
                Sga = -np.matmul(LtSt, Saa)
                if q == 1:
                    Sgg = own - (Sga * St).sum(axis=2, keepdims=True) * Linv
                else:
                    Sgg = own - np.matmul(np.matmul(Sga, St.transpose(0, 2, 1)), Linv)
                if l > 0:  # the chain covariance is needed by the level below only
                    full = np.empty((G, q + nz, q + nz))
                    full[:, :q, :q] = Sgg
                    full[:, :q, q:] = Sga
                    full[:, q:, :q] = Sga.transpose(0, 2, 1)
                    full[:, q:, q:] = Saa
                    chain_cov[l] = full
            lam = lams[l]
            if q == 1:
                condvar[l] = (sigma2 * lam[0, 0] * lam[0, 0]) * Sgg
            else:
                condvar[l] = sigma2 * np.matmul(np.matmul(lam, Sgg), lam.T)
        return Solution(
            theta=theta,
            beta=beta,
            b=b,
            condvar=condvar,
            sigma2=sigma2,
            profile=prof,
            penalty=u_sq,
        )


@dataclass
class Solution:
    """Estimates at one theta: beta, conditional modes b per level and their covariances."""

    theta: np.ndarray
    beta: np.ndarray
    b: list[np.ndarray]  # per level (nesting order), (G_l, q_l), groups in criterion order
    condvar: list[np.ndarray]  # per level, (G_l, q_l, q_l)
    sigma2: float
    profile: Profile
    penalty: float


def criterion_from_profile(p: Profile, n: int, k: int, reml: bool) -> float:
    if not np.isfinite(p.r2) or p.r2 <= 0:
        return float("inf")
    if reml:
        dof = n - k
        logdet_rx = 2.0 * float(np.log(np.diag(p.RX)).sum()) if k else 0.0
        return p.logdet + logdet_rx + dof * (1.0 + LOG2PI + np.log(p.r2 / dof))
    return p.logdet + n * (1.0 + LOG2PI + np.log(p.r2 / n))


def deviance_with_sigma(p: Profile, sigma: float, n: int, k: int, reml: bool) -> float:
    """The REML or ML deviance at theta (through its profile ``p``) and an explicit residual SD
    sigma, not profiled over it (lmerTest's ``devfun_vp``; Bates et al. 2015, eqs. 32 and 41):

        ML:   log|L_theta|^2 + r^2 / sigma^2 + n log(2 pi sigma^2)
        REML: the ML form + log|R_X|^2 - k log(2 pi sigma^2).

    Minimised over sigma it is :func:`criterion_from_profile`."""
    s2 = sigma**2
    dev = p.logdet + p.r2 / s2 + n * (LOG2PI + np.log(s2))
    if reml and k:
        dev += 2.0 * float(np.log(np.abs(np.diag(p.RX))).sum()) - k * (LOG2PI + np.log(s2))
    return float(dev)


def _block_diag(blocks: list[np.ndarray]) -> np.ndarray:
    n = sum(b.shape[0] for b in blocks)
    out = np.zeros((n, n))
    off = 0
    for b in blocks:
        q = b.shape[0]
        out[off : off + q, off : off + q] = b
        off += q
    return out
