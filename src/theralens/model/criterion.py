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
(#clusters, q, q), factored by column-by-column kernels over the whole stack (``_chol``,
``_forward``, ``_backward``; faster than one LAPACK call per block for small q); sums over
children are products with sparse 0/1 matrices on clusters sorted by parent. Dense products
go through ``_mm``, which keeps each BLAS call below OpenBLAS's threading threshold (a busy
machine otherwise makes a microsecond product wait milliseconds for its thread pool). The
exact gradient in theta is in gradient.py (``value_and_gradient``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from scipy.sparse import csr_matrix

from theralens.model.design import Design
from theralens.model.stats import SufficientStats

if TYPE_CHECKING:
    from theralens.model.gradient import ProfiledGradient

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
        # up[l] sums level-l groups into their level-(l+1) parents (None at the top: one block)
        self.up: list[csr_matrix | None] = [_segment_matrix(self.starts[l], stats.levels[l].ngroups)
                                             for l in range(D - 1)]
        self.up.append(None)
        self.yy = stats.yy
        self.evaluations = 0
        self._gradient: ProfiledGradient | None = None
        self._prepare_innermost()

    def _prepare_innermost(self) -> None:
        """Precompute what the innermost elimination needs at every theta.

        At the innermost level M = C is constant, so the Schur complement summed over the
        children of each parent is  sum_p Mrr_p - sum_p Mrz_p K_p Mzr_p  with
        K_p = Lambda (Lambda' Mzz_p Lambda + I)^{-1} Lambda'. The first sum and the products
        m_i m_j' of the rows of Mzr_p are fixed; one sparse product with the weights K_p[i, j]
        gives the second sum. Only the upper triangle of the symmetric r x r blocks is kept.
        With one random term (q = 1) the weights depend on p only through C_p[z, z] (the
        cluster size for a random intercept), so the clusters of a parent with equal C_p[z, z]
        are merged first (``_czz``, ``_mult``): a third fewer rows on typical therapy data.
        """
        q = self.q[0]
        C = self.stats.inner  # (G, q, d): the rows of C_p the innermost elimination needs
        r = self.d - q
        self._iu = np.triu_indices(r)
        i0, i1 = self._iu
        pos = np.empty((r, r), dtype=np.int64)  # index in the upper triangle of each entry
        pos[i0, i1] = np.arange(len(i0))
        pos[i1, i0] = np.arange(len(i0))
        self._unpack = pos.ravel()
        Mrr_sum = self.stats.parent_sums()[:, q:, q:]
        self._Mrr_sum = np.ascontiguousarray(Mrr_sum)
        self._Mrr_tri = np.ascontiguousarray(Mrr_sum[:, i0, i1])
        combos = [(i, j) for i in range(q) for j in range(i, q)]
        self._combos = combos
        G = C.shape[0]
        nc = len(combos)
        # rows of Mzr = C[:, :q, q:] (contiguous) at the row and column of each upper-triangle entry
        rows = [np.ascontiguousarray(C[:, i, q:]) for i in range(q)]
        if q == 1:  # C order: one row of products per (cluster, combo)
            O = np.take(rows[0], i0, axis=1)
            O *= np.take(rows[0], i1, axis=1)
        else:
            at0 = [np.take(m, i0, axis=1) for m in rows]
            at1 = [np.take(m, i1, axis=1) for m in rows]
            O = np.empty((G, nc, len(i0)))
            for c, (i, j) in enumerate(combos):
                if i == j:
                    np.multiply(at0[i], at1[i], out=O[:, c, :])
                else:
                    O[:, c, :] = at0[i] * at1[j] + at0[j] * at1[i]
        self._Mzz0 = C[:, :q, :q]
        starts = self.starts[0]
        if q == 1:
            # the weights depend on the cluster only through a = lambda^2 C_p[z, z] + 1: clusters
            # of one parent with equal C_p[z, z] (a random intercept: equal sizes) are merged,
            # their products summed; _czz and _mult hold each merged row's C_p[z, z] and count
            czz = C[:, 0, 0]
            parent = np.repeat(np.arange(len(starts)), np.diff(np.r_[starts, G]))
            order = np.lexsort((czz, parent))
            pk, ck = parent[order], czz[order]
            first = np.flatnonzero(np.r_[True, (pk[1:] != pk[:-1]) | (ck[1:] != ck[:-1])])
            R = len(first)
            merge = csr_matrix((np.ones(G), order, np.r_[first, G]), shape=(R, G))
            O = np.asarray(merge @ O)
            self._czz = ck[first]
            self._mult = np.diff(np.r_[first, G]).astype(float)
            starts = np.flatnonzero(np.r_[True, pk[first][1:] != pk[first][:-1]])
            G = R
        self._O = O.reshape(G * nc, -1)
        self._O_starts = starts  # the rows of _O (per combo) of each parent begin here
        bounds = np.r_[starts, G] * nc
        self._S = csr_matrix((np.ones(G * nc), np.arange(G * nc), bounds), shape=(len(starts), G * nc))

    def _innermost_fast(self, lam: np.ndarray) -> tuple[float, np.ndarray]:
        q = self.q[0]
        if q == 1:  # merged clusters (see _prepare_innermost)
            l2 = lam[0, 0] ** 2
            a = l2 * self._czz + 1.0
            logdet = float(self._mult @ np.log(a))
            w = (l2 / a)[:, None]
        else:
            A = _congruence(lam, self._Mzz0)
            A[:, np.arange(q), np.arange(q)] += 1.0
            Lc = _chol(A)
            logdet = 2.0 * float(np.log(np.diagonal(Lc, axis1=1, axis2=2)).sum())
            Linv_lamT = _forward(Lc, np.broadcast_to(lam.T, A.shape))
            K = np.matmul(Linv_lamT.transpose(0, 2, 1), Linv_lamT)
            w = np.stack([K[:, i, j] for i, j in self._combos], axis=1)
        self._S.data = w.ravel()
        tri = self._Mrr_tri - self._S @ self._O
        return logdet, self.unpack(tri)

    def _innermost_factors(self, lam: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """L_p and S_p = L_p^{-1} Lambda' Mzr_p of every innermost cluster (for the solution)."""
        q = self.q[0]
        inner = self.stats.inner
        if q == 1:  # L_p = sqrt(a_p), S_p = lambda m_p / sqrt(a_p)
            lam0 = float(lam[0, 0])
            sa = np.sqrt(lam0 * lam0 * inner[:, 0, 0] + 1.0)
            return sa[:, None, None], (lam0 / sa)[:, None, None] * inner[:, :1, 1:]
        A = _congruence(lam, np.ascontiguousarray(inner[:, :, :q]))
        A[:, np.arange(q), np.arange(q)] += 1.0
        Lc = _chol(A)
        return Lc, _forward(Lc, _lam_t_times(lam, np.ascontiguousarray(inner[:, :, q:])))

    def unpack(self, tri: np.ndarray) -> np.ndarray:
        """Symmetric (T, r, r) blocks from their upper triangles (T, r(r+1)/2), r = d - q_0."""
        r = self.d - self.q[0]
        return np.take(tri, self._unpack, axis=1).reshape(-1, r, r)

    # -- Lambda -----------------------------------------------------------------------
    def lambdas(self, theta: np.ndarray) -> list[np.ndarray]:
        return [lv.lambda_matrix(theta) for lv in self.design.levels]

    # -- one pass of block elimination -------------------------------------------------
    def _eliminate(self, theta: np.ndarray, keep: bool) -> tuple[float, np.ndarray, Factors | None]:
        lams = self.lambdas(theta)
        logdet = 0.0
        Ls: list[np.ndarray] = []
        Ss: list[np.ndarray] = []
        for l in range(self.D):
            if l == 0:
                ld, M = self._innermost_fast(lams[0])
                logdet += ld
                if keep:
                    Lc, S = self._innermost_factors(lams[0])
                    Ls.append(Lc)
                    Ss.append(S)
                continue
            ld, M, Lc, S = eliminate_level(lams[l], M, self.up[l], keep)
            logdet += ld
            if keep:
                Ls.append(Lc)
                Ss.append(S)
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

    def value_and_gradient(self, theta: np.ndarray, reml: bool = True) -> tuple[float, np.ndarray]:
        """The criterion and its exact gradient in theta (gradient.py, eqs. G1-G5)."""
        if self._gradient is None:
            from theralens.model.gradient import ProfiledGradient

            self._gradient = ProfiledGradient(self)
        return self._gradient(np.asarray(theta, dtype=float), reml)

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
            rhs = S[:, :, -1] - (_mm(S2[:, nz : nz + k], beta).reshape(S.shape[:2]) if k else 0.0)
            off = 0
            for m in range(l + 1, D):
                qm = self.q[m]
                rhs = rhs - np.einsum("gij,gj->gi", S[:, :, off : off + qm], b[m][self.anc[l][m]])
                off += qm
            u = _backward(Lc, rhs)
            u_sq += float((u * u).sum())
            b[l] = _mm(u, lams[l].T)
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
                Linv = _forward(Lc, np.broadcast_to(np.eye(q), Lc.shape))
                own = np.matmul(Linv.transpose(0, 2, 1), Linv)
            if l == D - 1:
                Sgg = chain_cov[l] = own
            else:
                nz = sum(self.q[l + 1 :])
                scale = _block_diag([lams[m] for m in range(l + 1, D)])
                St = _mm(np.ascontiguousarray(S[:, :, :nz]).reshape(G * q, nz), scale).reshape(G, q, nz)
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


BLAS_MNK = 131072  # OpenBLAS runs a matrix product in the calling thread below m n k = 262144
BLAS_MN = 8192  # and a matrix-vector product below m n = 9216


def _mm(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    """A @ B (A 2-D, B 2-D or 1-D) in pieces small enough for OpenBLAS to run each one in the
    calling thread.

    A product above OpenBLAS's threshold wakes its thread pool; on a machine whose cores are
    busy (parallel fits, other jobs) the caller then waits for descheduled threads, and a
    product of microseconds takes milliseconds. The pieces cost a few microseconds of overhead.
    """
    m, kk = A.shape
    n = 1 if B.ndim == 1 else B.shape[1]
    limit = BLAS_MN if n == 1 else BLAS_MNK
    if m * kk * n <= limit:
        return A @ B
    if kk * n <= limit // 4:  # split the rows
        rows = limit // (kk * n)
        out = np.empty((m,) + B.shape[1:])
        for i in range(0, m, rows):
            out[i : i + rows] = A[i : i + rows] @ B
        return out
    step = max(1, limit // max(m * n, 1))  # split the inner dimension
    out = A[:, :step] @ B[:step]
    for j in range(step, kk, step):
        out += A[:, j : j + step] @ B[j : j + step]
    return out


SMALL_Q = 8  # blocks up to this size use the column-by-column kernels below, larger ones LAPACK


def _chol(A: np.ndarray) -> np.ndarray:
    """Lower Cholesky factors of a stack (G, q, q), column by column over the whole stack.

    For small q this beats one LAPACK call per block several-fold. Raises LinAlgError when a
    block is not positive definite, as ``np.linalg.cholesky`` does.
    """
    q = A.shape[1]
    if q > SMALL_Q:
        return np.linalg.cholesky(A)
    L = np.zeros(A.shape)
    for j in range(q):
        d = A[:, j, j].copy()
        for m in range(j):
            d -= L[:, j, m] * L[:, j, m]
        if not np.all(d > 0):
            raise np.linalg.LinAlgError("matrix is not positive definite")
        ljj = np.sqrt(d)
        L[:, j, j] = ljj
        inv = 1.0 / ljj
        for i in range(j + 1, q):
            acc = A[:, i, j].copy()
            for m in range(j):
                acc -= L[:, i, m] * L[:, j, m]
            L[:, i, j] = acc * inv
    return L


def _forward(L: np.ndarray, B: np.ndarray) -> np.ndarray:
    """Solve L X = B for a stack of lower-triangular L (G, q, q); B is (G, q, r) or (G, q)."""
    vec = B.ndim == 2
    if vec:
        B = B[:, :, None]
    q = L.shape[1]
    if q == 1:
        X = B / L
    elif q > SMALL_Q:
        X = np.linalg.solve(L, B)
    else:
        X = np.empty(np.broadcast_shapes(B.shape, L.shape[:2] + B.shape[2:]))
        for i in range(q):
            acc = np.array(B[:, i, :])
            for m in range(i):
                acc -= L[:, i, m, None] * X[:, m, :]
            X[:, i, :] = acc / L[:, i, i, None]
    return X[:, :, 0] if vec else X


def _backward(L: np.ndarray, B: np.ndarray) -> np.ndarray:
    """Solve L' X = B for a stack of lower-triangular L (G, q, q); B is (G, q, r) or (G, q)."""
    vec = B.ndim == 2
    if vec:
        B = B[:, :, None]
    q = L.shape[1]
    if q == 1:
        X = B / L
    elif q > SMALL_Q:
        X = np.linalg.solve(L.transpose(0, 2, 1), B)
    else:
        X = np.empty(np.broadcast_shapes(B.shape, L.shape[:2] + B.shape[2:]))
        for i in reversed(range(q)):
            acc = np.array(B[:, i, :])
            for m in range(i + 1, q):
                acc -= L[:, m, i, None] * X[:, m, :]
            X[:, i, :] = acc / L[:, i, i, None]
    return X[:, :, 0] if vec else X


def _congruence(lam: np.ndarray, M: np.ndarray) -> np.ndarray:
    """Lambda' M_g Lambda for a stack of symmetric M (G, q, q), as two matrix products."""
    G, q = M.shape[0], lam.shape[0]
    Y = _mm(M.reshape(G * q, q), lam).reshape(G, q, q)  # M_g Lambda
    return _mm(Y.transpose(0, 2, 1).reshape(G * q, q), lam).reshape(G, q, q)  # (M_g Lambda)' Lambda


def _lam_t_times(lam: np.ndarray, X: np.ndarray) -> np.ndarray:
    """Lambda' X_g for a stack X (G, q, r), as one matrix product (a (G, q, r) view)."""
    G, q, r = X.shape
    return _mm(X.transpose(0, 2, 1).reshape(G * r, q), lam).reshape(G, r, q).transpose(0, 2, 1)


def eliminate_level(
    lam: np.ndarray, M: np.ndarray, up: csr_matrix | None, keep: bool = True
) -> tuple[float, np.ndarray, np.ndarray | None, np.ndarray | None]:
    """One step of the block elimination (engine.md): for every group g of the level,

        A_g = Lambda' Mzz_g Lambda + I = L_g L_g',   S_g = L_g^{-1} Lambda' Mzr_g,

    and the next level's M = sum over the children of (Mrr_g - S_g' S_g) (``up`` sums groups
    into parents; None at the top, where everything sums into one block).
    Returns log det of the A_g summed, the next M, and L and S when ``keep``.
    """
    q = lam.shape[0]
    G = M.shape[0]
    r = M.shape[1] - q
    Mzr = M[:, :q, q:]
    Mrr = M[:, q:, q:]
    if q == 1:
        l0 = lam[0, 0]
        a = l0 * l0 * M[:, 0, 0] + 1.0
        logdet = float(np.log(a).sum())
        sq = np.sqrt(a)
        S = ((l0 / sq)[:, None] * Mzr[:, 0, :])[:, None, :]
        Lc = sq[:, None, None]
    else:
        A = _congruence(lam, M[:, :q, :q])
        A[:, np.arange(q), np.arange(q)] += 1.0
        Lc = _chol(A)
        logdet = 2.0 * float(np.log(np.diagonal(Lc, axis1=1, axis2=2)).sum())
        S = _forward(Lc, _lam_t_times(lam, Mzr))
    if up is None:
        s2 = S.reshape(G * q, r)
        nxt = (Mrr.sum(0) - _mm(s2.T, s2))[None]
    else:
        red = Mrr - np.matmul(S.transpose(0, 2, 1), S)
        nxt = np.asarray(up @ red.reshape(G, r * r)).reshape(-1, r, r)
    return (logdet, nxt, Lc, S) if keep else (logdet, nxt, None, None)


def _segment_matrix(starts: np.ndarray, n: int) -> csr_matrix:
    """Sparse 0/1 matrix that sums contiguous segments (beginning at ``starts``) of n rows."""
    return csr_matrix((np.ones(n), np.arange(n), np.r_[starts, n]), shape=(len(starts), n))


def _block_diag(blocks: list[np.ndarray]) -> np.ndarray:
    n = sum(b.shape[0] for b in blocks)
    out = np.zeros((n, n))
    off = 0
    for b in blocks:
        q = b.shape[0]
        out[off : off + q, off : off + q] = b
        off += q
    return out
