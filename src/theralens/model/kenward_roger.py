"""Kenward-Roger small-sample inference for the fixed effects, as pbkrtest 0.5 computes it.

Kenward & Roger (1997), Biometrics 53:983-997, in the form of Halekoh & Hojsgaard (2014),
JSS 59(9) (pbkrtest's ``vcovAdj`` and ``Lb_ddf``; both papers are in the references of
:mod:`theralens.report.methods`). The marginal covariance of y is
written linearly in the covariance parameters ggamma,

    Sigma = sum_r ggamma_r G_r,

with, per random-effect term (lme4 order), the lower triangle of its covariance matrix in
column-major order (G_r = Z_i Z_j' + Z_j Z_i' for a covariance, Z_i Z_i' for a variance, summed
over the term's groups) and last the residual variance (G = I). With Phi = Var(beta_hat) of the
REML fit (lme4's ``vcov``):

    P_r   = -X' Sigma^-1 G_r Sigma^-1 X
    Q_rs  =  X' Sigma^-1 G_r Sigma^-1 G_s Sigma^-1 X
    IE2_rs = tr(Sigma^-1 G_r Sigma^-1 G_s) - 2 tr(Phi Q_rs) + tr(Phi P_r Phi P_s)   (expected REML information)
    W     = 2 IE2^-1   (Moore-Penrose inverse when min |eigenvalue| of IE2 <= 1e-10)
    U     = sum_rs W_rs (Q_rs - P_r Phi P_s)
    Phi_A = Phi + 2 Phi U Phi          (K&R 1997; their R_ij = 0, since Sigma is linear in ggamma)

and the denominator df of a contrast L (q rows) from A1, A2, B, g, c1..c3 and rho (K&R 1997's
scaled F approximation; pbkrtest ``Lb_ddf``, which uses V0 = Phi): ddf = 4 + (q + 2) / (q rho - 1).

Sigma is block diagonal over the outermost grouping factor (therapists, say), so nothing here
is n x n: with the Woodbury identity Sigma_g^-1 = sigma^-2 (I - Z_g B Z_g'), B = Lambda (Lambda'
Z_g'Z_g Lambda + I)^-1 Lambda', every term above is a function of the per-block cross-products
Z_g'Z_g and Z_g'X, the total X'X and n, which the sufficient statistics hold
(:class:`~theralens.model.stats.SufficientStats`), so Kenward-Roger works after ``fit_stats`` too.
A block's random-effect columns are laid out as a regular tree (a slot for every possible child;
empty slots have zero cross-products and add nothing), so that blocks share one layout and are
computed as one batch; blocks of very different sizes go in batches of similar size
(:func:`_buckets`). The cost grows with blocks x (random effects per block)^3, not with rows.

Kenward-Roger is defined for REML fits: lmerTest refuses it for ML fits ("only available for
REML model fits") and so does :func:`theralens.model.fit.fit_mixed`; pbkrtest would refit with
REML instead.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from theralens.model.stats import SufficientStats

__all__ = ["KenwardRoger", "ddf_from", "failed_kenward_roger", "kenward_roger", "lb_ddf", "parameter_names"]

SINGULAR_INFORMATION = 1e-10  # pbkrtest: ginv(IE2) instead of solve(IE2) at or below this min |eigenvalue|
_ZERO = 1e-14  # pbkrtest's .divZero tolerance (0/0 taken as 1)


@dataclass
class KenwardRoger:
    """The Kenward-Roger pieces of one REML fit (module docstring for the formulas).

    - ``vcov_adjusted`` (k, k): Phi_A, pbkrtest's ``vcovAdj``; ``vcov`` (k, k): Phi.
    - ``P`` (R, k, k), ``W`` (R, R) = 2 IE2^-1, ``information`` (R, R) = IE2, over the R
      covariance parameters named in ``parameter_names`` (``ggamma``: their values);
      ``min_abs_eigenvalue`` of IE2 (pbkrtest's ``condi``).
    """

    vcov_adjusted: np.ndarray
    vcov: np.ndarray
    P: np.ndarray
    W: np.ndarray
    information: np.ndarray
    min_abs_eigenvalue: float
    parameter_names: list[str]
    ggamma: np.ndarray

    def contrast_df(self, L: np.ndarray) -> float:
        """Kenward-Roger denominator df of the contrast L beta (L: k vector or q x k matrix)."""
        return lb_ddf(L, self.vcov, self.P, self.W)

    def coefficient_df(self) -> np.ndarray:
        """The df of every fixed-effect coefficient (unit contrasts), as lmerTest's summary: for
        L = e_i, u_r = e_i (Phi P_r Phi)[i, :] / Phi_ii, so A1 = A2 = sum_rs W_rs x_ri x_si with
        x_ri = (Phi P_r Phi)_ii / Phi_ii (all coefficients at once)."""
        V = self.vcov
        x = np.einsum("ij,rji->ri", V, np.einsum("rjk,ki->rji", self.P, V)) / np.diag(V)
        A2 = np.einsum("ri,rs,si->i", x, self.W, x)
        return ddf_from(A2, A2, 1)


def lb_ddf(L: np.ndarray, V0: np.ndarray, P: np.ndarray, W: np.ndarray) -> float:
    """Kenward & Roger (1997) denominator df for testing L beta = 0, as pbkrtest's
    ``Lb_ddf(L, V0, Vadj)``: Theta = L'(L V0 L')^-1 L, u_r = Theta V0 P_r V0,
    A1 = sum_rs W_rs tr(u_r) tr(u_s), A2 = sum_rs W_rs tr(u_r u_s), then :func:`ddf_from`."""
    L = np.atleast_2d(np.asarray(L, dtype=float))
    q = L.shape[0]
    Theta = L.T @ np.linalg.solve(L @ V0 @ L.T, L)
    u = np.einsum("ij,rjk,kl->ril", Theta @ V0, P, V0, optimize=True)  # (R, k, k)
    tr = np.einsum("rii->r", u)
    A1 = float(tr @ W @ tr)
    A2 = float(np.einsum("rs,rij,sji->", W, u, u, optimize=True))
    return float(ddf_from(np.array([A1]), np.array([A2]), q)[0])


def ddf_from(A1: np.ndarray, A2: np.ndarray, q: int) -> np.ndarray:
    """pbkrtest's ``Lb_ddf`` from A1 and A2 (elementwise): B = (A1 + 6 A2) / (2q),
    g = ((q+1) A1 - (q+4) A2) / ((q+2) A2), c1 = g / (3q + 2(1-g)), c2 = (q-g) / (...),
    c3 = (q+2-g) / (...), rho = ((1 - A2/q) / (1 - c2 B))^2 (1 + c1 B) / (1 - c3 B) / q
    (0/0 taken as 1 and |1 + c1 B| < 1e-10 as 0, as pbkrtest) and ddf = 4 + (q+2) / (q rho - 1).
    For q = 1 (A1 = A2) this is 2 / A2."""
    A1, A2 = np.asarray(A1, dtype=float), np.asarray(A2, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        B = (A1 + 6.0 * A2) / (2.0 * q)
        g = ((q + 1) * A1 - (q + 4) * A2) / ((q + 2) * A2)
        den = 3.0 * q + 2.0 * (1.0 - g)
        c1, c2, c3 = g / den, (q - g) / den, (q + 2 - g) / den
        v0 = 1.0 + c1 * B
        v1 = 1.0 - c2 * B
        v2 = 1.0 - c3 * B
        v0 = np.where(np.abs(v0) < 1e-10, 0.0, v0)
        x = 1.0 - A2 / q
        ratio = np.where((np.abs(x) < _ZERO) & (np.abs(v1) < _ZERO), 1.0, x / v1)
        rho = ratio**2 * v0 / v2 / q
        return 4.0 + (q + 2) / (q * rho - 1.0)


def parameter_names(stats: SufficientStats) -> list[str]:
    """pbkrtest's covariance parameters: per term ``grp|var(col)`` / ``grp|cov(row,col)`` over the
    lower triangle (column-major), then ``residual|var``."""
    names = []
    for t in stats.terms:
        for i, j in zip(*_tril(t.q)):
            names.append(f"{t.name}|var({t.columns[i]})" if i == j else f"{t.name}|cov({t.columns[i]},{t.columns[j]})")
    return names + ["residual|var"]


def failed_kenward_roger(stats: SufficientStats, vcov: np.ndarray) -> KenwardRoger:
    """The pieces of a fit where they cannot be computed: every number NaN (``vcov`` kept)."""
    k, R = stats.k, len(parameter_names(stats))
    return KenwardRoger(vcov_adjusted=np.full((k, k), np.nan), vcov=np.asarray(vcov, dtype=float),
                        P=np.full((R, k, k), np.nan), W=np.full((R, R), np.nan), information=np.full((R, R), np.nan),
                        min_abs_eigenvalue=float("nan"), parameter_names=parameter_names(stats),
                        ggamma=np.full(R, np.nan))


def _tril(q: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows and columns of the lower triangle of a q x q matrix in column-major order."""
    cols, rows = np.triu_indices(q)
    return rows, cols


@dataclass
class _BlockLayout:
    """Where the random-effect columns of some outermost blocks sit (a regular tree: ``m``
    columns per block). ``groups[l]``: the level-l groups of these blocks (indices of the
    statistics), ``local[l]``: each level-l group's position in ``groups[l]`` (-1 outside),
    ``top[l]``: the block of each of ``groups[l]`` (0 .. len(groups[-1]) - 1), ``own[l]``: its
    column offset in the block, ``slots[l]``: every possible level-l offset."""

    m: int
    groups: list[np.ndarray]
    local: list[np.ndarray]
    top: list[np.ndarray]
    own: list[np.ndarray]
    slots: list[np.ndarray]


def _top_of(stats: SufficientStats) -> list[np.ndarray]:
    """The outermost block of every group at every level."""
    D = stats.D
    out = [np.empty(0, dtype=np.int64)] * D
    out[D - 1] = np.arange(stats.levels[D - 1].ngroups)
    for l in range(D - 1, 0, -1):
        out[l - 1] = out[l][stats.parents[l - 1]]
    return out


def _layout(stats: SufficientStats, tops: np.ndarray) -> _BlockLayout:
    """The layout of the outermost blocks ``tops`` (sorted): a slot for as many children as the
    largest group of these blocks has at every level."""
    D, q = stats.D, stats.q
    ngroups = [lv.ngroups for lv in stats.levels]
    in_bucket = np.zeros(ngroups[D - 1], dtype=bool)
    in_bucket[tops] = True
    topof = _top_of(stats)
    groups = [np.flatnonzero(in_bucket[topof[l]]) for l in range(D)]
    local = []
    for l in range(D):
        loc = np.full(ngroups[l], -1, dtype=np.int64)
        loc[groups[l]] = np.arange(len(groups[l]))
        local.append(loc)
    branch = [0]
    for l in range(1, D):  # the most children (level l-1 groups) of any level-l group here
        counts = np.bincount(stats.parents[l - 1][groups[l - 1]], minlength=ngroups[l])
        branch.append(int(counts[groups[l]].max()))
    size = [q[0]]
    for l in range(1, D):
        size.append(branch[l] * size[l - 1] + q[l])
    base: list[np.ndarray] = [np.empty(0, dtype=np.int64)] * D
    top: list[np.ndarray] = [np.empty(0, dtype=np.int64)] * D
    slot_base: list[np.ndarray] = [np.empty(0, dtype=np.int64)] * D
    base[D - 1] = np.zeros(len(groups[D - 1]), dtype=np.int64)
    top[D - 1] = np.arange(len(groups[D - 1]))
    slot_base[D - 1] = np.zeros(1, dtype=np.int64)
    for l in range(D - 1, 0, -1):
        par_all = stats.parents[l - 1]  # children of a parent are contiguous, parents in order
        rank = (np.arange(len(par_all)) - np.searchsorted(par_all, par_all, side="left"))[groups[l - 1]]
        pos = local[l][par_all[groups[l - 1]]]
        base[l - 1] = base[l][pos] + rank * size[l - 1]
        top[l - 1] = top[l][pos]
        slot_base[l - 1] = (slot_base[l][:, None] + np.arange(branch[l])[None, :] * size[l - 1]).ravel()
    own = [base[l] + (branch[l] * size[l - 1] if l else 0) for l in range(D)]
    slots = [slot_base[l] + (branch[l] * size[l - 1] if l else 0) for l in range(D)]
    return _BlockLayout(m=size[D - 1], groups=groups, local=local, top=top, own=own, slots=slots)


PAD_WASTE = 4.0  # split the blocks into buckets of similar size when padding costs more than this factor
PAD_FLOPS = 2e6  # ... and the padded batch is larger than this (m^3 per block, summed)
BUCKET_RATIO = 1.5  # within a bucket the largest block has at most this many times the columns of the smallest


def _buckets(stats: SufficientStats) -> list[np.ndarray]:
    """The outermost blocks in batches of similar size: one batch unless empty slots (blocks
    padded to the largest) would cost much more than the blocks themselves."""
    G = stats.levels[-1].ngroups
    every = np.arange(G)
    if stats.D == 1:
        return [every]
    topof = _top_of(stats)
    cols = np.zeros(G)
    for l, lv in enumerate(stats.levels):
        cols += lv.q * np.bincount(topof[l], minlength=G)
    m = _layout(stats, every).m
    padded, actual = G * float(m) ** 3, float((cols**3).sum())
    if padded <= PAD_WASTE * actual or padded <= PAD_FLOPS:
        return [every]
    order = np.argsort(cols, kind="stable")
    out, start = [], 0
    for i in range(1, G + 1):
        if i == G or cols[order[i]] > BUCKET_RATIO * cols[order[start]]:
            out.append(np.sort(order[start:i]))
            start = i
    return out


def _block_products(stats: SufficientStats, lay: _BlockLayout) -> tuple[np.ndarray, np.ndarray]:
    """Z_g'Z_g (G, m, m) and Z_g'X (G, m, k) of the outermost blocks g of ``lay``."""
    D, q, k = stats.D, stats.q, stats.k
    offs = np.cumsum([0] + q)
    xcols = np.arange(offs[-1], offs[-1] + k)
    G = len(lay.groups[D - 1])
    ZZ = np.zeros((G, lay.m, lay.m))
    ZX = np.zeros((G, lay.m, k))
    for l in range(D):
        C = (stats.inner if l == 0 else stats.group_sums(l))[lay.groups[l]]  # rows Z_l' W of the level-l groups
        rows = slice(0, q[0]) if l == 0 else slice(int(offs[l]), int(offs[l + 1]))
        ri = np.arange(q[l])
        T, O = lay.top[l], lay.own[l]
        ZX[T[:, None, None], (O[:, None] + ri)[:, :, None], np.arange(k)[None, None, :]] = C[:, rows][:, :, xcols]
        # the level's own block and its cross-products with every ancestor's columns
        chain = lay.groups[l]
        for a in range(l, D):
            if a > l:
                chain = stats.parents[a - 1][chain]
            ci = np.arange(q[a])
            block = C[:, rows][:, :, int(offs[a]) : int(offs[a + 1])]
            Oa = lay.own[a][lay.local[a][chain]]
            ii = (O[:, None] + ri)[:, :, None]
            jj = (Oa[:, None] + ci)[:, None, :]
            ZZ[T[:, None, None], ii, jj] = block
            if a > l:
                ZZ[T[:, None, None], jj.transpose(0, 2, 1), ii.transpose(0, 2, 1)] = block.transpose(0, 2, 1)
    return ZZ, ZX


def _selections(stats: SufficientStats, lay: _BlockLayout) -> list[tuple[np.ndarray, np.ndarray]]:
    """For every random-effect covariance parameter r, the index pairs (a, b) of the block's
    D_r = sum e_a e_b' (G_r = Z D_r Z' within a block): both orders for a covariance."""
    out = []
    where = _term_places(stats)
    for t in stats.terms:  # parameters follow the terms in lme4 order
        l, off = where[id(t)]
        s = lay.slots[l]
        for i, j in zip(*_tril(t.q)):
            a, b = s + off + i, s + off + j
            if i == j:
                out.append((a, b))
            else:
                out.append((np.r_[a, b], np.r_[b, a]))
    return out


def _term_places(stats: SufficientStats) -> dict[int, tuple[int, int]]:
    """The level of every term and the offset of its columns within the level."""
    where = {}
    for l, lv in enumerate(stats.levels):
        off = 0
        for t in lv.terms:
            where[id(t)] = (l, off)
            off += t.q
    return where


@dataclass
class _BlockSums:
    """The terms of K, P and Q that are sums over the outermost blocks (kenward_roger)."""

    K: np.ndarray  # (R-1, R) random x (random, residual) traces
    P: np.ndarray  # (R-1, k, k)
    Q: np.ndarray  # (R-1, R-1, k, k)
    Qres: np.ndarray  # (R-1, k, k)
    xzbzx: np.ndarray  # sum X'Z B Z'X
    xzbzzbzx: np.ndarray  # sum X'Z B Z'Z B Z'X
    nbn: np.ndarray  # sum (Z'Sigma^-1 X)' B (Z'Sigma^-1 X)
    tr_bzz: float
    tr_bzzbzz: float


def _block_sums(stats: SufficientStats, lay: _BlockLayout, theta: np.ndarray, sigma2: float) -> _BlockSums:
    """One batch of outermost blocks (one layout): the Woodbury pieces and their sums."""
    k, m = stats.k, lay.m
    ZZ, ZX = _block_products(stats, lay)
    lam = np.zeros((m, m))
    for l, lv in enumerate(stats.levels):
        L_l = lv.lambda_matrix(theta)
        for o in lay.slots[l]:
            lam[o : o + lv.q, o : o + lv.q] = L_l
    eye = np.eye(m)
    A = lam.T @ ZZ @ lam + eye
    B = lam @ np.linalg.solve(A, np.broadcast_to(lam.T, A.shape))  # Lambda (Lambda'Z'Z Lambda + I)^-1 Lambda'
    B = 0.5 * (B + B.transpose(0, 2, 1))
    H = eye - ZZ @ B  # Z' Sigma^-1 = sigma^-2 H Z'
    M = H @ ZZ / sigma2  # Z' Sigma^-1 Z
    M = 0.5 * (M + M.transpose(0, 2, 1))
    N = H @ ZX / sigma2  # Z' Sigma^-1 X
    M2 = H @ M / sigma2  # Z' Sigma^-2 Z
    M2 = 0.5 * (M2 + M2.transpose(0, 2, 1))
    N2 = H @ N / sigma2  # Z' Sigma^-2 X
    BZX = B @ ZX
    BZZ = B @ ZZ
    # every G_r within a block is Z D_r Z' with D_r = sum_i e_{a_i} e_{b_i}' over the index pairs of
    # parameter r (_selections); stacking the pairs of all parameters (``E`` maps a pair to its
    # parameter) turns the traces and products below into a few batched products
    sel = _selections(stats, lay)
    R1 = len(sel)
    Aix = np.concatenate([np.atleast_1d(a) for a, _ in sel])
    Bix = np.concatenate([np.atleast_1d(b) for _, b in sel])
    E = np.zeros((len(Aix), R1))
    E[np.arange(len(Aix)), np.repeat(np.arange(R1), [np.atleast_1d(a).size for a, _ in sel])] = 1.0
    G_, npair = M.shape[0], len(Aix)
    K = np.empty((R1, R1 + 1))
    # tr(Sigma^-1 G_r Sigma^-1 G_s) = sum_{i in r, j in s} M[b_i, a_j] M[b_j, a_i]
    Y = M[:, Bix][:, :, Aix]
    K[:, :R1] = E.T @ np.einsum("gij,gji->ij", Y, Y) @ E
    # tr(Sigma^-1 G_r Sigma^-1) = tr(D_r Z'Sigma^-2 Z) = sum_{i in r} M2[b_i, a_i]
    K[:, R1] = E.T @ M2[:, Bix, Aix].sum(axis=0)
    NA, NB = N[:, Aix], N[:, Bix]  # (G, pairs, k)
    # P_r = -sum_{i in r} N[a_i]' N[b_i]
    P = -np.einsum("gik,gil,ir->rkl", NA, NB, E, optimize=True)
    # Q_rs = sum_{i in r, j in s} N[b_i]' M[a_i, a_j] N[b_j]
    NBs = (NB[:, :, None, :] * E[None, :, :, None]).reshape(G_, npair, R1 * k)
    T = M[:, Aix][:, :, Aix] @ NBs
    QQ = NBs.reshape(G_ * npair, -1).T @ T.reshape(G_ * npair, -1)
    Q = QQ.reshape(R1, k, R1, k).transpose(0, 2, 1, 3)
    # Q_{r,res} = sum_{i in r} N[b_i]' (Z'Sigma^-2 X)[a_i]
    Qres = np.einsum("gik,gil,ir->rkl", NB, N2[:, Aix], E, optimize=True)
    return _BlockSums(K=K, P=P, Q=Q, Qres=Qres, xzbzx=np.einsum("gmi,gmj->ij", ZX, BZX),
                      xzbzzbzx=np.einsum("gmi,gmj->ij", BZX, ZZ @ BZX), nbn=np.einsum("gmi,gmj->ij", N, B @ N),
                      tr_bzz=float(np.einsum("gab,gba->", B, ZZ)), tr_bzzbzz=float(np.einsum("gab,gba->", BZZ, BZZ)))


def kenward_roger(stats: SufficientStats, theta: np.ndarray, sigma2: float, vcov: np.ndarray) -> KenwardRoger:
    """The Kenward-Roger adjusted covariance and the pieces of its df (module docstring), for
    a REML fit at ``theta`` with residual variance ``sigma2`` and Var(beta_hat) ``vcov`` (Phi),
    from the sufficient statistics ``stats`` alone."""
    theta = np.asarray(theta, dtype=float)
    Phi = np.asarray(vcov, dtype=float)
    k, n = stats.k, stats.n
    parts = [_block_sums(stats, _layout(stats, tops), theta, sigma2) for tops in _buckets(stats)]

    def total(name: str) -> np.ndarray:
        return np.sum([getattr(p, name) for p in parts], axis=0)

    q = sum(stats.q)
    XX = stats.total[q : q + k, q : q + k]
    # X' Sigma^-2 X = sigma^-4 (X'X - 2 X'Z B Z'X + X'Z B Z'Z B Z'X), X' Sigma^-3 X and tr(Sigma^-2)
    XS2X = (XX - 2.0 * total("xzbzx") + total("xzbzzbzx")) / sigma2**2
    XS2X = 0.5 * (XS2X + XS2X.T)
    XS3X = (XS2X - total("nbn")) / sigma2
    XS3X = 0.5 * (XS3X + XS3X.T)
    trS2 = (n - 2.0 * total("tr_bzz") + total("tr_bzzbzz")) / sigma2**2
    R1 = parts[0].P.shape[0]
    R = R1 + 1
    K = np.empty((R, R))
    K[:R1] = total("K")
    K[R1, :R1] = K[:R1, R1]
    K[R1, R1] = trS2
    P = np.concatenate([total("P"), -XS2X[None]])
    P = 0.5 * (P + P.transpose(0, 2, 1))
    Q = np.empty((R, R, k, k))
    Q[:R1, :R1] = total("Q")
    Qres = total("Qres")
    Q[:R1, R1] = Qres
    Q[R1, :R1] = Qres.transpose(0, 2, 1)
    Q[R1, R1] = XS3X

    PhiP = np.einsum("ij,rjk->rik", Phi, P)
    IE2 = K - 2.0 * np.einsum("ij,rsji->rs", Phi, Q) + np.einsum("rij,sji->rs", PhiP, PhiP)
    IE2 = 0.5 * (IE2 + IE2.T)
    condi = float(np.min(np.abs(np.linalg.eigvalsh(IE2))))
    W = 2.0 * (np.linalg.inv(IE2) if condi > SINGULAR_INFORMATION else np.linalg.pinv(IE2))
    W = 0.5 * (W + W.T)
    PPhiP = np.einsum("rij,jk,skl->rsil", P, Phi, P, optimize=True)
    U = np.einsum("rs,rsij->ij", W, Q - PPhiP)
    PhiA = Phi + 2.0 * Phi @ U @ Phi
    PhiA = 0.5 * (PhiA + PhiA.T)
    ggamma = []
    where = _term_places(stats)
    for t in stats.terms:
        l, off = where[id(t)]
        lt = stats.levels[l].lambda_matrix(theta)[off : off + t.q, off : off + t.q]
        cov = sigma2 * lt @ lt.T
        ggamma.extend(cov[i, j] for i, j in zip(*_tril(t.q)))
    ggamma.append(sigma2)
    return KenwardRoger(vcov_adjusted=PhiA, vcov=Phi, P=P, W=W, information=IE2, min_abs_eigenvalue=condi,
                        parameter_names=parameter_names(stats), ggamma=np.array(ggamma))
