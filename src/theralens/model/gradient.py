"""Analytic gradient of the profiled REML/ML criterion with respect to theta.

The criterion of criterion.py is a function of theta through the block elimination of
:mod:`theralens.model.elimination`, whose adjoint (reverse-mode) pass gives dF / dtheta from
the sensitivity of the criterion F to the top block left by the elimination (eq. G1 there):

(G1) Psi_top = (dof / r2) v v' + [REML] blockdiag((X'X - ...)^{-1}, 0),  v = [-beta; 1],
     dof = n - k (REML) or n (ML): d log r2 = v' dM v / r2 and d log|R_X|^2 = <(R_X R_X')^{-1}, dM_XX>
     (Bates et al. 2015, JSS 67(1), eqs. 34 and 42).

One call costs about one and a half criterion evaluations: the elimination forward, then per
level a few batched products of small matrices backward (G2-G5 of the elimination). Nothing
depends on the residuals or the conditional modes (the envelope theorem is implicit in the
profiled top).
"""

from __future__ import annotations

import numpy as np

from theralens.model.criterion import NestedCriterion, criterion_from_profile, deviance_with_sigma
from theralens.model.elimination import Elimination, finish


class ProfiledGradient:
    """Criterion value and its exact gradient in theta for a :class:`NestedCriterion`.

    ``fast`` selects the closed form (G5) for the innermost level when it has a single random
    term (the criterion's own elimination); ``fast=False`` runs the general level step there
    too (used to test one against the other).
    """

    def __init__(self, crit: NestedCriterion, fast: bool = True) -> None:
        self.crit = crit
        self.k = crit.k
        self.ntheta = crit.design.ntheta
        self.elimination = crit.elimination if fast else Elimination(crit.stats, fast=False)

    def __call__(self, theta: np.ndarray, reml: bool = True) -> tuple[float, np.ndarray]:
        """Criterion (REML criterion or ML deviance) and its gradient at ``theta``."""
        crit, k = self.crit, self.k
        crit.evaluations += 1
        fw = self.elimination.forward(np.asarray(theta, dtype=float), gradient=True)
        top = fw.top
        prof = finish(fw.logdet, top, k)
        f = criterion_from_profile(prof, crit.n, k, reml)
        if not np.isfinite(f):
            return f, np.full(self.ntheta, np.nan)
        # (G1) the top's sensitivity
        XXinv = np.linalg.inv(top[:k, :k]) if k else np.zeros((0, 0))  # (R_X R_X')^{-1}
        v = np.empty(k + 1)
        v[:k] = -(XXinv @ top[:k, k])  # -beta
        v[k] = 1.0
        dof = (crit.n - k) if reml else crit.n
        top_psi = (dof / prof.r2) * np.outer(v, v)
        if reml and k:
            top_psi[:k, :k] += XXinv
        return f, self.elimination.backward(fw, top_psi)

    def with_sigma(self, theta: np.ndarray, sigma: float, reml: bool) -> tuple[float, np.ndarray, float]:
        """The deviance with sigma explicit (:func:`~theralens.model.criterion.deviance_with_sigma`)
        and its exact gradient in theta and in sigma: the top's sensitivity is (G1) with
        v v' / sigma^2 in place of (dof / r2) v v' (d r^2 = v' dM v at the profiled beta), and
        dD/dsigma = -2 r^2 / sigma^3 + 2 dof / sigma."""
        crit, k = self.crit, self.k
        crit.evaluations += 1
        fw = self.elimination.forward(np.asarray(theta, dtype=float), gradient=True)
        top = fw.top
        prof = finish(fw.logdet, top, k)
        dev = deviance_with_sigma(prof, sigma, crit.n, k, reml)
        if not np.isfinite(dev):
            return dev, np.full(self.ntheta, np.nan), float("nan")
        XXinv = np.linalg.inv(top[:k, :k]) if k else np.zeros((0, 0))
        v = np.empty(k + 1)
        v[:k] = -(XXinv @ top[:k, k])
        v[k] = 1.0
        psi = np.outer(v, v) / sigma**2
        if reml and k:
            psi[:k, :k] += XXinv
        dof = (crit.n - k) if reml else crit.n
        return dev, self.elimination.backward(fw, psi), float(-2.0 * prof.r2 / sigma**3 + 2.0 * dof / sigma)
