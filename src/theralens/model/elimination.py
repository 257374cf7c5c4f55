"""The block elimination of a nested model: one implementation of its value, its reverse-mode
gradient, the factors of the conditional modes, and a batch of points at once.

For nested random effects with residual covariance sigma^2 I the penalized least-squares
system of lme4 (Bates et al. 2015, JSS 67(1), eqs. 10-36) is eliminated level by level, a block
Cholesky that follows the nesting tree (engine.md). Level l turns the statistics M_g (d x d,
rows [z_l | rest]) of its groups g into the statistics of their parents,

    A_g = Lambda' Mzz_g Lambda + I,   H_g = A_g^{-1} Lambda' Mzr_g,
    M_parent = sum_{g in parent} (Mrr_g - (Lambda' Mzr_g)' H_g),   logdet += sum_g log|A_g|,

and at the top the (k+1) x (k+1) block [X'X X'y; y'X y'y] left gives R_X, beta and r2
(:func:`finish`; eqs. 34 and 42 of Bates et al. 2015). The innermost level reads its rows of
the sufficient statistics (:class:`~theralens.model.stats.SufficientStats`: Mzz_p and Mzr_p per
patient, Mrr summed per parent); the levels above read what the level below left.

The gradient is this computation differentiated in reverse (adjoint) order. With Psi_h = dF / dM_h
the sensitivity of the criterion F to the statistics of a parent h (symmetric,
<Psi, dM> = sum_ij Psi_ij dM_ij):

(G1) top: Psi = (dof / r2) v v' + [REML] blockdiag((X'X - ...)^{-1}, 0),  v = [-beta; 1],
     dof = n - k (REML) or n (ML): d log r2 = v' dM v / r2 and d log|R_X|^2 = <(R_X R_X')^{-1}, dM_XX>
     (:mod:`theralens.model.gradient`).
(G2) with B_g = A_g^{-1} + H_g Psi_h H_g' (h the parent of g),

         dF / dLambda_l = 2 sum_g (Mzz_g Lambda B_g - Mzr_g Psi_h H_g'),

     from d log|A_g| = 2 tr(A_g^{-1} Lambda' Mzz_g dLambda) and
     d(Mrz K Mzr) = R' dLambda H + H' dLambda' R,  R = Mzr - Mzz Lambda H,  K = Lambda A^{-1} Lambda'.
(G3) the sensitivity to a group's own statistics, handed down to its children
     (d log|A| = <K, dMzz>, dK = -K dMzz K):

         Psi_g = [[Lambda B_g Lambda', -Lambda H_g Psi_h], [-Psi_h H_g' Lambda', Psi_h]].

(G4) theta_m is the entry (i, j) of Lambda_l: dF / dtheta_m = (dF / dLambda_l)[i, j].
(G5) one random term per innermost cluster (q_1 = 1, the common case; a_p = lambda^2 C_p[z, z] + 1,
     m_p = C_p[z, rest]): M_parent = sum_p Mrr_p - lambda^2 Q1, Q1 = sum_p m_p' m_p / a_p, and (G2)
     collapses to

         dF / dlambda = 2 lambda sum_p C_p[z, z] / a_p - 2 lambda sum_h < Psi_h, Q2_h >,
         Q2_h = sum_{p in h} m_p' m_p / a_p^2,

     weighted sums of the constant products m_p' m_p; the weights depend on p only through
     C_p[z, z] (the cluster size for a random intercept), so the clusters of a parent with equal
     C_p[z, z] are merged first (a third fewer rows on typical therapy data).

The conditional modes use the factors L_g = chol(A_g) and S_g = L_g' H_g = L_g^{-1} Lambda' Mzr_g
(:meth:`Elimination.factors`). A batch of theta points (the Satterthwaite differences of the
power simulations) runs the same level step with a leading axis over the points
(:meth:`Elimination.batch`: one grouping factor, or two with the closed-form innermost level,
which then runs once per distinct lambda). Blocks are batched numpy arrays (#groups, q, q); for small q,
column-by-column kernels over the whole stack (:func:`chol_stack`, :func:`solve_lower`,
:func:`solve_upper`) and cofactor inverses (:func:`spd_inverse`) beat one LAPACK call per block.
Dense products go through :func:`mm`, which keeps each BLAS call below OpenBLAS's threading
threshold.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any, NamedTuple

import numpy as np
from scipy.sparse import csr_matrix

from theralens.model.stats import SufficientStats

__all__ = ["Elimination", "Forward", "Profile", "chol_stack", "congruence", "finish", "lam_t_times", "mm",
           "solve_lower", "solve_upper", "spd_inverse"]


@dataclass
class Profile:
    """Pieces of the profiled criterion at one theta."""

    logdet: float  # log |L_theta|^2 = log det(Lambda' Z'Z Lambda + I)
    RX: np.ndarray  # lower Cholesky factor of the Schur complement on X
    z: np.ndarray  # RX^{-1} (X'y - ...)
    r2: float  # penalized residual sum of squares


def finish(logdet: float, top: np.ndarray, k: int) -> Profile:
    """R_X, z and r2 from the top block left by the elimination (Bates et al. 2015, eq. 34)."""
    if k:
        RX = np.linalg.cholesky(top[:k, :k])
        z = np.linalg.solve(RX, top[:k, k])
        r2 = float(top[k, k] - z @ z)
    else:
        RX = np.zeros((0, 0))
        z = np.zeros(0)
        r2 = float(top[0, 0])
    return Profile(logdet=logdet, RX=RX, z=z, r2=r2)


class Forward(NamedTuple):
    """One forward pass: ``logdet`` and the ``top`` block, and what the backward pass and the
    factors need: per level its cache (None for the closed-form innermost level, G5), the
    Lambdas, and for G5 the weights 1/a_p (``ia``) and the Q2_h upper triangles (``q2``)."""

    logdet: float
    top: np.ndarray
    caches: list[Any]
    lams: list[np.ndarray]
    ia: np.ndarray
    q2: np.ndarray


class Elimination:
    """The block elimination (module docstring) of one :class:`SufficientStats`.

    Built once per criterion (the constant products of the innermost level are formed here);
    :meth:`forward` evaluates, :meth:`backward` differentiates, :meth:`factors` gives the
    factors of the conditional modes, :meth:`batch` evaluates many points. ``fast`` selects the
    closed form (G5) for the innermost level when it has a single random term; ``fast=False``
    runs the general level step there too (used to test one against the other).
    """

    def __init__(self, stats: SufficientStats, fast: bool = True) -> None:
        self.stats = stats
        D = stats.D
        self.D = D
        self.q = stats.q
        self.k = stats.k
        self.d = stats.d
        self.ntheta = stats.ntheta
        # theta <-> Lambda_l entries: (rows, cols, theta index) of each level's nonzero entries (G4)
        self.fills = []
        for lv in stats.levels:
            marks = lv.lambda_matrix(np.arange(1.0, self.ntheta + 1.0))
            rows, cols = np.nonzero(marks)
            self.fills.append((rows, cols, marks[rows, cols].astype(np.int64) - 1))
        # children of each parent, contiguous: where they start and how many there are
        self.starts: list[np.ndarray | None] = [np.flatnonzero(np.r_[True, np.diff(par) != 0])
                                                for par in stats.parents] + [None]
        self.counts = [np.diff(np.r_[self.starts[l], stats.levels[l].ngroups]) for l in range(D - 1)]
        q0 = self.q[0]
        r = self.d - q0
        i0, i1 = np.triu_indices(r)
        pos = np.empty((r, r), dtype=np.int64)  # index in the upper triangle of each entry
        pos[i0, i1] = np.arange(len(i0))
        pos[i1, i0] = np.arange(len(i0))
        self._unpack = pos.ravel()
        inner = stats.inner
        Mrr = stats.parent_sums()[:, q0:, q0:]
        self._Mrr = Mrr[0] if D == 1 else Mrr
        self.fast = bool(fast and q0 == 1)
        if self.fast:
            self._prepare_fast(inner, np.ascontiguousarray(Mrr[:, i0, i1]), i0, i1)

    @cached_property
    def _inner_blocks(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The innermost level's blocks for the general level step, made when first needed: with the
        closed form (G5) only a single grouping factor's batch uses them, and for 12.5 million
        patients the copy is 1.3 GB per model."""
        inner, q0 = self.stats.inner, self.q[0]
        return (np.ascontiguousarray(inner[:, :, :q0]), np.ascontiguousarray(inner[:, :, q0:].transpose(0, 2, 1)),
                self._Mrr)

    def _prepare_fast(self, inner: np.ndarray, Mrr_tri: np.ndarray, i0: np.ndarray, i1: np.ndarray) -> None:
        """The constant products of (G5): m_p' m_p (upper triangles) of the clusters, merged
        within each parent when their C_p[z, z] are equal, and one sparse matrix that sums them
        per parent with the weights 1/a_p and 1/a_p^2."""
        m = np.ascontiguousarray(inner[:, 0, 1:])
        G = m.shape[0]
        starts = self.starts[0] if self.D > 1 else np.array([0])
        czz = inner[:, 0, 0]
        parent = np.repeat(np.arange(len(starts)), np.diff(np.r_[starts, G]))
        order = np.lexsort((czz, parent))
        pk, ck = parent[order], czz[order]
        first = np.flatnonzero(np.r_[True, (pk[1:] != pk[:-1]) | (ck[1:] != ck[:-1])])
        R = len(first)
        merge = csr_matrix((np.ones(G), order, np.r_[first, G]), shape=(R, G))
        self._O = _merged_products(m, merge.tocsc(), len(i0))
        self._czz = ck[first]
        self._mult = np.diff(np.r_[first, G]).astype(float)
        self._mult_czz = self._mult * self._czz
        pstarts = np.flatnonzero(np.r_[True, pk[first][1:] != pk[first][:-1]])
        self._T = T = len(pstarts)
        ptr = np.r_[pstarts, R]
        self._agg = csr_matrix((np.ones(2 * R), np.tile(np.arange(R), 2), np.r_[ptr[:-1], ptr + R]), shape=(2 * T, R))
        self._agg1 = csr_matrix((np.ones(R), np.arange(R), ptr), shape=(T, R))
        self._Mrr_tri = Mrr_tri
        # <Psi_h, Q2_h> from Q2's upper triangle: positions of those entries in Psi_h, and weight 2
        # off the diagonal; the blocks of the parents' statistics, read off their upper triangles
        r = self.d - 1
        self._tri_pos = i0 * r + i1
        self._tri_w = np.where(i0 == i1, 1.0, 2.0)
        if self.D > 1:
            q1 = self.q[1]
            pos = self._unpack.reshape(r, r)
            self._take = (pos[:q1, :q1].ravel(), pos[q1:, :q1].ravel(), pos[q1:, q1:].ravel())

    def unpack(self, tri: np.ndarray) -> np.ndarray:
        """Symmetric (T, r, r) blocks from their upper triangles (T, r(r+1)/2), r = d - q_1."""
        r = self.d - self.q[0]
        return np.take(tri, self._unpack, axis=1).reshape(-1, r, r)

    def lambdas(self, theta: np.ndarray) -> list[np.ndarray]:
        """Lambda_l of every level at ``theta`` (a (T, ntheta) batch gives (T, q, q) each)."""
        theta = np.asarray(theta, dtype=float)
        out = []
        for q, (rows, cols, idx) in zip(self.q, self.fills):
            lam = np.zeros(theta.shape[:-1] + (q, q))
            lam[..., rows, cols] = theta[..., idx]
            out.append(lam)
        return out

    # -- the forward pass ---------------------------------------------------------------------
    def forward(self, theta: np.ndarray, gradient: bool = False) -> Forward:
        """The elimination at ``theta``: log-determinant and top block (and, with ``gradient``,
        what :meth:`backward` needs of the closed-form innermost level)."""
        D = self.D
        lams = self.lambdas(theta)
        caches: list[Any] = []
        logdet = 0.0
        ia = q2 = np.empty(0)
        M: np.ndarray | None = None
        if self.fast:  # (G5): the innermost level from the constant products m_p' m_p
            ld0, ia, q2, Mtri = self._fast_inner(float(lams[0][0, 0]), gradient)
            logdet += ld0
            caches.append(None)
            if D == 1:
                M = self.unpack(Mtri)
        for l in range(len(caches), D):
            if l == 0:  # the general level step at the innermost level
                blocks = self._inner_blocks
            elif M is None:  # the parents of the fast innermost level: their blocks from Mtri
                blocks = self._parent_blocks(Mtri)
            else:
                blocks = _blocks(M, self.q[l], self.starts[l])
            ld, M, cache = _forward_level(lams[l], *blocks, self.starts[l])
            logdet += float(ld)
            caches.append(cache)
        assert M is not None
        return Forward(logdet=logdet, top=M[0], caches=caches, lams=lams, ia=ia, q2=q2)

    def _fast_inner(self, lam0: float, gradient: bool) -> tuple[float, np.ndarray, np.ndarray, np.ndarray]:
        """The closed-form innermost level (G5) at lambda = ``lam0``: its log-determinant, the weights
        1/a_p, the Q2_h upper triangles (with ``gradient``; else empty) and the parents' statistics
        Mrr_h - lambda^2 Q1_h (upper triangles, (T, r(r+1)/2))."""
        a = lam0 * lam0 * self._czz + 1.0
        logdet = float(self._mult @ np.log(a))
        ia = 1.0 / a
        q2 = np.empty(0)
        if gradient:
            self._agg.data = np.concatenate([ia, ia * ia])
            tri = self._agg @ self._O
            q2 = tri[self._T :]  # sum_p m_p' m_p / a_p^2 per parent (upper triangles)
        else:
            self._agg1.data = ia
            tri = self._agg1 @ self._O
        return logdet, ia, q2, self._Mrr_tri - (lam0 * lam0) * tri[: self._T]

    def _parent_blocks(self, Mtri: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The blocks that :func:`_forward_level` takes (as :func:`_blocks` gives them) of the parents of
        the closed-form innermost level, from their statistics' upper triangles ``Mtri``."""
        q1, T = self.q[1], self._T
        tzz, trz, trr = self._take
        r1 = len(trz) // q1
        return (np.take(Mtri, tzz, axis=1).reshape(T, q1, q1), np.take(Mtri, trz, axis=1).reshape(T, r1, q1),
                np.take(Mtri.sum(0), trr).reshape(r1, r1) if self.D == 2
                else np.add.reduceat(np.take(Mtri, trr, axis=1).reshape(T, r1, r1), self.starts[1], axis=0))

    # -- the backward pass ----------------------------------------------------------------------
    def backward(self, fw: Forward, top_psi: np.ndarray) -> np.ndarray:
        """dF / dtheta from a forward pass (run with ``gradient=True``) and the top's sensitivity
        dF / dM_top (G1), level by level (G2-G5)."""
        grad = np.zeros(self.ntheta)
        Psi: np.ndarray | tuple[np.ndarray, np.ndarray, np.ndarray] = top_psi
        for l in reversed(range(self.D)):
            rows, cols, idx = self.fills[l]
            cache = fw.caches[l]
            if cache is None:  # (G5)
                Q2tri = fw.q2
                if isinstance(Psi, tuple):  # <Psi_h, Q2_h> block by block (off-diagonal twice)
                    zz, rz, Prr = Psi
                    tzz, trz, trr = self._take
                    T = Q2tri.shape[0]
                    nq2 = (float((zz.reshape(T, -1) * np.take(Q2tri, tzz, axis=1)).sum())
                           + 2.0 * float((rz.reshape(T, -1) * np.take(Q2tri, trz, axis=1)).sum())
                           + (float((Prr * np.take(Q2tri.sum(0), trr).reshape(Prr.shape)).sum()) if Prr.ndim == 2
                              else float((Prr.reshape(T, -1) * np.take(Q2tri, trr, axis=1)).sum())))
                else:  # the top itself, from the upper triangles
                    nq2 = float((np.take(Psi.reshape(-1), self._tri_pos) * self._tri_w * Q2tri[0]).sum())
                lam0 = float(fw.lams[0][0, 0])
                grad[idx] = 2.0 * lam0 * (float(self._mult_czz @ fw.ia) - nq2)
                continue
            if isinstance(Psi, tuple):
                Psi = _assemble(*Psi)
            if Psi.ndim == 3:  # the parent's Psi for every group
                Psi = np.repeat(Psi, self.counts[l], axis=0)
            gL, nxt = _backward_level(cache, Psi, children=l > 0)
            grad[idx] = gL[rows, cols]
            if nxt is not None:
                Psi = nxt
        return grad

    # -- factors of the conditional modes ---------------------------------------------------------
    def factors(self, fw: Forward) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """L_g = chol(A_g) and S_g = L_g' H_g = L_g^{-1} Lambda' Mzr_g of every level's groups, from
        a forward pass (the closed-form innermost level: from the statistics' rows)."""
        Ls: list[np.ndarray] = []
        Ss: list[np.ndarray] = []
        for cache in fw.caches:
            if cache is None:  # q_1 = 1: L_p = sqrt(a_p), S_p = lambda m_p / sqrt(a_p), per patient
                lam0 = float(fw.lams[0][0, 0])
                inner = self.stats.inner
                sa = np.sqrt(lam0 * lam0 * inner[:, 0, 0] + 1.0)
                Ls.append(sa[:, None, None])
                Ss.append((lam0 / sa)[:, None, None] * inner[:, :1, 1:])
                continue
            if cache.A.shape[1] == 1:
                Lc = np.sqrt(cache.A)
                S = Lc * cache.H
            else:
                Lc = chol_stack(cache.A)
                S = np.matmul(Lc.transpose(0, 2, 1), cache.H)
            Ls.append(Lc)
            Ss.append(S)
        return Ls, Ss

    # -- many points at once ----------------------------------------------------------------------
    def batch(self, thetas: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        """Log-determinants (T,) and top blocks (T, r, r) at every row of ``thetas``: the level steps
        with a leading axis over the points. For one grouping factor, and for two nested levels whose
        innermost one has the closed form (G5: one random term per cluster, e.g. a patient intercept
        in therapists); None otherwise. Raises LinAlgError when a point is not positive definite.

        Nested: the innermost level depends on a point only through its lambda (the Satterthwaite
        differences of a fit have 2 x 4 + 1 distinct ones), so it runs once per distinct lambda, as
        :meth:`forward` runs it, and the parents' level step (the top) runs with the axis over the
        points that share that lambda."""
        lams = self.lambdas(thetas)
        if self.D == 1:
            logdet, top, _ = _forward_level(lams[0], *self._inner_blocks, None)
            return np.asarray(logdet), top
        if not (self.fast and self.D == 2):
            return None
        T = lams[0].shape[0]
        r = self.d - self.q[0] - self.q[1]
        logdet, top = np.empty(T), np.empty((T, r, r))
        lam0 = lams[0][:, 0, 0]
        values, which = np.unique(lam0, return_inverse=True)
        order = np.argsort(which, kind="stable")
        bounds = np.r_[0, np.cumsum(np.bincount(which, minlength=len(values)))]
        for u, value in enumerate(values):
            sel = order[bounds[u] : bounds[u + 1]]
            ld0, _, _, Mtri = self._fast_inner(float(value), False)
            ld1, top[sel], _ = _forward_level(lams[1][sel], *self._parent_blocks(Mtri), None)
            logdet[sel] = ld0 + ld1
        return logdet, top


BLAS_MNK = 131072  # OpenBLAS runs a matrix product in the calling thread below m n k = 262144
BLAS_MN = 8192  # and a matrix-vector product below m n = 9216


def _merged_products(m: np.ndarray, merge: Any, width: int, chunk: int = 65536) -> np.ndarray:
    """``merge @ O`` for O = the upper triangles of m_p' m_p, row by row of ``m`` (np.triu_indices
    order), without forming O for all clusters at once: per chunk of clusters, one product per row
    of the triangle (contiguous column ranges) and the chunk's columns of ``merge`` (CSC)."""
    G, r = m.shape
    out = np.zeros((merge.shape[0], width))
    for c0 in range(0, G, chunk):
        c1 = min(G, c0 + chunk)
        mc = m[c0:c1]
        O = np.empty((c1 - c0, width))
        at = 0
        for i in range(r):
            np.multiply(mc[:, i, None], mc[:, i:], out=O[:, at : at + r - i])
            at += r - i
        out += merge[:, c0:c1] @ O
    return out


def mm(A: np.ndarray, B: np.ndarray) -> np.ndarray:
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


def chol_stack(A: np.ndarray) -> np.ndarray:
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


def solve_lower(L: np.ndarray, B: np.ndarray) -> np.ndarray:
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


def solve_upper(L: np.ndarray, B: np.ndarray) -> np.ndarray:
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


def congruence(lam: np.ndarray, M: np.ndarray) -> np.ndarray:
    """Lambda' M_g Lambda for a stack of symmetric M (G, q, q), as two matrix products."""
    G, q = M.shape[0], lam.shape[0]
    Y = mm(M.reshape(G * q, q), lam).reshape(G, q, q)  # M_g Lambda
    return mm(Y.transpose(0, 2, 1).reshape(G * q, q), lam).reshape(G, q, q)  # (M_g Lambda)' Lambda


def lam_t_times(lam: np.ndarray, X: np.ndarray) -> np.ndarray:
    """Lambda' X_g for a stack X (G, q, r), as one matrix product (a (G, q, r) view)."""
    G, q, r = X.shape
    return mm(X.transpose(0, 2, 1).reshape(G * r, q), lam).reshape(G, r, q).transpose(0, 2, 1)




class _LevelCache(NamedTuple):
    """What the backward pass (G2, G3) needs of one level's forward elimination."""

    lam: np.ndarray  # Lambda_l (q x q)
    LtMzz: np.ndarray  # (G, q, q): Lambda' Mzz_g, contiguous
    Mrz: np.ndarray  # (G, r, q), Mzr transposed, contiguous
    A: np.ndarray  # (G, q, q): A_g = Lambda' Mzz_g Lambda + I
    Ainv: np.ndarray  # (G, q, q): A_g^{-1}
    H: np.ndarray  # (G, q, r): A_g^{-1} Lambda' Mzr_g


def _blocks(M: np.ndarray, q: int, starts: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The blocks of statistics M (G, d, d) that ``_forward_level`` takes: Mzz and Mrz
    (contiguous) and Mrr summed over the children of each parent (beginning at ``starts``;
    None: over all groups, the top)."""
    Mrr = M.sum(0)[q:, q:] if starts is None else np.add.reduceat(M[:, q:, q:], starts, axis=0)
    return np.ascontiguousarray(M[:, :q, :q]), np.ascontiguousarray(M[:, q:, :q]), Mrr


def _forward_level(lam: np.ndarray, Mzz: np.ndarray, Mrz: np.ndarray, Mrr: np.ndarray,
                   starts: np.ndarray | None) -> tuple[float | np.ndarray, np.ndarray, _LevelCache | None]:
    """Eliminate one level (engine.md): for every group g,

        A_g = Lambda' Mzz_g Lambda + I,   H_g = A_g^{-1} Lambda' Mzr_g,
        M_parent = Mrr_parent - sum_{g in parent} (Lambda' Mzr_g)' H_g,

    and log det of the A_g summed. ``Mrr`` is already summed per parent (contiguous children
    beginning at ``starts``; None: all into one block, the top, where ``Mrr`` is (r, r)). Blocks as
    ``_blocks`` gives them. Returns the log-determinant, the parents' statistics and the cache of
    the backward pass and the factors.

    A batch of T points (``lam`` of shape (T, q, q), the top only) gives T log-determinants and
    T top blocks (T, r, r), and no cache.
    """
    if lam.ndim == 3:
        return _forward_batch(lam, Mzz, Mrz, Mrr)
    G, r, q = Mrz.shape
    if q == 1:
        l0 = float(lam[0, 0])
        a = l0 * l0 * Mzz[:, 0, 0] + 1.0
        logdet = float(np.log(a).sum())
        A = a[:, None, None]
        Ainv = (1.0 / a)[:, None, None]
        LtMzz = l0 * Mzz
        LtMzr = l0 * Mrz.transpose(0, 2, 1)  # (G, 1, r)
        H = Ainv * LtMzr
    else:
        LtMzz = np.ascontiguousarray(mm(Mzz.reshape(G * q, q), lam).reshape(G, q, q).transpose(0, 2, 1))
        A = mm(LtMzz.reshape(G * q, q), lam).reshape(G, q, q)  # Lambda' Mzz Lambda
        A.reshape(G, q * q)[:, :: q + 1] += 1.0
        Ainv, logdet = spd_inverse(A)
        LtMzr = lam_t_times(lam, Mrz.transpose(0, 2, 1))
        H = np.matmul(Ainv, LtMzr)
    if starts is None:  # the top: everything sums into one block
        nxt = (Mrr - mm(LtMzr.reshape(G * q, r).T, H.reshape(G * q, r)))[None]
    else:
        if q == 1:
            red = LtMzr[:, 0, :, None] * H[:, 0, None, :]
        else:
            red = np.matmul(LtMzr.transpose(0, 2, 1), H)
        nxt = Mrr - np.add.reduceat(red, starts, axis=0)
    return logdet, nxt, _LevelCache(lam=lam, LtMzz=LtMzz, Mrz=Mrz, A=A, Ainv=Ainv, H=H)


def _forward_batch(lam: np.ndarray, Mzz: np.ndarray, Mrz: np.ndarray, Mrr: np.ndarray
                   ) -> tuple[np.ndarray, np.ndarray, None]:
    """:func:`_forward_level` at the top for T points at once (``lam`` (T, q, q)): the same
    A_g = Lambda' Mzz_g Lambda + I, its inverse, H_g = A_g^{-1} Lambda' Mzr_g and Schur complement
    Mrr - sum_g (Lambda' Mzr_g)' H_g, for all (point, group) pairs at once and entry by entry
    (q is small): the entries of every A_g are one product of (Lambda kron Lambda)' with vec(Mzz_g),
    the inverses are cofactors on contiguous entries, H_g is q^2 products of (point, group, r)
    arrays, and the sum over groups one product per point."""
    T, q = lam.shape[0], lam.shape[1]
    G, r = Mrz.shape[0], Mrz.shape[1]
    qq = q * q
    outer = lam[:, :, :, None, None] * lam[:, None, None, :, :]  # [t, b, a, c, d] = lam_ba lam_cd
    kron = outer.transpose(0, 2, 4, 1, 3).reshape(T * qq, qq)  # rows (t, a, d), columns (b, c)
    A = (kron @ Mzz.reshape(G, qq).T).reshape(T, qq, G)  # [t, (a, d), g]
    A[:, :: q + 1, :] += 1.0
    E = np.ascontiguousarray(A.transpose(1, 0, 2)).reshape(qq, T * G)  # entry by entry
    inv, logdets = spd_inverse(E, per_block=True, entries_first=True)
    inv = inv.reshape(q, q, T * G)
    # Lambda' Mzr_g as (q, r, point x group): the long axis innermost for the entry-wise products
    X = lam.transpose(2, 0, 1).reshape(q * T, q) @ Mrz.transpose(2, 1, 0).reshape(q, r * G)  # [(a, t), (u, g)]
    LtMzr = np.ascontiguousarray(X.reshape(q, T, r, G).transpose(0, 2, 1, 3)).reshape(q, r, T * G)
    H = np.empty((q, r, T * G))
    for i in range(q):
        np.multiply(inv[i, 0], LtMzr[0], out=H[i])
        for j in range(1, q):
            H[i] += inv[i, j] * LtMzr[j]
    # sum over the groups of every point: (Lambda' Mzr)' H, one (r x G) (G x r) product per point and row
    L4, H4 = LtMzr.reshape(q, r, T, G), H.reshape(q, r, T, G)
    top = np.broadcast_to(Mrr, (T, r, r)).copy()
    for a in range(q):
        top -= np.matmul(L4[a].transpose(1, 0, 2), H4[a].transpose(1, 2, 0))
    return logdets.reshape(T, G).sum(axis=1), top, None


def _cofactor_indices(q: int) -> tuple[np.ndarray, ...]:
    """Flat indices (i1, i2, i3, i4) with cofactor_ij = A[i1] A[i2] - A[i3] A[i4] (q = 3), entry by
    entry of the flattened q x q matrix, the sign of (-1)^(i+j) folded into the order."""
    idx: list[list[int]] = [[], [], [], []]
    for i in range(q):
        for j in range(q):
            r1, r2 = (m for m in range(q) if m != i)
            c1, c2 = (m for m in range(q) if m != j)
            first, second = (r1 * q + c1, r2 * q + c2), (r1 * q + c2, r2 * q + c1)
            if (i + j) % 2:
                first, second = second, first
            for lst, v in zip(idx, (*first, *second)):
                lst.append(v)
    return tuple(np.array(v) for v in idx)


_COF3 = _cofactor_indices(3)
_ADJ2, _SGN2 = np.array([3, 1, 2, 0]), np.array([1.0, -1.0, -1.0, 1.0])


def spd_inverse(A: np.ndarray, per_block: bool = False, entries_first: bool = False) -> tuple[np.ndarray, Any]:
    """Inverses of a stack of symmetric positive definite A (G, q, q) and sum_g log|A_g| (with
    ``per_block``: every log|A_g|). With ``entries_first`` the stack is given entry by entry,
    (q * q, G) (each entry of every block contiguous), and the inverses are returned so.

    For q = 2 and 3 by cofactors (adjugate over determinant), a few operations on all blocks at
    once (A = Lambda' Mzz Lambda + I has all eigenvalues >= 1, so this is as accurate as through
    Cholesky); otherwise through the Cholesky factors. Raises LinAlgError when a block is not
    positive definite (its leading minors are not all positive).
    """
    if entries_first:
        q = int(round(np.sqrt(A.shape[0])))
        E = A
        G = A.shape[1]
    else:
        G, q = A.shape[0], A.shape[1]
        E = A.reshape(G, q * q).T
    if q == 1:
        a = E[0]
        if not a.min() > 0:
            raise np.linalg.LinAlgError("matrix is not positive definite")
        inv = 1.0 / a
        logs = np.log(a)
        out = inv[None] if entries_first else inv[:, None, None]
        return out, logs if per_block else float(logs.sum())
    if q > 3:
        blocks = np.ascontiguousarray(E.T).reshape(G, q, q)
        Lc = chol_stack(blocks)
        Linv = solve_lower(Lc, np.broadcast_to(np.eye(q), Lc.shape))
        logs = 2.0 * np.log(np.diagonal(Lc, axis1=1, axis2=2)).sum(axis=1)
        inv = np.matmul(Linv.transpose(0, 2, 1), Linv)
        out = np.ascontiguousarray(inv.reshape(G, q * q).T) if entries_first else inv
        return out, logs if per_block else float(logs.sum())
    adj = np.empty((q * q, G))
    if q == 2:
        for m in range(4):  # row by row: each entry of every block is contiguous (or one strided view)
            np.multiply(E[_ADJ2[m]], _SGN2[m], out=adj[m])
        det = E[0] * E[3] - E[1] * E[2]
        minor = det
    else:
        i1, i2, i3, i4 = _COF3
        for m in range(9):
            np.subtract(E[i1[m]] * E[i2[m]], E[i3[m]] * E[i4[m]], out=adj[m])
        det = E[0] * adj[0] + E[1] * adj[1] + E[2] * adj[2]  # along the first row
        minor = adj[8]  # the leading 2 x 2 minor
    if not (E[0].min() > 0 and minor.min() > 0 and det.min() > 0):  # NaN fails too
        raise np.linalg.LinAlgError("matrix is not positive definite")
    inv = adj / det
    out = inv if entries_first else np.ascontiguousarray(inv.T).reshape(G, q, q)
    return out, np.log(det) if per_block else float(np.log(det).sum())


def _backward_level(c: _LevelCache, Psi: np.ndarray, children: bool
                    ) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray, np.ndarray] | None]:
    """dF / dLambda_l (G2) and, when ``children``, the blocks of every group's Psi_g (G3):
    Lambda B_g Lambda' (G, q, q), -Psi_h H_g' Lambda' (G, r, q) and Psi_h (``_assemble``).

    ``Psi`` holds the parent's Psi_h for every group (G, r, r), or one (r, r) shared by all
    (the top)."""
    lam, H = c.lam, c.H
    G, q, r = H.shape
    if Psi.ndim == 2:
        PsiHt = mm(H.reshape(G * q, r), Psi).reshape(G, q, r).transpose(0, 2, 1)  # Psi H_g'
    else:
        PsiHt = np.matmul(Psi, H.transpose(0, 2, 1))
    PsiHt2 = np.ascontiguousarray(PsiHt).reshape(G * r, q)
    B = c.Ainv + np.matmul(H, PsiHt)  # A^{-1} + H Psi H', symmetric
    # sum_g (Mzz_g Lambda) B_g and sum_g Mzr_g Psi H_g' as contractions over (g, row)
    grad = 2.0 * (mm(c.LtMzz.reshape(G * q, q).T, B.reshape(G * q, q)) - mm(c.Mrz.reshape(G * r, q).T, PsiHt2))
    if not children:
        return grad, None
    BLt = mm(B.reshape(G * q, q), lam.T).reshape(G, q, q)  # B Lambda' = (Lambda B)'
    zz = mm(BLt.transpose(0, 2, 1).reshape(G * q, q), lam.T).reshape(G, q, q)  # Lambda B Lambda'
    rz = mm(PsiHt2, -lam.T).reshape(G, r, q)  # -Psi H' Lambda'
    return grad, (zz, rz, Psi)


def _assemble(zz: np.ndarray, rz: np.ndarray, Psi: np.ndarray) -> np.ndarray:
    """Psi_g (G, d, d) from the blocks ``_backward_level`` returns (G3)."""
    G, r, q = rz.shape
    out = np.empty((G, q + r, q + r))
    out[:, :q, :q] = zz
    out[:, q:, :q] = rz
    out[:, :q, q:] = rz.transpose(0, 2, 1)
    out[:, q:, q:] = Psi
    return out
