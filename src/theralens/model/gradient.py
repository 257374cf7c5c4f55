"""Analytic gradient of the profiled REML/ML criterion with respect to theta.

Notation (Bates et al. 2015, JSS 67(1), sec. 3): A = [Z X], T = blockdiag(Lambda, I_k),
G = A'A, the full penalized system including the fixed effects

    Omega = T' G T + blockdiag(I_q, 0),   v = Omega^{-1} T' A' y = [u; beta],
    r = y - Z Lambda u - X beta,          r2 = |r|^2 + |u|^2  (penalized RSS),

and log|Omega| = log|L_theta|^2 + log|R_X|^2. The criteria of criterion.py (eqs. 34, 42) are

    REML(theta) = log|Omega|       + (n - k) log r2 + const,
    ML(theta)   = log|L_theta|^2   +  n      log r2 + const.

Derivatives with respect to one entry theta_m, which sits in Lambda_l (dT_m = blockdiag of
dLambda_m on every level-l group, zero elsewhere):

(G1) d r2 = -2 (dT_m v)' A' r = -2 sum_{g at level l} (dLambda_m u_g)' (Z_g' r)
     (envelope theorem: v minimises the penalized RSS, so only the explicit dependence counts);
(G2) d log|Omega| = tr(Omega^{-1} dOmega) = 2 tr(Omega^{-1} T' G dT_m)
     = 2 sum_p tr(Sigma_chain(p) T' G_p dT_m),
     G_p = A_p' A_p of innermost cluster p, nonzero only on p's chain (its group at every level,
     and X); Sigma = Omega^{-1} (REML) or (Lambda'Z'Z Lambda + I)^{-1} (ML, no X in the chain).
     With F_l = sum_p (Sigma T' G_p)[level-l rows, level-l columns] (q_l x q_l),
     d log|.| / dLambda_l[i, j] = 2 F_l[j, i].

Sigma is needed only on each chain; it comes from the block Cholesky factors of the
elimination by selected inversion top-down (Takahashi et al. 1973): with L_g the Cholesky block
of group g, S~_g its scaled off-diagonal block (rows of g, columns of its ancestors' chain a),

(G3) Sigma_XX = (R_X R_X')^{-1},
     Sigma_ga = -L_g^{-T} S~_g Sigma_aa,  Sigma_gg = L_g^{-T} L_g^{-1} - Sigma_ga S~_g' L_g^{-1}.

F_l is accumulated from per-group sums Gbar_h = sum_{p in h} G_p (h at any level m <= l):
the level-l rows of Sigma times the columns of g's own chain (levels >= l) use Gbar_g, and
those times a descendant's columns (level m < l) use Gbar_h of that descendant,

(G4) F_l = sum_{g at l} [Sigma_gg | Sigma_ga] T_chain' Gbar_g[chain, l]
           + sum_{m < l} sum_{h at m} Sigma_hg' Lambda_m' Gbar_h[m, l].

For one random term per innermost cluster (q_0 = 1, the common case) the innermost sums
collapse to weighted sums of the constant outer products m_p' m_p of M_zr,p = C_p[z, rest]
(the same products the criterion uses), with a_p = lambda^2 C_p[z, z] + 1:

(G5) F_0 = lambda sum_p C_p[z, z] / a_p - lambda sum_t < T_a Sigma_aa(t) T_a', sum_{p in t} m_p' m_p / a_p^2 >,
     F_a += -lambda^2 Sigma_aa(t) T_a' sum_{p in t} m_p' m_p / a_p  (its level-l diagonal blocks),

so no per-patient matrix is formed.
"""

from __future__ import annotations

import numpy as np
from scipy.sparse import csr_matrix

from theralens.model.criterion import (
    NestedCriterion,
    _backward,
    _block_diag,
    _finish,
    _lam_t_times,
    _mm,
    criterion_from_profile,
    eliminate_level,
)


def _matvec(A: np.ndarray, x: np.ndarray) -> np.ndarray:
    """A_g x_g for stacks A (G, p, m) and x (G, m)."""
    if A.shape[2] == 1:
        return A[:, :, 0] * x
    return np.einsum("gij,gj->gi", A, x)


class ProfiledGradient:
    """Criterion value and its exact gradient in theta for a :class:`NestedCriterion`.

    Built once per criterion (contiguous copies of the per-group sums that the gradient reads,
    eq. G4 and G1); each call costs a few criterion evaluations' worth of small batched products.
    ``fast`` selects the closed form (G5) for the innermost level when it has a single random
    term; ``fast=False`` runs the general path there too (used to test one against the other).
    """

    def __init__(self, crit: NestedCriterion, fast: bool = True) -> None:
        self.crit = crit
        D = crit.D
        self.D = D
        q = list(crit.q)
        self.q = q
        k = crit.k
        self.k = k
        offs = [int(v) for v in np.cumsum([0] + q)]
        self.offs = offs
        Zdim = offs[D]
        self.Zdim = Zdim
        d = crit.d
        iy = d - 1
        Cagg = crit.Cagg
        # theta <-> Lambda_l entries: (rows, cols, theta index) of each level's nonzero entries
        self.ntheta = crit.design.ntheta
        self.fills = []
        for lv in crit.design.levels:
            marks = lv.lambda_matrix(np.arange(1.0, self.ntheta + 1.0))
            rows, cols = np.nonzero(marks)
            self.fills.append((rows, cols, marks[rows, cols].astype(np.int64) - 1))
        self.fast = bool(fast and q[0] == 1)
        # per level l (contiguous): Gbar_g[chain, l] for (G4), with and without X in the chain;
        # Gbar_g[l, Z-ancestors]; and the pieces of Z_l' r (G1)
        self.Gl: list[dict[bool, np.ndarray]] = []
        self.Gla: list[np.ndarray] = []
        self.Cy: list[np.ndarray] = []
        self.CX: list[np.ndarray] = []
        self.Cself: list[dict[int, np.ndarray]] = []
        self.Cdesc: dict[tuple[int, int], np.ndarray] = {}
        self.agg: dict[tuple[int, int], csr_matrix] = {}
        for l in range(D):
            G = Cagg[l].shape[0]
            zl = slice(offs[l], offs[l + 1])
            gl = {}
            for reml in (True, False):
                hi = Zdim + (k if reml else 0)
                gl[reml] = np.ascontiguousarray(Cagg[l][:, offs[l] : hi, zl]).reshape(-1, q[l])
            self.Gl.append(gl)
            self.Gla.append(np.ascontiguousarray(Cagg[l][:, zl, offs[l + 1] : Zdim]))
            self.Cy.append(np.ascontiguousarray(Cagg[l][:, zl, iy]))
            self.CX.append(np.ascontiguousarray(Cagg[l][:, zl, Zdim : Zdim + k]).reshape(G * q[l], k))
            self.Cself.append({j: np.ascontiguousarray(Cagg[l][:, zl, offs[j] : offs[j + 1]]) for j in range(l, D)})
            for j in range(l):
                self.Cdesc[(j, l)] = np.ascontiguousarray(Cagg[j][:, zl, offs[j] : offs[j + 1]])
                agg = crit.up[j]
                for m in range(j + 1, l):
                    agg = crit.up[m] @ agg
                self.agg[(j, l)] = agg.tocsr()
        if self.fast:
            # one sparse product gives sum_p w_p m_p' m_p per parent for w = 1/a_p and 1/a_p^2
            P = crit.C.shape[0]
            starts = crit.starts[0]
            T = len(starts)
            ptr = np.r_[starts, P]
            self._agg = csr_matrix((np.ones(2 * P), np.tile(np.arange(P), 2), np.r_[ptr[:-1], ptr + P]),
                                   shape=(2 * T, P))
            self._iu = crit._iu
            self._O = crit._O  # (P, r(r+1)/2): upper triangle of m_p' m_p (q_0 = 1)
            self._czz = crit.C[:, 0, 0].copy()
            self._m = np.ascontiguousarray(crit.C[:, 0, 1:])  # m_p = M_zr,p = C_p[z, rest]
            self._T = T
            self._counts = np.diff(ptr)
            # <N, Q2> from Q2's upper triangle: the entries of N (c x c, c = chain size) there
            i0, i1 = self._iu
            self._pack: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
            for c in (Zdim - 1, Zdim - 1 + k):
                inside = np.flatnonzero((i0 < c) & (i1 < c))
                self._pack[c] = (inside, i0[inside] * c + i1[inside], np.where(i0[inside] == i1[inside], 1.0, 2.0))

    def __call__(self, theta: np.ndarray, reml: bool = True) -> tuple[float, np.ndarray]:
        """Criterion (REML criterion or ML deviance) and its gradient (G1)-(G5) at ``theta``."""
        crit = self.crit
        crit.evaluations += 1
        theta = np.asarray(theta, dtype=float)
        D, q, k, offs, Zdim = self.D, self.q, self.k, self.offs, self.Zdim
        lams = crit.lambdas(theta)
        kx = k if reml else 0
        fast = self.fast
        # ---- elimination, keeping every level's factors ------------------------------------
        Ls: list[np.ndarray] = []
        Ss: list[np.ndarray] = []
        logdet = 0.0
        M = crit.C
        lam0 = float(lams[0][0, 0])
        a_p = Q1 = Q2tri = np.empty(0)
        for l in range(D):
            if l == 0 and fast:
                a_p = lam0 * lam0 * self._czz + 1.0
                logdet += float(np.log(a_p).sum())
                ia = 1.0 / a_p
                self._agg.data = np.concatenate([ia, ia * ia])
                tri = self._agg @ self._O
                T = self._T
                Q1tri = tri[:T]  # sum_p m_p' m_p / a_p per parent (upper triangles)
                Q2tri = tri[T:]  # sum_p m_p' m_p / a_p^2 per parent
                Q1 = crit.unpack(Q1tri)
                M = crit._Mrr_sum - lam0 * lam0 * Q1
                Ls.append(np.sqrt(a_p)[:, None, None])
                Ss.append(np.empty((0, 0, 0)))  # not formed (G5)
                continue
            ld, M, Lc, S = eliminate_level(lams[l], M, crit.up[l], keep=True)
            logdet += ld
            assert Lc is not None and S is not None
            Ls.append(Lc)
            Ss.append(S)
        prof = _finish(logdet, M[0], k)
        f = criterion_from_profile(prof, crit.n, k, reml)
        if not np.isfinite(f):
            return f, np.full(self.ntheta, np.nan)
        # ---- back-substitution: beta, u_l, b_l = u_l Lambda_l' ------------------------------
        beta = np.linalg.solve(prof.RX.T, prof.z) if k else np.zeros(0)
        u: list[np.ndarray] = [np.empty(0)] * D
        b: list[np.ndarray] = [np.empty(0)] * D
        rhs0 = np.empty(0)
        for l in reversed(range(D)):
            nz = Zdim - offs[l + 1]
            if l == 0 and fast:
                m = self._m
                rhs0 = m[:, -1] - (_mm(m[:, nz : nz + k], beta) if k else 0.0)
                off = 0
                for j in range(1, D):
                    bj = np.repeat(b[j], self._counts, axis=0) if j == 1 else b[j][crit.anc[0][j]]
                    rhs0 = rhs0 - np.einsum("gj,gj->g", m[:, off : off + q[j]], bj)
                    off += q[j]
                u[0] = (lam0 / a_p * rhs0)[:, None]
                b[0] = u[0] * lam0
                continue
            Lc, S = Ls[l], Ss[l]
            G = S.shape[0]
            S2 = S.reshape(G * q[l], -1)
            rhs = S[:, :, -1] - (_mm(S2[:, nz : nz + k], beta).reshape(G, q[l]) if k else 0.0)
            off = 0
            for j in range(l + 1, D):
                rhs = rhs - _matvec(S[:, :, off : off + q[j]], b[j][crit.anc[l][j]])
                off += q[j]
            u[l] = _backward(Lc, rhs)
            b[l] = _mm(u[l], lams[l].T)
        # ---- selected inversion (G3) and the trace terms (G4, G5) ---------------------------
        F = [np.zeros((ql, ql)) for ql in q]
        root = np.linalg.inv(M[0][:k, :k]) if kx else np.zeros((0, 0))  # Sigma_XX = (R_X R_X')^{-1}
        chain_cov: list[np.ndarray] = [np.empty(0)] * D
        for l in reversed(range(D)):
            ql = q[l]
            cl = Zdim - offs[l] + kx
            ca = cl - ql
            nz = Zdim - offs[l + 1]
            Tchain = _block_diag([lams[j] for j in range(l, D)] + [np.eye(kx)])
            Ta = Tchain[ql:, ql:]
            if l == 0 and fast:
                Saa = chain_cov[1] if D > 1 else root[None]
                Ga = Saa.shape[0]
                Y = _mm(Saa.reshape(Ga * ca, ca), Ta.T).reshape(Ga, ca, ca)  # Sigma_aa T_a'
                Nt = _mm(Y.transpose(0, 2, 1).reshape(Ga * ca, ca), Ta.T).reshape(Ga, ca * ca)  # T_a Sigma_aa T_a'
                # sum_t <N_t, Q2_t> from the upper triangles (off-diagonal entries twice)
                inside, pos, wts = self._pack[ca]
                nq2 = float(np.einsum("ij,ij->", np.take(Nt, pos, axis=1) * wts, np.take(Q2tri, inside, axis=1)))
                F[0][0, 0] += lam0 * float((self._czz / a_p).sum()) - lam0 * nq2
                if nz:  # ancestors' blocks: -lambda^2 sum_t Sigma_aa(t) T_a' Q1_t, Z part only
                    Yz = np.ascontiguousarray(Y[:, :nz, :].transpose(1, 0, 2)).reshape(nz, Ga * ca)
                    W = -lam0 * lam0 * _mm(Yz, np.ascontiguousarray(Q1[:, :ca, :nz]).reshape(Ga * ca, nz))
                    self._add_ancestor_blocks(F, W, 0)
                continue
            Lc, S = Ls[l], Ss[l]
            G = S.shape[0]
            S2 = S.reshape(G * ql, -1)
            St2 = np.concatenate([_mm(S2[:, :nz], Ta[:nz, :nz]), S2[:, nz : nz + kx]], axis=1)  # S~ (G*q, c_a)
            if l == D - 1:
                E = _mm(St2, root).reshape(G, ql, ca)  # S~ Sigma_aa, Sigma_aa shared (the root)
                Saa = None
            else:
                Saa = chain_cov[l + 1][crit.parent[l]]
                E = np.matmul(St2.reshape(G, ql, ca), Saa)
            Sha = -_backward(Lc, E)  # Sigma_ga = -L^{-T} S~ Sigma_aa
            Mid = np.matmul(E, St2.reshape(G, ql, ca).transpose(0, 2, 1))
            Mid[:, np.arange(ql), np.arange(ql)] += 1.0
            # Sigma_gg = L^{-T} (I + S~ Sigma_aa S~') L^{-1}
            Shh = _backward(Lc, _backward(Lc, Mid).transpose(0, 2, 1))
            if l > 0:
                full = np.empty((G, cl, cl))
                full[:, :ql, :ql] = Shh
                full[:, :ql, ql:] = Sha
                full[:, ql:, :ql] = Sha.transpose(0, 2, 1)
                full[:, ql:, ql:] = root if Saa is None else Saa
                chain_cov[l] = full
            R = np.concatenate([Shh, Sha], axis=2).reshape(G * ql, cl)
            RT = np.ascontiguousarray(_mm(R, Tchain.T).reshape(G, ql, cl).transpose(1, 0, 2)).reshape(ql, G * cl)
            F[l] += _mm(RT, self.Gl[l][reml])
            if nz:
                Y = _lam_t_times(lams[l], self.Gla[l])  # Lambda_l' Gbar_g[l, Z-ancestors]
                ShaZ = np.ascontiguousarray(Sha[:, :, :nz].transpose(2, 0, 1)).reshape(nz, G * ql)
                W = _mm(ShaZ, np.ascontiguousarray(Y).reshape(G * ql, nz))
                self._add_ancestor_blocks(F, W, l)
        # ---- residual part (G1): w_g = Z_g' r per group --------------------------------------
        dof = (crit.n - k) if reml else crit.n
        coef = dof / prof.r2
        grad = np.zeros(self.ntheta)
        for l in range(D):
            G = self.Cy[l].shape[0]
            if l == 0 and fast:
                w = rhs0 - self._czz * b[0][:, 0]  # Z_p' r = m_p[y] - m_p[X] beta - m_p[Z_anc] b_anc - C_zz b_p
                w = w[:, None]
            else:
                w = self.Cy[l] - (_mm(self.CX[l], beta).reshape(G, q[l]) if k else 0.0)
                for j in range(l, D):
                    w = w - _matvec(self.Cself[l][j], b[j] if j == l else b[j][crit.anc[l][j]])
            for j in range(l):
                w = w - self.agg[(j, l)] @ _matvec(self.Cdesc[(j, l)], b[j])
            Rsum = _mm(w.T, u[l])  # Rsum[i, j] = sum_g w_g[i] u_g[j]
            gL = 2.0 * F[l].T - 2.0 * coef * Rsum
            rows, cols, idx = self.fills[l]
            grad[idx] = gL[rows, cols]
        return f, grad

    def _add_ancestor_blocks(self, F: list[np.ndarray], W: np.ndarray, l: int) -> None:
        """Add the level-m diagonal blocks (m > l) of W (Z-ancestor chain of level l) to F_m."""
        off = 0
        for m in range(l + 1, self.D):
            qm = self.q[m]
            F[m] += W[off : off + qm, off : off + qm]
            off += qm

