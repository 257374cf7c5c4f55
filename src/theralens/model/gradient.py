"""Analytic gradient of the profiled REML/ML criterion with respect to theta.

The criterion of criterion.py is a function of theta through the block elimination of
engine.md, level by level: level l turns the statistics M_g (d x d, rows [z_l | rest]) of its
groups g into the statistics of their parents,

    A_g = Lambda' Mzz_g Lambda + I,   K_g = Lambda A_g^{-1} Lambda',
    M_parent = sum_{g in parent} (Mrr_g - Mrz_g K_g Mzr_g),   logdet += sum_g log|A_g|,

and at the top the (k+1) x (k+1) block [X'X X'y; y'X y'y] left gives R_X, beta and r2
(engine.md; Bates et al. 2015, JSS 67(1), eqs. 34 and 42). The gradient is this computation
differentiated in reverse (adjoint) order. With Psi_h = dF / dM_h the sensitivity of the
criterion F to the statistics of a parent h (symmetric, <Psi, dM> = sum_ij Psi_ij dM_ij):

(G1) top: Psi = (dof / r2) v v' + [REML] blockdiag((X'X - ...)^{-1}, 0),  v = [-beta; 1],
     dof = n - k (REML) or n (ML): d log r2 = v' dM v / r2 and d log|R_X|^2 = <(R_X R_X')^{-1}, dM_XX>.
(G2) with H_g = A_g^{-1} Lambda' Mzr_g and B_g = A_g^{-1} + H_g Psi_h H_g' (h the parent of g),

         dF / dLambda_l = 2 sum_g (Mzz_g Lambda B_g - Mzr_g Psi_h H_g'),

     from d log|A_g| = 2 tr(A_g^{-1} Lambda' Mzz_g dLambda) and
     d(Mrz K Mzr) = R' dLambda H + H' dLambda' R,  R = Mzr - Mzz Lambda H.
(G3) the sensitivity to a group's own statistics, handed down to its children
     (d log|A| = <K, dMzz>, dK = -K dMzz K):

         Psi_g = [[Lambda B_g Lambda', -Lambda H_g Psi_h], [-Psi_h H_g' Lambda', Psi_h]].

(G4) theta_m is the entry (i, j) of Lambda_l: dF / dtheta_m = (dF / dLambda_l)[i, j].
(G5) one random term per innermost cluster (q_0 = 1, the common case; a_p = lambda^2 C_p[z, z] + 1,
     m_p = C_p[z, rest]): M_parent = sum_p Mrr_p - lambda^2 Q1, Q1 = sum_p m_p' m_p / a_p, and (G2)
     collapses to

         dF / dlambda = 2 lambda sum_p C_p[z, z] / a_p - 2 lambda sum_h < Psi_h, Q2_h >,
         Q2_h = sum_{p in h} m_p' m_p / a_p^2,

     weighted sums of the constant products m_p' m_p (the ones the criterion uses), so no
     per-patient matrix is formed.

One call costs about one and a half criterion evaluations: the elimination forward, then per
level a few batched products of small matrices backward. Nothing depends on the residuals or the
conditional modes (the envelope theorem is implicit in the profiled top, G1).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from scipy.sparse import csr_matrix

from theralens.model.criterion import (
    NestedCriterion,
    _chol,
    _finish,
    _forward,
    _lam_t_times,
    _mm,
    criterion_from_profile,
)


class _LevelCache(NamedTuple):
    """What the backward pass (G2, G3) needs of one level's forward elimination."""

    lam: np.ndarray  # Lambda_l (q x q)
    LtMzz: np.ndarray  # (G, q, q): Lambda' Mzz_g, contiguous
    Mrz: np.ndarray  # (G, r, q), Mzr transposed, contiguous
    Ainv: np.ndarray  # (G, q, q): A_g^{-1}
    H: np.ndarray  # (G, q, r): A_g^{-1} Lambda' Mzr_g


def _blocks(M: np.ndarray, q: int, starts: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The blocks of statistics M (G, d, d) that ``_forward_level`` takes: Mzz and Mrz
    (contiguous) and Mrr summed over the children of each parent (beginning at ``starts``;
    None: over all groups, the top)."""
    Mrr = M.sum(0)[q:, q:] if starts is None else np.add.reduceat(M[:, q:, q:], starts, axis=0)
    return np.ascontiguousarray(M[:, :q, :q]), np.ascontiguousarray(M[:, q:, :q]), Mrr


def _forward_level(lam: np.ndarray, Mzz: np.ndarray, Mrz: np.ndarray, Mrr: np.ndarray,
                   starts: np.ndarray | None) -> tuple[float, np.ndarray, _LevelCache]:
    """Eliminate one level: log det of the A_g summed, the parents' statistics (summed over the
    contiguous children beginning at ``starts``; None: all into one block, the top; ``Mrr`` is
    already summed per parent), and the cache. Blocks as ``_blocks`` gives them."""
    G, r, q = Mrz.shape
    if q == 1:
        l0 = float(lam[0, 0])
        a = l0 * l0 * Mzz[:, 0, 0] + 1.0
        logdet = float(np.log(a).sum())
        Ainv = (1.0 / a)[:, None, None]
        LtMzz = l0 * Mzz
        LtMzr = l0 * Mrz.transpose(0, 2, 1)  # (G, 1, r)
        H = Ainv * LtMzr
    else:
        LtMzz = np.ascontiguousarray(_mm(Mzz.reshape(G * q, q), lam).reshape(G, q, q).transpose(0, 2, 1))
        A = _mm(LtMzz.reshape(G * q, q), lam).reshape(G, q, q)  # Lambda' Mzz Lambda
        A.reshape(G, q * q)[:, :: q + 1] += 1.0
        Ainv, logdet = _spd_inverse(A)
        LtMzr = _lam_t_times(lam, Mrz.transpose(0, 2, 1))
        H = np.matmul(Ainv, LtMzr)
    if starts is None:  # the top: everything sums into one block
        nxt = (Mrr - _mm(LtMzr.reshape(G * q, r).T, H.reshape(G * q, r)))[None]
    else:
        if q == 1:
            red = LtMzr[:, 0, :, None] * H[:, 0, None, :]
        else:
            red = np.matmul(LtMzr.transpose(0, 2, 1), H)
        nxt = Mrr - np.add.reduceat(red, starts, axis=0)
    return logdet, nxt, _LevelCache(lam=lam, LtMzz=LtMzz, Mrz=Mrz, Ainv=Ainv, H=H)


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


def _spd_inverse(A: np.ndarray) -> tuple[np.ndarray, float]:
    """Inverses of a stack of symmetric positive definite A (G, q, q) and sum_g log|A_g|.

    For q = 2 and 3 by cofactors (adjugate over determinant), a few operations on all blocks at
    once (A = Lambda' Mzz Lambda + I has all eigenvalues >= 1, so this is as accurate as through
    Cholesky); otherwise through the Cholesky factors. Raises LinAlgError when a block is not
    positive definite (its leading minors are not all positive).
    """
    G, q = A.shape[0], A.shape[1]
    if q > 3:
        Lc = _chol(A)
        Linv = _forward(Lc, np.broadcast_to(np.eye(q), Lc.shape))
        return np.matmul(Linv.transpose(0, 2, 1), Linv), 2.0 * float(np.log(np.diagonal(Lc, axis1=1, axis2=2)).sum())
    A2 = A.reshape(G, q * q)
    if q == 2:
        adj = A2[:, _ADJ2] * _SGN2
        det = A2[:, 0] * A2[:, 3] - A2[:, 1] * A2[:, 2]
        minor = det
    else:
        i1, i2, i3, i4 = _COF3
        adj = A2[:, i1] * A2[:, i2] - A2[:, i3] * A2[:, i4]
        det = (A2[:, :3] * adj[:, :3]).sum(axis=1)  # along the first row
        minor = adj[:, 8]  # the leading 2 x 2 minor
    if not (A2[:, 0].min() > 0 and minor.min() > 0 and det.min() > 0):  # NaN fails too
        raise np.linalg.LinAlgError("matrix is not positive definite")
    return (adj / det[:, None]).reshape(G, q, q), float(np.log(det).sum())


def _backward_level(c: _LevelCache, Psi: np.ndarray, children: bool
                    ) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray, np.ndarray] | None]:
    """dF / dLambda_l (G2) and, when ``children``, the blocks of every group's Psi_g (G3):
    Lambda B_g Lambda' (G, q, q), -Psi_h H_g' Lambda' (G, r, q) and Psi_h (``_assemble``).

    ``Psi`` holds the parent's Psi_h for every group (G, r, r), or one (r, r) shared by all
    (the top)."""
    lam, H = c.lam, c.H
    G, q, r = H.shape
    if Psi.ndim == 2:
        PsiHt = _mm(H.reshape(G * q, r), Psi).reshape(G, q, r).transpose(0, 2, 1)  # Psi H_g'
    else:
        PsiHt = np.matmul(Psi, H.transpose(0, 2, 1))
    PsiHt2 = np.ascontiguousarray(PsiHt).reshape(G * r, q)
    B = c.Ainv + np.matmul(H, PsiHt)  # A^{-1} + H Psi H', symmetric
    # sum_g (Mzz_g Lambda) B_g and sum_g Mzr_g Psi H_g' as contractions over (g, row)
    grad = 2.0 * (_mm(c.LtMzz.reshape(G * q, q).T, B.reshape(G * q, q)) - _mm(c.Mrz.reshape(G * r, q).T, PsiHt2))
    if not children:
        return grad, None
    BLt = _mm(B.reshape(G * q, q), lam.T).reshape(G, q, q)  # B Lambda' = (Lambda B)'
    zz = _mm(BLt.transpose(0, 2, 1).reshape(G * q, q), lam.T).reshape(G, q, q)  # Lambda B Lambda'
    rz = _mm(PsiHt2, -lam.T).reshape(G, r, q)  # -Psi H' Lambda'
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


class ProfiledGradient:
    """Criterion value and its exact gradient in theta for a :class:`NestedCriterion`.

    Built once per criterion; each call runs the elimination forward and its adjoint backward
    (G1-G4). ``fast`` selects the closed form (G5) for the innermost level when it has a single
    random term; ``fast=False`` runs the general path there too (used to test one against the
    other).
    """

    def __init__(self, crit: NestedCriterion, fast: bool = True) -> None:
        self.crit = crit
        self.D = crit.D
        self.q = list(crit.q)
        self.k = crit.k
        self.ntheta = crit.design.ntheta
        # theta <-> Lambda_l entries: (rows, cols, theta index) of each level's nonzero entries (G4)
        self.fills = []
        for lv in crit.design.levels:
            marks = lv.lambda_matrix(np.arange(1.0, self.ntheta + 1.0))
            rows, cols = np.nonzero(marks)
            self.fills.append((rows, cols, marks[rows, cols].astype(np.int64) - 1))
        # children of each parent, contiguous: where they start and how many there are
        self.starts: list[np.ndarray | None] = [crit.starts[l] for l in range(self.D - 1)] + [None]
        self.counts = [np.diff(np.r_[crit.starts[l], crit.stats.levels[l].ngroups]) for l in range(self.D - 1)]
        self.fast = bool(fast and self.q[0] == 1)
        if self.fast:
            # one sparse product gives sum_p w_p m_p' m_p per parent for w = 1/a_p and 1/a_p^2
            # (over the merged clusters of the criterion: _czz and multiplicities _mult)
            P = crit._O.shape[0]
            starts = crit._O_starts
            self._T = T = len(starts)
            ptr = np.r_[starts, P]
            self._agg = csr_matrix((np.ones(2 * P), np.tile(np.arange(P), 2), np.r_[ptr[:-1], ptr + P]),
                                   shape=(2 * T, P))
            self._czz = crit._czz
            self._mult = crit._mult
            self._mult_czz = crit._mult * crit._czz
            # <Psi_h, Q2_h> from Q2's upper triangle: positions of those entries in Psi_h, and
            # weight 2 off the diagonal
            r = crit.d - 1
            i0, i1 = crit._iu
            self._tri_pos = i0 * r + i1
            self._tri_w = np.where(i0 == i1, 1.0, 2.0)
            # the blocks of the parents' statistics, read off their upper triangles
            if self.D > 1:
                q1 = self.q[1]
                pos = crit._unpack.reshape(r, r)
                self._take = (pos[:q1, :q1].ravel(), pos[q1:, :q1].ravel(), pos[q1:, q1:].ravel())

    def __call__(self, theta: np.ndarray, reml: bool = True) -> tuple[float, np.ndarray]:
        """Criterion (REML criterion or ML deviance) and its gradient (G1)-(G5) at ``theta``."""
        crit = self.crit
        crit.evaluations += 1
        theta = np.asarray(theta, dtype=float)
        D, k = self.D, self.k
        lams = []
        for q, (rows, cols, idx) in zip(self.q, self.fills):
            lam = np.zeros((q, q))
            lam[rows, cols] = theta[idx]
            lams.append(lam)
        # ---- forward: the elimination, keeping what the backward pass needs ------------------
        caches: list[_LevelCache | None] = []
        logdet = 0.0
        lam0 = float(lams[0][0, 0])
        ia = Q2tri = np.empty(0)
        if self.fast:  # (G5): the innermost level from the constant products m_p' m_p
            a = lam0 * lam0 * self._czz + 1.0
            logdet += float(self._mult @ np.log(a))
            ia = 1.0 / a
            self._agg.data = np.concatenate([ia, ia * ia])
            tri = self._agg @ crit._O
            Q2tri = tri[self._T :]  # sum_p m_p' m_p / a_p^2 per parent (upper triangles)
            Mtri = crit._Mrr_tri - (lam0 * lam0) * tri[: self._T]  # the parents' statistics
            caches.append(None)
        M = crit.unpack(Mtri) if self.fast and D == 1 else None
        for l in range(len(caches), D):
            if l == 0:  # the general path at the innermost level: its rows of C_p, the parents' sums
                q0, inner = self.q[0], crit.stats.inner
                Mrr = crit.stats.parent_sums()[:, q0:, q0:]
                blocks = (np.ascontiguousarray(inner[:, :, :q0]),
                          np.ascontiguousarray(inner[:, :, q0:].transpose(0, 2, 1)), Mrr[0] if D == 1 else Mrr)
            elif M is None:  # the parents of the fast innermost level: their blocks from Mtri
                q1, T = self.q[1], self._T
                tzz, trz, trr = self._take
                r1 = len(trz) // q1
                blocks = (np.take(Mtri, tzz, axis=1).reshape(T, q1, q1), np.take(Mtri, trz, axis=1).reshape(T, r1, q1),
                          np.take(Mtri.sum(0), trr).reshape(r1, r1) if D == 2
                          else np.add.reduceat(np.take(Mtri, trr, axis=1).reshape(T, r1, r1), self.starts[1], axis=0))
            else:
                blocks = _blocks(M, self.q[l], self.starts[l])
            ld, M, cache = _forward_level(lams[l], *blocks, self.starts[l])
            logdet += ld
            caches.append(cache)
        top = M[0]
        prof = _finish(logdet, top, k)
        f = criterion_from_profile(prof, crit.n, k, reml)
        if not np.isfinite(f):
            return f, np.full(self.ntheta, np.nan)
        # ---- (G1) the top's sensitivity ----------------------------------------------------
        XXinv = np.linalg.inv(top[:k, :k]) if k else np.zeros((0, 0))  # (R_X R_X')^{-1}
        v = np.empty(k + 1)
        v[:k] = -(XXinv @ top[:k, k])  # -beta
        v[k] = 1.0
        dof = (crit.n - k) if reml else crit.n
        top_psi = (dof / prof.r2) * np.outer(v, v)
        if reml and k:
            top_psi[:k, :k] += XXinv
        Psi: np.ndarray | tuple[np.ndarray, np.ndarray, np.ndarray] = top_psi
        # ---- backward, level by level (G2-G5) -----------------------------------------------
        grad = np.zeros(self.ntheta)
        for l in reversed(range(D)):
            rows, cols, idx = self.fills[l]
            cache = caches[l]
            if cache is None:  # (G5)
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
                grad[idx] = 2.0 * lam0 * (float(self._mult_czz @ ia) - nq2)
                continue
            if isinstance(Psi, tuple):
                Psi = _assemble(*Psi)
            if Psi.ndim == 3:  # the parent's Psi for every group
                Psi = np.repeat(Psi, self.counts[l], axis=0)
            gL, nxt = _backward_level(cache, Psi, children=l > 0)
            grad[idx] = gL[rows, cols]
            if nxt is not None:
                Psi = nxt
        return f, grad
