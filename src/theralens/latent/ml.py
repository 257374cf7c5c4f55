"""Latent (multilevel SEM) decomposition of the patient-level design by full-information ML.

The model (models.md, "Latent decomposition", written for P processes at once; docs in
``docs/latent.md``). Patient i of therapist j has process scores x_ij (a P-vector), outcome
y_ij, adjustment covariates A_ij (intercept, baseline, patient covariates) and the therapist
has centred moderators W_j (an M-vector, possibly empty)::

    x_ij = kappa + Pi W_j + mu_j + w_ij           mu_j ~ N(0, T),  w_ij ~ N(0, S)
    y_ij = A_ij' gamma + g02' W_j + c_j' (Pi W_j + mu_j) + b_j' w_ij + u0j + e_ij
    c_j  = b_between + G03 W_j                    (between association and its moderation)
    b_j  = g10 + G11 W_j + u1j                    (within slope and its cross-level moderation)
    (u1j, u0j) ~ N(0, G),  e_ij ~ N(0, sigma^2)

mu_j (the therapist's latent caseload mean) and w_ij (the patient's latent deviation) are not
observed: only x_ij is. Using observed caseload means instead attenuates b_between to
lambda b_between + (1 - lambda) g10 and G03 to lambda G03 + (1 - lambda) G11, with lambda the
reliability of the caseload mean (Luedtke et al. 2008, Psychological Methods 13:203; Grilli &
Rampichini 2011); the latent model has no such bias.

**Likelihood.** Given the standardised slopes xi_j (u1j = L11 xi_j), everything is linear and
Gaussian in the standardised latent zeta_j = (T^-1/2 mu_j, u0j residual): with
d_ij = x_ij - kappa - Pi W_j and t_ij = y_ij - A_ij' gamma - g02' W_j - c_j' Pi W_j - b_j' d_ij,

    d_ij ~ N(B zeta_j, S),   t_ij - s_j ~ N(a_j' zeta_j, sigma^2),   zeta_j ~ N(0, I)

(B = [L_T, 0], a_j = (L_T'(c_j - b_j), l00), s_j = L01 xi_j), so zeta_j is integrated in
closed form, and only xi_j (P dimensions) numerically, by adaptive Gauss-Hermite quadrature
(Rockwood 2020, Psychometrika 85:275; Pinheiro & Bates 1995). Everything a therapist
contributes depends on the data only through n_j and the sums of r_ij = (y, A, x) and of
r_ij r_ij' over the therapist's patients (:class:`LatentStats`), so a fit costs
O(therapists x nodes), whatever the number of patients.

**Gradient.** With the nodes held fixed, the gradient of the log-likelihood is the
posterior-weighted complete-data score (Fisher's identity, used twice: over the quadrature
nodes and over zeta_j, Louis 1982), in closed form from the same per-node posterior mean and
covariance of zeta_j. Each optimisation round keeps the nodes fixed (BFGS with this exact
gradient); between rounds the nodes are re-centred on each therapist's posterior of xi_j, until
the maximised log-likelihood changes by less than ``tol``.

**Inference.** Wald standard errors from the observed information (central differences of the
analytic gradient), delta method for derived quantities (the contextual effect b_between -
g10, slope SDs), and profile-likelihood intervals for the effects on request.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from scipy import optimize, stats
from scipy.special import logsumexp

from theralens.model.satterthwaite import central_jacobian
from theralens.model.threads import one_blas_thread

__all__ = ["LatentFit", "LatentStats", "fit_latent", "latent_stats", "stats_from_arrays"]

LOG2PI = math.log(2.0 * math.pi)


# ---------------------------------------------------------------------------- statistics


@dataclass
class LatentStats:
    """Per-therapist sufficient statistics of the latent model (module docstring).

    Fields: ``therapists`` (ids, length J), ``n`` (patients per therapist, J), ``R1`` (J x D:
    sums of r = (y, A, x) over the therapist's patients), ``R2`` (J x D x D: sums of r r'),
    ``W`` (J x M centred moderators), ``processes`` (P names), ``adjust`` (names of A's
    columns, ``"(Intercept)"`` first), ``moderators`` (M names), ``moderator_centers``.
    Statistics of disjoint sets of therapists are combined with :meth:`combine`.
    """

    therapists: np.ndarray
    n: np.ndarray
    R1: np.ndarray
    R2: np.ndarray
    W: np.ndarray
    processes: tuple[str, ...]
    adjust: tuple[str, ...]
    moderators: tuple[str, ...] = ()
    moderator_centers: tuple[float, ...] = ()

    @property
    def P(self) -> int:
        return len(self.processes)

    @property
    def K(self) -> int:
        return len(self.adjust)

    @property
    def M(self) -> int:
        return len(self.moderators)

    @property
    def J(self) -> int:
        return len(self.n)

    @property
    def n_patients(self) -> int:
        return int(self.n.sum())

    def take(self, keep: np.ndarray) -> LatentStats:
        """Statistics of the therapists selected by ``keep`` (a boolean mask or indices); the
        moderators keep their centring."""
        return LatentStats(self.therapists[keep], self.n[keep], self.R1[keep], self.R2[keep], self.W[keep],
                           self.processes, self.adjust, self.moderators, self.moderator_centers)

    @classmethod
    def combine(cls, parts: list[LatentStats]) -> LatentStats:
        """Statistics of the union of therapists (a therapist in several parts is summed)."""
        first = parts[0]
        ids = np.concatenate([p.therapists for p in parts])
        uniq, inv = np.unique(ids, return_inverse=True)
        J = len(uniq)
        n = np.zeros(J)
        R1 = np.zeros((J, first.R1.shape[1]))
        R2 = np.zeros((J, *first.R2.shape[1:]))
        W = np.zeros((J, first.W.shape[1]))
        np.add.at(n, inv, np.concatenate([p.n for p in parts]))
        np.add.at(R1, inv, np.concatenate([p.R1 for p in parts]))
        np.add.at(R2, inv, np.concatenate([p.R2 for p in parts]))
        W[inv] = np.concatenate([p.W for p in parts])
        return cls(uniq, n, R1, R2, W, first.processes, first.adjust, first.moderators, first.moderator_centers)


def stats_from_arrays(
    therapist: np.ndarray,
    therapist_ids: np.ndarray,
    y: np.ndarray,
    adjust: np.ndarray,
    x: np.ndarray,
    W: np.ndarray | None = None,
    *,
    processes: tuple[str, ...],
    adjust_names: tuple[str, ...] = (),
    moderators: tuple[str, ...] = (),
    moderator_centers: tuple[float, ...] = (),
) -> LatentStats:
    """:class:`LatentStats` from arrays: ``therapist`` (code 0..J-1 of each patient's therapist),
    ``therapist_ids`` (J ids), ``y`` (N), ``adjust`` (N x K adjustment columns, without the
    intercept), ``x`` (N x P process scores), ``W`` (J x M centred moderators, or None)."""
    codes = np.asarray(therapist, dtype=np.int64)
    J = len(therapist_ids)
    r = np.column_stack([np.asarray(y, dtype=float), np.ones(len(codes)),
                         np.asarray(adjust, dtype=float).reshape(len(codes), -1),
                         np.asarray(x, dtype=float).reshape(len(codes), -1)])
    order = np.argsort(codes, kind="stable")
    codes, r = codes[order], r[order]
    n = np.bincount(codes, minlength=J).astype(float)
    starts = np.r_[0, np.cumsum(n[:-1])].astype(np.int64)
    nz = n > 0
    R1 = np.zeros((J, r.shape[1]))
    R1[nz] = np.add.reduceat(r, starts[nz], axis=0)
    R2 = np.zeros((J, r.shape[1], r.shape[1]))
    R2[nz] = np.add.reduceat(r[:, :, None] * r[:, None, :], starts[nz], axis=0)
    Wm = np.zeros((J, 0)) if W is None else np.asarray(W, dtype=float).reshape(J, -1)
    return LatentStats(np.asarray(therapist_ids), n, R1, R2, Wm, tuple(processes), ("(Intercept)", *adjust_names),
                       tuple(moderators), tuple(moderator_centers))


def latent_stats(
    frame: pd.DataFrame,
    processes: list[str] | tuple[str, ...],
    outcome: str,
    adjust: list[str] | tuple[str, ...] = (),
    moderators: pd.DataFrame | None = None,
    moderator_columns: list[str] | tuple[str, ...] = (),
    therapist: str = "therapist",
) -> LatentStats:
    """:class:`LatentStats` of a patient-level table (one row per patient).

    ``frame`` holds ``therapist``, the raw process scores x_ij (``processes``), the outcome and
    the adjustment columns; ``moderators`` one row per therapist (column ``therapist`` and
    ``moderator_columns``), centred here at their mean over the therapists in the model.
    Therapists without a moderator value must be removed by the caller.
    """
    ids = frame[therapist].astype(str).to_numpy()
    codes, uniq = pd.factorize(ids, sort=True)
    W, centers = None, ()
    if moderator_columns:
        if moderators is None:
            raise ValueError("moderator_columns given without a moderators table")
        m = moderators.assign(therapist=moderators["therapist"].astype(str)).set_index("therapist")
        Wraw = m.reindex(uniq)[list(moderator_columns)].to_numpy(dtype=float)
        if np.isnan(Wraw).any():
            raise ValueError("every therapist in the model needs a moderator value")
        mean = Wraw.mean(axis=0)
        W, centers = Wraw - mean, tuple(float(c) for c in mean)
    return stats_from_arrays(codes, np.asarray(uniq), frame[outcome].to_numpy(dtype=float),
                             frame[list(adjust)].to_numpy(dtype=float), frame[list(processes)].to_numpy(dtype=float),
                             W, processes=tuple(processes), adjust_names=tuple(adjust),
                             moderators=tuple(moderator_columns), moderator_centers=centers)


# ------------------------------------------------------------------------ parameters


class _Layout:
    """Where each block of the parameter vector theta lives (module docstring's symbols)."""

    def __init__(self, P: int, K: int, M: int, slopes: bool) -> None:
        self.P, self.K, self.M, self.slopes = P, K, M, slopes
        self.tri_p = np.tril_indices(P)
        q = P + 1
        if slopes:
            self.tri_g = np.tril_indices(q)
        else:  # only l00 (the therapist intercept SD)
            self.tri_g = (np.array([P]), np.array([P]))
        blocks = [("gamma", K), ("g02", M), ("kappa", P), ("Pi", P * M), ("b_between", P), ("G03", P * M),
                  ("g10", P), ("G11", P * M), ("LT", len(self.tri_p[0])), ("LS", len(self.tri_p[0])),
                  ("LG", len(self.tri_g[0])), ("log_sigma", 1)]
        self.slices: dict[str, slice] = {}
        i = 0
        for name, size in blocks:
            self.slices[name] = slice(i, i + size)
            i += size
        self.size = i

    def unpack(self, theta: np.ndarray) -> dict[str, np.ndarray]:
        P, M = self.P, self.M
        s = self.slices
        out = {k: theta[v] for k, v in s.items()}
        out["Pi"] = out["Pi"].reshape(P, M)
        out["G03"] = out["G03"].reshape(P, M)
        out["G11"] = out["G11"].reshape(P, M)
        for name in ("LT", "LS"):
            L = np.zeros((P, P))
            L[self.tri_p] = out[name]
            out[name] = L
        LG = np.zeros((P + 1, P + 1))
        LG[self.tri_g] = out["LG"]
        out["LG"] = LG
        out["log_sigma"] = out["log_sigma"][0]
        return out

    def pack_grad(self, g: dict[str, np.ndarray]) -> np.ndarray:
        out = np.empty(self.size)
        s = self.slices
        for name in ("gamma", "g02", "kappa", "b_between", "g10"):
            out[s[name]] = g[name]
        for name in ("Pi", "G03", "G11"):
            out[s[name]] = np.asarray(g[name]).reshape(-1)
        for name in ("LT", "LS"):
            out[s[name]] = g[name][self.tri_p]
        out[s["LG"]] = g["LG"][self.tri_g]
        out[s["log_sigma"]] = g["log_sigma"]
        return out


# ------------------------------------------------------------------------- criterion


@dataclass
class _Nodes:
    """Quadrature nodes of the standardised slopes: xi (J x K x P) and log weights (J x K)
    including the adaptive change of variables (so that sum_k exp(logw) f(xi_k) ~ E f(xi)),
    with the centre (J x P) and Cholesky scale (J x P x P) they were placed with."""

    xi: np.ndarray
    logw: np.ndarray
    mean: np.ndarray
    chol: np.ndarray


def _wsum_outer(pi: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """sum_jk pi_jk u_jk v_jk' (as one matrix product)."""
    a = (pi[:, :, None] * u).reshape(-1, u.shape[-1])
    return a.T @ v.reshape(-1, v.shape[-1])


def _gh_grid(P: int, Q: int) -> tuple[np.ndarray, np.ndarray]:
    """Product Gauss-Hermite rule for N(0, I_P): nodes (Q^P x P) and weights summing to 1."""
    x, w = np.polynomial.hermite_e.hermegauss(Q)
    w = w / w.sum()
    grids = np.meshgrid(*([x] * P), indexing="ij")
    wg = np.meshgrid(*([w] * P), indexing="ij")
    nodes = np.column_stack([g.reshape(-1) for g in grids])
    weights = np.prod(np.column_stack([g.reshape(-1) for g in wg]), axis=1)
    keep = weights > 1e-14 * weights.max()  # nodes far in the tails carry no weight
    return nodes[keep], weights[keep]


def _adapt(mean: np.ndarray, chol: np.ndarray, grid: np.ndarray, weights: np.ndarray) -> _Nodes:
    """Nodes centred at each therapist's posterior mean of xi and scaled by its Cholesky factor."""
    xi = mean[:, None, :] + np.einsum("jpq,kq->jkp", chol, grid)
    logphi_xi = -0.5 * np.sum(xi**2, axis=2)
    logphi_nu = -0.5 * np.sum(grid**2, axis=1)
    logdet = np.sum(np.log(np.abs(np.diagonal(chol, axis1=1, axis2=2))), axis=1)
    logw = np.log(weights)[None, :] + logphi_xi - logphi_nu[None, :] + logdet[:, None]
    return _Nodes(xi, logw, mean, chol)


class LatentCriterion:
    """Log-likelihood of the latent model and its gradient for fixed quadrature nodes."""

    def __init__(self, st: LatentStats, slopes: bool) -> None:
        self.st = st
        self.slopes = slopes
        self.layout = _Layout(st.P, st.K, st.M, slopes)
        P, K = st.P, st.K
        self.iy = 0
        self.iA = np.arange(1, 1 + K)
        self.ix = np.arange(1 + K, 1 + K + P)
        self.Rx1 = st.R1[:, self.ix]
        self.Rxx = st.R2[:, self.ix][:, :, self.ix]
        self.RA1 = st.R1[:, self.iA]
        self.R2x_t = np.ascontiguousarray(st.R2[:, :, self.ix].transpose(0, 2, 1))  # J x P x D

    def evaluate(self, theta: np.ndarray, nodes: _Nodes, grad: bool = True
                 ) -> tuple[float, np.ndarray | None, dict[str, np.ndarray]]:
        """(log-likelihood, gradient or None, per-node quantities: log integrand, posterior moments)."""
        st, lay = self.st, self.layout
        P, n = st.P, st.n
        p = lay.unpack(theta)
        W = st.W
        sig2 = math.exp(2.0 * p["log_sigma"])
        LT, LS, LG = p["LT"], p["LS"], p["LG"]
        L11, L01, l00 = LG[:P, :P], LG[P, :P], LG[P, P]
        xi = nodes.xi  # J x K x P
        c = p["b_between"][None, :] + W @ p["G03"].T  # J x P
        po = W @ p["Pi"].T  # J x P  (Pi W_j)
        o = p["kappa"][None, :] + po
        b = (p["g10"][None, :] + W @ p["G11"].T)[:, None, :] + xi @ L11.T  # J x K x P
        h = c[:, None, :] - b
        s = xi @ L01  # J x K

        Sd = self.Rx1 - n[:, None] * o  # sum d
        Sdd = (self.Rxx - self.Rx1[:, :, None] * o[:, None, :] - o[:, :, None] * self.Rx1[:, None, :]
               + n[:, None, None] * o[:, :, None] * o[:, None, :])
        # t_i = phi' r_i + phi0, phi = (1, -gamma, -b) over r = (y, A, x)
        R1, R2 = st.R1, st.R2
        R1phi = R1[:, self.iy][:, None] - (self.RA1 @ p["gamma"])[:, None] - (b @ self.Rx1[:, :, None])[:, :, 0]
        R2y = R2[:, :, self.iy] - R2[:, :, self.iA] @ p["gamma"]  # J x D
        R2phi = R2y[:, None, :] - b @ self.R2x_t  # J x K x D
        phi0 = (np.einsum("jkp,jp->jk", b, o) - (W @ p["g02"])[:, None] - np.sum(c * po, axis=1)[:, None])
        R2phi_y = (R2phi[:, :, self.iy] - R2phi[:, :, self.iA] @ p["gamma"]
                   - np.einsum("jkp,jkp->jk", R2phi[:, :, self.ix], b))
        St = R1phi + n[:, None] * phi0
        Stt = R2phi_y + 2.0 * phi0 * R1phi + n[:, None] * phi0**2
        Std = R2phi[:, :, self.ix] + phi0[:, :, None] * self.Rx1[:, None, :] - St[:, :, None] * o[:, None, :]
        T1 = St - n[:, None] * s
        T2 = Stt - 2.0 * s * St + n[:, None] * s**2

        Sinv = np.linalg.inv(LS @ LS.T)
        logdetS = 2.0 * np.sum(np.log(np.abs(np.diag(LS))))
        Mx = LT.T @ Sinv @ LT
        q = P + 1
        A = np.zeros((len(n), q, q))
        A[:, :P, :P] = np.eye(P)[None] + n[:, None, None] * Mx[None]
        A[:, P, P] = 1.0
        Ainv = np.linalg.inv(A)
        logdetA = np.linalg.slogdet(A[:, :P, :P])[1]
        a = np.concatenate([h @ LT, np.broadcast_to(l00, h.shape[:2])[:, :, None]], axis=2)  # J x K x q
        kap = n / sig2
        Aa = a @ Ainv  # Ainv is symmetric
        aAa = np.sum(a * Aa, axis=2)
        den = 1.0 + kap[:, None] * aAa
        eta = np.zeros_like(a)
        eta[:, :, :P] = (Sd @ Sinv @ LT)[:, None, :]
        eta += a * (T1 / sig2)[:, :, None]
        Ainv_eta = eta @ Ainv
        m = Ainv_eta - (kap[:, None] * np.sum(Aa * eta, axis=2) / den)[:, :, None] * Aa
        c0 = np.einsum("pq,jqp->j", Sinv, Sdd)[:, None] + T2 / sig2
        logdetL = logdetA[:, None] + np.log(den)
        logp = -0.5 * (n[:, None] * (q * LOG2PI + logdetS + 2.0 * p["log_sigma"]) + c0
                       - np.sum(eta * m, axis=2) + logdetL)
        integrand = nodes.logw + logp
        ll_j = logsumexp(integrand, axis=1)
        ll = float(ll_j.sum())
        pi = np.exp(integrand - ll_j[:, None])
        extras = {"pi": pi, "ll_j": ll_j, "b": b, "m": m, "Aa": Aa, "den": den, "Ainv": Ainv, "kap": kap}
        if not grad:
            return ll, None, extras

        # Posterior of zeta at each node: mean m, covariance C = Ainv - kap Aa Aa' / den, so that
        # C a = Aa / den and a'C a = aAa / den (Sherman-Morrison); no J x K x q x q array is formed.
        am = np.sum(a * m, axis=2)
        E1 = (T1 - n[:, None] * am) / sig2
        Ee2 = T2 - 2.0 * am * T1 + n[:, None] * (aAa / den + am**2)
        g: dict[str, np.ndarray] = {}
        g["log_sigma"] = float(np.sum(pi * (-n[:, None] + Ee2 / sig2)))
        # sum_k pi (C + m m') over the mu block, per therapist
        wAa = pi * kap[:, None] / den
        AaP, mP = Aa[:, :, :P], m[:, :, :P]
        Cbar = Ainv[:, :P, :P] - (wAa[:, :, None] * AaP).transpose(0, 2, 1) @ AaP
        CMMbar = Cbar + (pi[:, :, None] * mP).transpose(0, 2, 1) @ mP
        LCM = np.einsum("j,jpq->pq", n, CMMbar)
        mbar = np.einsum("jk,jkp->jp", pi, m[:, :, :P])
        Bmbar = mbar @ LT.T
        SdB = Sd.T @ Bmbar
        Eff_tot = Sdd.sum(axis=0) - SdB - SdB.T + LT @ LCM @ LT.T
        GS = -0.5 * (n.sum() * Sinv - Sinv @ Eff_tot @ Sinv)
        g["LS"] = np.tril(2.0 * GS @ LS)
        TA = (R2phi[:, :, self.iA] + phi0[:, :, None] * self.RA1[:, None, :]) - s[:, :, None] * self.RA1[:, None, :]
        g["gamma"] = np.einsum("jk,jka->a", pi, TA - am[:, :, None] * self.RA1[:, None, :]) / sig2
        piE1 = pi * E1
        g["g02"] = np.einsum("jk,jm->m", piE1, W)
        Bm = m[:, :, :P] @ LT.T  # J x K x P
        g_o = h * E1[:, :, None] + (Sd[:, None, :] - n[:, None, None] * Bm) @ Sinv.T
        g["kappa"] = np.einsum("jk,jkp->p", pi, g_o - c[:, None, :] * E1[:, :, None])
        g["Pi"] = np.einsum("jp,jm->pm", np.einsum("jk,jkp->jp", pi, g_o), W)
        CMMa = Aa / den[:, :, None] + m * am[:, :, None]
        g_a = (T1[:, :, None] * m - n[:, None, None] * CMMa) / sig2
        g_h = g_a[:, :, :P] @ LT.T
        g_c = g_h + E1[:, :, None] * po[:, None, :]
        g["b_between"] = np.einsum("jk,jkp->p", pi, g_c)
        g["G03"] = np.einsum("jp,jm->pm", np.einsum("jk,jkp->jp", pi, g_c), W)
        Td = Std - s[:, :, None] * Sd[:, None, :]
        g_b = (Td - am[:, :, None] * Sd[:, None, :]) / sig2 - g_h
        g["g10"] = np.einsum("jk,jkp->p", pi, g_b)
        g["G11"] = np.einsum("jp,jm->pm", np.einsum("jk,jkp->jp", pi, g_b), W)
        gLG = np.zeros((q, q))
        gLG[:P, :P] = _wsum_outer(pi, g_b, xi)
        gLG[P, :P] = np.einsum("jk,jkr->r", piE1, xi)
        gLG[P, P] = float(np.sum(pi * g_a[:, :, P]))
        g["LG"] = gLG
        gLT = _wsum_outer(pi, h, g_a[:, :, :P])
        gLT += Sinv @ (Sd.T @ mbar - LT @ LCM)
        g["LT"] = np.tril(gLT)
        return ll, lay.pack_grad(g), extras


# ------------------------------------------------------------------------------- fit


@dataclass
class LatentFit:
    """A latent-decomposition ML fit (module docstring).

    Fields: ``stats`` (the :class:`LatentStats`), ``theta`` (parameter vector), ``loglik``,
    ``vcov`` (of theta, from the observed information), ``effects`` (one row per process and
    term: ``within_therapist`` (g10), ``between_therapist`` (b_between), ``contextual``
    (b_between - g10): estimate, se, z, p, ci_low, ci_high), ``moderators`` (per process and
    moderator: ``within_slope`` (G11) and ``between_association`` (G03)), ``variances``
    (T, S, G, sigma^2 and the slope SDs), ``therapists`` (each therapist's latent caseload mean
    and slope: posterior mean and SD), ``reliability`` (lambda_j of the latent means at the
    estimates), ``nodes`` (quadrature points per slope dimension), ``converged``, ``messages``,
    ``rounds``, ``evaluations``, ``seconds``, ``quadrature_change`` (how much the log-likelihood
    moves with 4 more quadrature points per slope), ``gradient_max`` (at the end), ``slices``
    (where each block of ``theta`` lives: gamma, g02, kappa, Pi, b_between, G03, g10, G11, LT,
    LS, LG, log_sigma).
    """

    stats: LatentStats
    theta: np.ndarray
    loglik: float
    vcov: np.ndarray
    params: dict[str, np.ndarray]
    effects: pd.DataFrame
    moderators: pd.DataFrame
    variances: pd.DataFrame
    therapists: pd.DataFrame
    nodes: int
    slopes: bool
    converged: bool
    messages: list[str] = field(default_factory=list)
    rounds: int = 0
    evaluations: int = 0
    seconds: float = 0.0
    quadrature_change: float = 0.0
    gradient_max: float = float("nan")
    slices: dict[str, slice] = field(default_factory=dict)
    criterion: LatentCriterion | None = field(default=None, repr=False)
    final_nodes: _Nodes | None = field(default=None, repr=False)

    def contrast_vector(self, effect: str, process: str, moderator: str | None = None) -> np.ndarray:
        """The vector c with c' theta = the named effect: ``within_therapist`` (g10),
        ``between_therapist`` (b_between), ``contextual`` (b_between - g10), ``within_slope``
        (G11) or ``between_association`` (G03) of ``moderator``."""
        st = self.stats
        i = st.processes.index(process)
        c = np.zeros(len(self.theta))
        if effect in ("within_therapist", "contextual"):
            c[self.slices["g10"].start + i] = -1.0 if effect == "contextual" else 1.0
        if effect in ("between_therapist", "contextual"):
            c[self.slices["b_between"].start + i] = 1.0
        if effect in ("within_slope", "between_association"):
            m = st.moderators.index(moderator)
            c[self.slices["G11" if effect == "within_slope" else "G03"].start + i * st.M + m] = 1.0
        if not c.any():
            raise ValueError(f"unknown effect {effect!r}")
        return c

    def profile_interval(self, c: np.ndarray, level: float = 0.95) -> tuple[float, float]:
        """Profile-likelihood interval of c' theta: the values v with 2 (l_max - l_v) <=
        chi2_1(level), l_v the log-likelihood maximised under c' theta = v (the quadrature
        nodes of the fit are kept, adapted at the maximum).

        Each side walks out from the estimate in steps of a Wald half-width (half the estimate's
        size, at least 0.5, for a fit without standard errors), every constrained
        maximisation starting from the previous point's solution, until the deviance rises by
        chi2_1(level); a side where it has not after nine steps is unbounded (+-inf: the data do
        not bound the effect, as when the latent caseload-mean variance is near zero). The
        crossing is then found by Brent's method between the last two points, each trial
        starting from the straight line between their solutions, so that the deviance is one
        function of v and keeps the signs found at the two ends."""
        crit, nd = self.criterion, self.final_nodes
        if crit is None or nd is None:
            raise ValueError("this fit holds no criterion to profile")
        c = np.asarray(c, dtype=float)
        est = float(c @ self.theta)
        var = float(c @ self.vcov @ c)
        # without a standard error (the observed information not positive definite) the walk
        # steps by the estimate's own size
        se = math.sqrt(var) if np.isfinite(var) and var > 1e-12 else 0.5 * max(1.0, abs(est))
        crit_val = float(stats.chi2.ppf(level, 1))
        u = c / (c @ c)
        # orthonormal basis of the directions that keep c' theta fixed
        basis = np.linalg.svd(np.eye(len(c)) - np.outer(c, c) / (c @ c))[0][:, : len(c) - 1]
        objective = _objective(crit, nd)

        def deviance_gap(v: float, z0: np.ndarray) -> tuple[float, np.ndarray]:
            base = self.theta + (v - est) * u

            def fun(z: np.ndarray) -> tuple[float, np.ndarray]:
                f, g = objective(base + basis @ z)
                return f, basis.T @ g

            res = optimize.minimize(fun, z0, jac=True, method="BFGS", options={"gtol": 1e-6})
            return 2.0 * (self.loglik + float(res.fun)) - crit_val, res.x

        step = 1.96 * se * np.sqrt(crit_val / 3.841458820694124)
        bounds = []
        for side in (-1.0, 1.0):
            inner = (est, np.zeros(len(c) - 1), -crit_val)
            outer = None
            for k in range(1, 10):
                v = est + side * k * step
                gap, z = deviance_gap(v, inner[1])
                if gap >= 0:
                    outer = (v, z, gap)
                    break
                inner = (v, z, gap)
            if outer is None:
                bounds.append(float("-inf") if side < 0 else float("inf"))
                continue
            ends = {inner[0]: inner[2], outer[0]: outer[2]}

            def gap_between(v: float, a: tuple = inner, b: tuple = outer, ends: dict = ends) -> float:
                if v in ends:
                    return ends[v]
                t = (v - a[0]) / (b[0] - a[0])
                return deviance_gap(v, (1.0 - t) * a[1] + t * b[1])[0]

            lo, hi = sorted((inner[0], outer[0]))
            bounds.append(float(optimize.brentq(gap_between, lo, hi, xtol=1e-7 * max(1.0, abs(est)), maxiter=200)))
        return bounds[0], bounds[1]

    def jackknife(self, level: float = 0.95) -> pd.DataFrame:
        """Delete-one-therapist jackknife of every effect and moderator effect (Quenouille 1956;
        Tukey 1958; Efron & Tibshirani 1993, *An Introduction to the Bootstrap*, ch. 11).

        theta_(j) is the ML estimate without therapist j: BFGS from this fit's estimate, with the
        other therapists' quadrature nodes of this fit and the inverse observed information as
        its first inverse Hessian (a refit that does not converge so is repeated from scratch
        with :func:`fit_latent`; so is one that starts or ends near a zero slope SD, where the
        estimator restarts away from it). Each theta_(j) is thus the maximum reached from this
        fit's estimate: where the likelihood has ridges or several maxima, as when the latent
        caseload-mean variance is near zero and the between effect is not identified, refits
        from other starts can reach others and the jackknife says little. For an effect
        e = c' theta, with J therapists and
        ebar = mean_j c' theta_(j):

        - ``jackknife_estimate`` = J e - (J - 1) ebar, which removes the O(1/J) bias of the ML
          estimate: the latent between-therapist effect is a ratio of between-therapist
          covariances, and its ML estimate runs high in finite samples (+0.02 at 150 x 5 and
          ICC .2, validation/latent.md; the jackknife's record: validation/latent_jackknife.md);
        - ``jackknife_bias`` = (J - 1) (ebar - e), the bias so estimated;
        - ``se`` = sqrt((J - 1) / J sum_j (c' theta_(j) - ebar)^2), a therapist-cluster-robust SE;
        - ``ci_low``, ``ci_high``: jackknife_estimate -+ t_{J-1} se (Tukey's pseudo-values), with
          ``df`` = J - 1.

        Rows as ``effects`` and ``moderators`` (process, component or moderator/target,
        ``estimate`` = the ML estimate, the columns above, ``therapists`` = J). Costs J refits
        near the optimum (about 2 s at 150 therapists and one process on this project's
        machine; benchmarks/RESULTS.md)."""
        st, nd, crit = self.stats, self.final_nodes, self.criterion
        if crit is None or nd is None:
            raise ValueError("this fit holds no criterion to refit")
        J = st.J
        if J < 4:
            raise ValueError("the jackknife needs at least four therapists")
        # BFGS's first inverse Hessian: the inverse information, with a unit diagonal for any
        # parameter held at a boundary (a zero slope SD: NaN variances, see _covariance)
        held = ~np.isfinite(np.diag(self.vcov))
        start = np.where(np.isfinite(self.vcov), self.vcov, 0.0)
        start[held, held] = 1.0
        hess0 = _positive_definite(start)
        thetas = np.empty((J, len(self.theta)))
        with one_blas_thread():
            for j in range(J):
                keep = np.arange(J) != j
                thetas[j] = _refit_without(self, st.take(keep), _Nodes(nd.xi[keep], nd.logw[keep], nd.mean[keep],
                                                                       nd.chol[keep]), hess0)
        rows = [(r.process, r.component, None, self.contrast_vector(r.component, r.process))
                for r in self.effects.itertuples(index=False)]
        rows += [(r.process, r.target, r.moderator, self.contrast_vector(r.target, r.process, r.moderator))
                 for r in self.moderators.itertuples(index=False)]
        q = float(stats.t.ppf(0.5 + level / 2.0, J - 1))
        out = []
        for process, component, moderator, c in rows:
            est, loo = float(c @ self.theta), thetas @ c
            mean = float(loo.mean())
            corrected = J * est - (J - 1) * mean
            se = math.sqrt((J - 1) / J * float(np.sum((loo - mean) ** 2)))
            row = {"process": process, "component": component}
            if moderator is not None:
                row["moderator"] = moderator
            out.append({**row, "estimate": est, "jackknife_estimate": corrected, "jackknife_bias": est - corrected,
                        "se": se, "df": J - 1, "ci_low": corrected - q * se, "ci_high": corrected + q * se,
                        "therapists": J})
        cols = ["process", "component", "moderator", "estimate", "jackknife_estimate", "jackknife_bias", "se", "df",
                "ci_low", "ci_high", "therapists"]
        return pd.DataFrame(out).reindex(columns=cols)

    def profile_table(self, level: float = 0.95) -> pd.DataFrame:
        """Profile-likelihood intervals of every effect and moderator effect (rows as
        ``effects`` and ``moderators``: process, component or moderator/target, estimate,
        profile_low, profile_high)."""
        rows = []
        for r in self.effects.itertuples(index=False):
            lo, hi = self.profile_interval(self.contrast_vector(r.component, r.process), level)
            rows.append({"process": r.process, "component": r.component, "estimate": r.estimate,
                         "profile_low": lo, "profile_high": hi})
        for r in self.moderators.itertuples(index=False):
            lo, hi = self.profile_interval(self.contrast_vector(r.target, r.process, r.moderator), level)
            rows.append({"process": r.process, "component": r.target, "moderator": r.moderator,
                         "estimate": r.estimate, "profile_low": lo, "profile_high": hi})
        return pd.DataFrame(rows)

    @property
    def slope_sd(self) -> np.ndarray:
        """SD of the therapist random slopes u1j (per process)."""
        G = self.params["G"]
        return np.sqrt(np.diag(G)[: self.stats.P])

    def __repr__(self) -> str:
        return (f"<LatentFit: {self.stats.P} process(es), {self.stats.J} therapists, {self.stats.n_patients} patients, "
                f"logLik {self.loglik:.4f}, {'converged' if self.converged else 'NOT converged'}>")


def _start(st: LatentStats, slopes: bool, layout: _Layout) -> np.ndarray:
    """Moment-based start: ANOVA covariances of x, OLS of y on A, the within and between parts."""
    P, K = st.P, st.K
    n = st.n
    ix = np.arange(1 + K, 1 + K + P)
    xbar_j = st.R1[:, ix] / n[:, None]
    kappa = xbar_j.mean(axis=0)
    Sxx_w = (st.R2[:, ix][:, :, ix] - n[:, None, None] * xbar_j[:, :, None] * xbar_j[:, None, :]).sum(axis=0)
    N, J = n.sum(), len(n)
    S = Sxx_w / max(N - J, 1.0)
    T = np.cov(xbar_j.T, ddof=1).reshape(P, P) - S * np.mean(1.0 / n)
    ev, V = np.linalg.eigh(T)
    T = (V * np.maximum(ev, 0.05 * np.diag(S).mean())) @ V.T
    # pooled regression of y on (A, x_within, xbar_j): from the sums
    # totals of r r' and within parts
    tot = st.R2.sum(axis=0)
    between = np.einsum("jd,je->de", st.R1, st.R1 / n[:, None])
    within = tot - between
    iA = np.arange(1, 1 + K)
    # within regression: y on x within therapists -> g10
    g10 = np.linalg.lstsq(within[np.ix_(ix, ix)], within[ix, 0], rcond=None)[0]
    # between regression on therapist means: y_bar on (A_bar, x_bar)
    Ab = st.R1 / n[:, None]
    Xb = np.column_stack([Ab[:, iA], Ab[:, ix]])
    coef = np.linalg.lstsq(Xb, Ab[:, 0], rcond=None)[0]
    gamma = coef[:K].copy()
    bb = coef[K:]
    resid_w = within[0, 0] - within[0, ix] @ g10
    sig2 = max(resid_w / max(N - J, 1.0), 1e-6)
    theta = np.zeros(layout.size)
    s = layout.slices
    theta[s["gamma"]] = gamma
    theta[s["kappa"]] = kappa
    theta[s["b_between"]] = bb
    theta[s["g10"]] = g10
    LT = np.linalg.cholesky(T + 1e-9 * np.eye(P))
    LS = np.linalg.cholesky(S + 1e-9 * np.eye(P))
    theta[s["LT"]] = LT[layout.tri_p]
    theta[s["LS"]] = LS[layout.tri_p]
    q = P + 1
    LG = np.zeros((q, q))
    sd_y = math.sqrt(sig2)
    if slopes:
        for p in range(P):
            LG[p, p] = 0.3 * sd_y / math.sqrt(S[p, p])
    LG[P, P] = 0.3 * sd_y
    theta[s["LG"]] = LG[layout.tri_g]
    theta[s["log_sigma"]] = 0.5 * math.log(sig2)
    return theta


def fit_latent(st: LatentStats, **options: Any) -> LatentFit:
    """Maximum-likelihood fit of the latent model (module docstring) from :class:`LatentStats`,
    with one BLAS thread (its blocks are small: :func:`theralens.model.threads.one_blas_thread`).

    Options: ``random_slopes`` (default True; False: a random-intercept model, exact without
    quadrature), ``nodes`` (Gauss-Hermite points per slope to start with; default 11 for one
    process, 9 for two, 5 for three, 3 beyond; grown by 4 while the log-likelihood moves by more
    than ``quadrature_tol``, default 1e-6), ``tol`` (change of the log-likelihood between
    quadrature rounds that ends them, default 1e-7), ``max_rounds`` (12), ``start`` (theta).
    """
    with one_blas_thread():
        return _fit_latent(st, **options)


def _fit_latent(
    st: LatentStats,
    *,
    random_slopes: bool = True,
    nodes: int | None = None,
    tol: float = 1e-7,
    quadrature_tol: float = 1e-6,
    max_rounds: int = 12,
    start: np.ndarray | None = None,
) -> LatentFit:
    """Maximum-likelihood fit of the latent model (module docstring) from :class:`LatentStats`.

    ``random_slopes``: therapist random slopes u1j (False: a random-intercept model, whose
    likelihood is exact without quadrature). ``nodes``: Gauss-Hermite points per slope
    dimension to start with (default 11 for one process, 9 for two, 5 for three, 3 beyond);
    after the fit the log-likelihood is re-evaluated with 4 more points per dimension and,
    while it moves by more than ``quadrature_tol``, the fit is repeated with them, so the
    reported criterion is stable to ``quadrature_tol`` (``LatentFit.quadrature_change``).
    """
    t0 = time.perf_counter()
    P, J = st.P, st.J
    if J < 3:
        raise ValueError("the latent model needs at least three therapists")
    crit = LatentCriterion(st, random_slopes)
    lay = crit.layout
    theta = _start(st, random_slopes, lay) if start is None else np.asarray(start, dtype=float).copy()
    messages: list[str] = []
    evals = 0
    rounds_total = 0

    def rule(Q: int) -> tuple[np.ndarray, np.ndarray]:
        return _gh_grid(P, Q) if random_slopes else (np.zeros((1, P)), np.ones(1))

    def optimise(theta: np.ndarray, Q: int, centre: _Nodes) -> tuple[np.ndarray, float, _Nodes, bool]:
        """BFGS rounds with Q points per slope, placed first where ``centre``'s nodes were."""
        nonlocal evals, rounds_total
        grid, weights = rule(Q)
        nd = _adapt(centre.mean, centre.chol, grid, weights)

        def fun(th: np.ndarray) -> tuple[float, np.ndarray]:
            nonlocal evals
            evals += 1
            return _objective(crit, nd)(th)  # nd: this round's nodes (re-centred between rounds)

        ok, hess, ll = False, None, -np.inf
        for k in range(max_rounds):
            rounds_total += 1
            if random_slopes:
                nd = _recentre(crit, theta, nd, grid, weights)
            if k > 0:
                # converged when re-centred nodes neither move the criterion nor the gradient
                ll_new, g_new, _ = crit.evaluate(theta, nd)
                evals += 1
                if abs(ll_new - ll) < tol and np.max(np.abs(g_new)) < 1e-4:
                    ll = ll_new
                    break
            # later rounds keep BFGS's curvature estimate
            opts = {"gtol": 1e-6, "maxiter": 3000}
            if hess is not None:
                opts["hess_inv0"] = hess
            res = optimize.minimize(fun, theta, jac=True, method="BFGS", options=opts)
            theta, hess = res.x, _positive_definite(res.hess_inv)
            ll = -float(res.fun)
            ok = bool(res.success or np.max(np.abs(res.jac)) < 1e-3)
            if not random_slopes:
                break
        else:
            messages.append(f"the adaptive quadrature did not settle in {max_rounds} rounds")
        if not ok:
            messages.append(f"optimizer: {res.message}")
        return theta, ll, nd, ok

    if random_slopes:
        Q = nodes or {1: 11, 2: 9, 3: 5}.get(P, 3)
        max_q = Q + 12
    else:
        Q = max_q = 1
    prior = _adapt(np.zeros((J, P)), np.broadcast_to(np.eye(P), (J, P, P)).copy(), *rule(Q))
    theta, ll, nd, converged = optimise(theta, Q, prior)
    if random_slopes:
        # The likelihood is even in each column of the slope Cholesky factor (u1 = L11 xi, xi
        # symmetric), so a zero slope SD is a stationary point and BFGS can stop near it, at a
        # worse maximum. Restart once with the small slope SDs pushed back to the start's
        # size and keep the better maximum.
        theta2 = _away_from_zero_slopes(st, lay, theta)
        if theta2 is not None:
            cand = optimise(theta2, Q, nd)
            if cand[1] > ll + 1e-7:
                messages.append("a restart away from a small slope SD found a higher maximum (kept)")
                theta, ll, nd, converged = cand
    change = 0.0
    while random_slopes:
        grid, weights = rule(Q + 4)
        finer = _recentre(crit, theta, _adapt(nd.mean, nd.chol, grid, weights), grid, weights)
        change = abs(crit.evaluate(theta, finer, grad=False)[0] - ll)
        if change <= quadrature_tol or max_q < Q + 4:
            if change > quadrature_tol:
                messages.append(f"the log-likelihood still moves by {change:.2g} with {Q + 4} quadrature points "
                                "per slope; estimates are approximate at that level")
            break
        Q += 4
        theta, ll, nd, converged = optimise(theta, Q, nd)
    ll, g, ex = crit.evaluate(theta, nd)
    H = central_jacobian(lambda th: crit.evaluate(th, nd)[1], theta)  # of the analytic gradient
    vcov = _covariance(-0.5 * (H + H.T), theta, lay, messages)
    fit = _assemble(st, crit, theta, ll, vcov, ex, Q, random_slopes, converged, messages, rounds_total, evals,
                    time.perf_counter() - t0)
    fit.quadrature_change = float(change)
    fit.gradient_max = float(np.max(np.abs(g)))
    fit.criterion, fit.final_nodes = crit, nd
    return fit


def _positive_definite(H: np.ndarray) -> np.ndarray | None:
    """BFGS's inverse-Hessian estimate, symmetrised, if it is positive definite (else None:
    the next round starts from the identity)."""
    H = 0.5 * (H + H.T)
    try:
        np.linalg.cholesky(H)
    except np.linalg.LinAlgError:
        return None
    return H


def _objective(crit: LatentCriterion, nodes: _Nodes) -> Callable[[np.ndarray], tuple[float, np.ndarray]]:
    """theta -> (-log-likelihood, -gradient) at fixed nodes, for BFGS. A point where the
    criterion cannot be evaluated or is not finite (a line-search step far outside) gets 1e300
    and a zero gradient, so that the line search backs off."""
    def objective(th: np.ndarray) -> tuple[float, np.ndarray]:
        try:
            with np.errstate(all="ignore"):
                ll, g, _ = crit.evaluate(th, nodes)
        except (ArithmeticError, ValueError, np.linalg.LinAlgError):
            return 1e300, np.zeros_like(th)
        if not np.isfinite(ll) or not np.all(np.isfinite(g)):
            return 1e300, np.zeros_like(th)
        return -ll, -g

    return objective


def _away_from_zero_slopes(st: LatentStats, lay: _Layout, theta: np.ndarray) -> np.ndarray | None:
    """``theta`` with every therapist slope SD below a quarter of the start's pushed back to the
    start's size, or None if there is none. The likelihood is even in each column of the slope
    Cholesky factor, so a zero slope SD is a stationary point where BFGS can stop short of a
    higher maximum; :func:`fit_latent` (and the jackknife's refits) also try from here."""
    LG, LG0 = lay.unpack(theta)["LG"], lay.unpack(_start(st, True, lay))["LG"]
    small = [i for i in range(st.P) if np.linalg.norm(LG[i, : i + 1]) < 0.25 * LG0[i, i]]
    if not small:
        return None
    alt = LG.copy()
    for i in small:
        alt[i, : i + 1] = 0.0
        alt[i, i] = LG0[i, i]
    out = theta.copy()
    out[lay.slices["LG"]] = alt[lay.tri_g]
    return out


def _refit_without(fit: LatentFit, st: LatentStats, nodes: _Nodes, hess0: np.ndarray | None) -> np.ndarray:
    """theta of the ML fit of ``st`` (the fit's therapists less one) from ``fit``'s estimate and
    nodes (:meth:`LatentFit.jackknife`): BFGS from the estimate and, where a slope SD is near
    zero, also from there with it pushed away (as :func:`fit_latent` restarts), keeping the
    higher maximum; a full :func:`fit_latent` if neither converges."""
    crit = LatentCriterion(st, fit.slopes)
    objective = _objective(crit, nodes)
    starts = [(fit.theta, hess0)]
    away = _away_from_zero_slopes(st, crit.layout, fit.theta) if fit.slopes else None
    if away is not None:
        starts.append((away, hess0))
    best = None
    for theta0, h0 in starts:
        opts: dict[str, Any] = {"gtol": 1e-6, "maxiter": 3000}
        if h0 is not None:
            opts["hess_inv0"] = h0
        res = optimize.minimize(objective, theta0, jac=True, method="BFGS", options=opts)
        if (res.success or np.max(np.abs(res.jac)) < 1e-3) and (best is None or res.fun < best.fun - 1e-9):
            best = res
    if best is None:
        return _fit_latent(st, random_slopes=fit.slopes, nodes=fit.nodes).theta
    return best.x


def _recentre(crit: LatentCriterion, theta: np.ndarray, nd: _Nodes, grid: np.ndarray, weights: np.ndarray
              ) -> _Nodes:
    """Nodes at each therapist's posterior mean and Cholesky factor of the standardised slopes
    (adaptive quadrature: the nodes go where the integrand is).

    Iterated until stable (at most 8 times); each step may shrink the spread of the nodes by at
    most a factor of 4 in SD (the weighted covariance plus 1/16 of the previous one), so that
    nodes that missed a narrow posterior widen and move instead of collapsing onto one point.
    """
    P = crit.st.P
    mean, chol = nd.mean, nd.chol
    for _ in range(8):
        pi = crit.evaluate(theta, nd, grad=False)[2]["pi"]
        new_mean = np.einsum("jk,jkp->jp", pi, nd.xi)
        dev = nd.xi - new_mean[:, None, :]
        prev = chol @ chol.transpose(0, 2, 1)
        cov = np.einsum("jk,jkp,jkq->jpq", pi, dev, dev) + prev / 16.0 + 1e-12 * np.eye(P)[None]
        moved = float(np.max(np.abs(new_mean - mean)))
        mean, chol = new_mean, np.linalg.cholesky(cov)
        nd = _adapt(mean, chol, grid, weights)
        if moved < 1e-3 and float(np.max(pi)) < 0.5:
            break
    return nd
def _covariance(info: np.ndarray, theta: np.ndarray, lay: _Layout, messages: list[str]) -> np.ndarray:
    """Inverse observed information. A therapist slope SD at zero (a boundary fit) leaves
    its Cholesky column without curvature: as at lme4's boundary, that column is held fixed
    (its entries get NaN variances) and the rest of the information is inverted. Without a
    positive definite information there are no standard errors (NaN), never made-up ones."""
    def inverse(idx: np.ndarray) -> np.ndarray | None:
        sub = info[np.ix_(idx, idx)]
        try:
            np.linalg.cholesky(sub)
        except np.linalg.LinAlgError:
            return None
        out = np.full_like(info, np.nan)
        out[np.ix_(idx, idx)] = np.linalg.inv(sub)
        return out

    everything = np.arange(len(theta))
    full = inverse(everything)
    if full is not None:
        return full
    LG = lay.unpack(theta)["LG"]
    cols = lay.tri_g[1]
    scale = max(float(np.max(np.abs(np.diag(LG)))), 1e-12)
    zero = {c for c in range(lay.P) if lay.slopes and np.linalg.norm(LG[c:, c]) < 1e-3 * scale}
    drop = {lay.slices["LG"].start + k for k, c in enumerate(cols) if c in zero}
    part = inverse(np.array([i for i in everything if i not in drop])) if drop else None
    if part is not None:
        messages.append("a therapist slope SD is estimated at zero (a boundary fit): its variance parameters are "
                        "held at the boundary for the standard errors")
        return part
    messages.append("the observed information is not positive definite (the maximum is not a proper one): no "
                    "standard errors")
    return np.full_like(info, np.nan)


def _wald(est: float, se: float) -> dict[str, float]:
    z = est / se if se > 0 else float("nan")
    q = float(stats.norm.ppf(0.975))
    return {"estimate": est, "se": se, "z": z, "p": float(2 * stats.norm.sf(abs(z))) if se > 0 else float("nan"),
            "ci_low": est - q * se, "ci_high": est + q * se}


def _assemble(st: LatentStats, crit: LatentCriterion, theta: np.ndarray, ll: float, vcov: np.ndarray,
              ex: dict[str, np.ndarray], Q: int, slopes: bool, converged: bool, messages: list[str],
              rounds: int, evals: int, seconds: float) -> LatentFit:
    lay = crit.layout
    P = st.P
    p = lay.unpack(theta)
    s = lay.slices
    LT, LS, LG = p["LT"], p["LS"], p["LG"]
    params = {k: np.asarray(v) for k, v in p.items()}
    params["T"] = LT @ LT.T
    params["S"] = LS @ LS.T
    params["G"] = LG @ LG.T  # order: slopes (P), then intercept
    params["sigma2"] = np.array(math.exp(2 * p["log_sigma"]))

    def idx(name: str, i: int) -> int:
        return s[name].start + i

    rows = []
    for i, proc in enumerate(st.processes):
        iw, ib = idx("g10", i), idx("b_between", i)
        for term, est, var in (
            ("within_therapist", theta[iw], vcov[iw, iw]),
            ("between_therapist", theta[ib], vcov[ib, ib]),
            ("contextual", theta[ib] - theta[iw], vcov[ib, ib] + vcov[iw, iw] - 2 * vcov[ib, iw]),
        ):
            rows.append({"process": proc, "component": term, **_wald(float(est), math.sqrt(max(var, 0.0)))})
    effects = pd.DataFrame(rows)
    mrows = []
    for i, proc in enumerate(st.processes):
        for mi, w in enumerate(st.moderators):
            for target, name in (("within_slope", "G11"), ("between_association", "G03")):
                k = idx(name, i * st.M + mi)
                mrows.append({"process": proc, "moderator": w, "target": target,
                              **_wald(float(theta[k]), math.sqrt(max(vcov[k, k], 0.0)))})
    moderators = pd.DataFrame(mrows, columns=["process", "moderator", "target", "estimate", "se", "z", "p",
                                              "ci_low", "ci_high"])
    # variance components with delta-method SEs of the slope SDs
    vrows = []
    G = params["G"]
    for i, proc in enumerate(st.processes):
        vrows.append({"component": "latent_caseload_mean_variance", "process": proc, "estimate": params["T"][i, i]})
        vrows.append({"component": "patient_deviation_variance", "process": proc, "estimate": params["S"][i, i]})
        if slopes:
            sd = math.sqrt(G[i, i])
            # d sd / d theta for the LG row i entries
            grad = np.zeros(lay.size)
            row_idx = [k for k, (r, c) in enumerate(zip(*lay.tri_g)) if r == i]
            for k in row_idx:
                cidx = lay.tri_g[1][k]
                grad[s["LG"].start + k] = LG[i, cidx] / sd if sd > 0 else 0.0
            se = math.sqrt(max(grad @ vcov @ grad, 0.0))
            vrows.append({"component": "slope_sd", "process": proc, "estimate": sd, "se": se})
    vrows.append({"component": "therapist_intercept_sd", "process": "", "estimate": math.sqrt(G[P, P])})
    vrows.append({"component": "residual_sd", "process": "", "estimate": math.sqrt(float(params["sigma2"]))})
    variances = pd.DataFrame(vrows)
    # each therapist: latent caseload mean and within slope (posterior moments over nodes and zeta)
    pi, b, m = ex["pi"], ex["b"], ex["m"]
    Aa, den, Ainv, kap = ex["Aa"], ex["den"], ex["Ainv"], ex["kap"]
    Cmu = Ainv[:, None, :P, :P] - (kap[:, None, None, None] / den[:, :, None, None]) * (
        Aa[:, :, :P, None] * Aa[:, :, None, :P])
    slope_mean = np.einsum("jk,jkp->jp", pi, b)
    slope_var = np.einsum("jk,jkp->jp", pi, b**2) - slope_mean**2
    mu_nodes = m[:, :, :P] @ LT.T
    mu_mean = np.einsum("jk,jkp->jp", pi, mu_nodes)
    mu_var = np.einsum("jk,jkp->jp", pi, mu_nodes**2 + np.einsum("pa,jkab,pb->jkp", LT, Cmu, LT)) \
        - mu_mean**2
    avg = p["g10"][None, :] + st.W @ p["G11"].T
    trows = []
    for j, t in enumerate(st.therapists):
        for i, proc in enumerate(st.processes):
            trows.append({"therapist": str(t), "process": proc, "n_patients": int(st.n[j]),
                          "latent_mean": float(mu_mean[j, i] + p["kappa"][i] + (st.W[j] @ p["Pi"][i])),
                          "latent_mean_sd": float(math.sqrt(max(mu_var[j, i], 0.0))),
                          "slope": float(slope_mean[j, i]),
                          "deviation": float(slope_mean[j, i] - avg[j, i]),
                          "deviation_sd": float(math.sqrt(max(slope_var[j, i], 0.0)))})
    therapists = pd.DataFrame(trows)
    return LatentFit(stats=st, theta=theta, loglik=ll, vcov=vcov, params=params, effects=effects,
                     moderators=moderators, variances=variances, therapists=therapists, nodes=Q, slopes=slopes,
                     converged=converged, messages=messages, rounds=rounds, evaluations=evals, seconds=seconds,
                     slices=dict(lay.slices))
