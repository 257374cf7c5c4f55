"""The profiled REML/ML criterion from per-cluster sufficient statistics.

For nested random effects with residual covariance sigma^2 I, the penalized least-squares
system of lme4 (Bates et al. 2015, JSS 67(1), eqs. 10-36) depends on the data only through
C_p = W_p' W_p, W_p = [Z_1p, ..., Z_Dp, X_p, y_p], computed once per innermost cluster p.
One evaluation eliminates the random effects level by level (a block Cholesky that follows
the nesting tree: innermost clusters, then their parents, ...), leaving the Schur complement
on [X, y]:

    REML(theta) = log|L_theta|^2 + log|R_X|^2 + (n - k) (1 + log(2 pi r^2 / (n - k)))
    ML(theta)   = log|L_theta|^2 + n (1 + log(2 pi r^2 / n))

with r^2 the penalized residual sum of squares (eqs. 34 and 42 of Bates et al. 2015). Every
step costs O(#clusters), not O(#rows). Blocks are batched numpy arrays of shape
(#clusters, q, q); sums over children use ``np.add.reduceat`` on clusters sorted by parent.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.linalg import solve_triangular

from theralens.model.design import Design

LOG2PI = float(np.log(2 * np.pi))


@dataclass
class Profile:
    """Pieces of the profiled criterion at one theta."""

    logdet: float  # log |L_theta|^2 = log det(Lambda' Z'Z Lambda + I)
    RX: np.ndarray  # lower Cholesky factor of the Schur complement on X
    z: np.ndarray  # RX^{-1} (X'y - ...)
    r2: float  # penalized residual sum of squares


@dataclass
class Factors:
    """Per-level factors kept for conditional modes and variances."""

    L: list[np.ndarray]  # per level: (G_l, q_l, q_l) lower Cholesky factors
    S: list[np.ndarray]  # per level: (G_l, q_l, r_l) L^{-1} Lambda_l' M_zr (rest unscaled)
    profile: Profile


class NestedCriterion:
    """Sufficient statistics of a :class:`Design` and the criterion as a function of theta.

    This is lme4's ``mkLmerDevfun`` step for nested models: build once, evaluate often.
    """

    def __init__(self, design: Design) -> None:
        self.design = design
        levels = design.levels
        D = len(levels)
        self.D = D
        self.q = [lv.q for lv in levels]
        self.k = design.k
        self.n = design.n
        # ancestor chain of every innermost group; sort so that siblings are contiguous
        chain = [np.arange(levels[0].ngroups)]
        for l in range(D - 1):
            chain.append(design.parents[l][chain[-1]])
        order = np.lexsort(tuple(chain))
        self.new_index: list[np.ndarray] = []
        for l in range(D):
            seq = chain[l][order]
            _, first = np.unique(seq, return_index=True)
            old_in_order = seq[np.sort(first)]
            newidx = np.empty(levels[l].ngroups, dtype=np.int64)
            newidx[old_in_order] = np.arange(len(old_in_order))
            self.new_index.append(newidx)
        # labels in new order and parents in new numbering
        self.labels = []
        for l in range(D):
            lab = np.empty(levels[l].ngroups, dtype=object)
            lab[self.new_index[l]] = levels[l].labels
            self.labels.append(lab)
        self.parent: list[np.ndarray] = []
        self.starts: list[np.ndarray] = []
        for l in range(D - 1):
            par = np.empty(levels[l].ngroups, dtype=np.int64)
            par[self.new_index[l]] = self.new_index[l + 1][design.parents[l]]
            self.parent.append(par)
            self.starts.append(np.flatnonzero(np.r_[True, np.diff(par) != 0]))
        self.starts.append(np.array([0]))  # the top level sums into one block
        # ancestor maps: anc[l][m] = index at level m (> l) of each level-l group
        self.anc: list[dict[int, np.ndarray]] = []
        for l in range(D):
            maps: dict[int, np.ndarray] = {}
            cur = np.arange(levels[l].ngroups)
            for m in range(l + 1, D):
                cur = self.parent[m - 1][cur]
                maps[m] = cur
            self.anc.append(maps)
        # row codes per level in new numbering
        self.row_codes = [self.new_index[l][levels[l].codes] for l in range(D)]
        self.Zs = [np.hstack([t.Z for t in lv.terms]) for lv in levels]
        W = np.hstack(self.Zs + [design.X, design.y[:, None]])
        self.d = W.shape[1]
        self.C = _cross_products(W, self.row_codes[0], levels[0].ngroups)
        self.yy = float(design.y @ design.y)
        self.evaluations = 0

    # -- Lambda -----------------------------------------------------------------------
    def lambdas(self, theta: np.ndarray) -> list[np.ndarray]:
        return [lv.lambda_matrix(theta) for lv in self.design.levels]

    # -- one pass of block elimination -------------------------------------------------
    def _eliminate(self, theta: np.ndarray, keep: bool) -> tuple[float, np.ndarray, Factors | None]:
        lams = self.lambdas(theta)
        M = self.C
        logdet = 0.0
        Ls: list[np.ndarray] = []
        Ss: list[np.ndarray] = []
        for l in range(self.D):
            q = self.q[l]
            lam = lams[l]
            Mzz = M[:, :q, :q]
            Mzr = M[:, :q, q:]
            Mrr = M[:, q:, q:]
            if q == 1 and not keep:
                l2 = lam[0, 0] ** 2
                a = l2 * Mzz[:, 0, 0] + 1.0
                logdet += float(np.log(a).sum())
                v = Mzr[:, 0, :]
                red = Mrr - (l2 / a)[:, None, None] * (v[:, :, None] * v[:, None, :])
            else:
                A = np.matmul(np.matmul(lam.T, Mzz), lam)
                A[:, np.arange(q), np.arange(q)] += 1.0
                Lc = np.linalg.cholesky(A)
                logdet += 2.0 * float(np.log(np.diagonal(Lc, axis1=1, axis2=2)).sum())
                B = np.matmul(lam.T, Mzr)
                S = np.linalg.solve(Lc, B)
                red = Mrr - np.matmul(S.transpose(0, 2, 1), S)
                if keep:
                    Ls.append(Lc)
                    Ss.append(S)
            M = np.add.reduceat(red, self.starts[l], axis=0)
        top = M[0]
        factors = Factors(L=Ls, S=Ss, profile=None) if keep else None  # type: ignore[arg-type]
        return logdet, top, factors

    def profile(self, theta: np.ndarray) -> Profile:
        """Evaluate the profiled pieces (log-determinant, R_X, r^2) at ``theta``."""
        self.evaluations += 1
        logdet, top, _ = self._eliminate(np.asarray(theta, dtype=float), keep=False)
        return _finish(logdet, top, self.k)

    def criterion(self, theta: np.ndarray, reml: bool = True) -> float:
        """lme4's REML criterion (REMLcrit) or ML deviance at ``theta`` (eqs. 34, 42)."""
        try:
            p = self.profile(theta)
        except np.linalg.LinAlgError:
            return float("inf")
        return criterion_from_profile(p, self.n, self.k, reml)

    def factors(self, theta: np.ndarray) -> Factors:
        logdet, top, fac = self._eliminate(np.asarray(theta, dtype=float), keep=True)
        assert fac is not None
        fac.profile = _finish(logdet, top, self.k)
        return fac

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
        beta = solve_triangular(prof.RX.T, prof.z, lower=False) if k else np.zeros(0)
        lams = self.lambdas(theta)
        dof = self.n - k if reml else self.n
        sigma2 = prof.r2 / dof
        b: list[np.ndarray] = [np.empty(0)] * D
        u_sq = 0.0
        for l in reversed(range(D)):
            Lc, S = fac.L[l], fac.S[l]
            nz = sum(self.q[l + 1 :])
            rhs = S[:, :, -1] - (S[:, :, nz : nz + k] @ beta if k else 0.0)
            off = 0
            for m in range(l + 1, D):
                qm = self.q[m]
                rhs = rhs - np.einsum("gij,gj->gi", S[:, :, off : off + qm], b[m][self.anc[l][m]])
                off += qm
            u = _batched_backward(Lc, rhs)
            u_sq += float((u * u).sum())
            b[l] = u @ lams[l].T
        # selected inversion of Lambda'Z'Z Lambda + I along each group's ancestor chain
        chain_cov: list[np.ndarray] = [np.empty(0)] * D
        condvar: list[np.ndarray] = [np.empty(0)] * D
        for l in reversed(range(D)):
            Lc, S = fac.L[l], fac.S[l]
            Linv = np.linalg.inv(Lc)
            own = np.matmul(Linv.transpose(0, 2, 1), Linv)
            if l == D - 1:
                chain_cov[l] = own
            else:
                nz = sum(self.q[l + 1 :])
                scale = _block_diag([lams[m] for m in range(l + 1, D)])
                St = np.matmul(S[:, :, :nz], scale)
                Saa = chain_cov[l + 1][self.parent[l]]
                Sga = -np.matmul(np.matmul(Linv.transpose(0, 2, 1), St), Saa)
                Sgg = own - np.matmul(np.matmul(Sga, St.transpose(0, 2, 1)), Linv)
                q = self.q[l]
                full = np.empty((Lc.shape[0], q + nz, q + nz))
                full[:, :q, :q] = Sgg
                full[:, :q, q:] = Sga
                full[:, q:, :q] = Sga.transpose(0, 2, 1)
                full[:, q:, q:] = Saa
                chain_cov[l] = full
            q = self.q[l]
            Sgg = chain_cov[l][:, :q, :q]
            condvar[l] = sigma2 * np.matmul(np.matmul(lams[l], Sgg), lams[l].T)
        return Solution(
            theta=theta,
            beta=beta,
            b=b,
            condvar=condvar,
            sigma2=sigma2,
            profile=prof,
            penalty=u_sq,
        )

    def fitted(self, sol: Solution) -> np.ndarray:
        """X beta + sum_l Z_l b_l for every row of the design."""
        out = self.design.X @ sol.beta if self.k else np.zeros(self.n)
        for l in range(self.D):
            out = out + np.einsum("ij,ij->i", self.Zs[l], sol.b[l][self.row_codes[l]])
        return out


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


def _finish(logdet: float, top: np.ndarray, k: int) -> Profile:
    if k:
        RX = np.linalg.cholesky(top[:k, :k])
        z = np.linalg.solve(RX, top[:k, k])
        r2 = float(top[k, k] - z @ z)
    else:
        RX = np.zeros((0, 0))
        z = np.zeros(0)
        r2 = float(top[0, 0])
    return Profile(logdet=logdet, RX=RX, z=z, r2=r2)


def _cross_products(W: np.ndarray, codes: np.ndarray, G: int) -> np.ndarray:
    """C_g = W_g' W_g for every group g (rows of W with ``codes == g``), one bincount per pair."""
    d = W.shape[1]
    C = np.empty((G, d, d))
    for i in range(d):
        wi = W[:, i]
        for j in range(i, d):
            col = np.bincount(codes, weights=wi * W[:, j], minlength=G)
            C[:, i, j] = col
            C[:, j, i] = col
    return C


def _batched_backward(L: np.ndarray, rhs: np.ndarray) -> np.ndarray:
    """Solve L' x = rhs for a batch of small lower-triangular L (back substitution)."""
    q = L.shape[1]
    x = np.empty_like(rhs)
    for i in reversed(range(q)):
        acc = rhs[:, i]
        if i < q - 1:
            acc = acc - np.einsum("gj,gj->g", L[:, i + 1 :, i], x[:, i + 1 :])
        x[:, i] = acc / L[:, i, i]
    return x


def _block_diag(blocks: list[np.ndarray]) -> np.ndarray:
    n = sum(b.shape[0] for b in blocks)
    out = np.zeros((n, n))
    off = 0
    for b in blocks:
        q = b.shape[0]
        out[off : off + q, off : off + q] = b
        off += q
    return out
