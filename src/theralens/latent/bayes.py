"""Bayesian latent decomposition with NumPyro (models.md "Latent decomposition").

The therapist's caseload mean of a process is a latent variable, not the observed average
of a handful of patients, so between-therapist effects are not attenuated by the
unreliability of that average (Luedtke et al. 2008, Psychological Methods 13:203). The
model is a two-level (patient design) or three-level (session design) structural equation
model estimated by MCMC, as Mplus's ``ESTIMATOR = BAYES`` / DSEM (Asparouhov & Muthen
2019, Structural Equation Modeling 26:119). P processes are modelled jointly; W are the
therapist moderators, centred at their mean over the therapists in the model.

Patient design (one row per patient i of therapist j; X_ij the patient's process score)::

    X_ij = kappa + Pi W_j + mu_j + w_ij,  mu_j ~ N(0, T_x),  w_ij ~ N(0, S_x)   (P x P)
    Y_ij = g00 + adjust'g + sum_p [c_jp (Pi W_j + mu_j)_p + b1jp w_ijp] + g02'W_j + u0j + e_ij
    c_jp = b_between_p + g03_p'W_j,       b1jp = g10_p + g11_p'W_j + u1jp
    (u0j, u1j) ~ N(0, G)  ((1 + P) x (1 + P)),  e_ij ~ N(0, sigma^2)

Session design (rows = lagged pairs t -> t+1; X_tij the rating at t)::

    X_tij = kappa + Pi W_j + mu_j + d_ij + w_tij,  d_ij ~ N(0, D_x)
    Y_t+1 = a0 + a Y_t + c time + adjust'g + sum_p [b1jp w_tijp + h_p d_ijp
            + (k_p + g03_p'W_j) (Pi W_j + mu_j)_p] + g02'W_j + u0j + v0i + e,  v0i ~ N(0, sd_v^2)

mu_j, d_ij and w are latent (w = X - kappa - Pi W_j - mu_j [- d_ij]). Pi W_j lets the moderators
explain part of the therapist's process level (Pi = 0 without moderators), so that the
between association and its moderation apply to the whole latent caseload mean, as in the
ML estimator of :mod:`theralens.latent.ml`.

Sampled are the parameters and the therapist random slopes, non-centred (u1j = L11 z_j,
z_j ~ N(0, I); Papaspiliopoulos, Roberts & Skold 2007, Statistical Science 22:59). Given the
slopes the model is linear-Gaussian in every other latent variable (mu_j, u0j, d_ij, v0i),
which are integrated out exactly (:func:`_log_likelihood`): their variances have no funnel
to sample through, and NUTS moves in about 110 dimensions instead of about 850 on the demo.
The log density (priors, Jacobians and likelihood) is written in JAX and handed to NumPyro's
NUTS as ``potential_fn``; correlation matrices are built from C-vine partial correlations
with the LKJ prior (:func:`_corr_cholesky`), which compiles much faster than NumPyro's
LKJCholesky. Internally the outcome, the processes, the
adjustment covariates and the moderators are standardised (centred and divided by their
SD), which puts weakly informative unit-scale priors on every coefficient (Gelman et al.
2008, Annals of Applied Statistics 2:1360; the default scale of rstanarm); every draw is
transformed back to the data's units before it is summarised, and ``BayesFit.priors``
states each prior in words with the SDs used.

Four chains by default (:data:`CHAINS`), as Vehtari et al. (2021) recommend for R-hat: on the
demo's session design two chains of 1,000 draws met the convergence rule for 2 of seeds 1-5
(R-hat up to 1.016, bulk ESS down to 313), four chains for all five (R-hat at most 1.007, bulk
ESS at least 782; 34-38 s each, benchmarks/RESULTS.md 2026-12-03). Chains run one after another
on the CPU (``chain_method="sequential"``), each with the No-U-Turn sampler (Hoffman & Gelman
2014) started from its own key of ``seed``. The fit
runs in 64-bit precision inside ``jax.enable_x64(True)``, a context manager: JAX's global
setting is restored when :func:`fit_bayes` returns. Convergence diagnostics (rank-normalised
split R-hat, bulk and tail ESS; Vehtari et al. 2021, Bayesian Analysis 16:667) come from
ArviZ, divergences from NumPyro.

numpyro, jax and arviz are an optional extra: ``pip install 'theralens[bayes]'``. They are
imported only when :func:`fit_bayes` runs.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from theralens.data.decompose import PatientTable, SessionTable
from theralens.errors import InputError

__all__ = ["ESS_MIN", "R_HAT_MAX", "BayesFit", "fit_bayes"]

#: Convergence rule: every parameter of ``BayesFit.summary`` needs R-hat at most this ...
R_HAT_MAX = 1.01
#: ... and bulk and tail ESS at least this (Vehtari et al. 2021), with no divergent transition.
ESS_MIN = 400.0

#: Prior scales on the standardised scale (module docstring; stated in ``BayesFit.priors``).
COEF_SCALE = 2.5
SD_SCALE = 1.0
LKJ_ETA = 2.0
TARGET_ACCEPT = 0.9
#: NumPyro's chain method: one chain after the other (two cores are shared; see module docstring).
CHAIN_METHOD = "sequential"
#: Chains of a fit by default (module docstring).
CHAINS = 4


@dataclass
class BayesFit:
    """The posterior of the latent-decomposition model (module docstring) and its diagnostics.

    Fields:
        design: ``"patient"`` or ``"session"``.
        summary: every reported parameter in the data's units: ``parameter``, ``mean``,
            ``sd``, ``q2.5``, ``q97.5`` (equal-tailed), ``r_hat``, ``ess_bulk``, ``ess_tail``
            (ArviZ). The convergence rule applies to all of its rows.
        effects: aim-1 layout: ``process``, ``component`` (``within_therapist``,
            ``between_therapist`` in the patient design; ``within_patient``,
            ``between_patient``, ``between_therapist`` in the session design), ``term``,
            ``estimate`` (posterior mean), ``se`` (posterior SD), ``ci_low``, ``ci_high``
            (95% equal-tailed), ``r_hat``, ``ess_bulk``.
        contextual: per process and between component, the between minus the within effect
            (``component``, ``versus``, then as ``effects``).
        adjustments: coefficients of the lagged outcome, time, baseline and covariates.
        moderators: aim-3 layout: ``process``, ``moderator``, ``column``, ``target``
            (``within_slope`` = g11, ``between_association`` = g03), ``estimate``, ``se``,
            ``ci_low``, ``ci_high``, ``therapists``, ``therapists_missing``. All moderators
            are in one model.
        slope_sd: per process: SD of the therapist random slopes u1jp: ``estimate``
            (posterior mean), ``median``, ``se``, ``ci_low``, ``ci_high``.
        therapists: per therapist and process: ``slope`` (posterior mean of b1jp), ``se``,
            ``ci_low``, ``ci_high``, ``deviation`` (b1jp - g10p: mean) and ``deviation_sd``,
            ``prob_stronger_than_average`` (posterior probability that the deviation points
            in the benefit direction, ``benefit_sign``), ``rank_median``, ``rank_low``,
            ``rank_high`` (2.5% and 97.5% of the rank over draws; 1 = most benefit),
            ``n_patients``.
        divergences: divergent transitions after warmup, all chains.
        max_r_hat, min_ess_bulk, min_ess_tail: extremes over ``summary``.
        converged: no divergence, every R-hat <= ``R_HAT_MAX`` and every bulk and tail ESS
            >= ``ESS_MIN`` in ``summary``. When False, the estimates are not an answer.
        messages: plain sentences: the convergence verdict first ("did not converge: ..."),
            then notes on the data used.
        priors: one sentence per prior, in the data's units.
        seed, chains, warmup, draws: sampler settings (draws per chain); seconds: wall time.
        benefit_sign: -1 when a higher outcome is worse, +1 otherwise.
        counts: therapists, patients and rows in the model.
    """

    design: str
    summary: pd.DataFrame
    effects: pd.DataFrame
    contextual: pd.DataFrame
    adjustments: pd.DataFrame
    moderators: pd.DataFrame
    slope_sd: pd.DataFrame
    therapists: pd.DataFrame
    divergences: int
    max_r_hat: float
    min_ess_bulk: float
    min_ess_tail: float
    converged: bool
    messages: list[str]
    priors: list[str]
    seed: int
    chains: int
    warmup: int
    draws: int
    seconds: float
    benefit_sign: int
    counts: dict[str, int] = field(default_factory=dict)

    def __str__(self) -> str:
        head = f"Bayesian latent decomposition ({self.design} design): " + " ".join(self.messages[:1])
        if not self.converged:
            return head
        cols = ["process", "component", "estimate", "se", "ci_low", "ci_high"]
        return head + "\n" + self.effects[cols].to_string(index=False)


# ------------------------------------------------------------------------------ imports


def _backend() -> tuple[Any, Any, Any]:
    """(jax, numpyro, arviz), or a one-line InputError naming the extra."""
    missing = []
    mods = {}
    for name in ("jax", "numpyro", "arviz"):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                mods[name] = __import__(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise InputError(f"the Bayesian latent decomposition needs {', '.join(missing)} (not installed); "
                         "install it with pip install 'theralens[bayes]'")
    return mods["jax"], mods["numpyro"], mods["arviz"]


# --------------------------------------------------------------------------------- data


def _scale(values: np.ndarray) -> tuple[np.ndarray, float, float]:
    """(standardised values, mean, sd); an SD of 0 is taken as 1 (the column only centres)."""
    m = float(np.mean(values))
    s = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
    s = s if np.isfinite(s) and s > 0 else 1.0
    return (values - m) / s, m, s


@dataclass
class _Inputs:
    """Standardised arrays of one design, the codes, and the scales to transform back."""

    design: str
    x: np.ndarray  # (N, P)
    y: np.ndarray  # (N,)
    a: np.ndarray  # (N, A) adjustments
    w: np.ndarray  # (J, M) moderators
    tj: np.ndarray  # (N,) therapist code of each row
    pi: np.ndarray  # (N,) patient code of each row (session design)
    pj: np.ndarray  # (I,) therapist code of each patient (session design)
    therapists: list[str]
    n_patients: np.ndarray  # (J,) patients per therapist
    processes: list[str]  # labels
    terms: dict[str, list[str]]  # component -> table column per process
    adjust: list[str]
    moderators: list[str]
    moderator_labels: list[str]
    sx: np.ndarray
    mx: np.ndarray
    sy: float
    my: float
    sa: np.ndarray
    ma: np.ndarray
    sw: np.ndarray
    response: str
    notes: list[str]
    missing_moderator: int


def _inputs(table: PatientTable | SessionTable, moderators: pd.DataFrame | None) -> _Inputs:
    """Arrays of ``table`` (and ``moderators``, therapists with a missing value left out)."""
    if isinstance(table, PatientTable):
        design = "patient"
        adjust = list(table.adjust_for) + list(table.covariates)
        terms = {"within_therapist": [table.components(p)[0] for p in table.processes],
                 "between_therapist": [table.components(p)[1] for p in table.processes]}
    elif isinstance(table, SessionTable):
        design = "session"
        adjust = [table.lagged_outcome, "time"] + list(table.covariates)
        comps = [table.components(p) for p in table.processes]
        terms = {"within_patient": [c[0] for c in comps], "between_patient": [c[1] for c in comps],
                 "between_therapist": [c[2] for c in comps]}
    else:
        raise TypeError(f"fit_bayes needs a PatientTable or SessionTable, got {type(table).__name__}")
    frame = table.table.copy()
    frame["therapist"] = frame["therapist"].astype(str)
    frame["patient"] = frame["patient"].astype(str)
    notes: list[str] = []
    mod_cols: list[str] = []
    mod_labels: list[str] = []
    missing = 0
    wframe = None
    if moderators is not None and moderators.shape[1] > 1:
        if "therapist" not in moderators.columns:
            raise InputError("moderators: no column 'therapist'; pass the table that "
                             "theralens.data.validate.validate_therapists returns (therapist plus moderator columns)")
        labels = dict(moderators.attrs.get("labels", {}))
        mod_cols = [str(c) for c in moderators.columns if c != "therapist"]
        mod_labels = [labels.get(c, c) for c in mod_cols]
        m = moderators.copy()
        m["therapist"] = m["therapist"].astype(str)
        m = m.drop_duplicates("therapist").set_index("therapist")[mod_cols].astype(float)
        in_data = sorted(set(frame["therapist"]))
        m = m.reindex(in_data)
        lacking = m.index[m.isna().any(axis=1)]
        missing = len(lacking)
        if missing:
            frame = frame[~frame["therapist"].isin(set(lacking))]
            notes.append(f"{missing} therapist(s) without a value of every moderator are left out of the model "
                         f"({', '.join(map(str, lacking[:5]))}{', ...' if missing > 5 else ''}).")
        wframe = m.drop(index=lacking)
        if len(mod_cols) > 1:
            notes.append(f"The moderators ({', '.join(mod_labels)}) are in one model together.")
    tcode, therapists = pd.factorize(frame["therapist"], sort=True)
    J = len(therapists)
    if J < 3:
        raise InputError(f"only {J} therapist(s) have data (and every moderator value); the Bayesian latent model "
                         "needs at least 3: add therapists or drop the moderators with missing values")
    pcode, patients = pd.factorize(frame["patient"], sort=True)
    pj = np.zeros(len(patients), dtype=int)
    pj[pcode] = tcode
    n_pat = np.bincount(pj, minlength=J) if design == "session" else np.bincount(tcode, minlength=J)
    xs, mx, sx = [], [], []
    for p in table.processes:
        v, m_, s_ = _scale(frame[p].to_numpy(float))
        xs.append(v)
        mx.append(m_)
        sx.append(s_)
    y, my, sy = _scale(frame[table.response].to_numpy(float))
    as_, ma, sa = [], [], []
    for c in adjust:
        v, m_, s_ = _scale(frame[c].to_numpy(float))
        as_.append(v)
        ma.append(m_)
        sa.append(s_)
    if wframe is not None:
        wvals = wframe.reindex(list(therapists)).to_numpy(float)
        wmean = wvals.mean(axis=0)
        wsd = wvals.std(axis=0, ddof=1)
        wsd = np.where(np.isfinite(wsd) & (wsd > 0), wsd, 1.0)
        w = (wvals - wmean) / wsd
    else:
        w = np.zeros((J, 0))
        wsd = np.zeros(0)
    return _Inputs(
        design=design, x=np.column_stack(xs), y=y, a=np.column_stack(as_) if as_ else np.zeros((len(y), 0)),
        w=w, tj=np.asarray(tcode), pi=np.asarray(pcode), pj=pj, therapists=[str(t) for t in therapists],
        n_patients=n_pat, processes=[table.labels.get(p, p) for p in table.processes], terms=terms,
        adjust=[table.labels.get(c, c) for c in adjust], moderators=mod_cols, moderator_labels=mod_labels,
        sx=np.array(sx), mx=np.array(mx), sy=sy, my=my, sa=np.array(sa), ma=np.array(ma), sw=wsd,
        response=table.response, notes=notes, missing_moderator=missing,
    )


def _arrays(d: _Inputs) -> dict[str, np.ndarray]:
    """The model's data: rows, patient sums and the within-patient scatter of the processes."""
    pi = d.pi if d.design == "session" else np.arange(len(d.y))
    pj = d.pj if d.design == "session" else d.tj
    I = int(pi.max()) + 1
    n_i = np.bincount(pi, minlength=I).astype(float)
    xbar = np.stack([np.bincount(pi, weights=d.x[:, k], minlength=I) for k in range(d.x.shape[1])], axis=1)
    xbar = xbar / n_i[:, None]
    dev = d.x - xbar[pi]
    return {"x": d.x, "y": d.y, "a": d.a, "w": d.w, "tj": d.tj, "pi": pi, "pj": pj, "n_i": n_i, "xbar": xbar,
            "scatter": dev.T @ dev}


# -------------------------------------------------------------------------------- model


def _cholesky(jnp: Any, M: Any) -> tuple[Any, Any]:
    """(L, L^-1) of a batch (..., k, k) of small SPD matrices, unrolled over k.

    XLA's batched LAPACK calls cost far more than the arithmetic for k = 1 + P <= 4 or so;
    written entry by entry, the factorisation fuses into a few elementwise kernels.
    """
    k = M.shape[-1]
    L = [[None] * k for _ in range(k)]
    for i in range(k):
        for j in range(i + 1):
            v = M[..., i, j] - sum((L[i][m] * L[j][m] for m in range(j)), jnp.zeros_like(M[..., 0, 0]))
            L[i][j] = jnp.sqrt(v) if i == j else v / L[j][j]
    inv = [[None] * k for _ in range(k)]
    for i in range(k):
        inv[i][i] = 1.0 / L[i][i]
        for j in range(i):
            acc = sum((L[i][m] * inv[m][j] for m in range(j, i)), jnp.zeros_like(M[..., 0, 0]))
            inv[i][j] = -acc * inv[i][i]
    zero = jnp.zeros_like(M[..., 0, 0])

    def stack(T: list[list[Any]]) -> Any:
        return jnp.stack([jnp.stack([T[i][j] if j <= i else zero for j in range(k)], -1) for i in range(k)], -2)

    return stack(L), stack(inv)


@dataclass(frozen=True)
class _Block:
    """One block of the unconstrained parameter vector: prior ``kind`` ("normal" with SD
    ``scale``, "positive" = Half-Normal with SD ``scale`` on exp(t), "cpc" = canonical
    partial correlations of a ``dim`` x ``dim`` LKJ correlation matrix, tanh(t))."""

    name: str
    start: int
    size: int
    kind: str
    scale: float = 1.0
    dim: int = 0


def _layout(P: int, J: int, A: int, M: int, session: bool) -> list[_Block]:
    """The parameter blocks of the model (module docstring), in the order of the vector."""
    spec = [("kappa", P, "normal", COEF_SCALE, 0), ("tau_x", P, "positive", SD_SCALE, 0),
            ("cpc_tau_x", P * (P - 1) // 2, "cpc", 1.0, P), ("sigma_x", P, "positive", SD_SCALE, 0),
            ("cpc_sigma_x", P * (P - 1) // 2, "cpc", 1.0, P), ("g00", 1, "normal", COEF_SCALE, 0),
            ("b_within", P, "normal", COEF_SCALE, 0), ("b_between", P, "normal", COEF_SCALE, 0),
            ("sd_u", P + 1, "positive", SD_SCALE, 0), ("cpc_u", (P + 1) * P // 2, "cpc", 1.0, P + 1),
            ("z_slope", J * P, "normal", 1.0, 0), ("g_adjust", A, "normal", COEF_SCALE, 0),
            ("g02", M, "normal", COEF_SCALE, 0), ("g11", M * P, "normal", COEF_SCALE, 0),
            ("g03", M * P, "normal", COEF_SCALE, 0), ("pi", M * P, "normal", COEF_SCALE, 0),
            ("sigma_y", 1, "positive", SD_SCALE, 0)]
    if session:
        spec += [("delta_x", P, "positive", SD_SCALE, 0), ("cpc_delta_x", P * (P - 1) // 2, "cpc", 1.0, P),
                 ("b_between_patient", P, "normal", COEF_SCALE, 0), ("sd_v", 1, "positive", SD_SCALE, 0)]
    blocks, start = [], 0
    for name, size, kind, scale, dim in spec:
        blocks.append(_Block(name, start, size, kind, scale, dim))
        start += size
    return blocks


def _cpc_concentration(dim: int) -> np.ndarray:
    """Beta(b, b) concentrations of the C-vine partial correlations z_ij (i > j, row-major):
    b = eta + (dim - 2 - j) / 2, which makes the correlation matrix LKJ(eta)
    (Lewandowski, Kurowicka & Joe 2009, J. Multivariate Anal. 100:1989)."""
    return np.array([LKJ_ETA + (dim - 2 - j) / 2.0 for i in range(dim) for j in range(i)])


def _values(xp: Any, theta: Any, layout: list[_Block]) -> dict[str, Any]:
    """Constrained parameters of an unconstrained vector (..., D): numpy or jax.numpy."""
    out = {}
    for b in layout:
        t = theta[..., b.start:b.start + b.size]
        out[b.name] = xp.exp(t) if b.kind == "positive" else xp.tanh(t) if b.kind == "cpc" else t
    return out


def _log_prior(jax: Any, theta: Any, layout: list[_Block]) -> Any:
    """log prior density of the constrained parameters plus the log Jacobian of exp / tanh,
    up to a constant."""
    jnp = jax.numpy
    softplus = jax.nn.softplus
    lp = jnp.zeros(())
    for b in layout:
        if not b.size:
            continue
        t = theta[b.start:b.start + b.size]
        if b.kind == "normal":
            lp = lp - 0.5 * jnp.sum(t**2) / b.scale**2
        elif b.kind == "positive":  # sd = exp(t): Half-Normal density times Jacobian sd
            lp = lp + jnp.sum(t - 0.5 * jnp.exp(2.0 * t) / b.scale**2)
        else:  # z = tanh(t), (z + 1)/2 ~ Beta(c, c); log r = -softplus(-2t), log(1 - r) = -softplus(2t)
            conc = jnp.asarray(_cpc_concentration(b.dim))
            log_r, log_1r = -softplus(-2.0 * t), -softplus(2.0 * t)
            lp = lp + jnp.sum((conc - 1.0) * (log_r + log_1r) + log_r + log_1r)  # Jacobian 4 r (1 - r)
    return lp


def _corr_cholesky(xp: Any, z: Any, dim: int) -> Any:
    """Cholesky factor (..., dim, dim) of the correlation matrix with partial correlations z
    (..., dim (dim - 1) / 2): L_i0 = z_i0, L_ij = z_ij sqrt(1 - sum_{m<j} L_im^2),
    L_ii = sqrt(1 - sum_{m<i} L_im^2) (signed stick-breaking of the C-vine)."""
    one = xp.ones(z.shape[:-1])
    zero = xp.zeros(z.shape[:-1])
    rows, pos = [], 0
    for i in range(dim):
        row, rest = [], one
        for _ in range(i):
            entry = z[..., pos] * xp.sqrt(rest)
            pos += 1
            rest = rest - entry**2
            row.append(entry)
        row.append(xp.sqrt(rest))
        row += [zero] * (dim - 1 - i)
        rows.append(xp.stack(row, axis=-1))
    return xp.stack(rows, axis=-2)


def _log_likelihood(jax: Any, v: dict[str, Any], data: dict[str, Any], session: bool) -> Any:
    """log p(X, Y | parameters, u1j) with every other latent variable integrated out.

    Only the therapist random slopes u1j are sampled (non-centred: u1j = L11 z_j, with G
    ordered slopes first, so that u0j | u1j ~ N(L21 z_j, L22^2)). Given them the model is
    linear-Gaussian in mu_j, u0j, d_ij and v0i, which are integrated out exactly, as Rockwood
    (2020, Psychometrika 85:275) does for ML. Each patient's rows reduce to o_i = (Xbar_i -
    kappa - Pi W_j, mean_t r_t) with r_t = Y_t - c_t - b1j'(X_t - kappa - Pi W_j) (c_t the fixed
    part, including c_j'Pi W_j), and
    o_i = B_j theta_i + C_j phi_j + noise, noise ~ N(0, diag(S_x, sigma^2) / n_i), theta_i =
    (d_ij, v0i), phi_j = (mu_j, u0j); the within-patient scatter of X and r gives the rest.
    theta_i is integrated per patient, phi_j (whitened by its prior Cholesky factor, so that
    variances at zero stay finite) per therapist with the Gaussian evidence formula. Up to a
    constant.
    """
    jnp = jax.numpy
    seg = jax.ops.segment_sum
    x, y, a, w = data["x"], data["y"], data["a"], data["w"]
    tj, pi, pj, n_i, xbar = data["tj"], data["pi"], data["pj"], data["n_i"], data["xbar"]
    N, P = x.shape
    J, M = w.shape
    I = n_i.shape[0]
    k = P + 1
    L_T = v["tau_x"][:, None] * _corr_cholesky(jnp, v["cpc_tau_x"], P)
    L_S = v["sigma_x"][:, None] * _corr_cholesky(jnp, v["cpc_sigma_x"], P)
    L_u = v["sd_u"][:, None] * _corr_cholesky(jnp, v["cpc_u"], k)
    z = v["z_slope"].reshape(J, P)
    slope = v["b_within"] + z @ L_u[:P, :P].T
    m_u0 = z @ L_u[P, :P]
    assoc = jnp.broadcast_to(v["b_between"], (J, P))
    c = v["g00"][0] + a @ v["g_adjust"]
    centre = jnp.broadcast_to(v["kappa"], (J, P))  # kappa + Pi W_j: the therapist's expected process level
    if M:
        slope = slope + w @ v["g11"].reshape(M, P)
        assoc = assoc + w @ v["g03"].reshape(M, P)
        explained = w @ v["pi"].reshape(M, P)
        centre = centre + explained
        c = c + (w @ v["g02"] + jnp.sum(assoc * explained, axis=1))[tj]
    sigma_y = v["sigma_y"][0]
    e = x - centre[tj]
    r = y - c - jnp.sum(slope[tj] * e, axis=1)
    rbar = seg(r, pi, I) / n_i
    _, S_inv_chol = _cholesky(jnp, L_S @ L_S.T)
    S_inv = S_inv_chol.T @ S_inv_chol
    ll = -0.5 * jnp.sum(S_inv * data["scatter"]) - (N - I) * jnp.sum(jnp.log(jnp.diag(L_S)))
    ll = ll - 0.5 * jnp.sum((r - rbar[pi]) ** 2) / sigma_y**2 - (N - I) * jnp.log(sigma_y)

    # patient level: V_i = (B_j L_theta)(B_j L_theta)' + diag(S_x, sigma^2) / n_i
    S = L_S @ L_S.T
    top = S[None] / n_i[:, None, None]
    corner = sigma_y**2 / n_i
    side = jnp.zeros((I, P))
    if session:
        L_D = v["delta_x"][:, None] * _corr_cholesky(jnp, v["cpc_delta_x"], P)
        D = L_D @ L_D.T
        g = v["b_between_patient"] - slope  # (J, P): (h - b1j)
        cross = g @ D
        top = top + D[None]
        side = cross[pj]
        corner = corner + (jnp.sum(cross * g, axis=1) + v["sd_v"][0] ** 2)[pj]
    V = jnp.concatenate([jnp.concatenate([top, side[:, :, None]], axis=2),
                         jnp.concatenate([side, corner[:, None]], axis=1)[:, None, :]], axis=1)
    o = jnp.concatenate([xbar - centre[pj], (rbar - m_u0[pj])[:, None]], axis=1)
    L_V, L_V_inv = _cholesky(jnp, V)
    V_inv = jnp.swapaxes(L_V_inv, 1, 2) @ L_V_inv
    white = jnp.einsum("iab,ib->ia", L_V_inv, o)
    ll = ll - jnp.sum(jnp.log(jnp.diagonal(L_V, axis1=1, axis2=2))) - 0.5 * jnp.sum(white**2)

    # therapist level: phi_j = (mu_j, u0j) = m0_j + L0_j xi_j, xi_j ~ N(0, I); CL = C_j L0_j
    low = (assoc - slope) @ L_T  # (J, P)
    CL = jnp.concatenate([jnp.concatenate([jnp.broadcast_to(L_T, (J, P, P)), jnp.zeros((J, P, 1))], axis=2),
                          jnp.concatenate([low, jnp.full((J, 1), L_u[P, P])], axis=1)[:, None, :]], axis=1)
    sum_V_inv = seg(V_inv, pj, J)
    sum_V_inv_o = seg(jnp.einsum("iab,ib->ia", V_inv, o), pj, J)
    Q = jnp.eye(k)[None] + jnp.swapaxes(CL, 1, 2) @ sum_V_inv @ CL
    eta = jnp.einsum("jba,jb->ja", CL, sum_V_inv_o)
    L_Q, L_Q_inv = _cholesky(jnp, Q)
    q_white = jnp.einsum("jab,jb->ja", L_Q_inv, eta)
    return ll - jnp.sum(jnp.log(jnp.diagonal(L_Q, axis1=1, axis2=2))) + 0.5 * jnp.sum(q_white**2)


def _draws(d: _Inputs, theta: np.ndarray, layout: list[_Block]) -> dict[str, np.ndarray]:
    """Posterior draws (chain, draw, D) -> constrained parameters on the standardised scale,
    with the Cholesky factor of G (``L_u``, correlation part) and the therapist slopes."""
    P, J, M = d.x.shape[1], len(d.therapists), d.w.shape[1]
    s = _values(np, theta, layout)
    s["L_u"] = _corr_cholesky(np, s["cpc_u"], P + 1)
    L_u = s["sd_u"][..., :, None] * s["L_u"]
    z = s["z_slope"].reshape(theta.shape[:2] + (J, P))
    slope = s["b_within"][..., None, :] + np.einsum("cdjq,cdpq->cdjp", z, L_u[..., :P, :P])
    if M:
        s["g11"] = s["g11"].reshape(theta.shape[:2] + (M, P))
        s["g03"] = s["g03"].reshape(theta.shape[:2] + (M, P))
        s["pi"] = s["pi"].reshape(theta.shape[:2] + (M, P))
        slope = slope + np.einsum("jm,cdmp->cdjp", d.w, s["g11"])
    s["slope"] = slope
    for name in ("g00", "sigma_y", "sd_v"):
        if name in s:
            s[name] = s[name][..., 0]
    return s


def _initial(rng: np.random.Generator, layout: list[_Block], chains: int) -> np.ndarray:
    """Starting points (chains, D): coefficients and z near 0, SDs near 0.5 (standardised
    scale), partial correlations near 0, jittered by Uniform(-1, 1) on the unconstrained scale."""
    D = layout[-1].start + layout[-1].size
    centre = np.zeros(D)
    for b in layout:
        if b.kind == "positive":
            centre[b.start:b.start + b.size] = np.log(0.5)
    return centre[None, :] + rng.uniform(-1.0, 1.0, (chains, D))


def _priors(d: _Inputs) -> list[str]:
    """The priors in words, in the data's units (module docstring)."""
    sds = ", ".join(f"{p} {s:.3g}" for p, s in zip(d.processes, d.sx))
    extra = [f"{c} {s:.3g}" for c, s in zip(d.adjust, d.sa)]
    extra += [f"{c} {s:.3g}" for c, s in zip(d.moderator_labels, d.sw)]
    levels = "therapist-level (T_x), patient-level (D_x) and within-patient (S_x)" if d.design == "session" \
        else "therapist-level (T_x) and within-therapist (S_x)"
    out = [
        f"Data SDs used to scale the priors: outcome ({d.response}) {d.sy:.3g}; processes {sds}"
        + (f"; adjustments and moderators {', '.join(extra)}" if extra else "") + ".",
        f"Regression coefficients of the outcome model (every process component, the adjustments, the moderator "
        f"main effects and interactions) and the intercept: Normal(0, {COEF_SCALE:g} x SD(outcome) / SD(predictor)) "
        f"(intercept: centred at the outcome mean); the SD of a moderator interaction is that of the moderator "
        "times that of the process.",
        f"Process means kappa: Normal(mean of the process, {COEF_SCALE:g} x SD(process))"
        + (f"; effects Pi of the moderators on the therapist's process level: Normal(0, {COEF_SCALE:g} x "
           "SD(process) / SD(moderator))." if d.moderators else "."),
        f"SDs of the {levels} process parts: Half-Normal(0, {SD_SCALE:g} x SD(process)); their correlations between "
        f"processes: LKJ({LKJ_ETA:g}).",
        f"SDs of the therapist intercept u0j and slopes u1j: Half-Normal(0, {SD_SCALE:g} x SD(outcome) / "
        f"SD(process)) for slopes, Half-Normal(0, {SD_SCALE:g} x SD(outcome)) for the intercept; their correlations "
        f"(matrix G): LKJ({LKJ_ETA:g}).",
        f"Residual SD: Half-Normal(0, {SD_SCALE:g} x SD(outcome)).",
    ]
    if d.design == "session":
        out.insert(-1, f"SD of the patient intercept v0i: Half-Normal(0, {SD_SCALE:g} x SD(outcome)).")
    return out


# ------------------------------------------------------------------------------ summary


def _quantiles(draws: np.ndarray) -> dict[str, np.ndarray]:
    """Posterior mean, SD and 95% equal-tailed interval over the first two (chain, draw) axes."""
    flat = draws.reshape((-1,) + draws.shape[2:])
    q = np.quantile(flat, [0.025, 0.975], axis=0)
    return {"mean": flat.mean(axis=0), "sd": flat.std(axis=0, ddof=1) if len(flat) > 1 else np.full(
        flat.shape[1:], np.nan), "q2.5": q[0], "q97.5": q[1]}


def _diagnostics(az: Any, draws: np.ndarray) -> pd.DataFrame:
    """R-hat, bulk and tail ESS (ArviZ) of each column of ``draws`` (chain, draw, K)."""
    ds = az.convert_to_dataset({"theta": draws})
    with warnings.catch_warnings(), np.errstate(invalid="ignore", divide="ignore"):
        warnings.simplefilter("ignore")
        r_hat = np.asarray(az.rhat(ds)["theta"].values, float)
        bulk = np.asarray(az.ess(ds, method="bulk")["theta"].values, float)
        tail = np.asarray(az.ess(ds, method="tail")["theta"].values, float)
    return pd.DataFrame({"r_hat": r_hat, "ess_bulk": bulk, "ess_tail": tail})


def _ranks(benefit: np.ndarray) -> np.ndarray:
    """Rank of each therapist in each draw (draws, J): 1 = most benefit."""
    order = np.argsort(-benefit, axis=1, kind="stable")
    ranks = np.empty_like(order)
    ranks[np.arange(benefit.shape[0])[:, None], order] = np.arange(1, benefit.shape[1] + 1)[None, :]
    return ranks


def _row(name: str, draws: np.ndarray, diag: dict[str, dict[str, float]]) -> dict[str, float]:
    q = _quantiles(draws[..., None])
    return {"estimate": float(q["mean"][0]), "se": float(q["sd"][0]), "ci_low": float(q["q2.5"][0]),
            "ci_high": float(q["q97.5"][0]), "r_hat": diag[name]["r_hat"], "ess_bulk": diag[name]["ess_bulk"]}


def _results(d: _Inputs, s: dict[str, np.ndarray], az: Any, benefit_sign: int) -> dict[str, Any]:
    """Posterior draws in the data's units -> the tables of :class:`BayesFit`."""
    P = len(d.processes)
    ratio = d.sy / d.sx  # outcome units per process unit
    named: dict[str, np.ndarray] = {}  # parameter -> (chain, draw)
    comp_names = list(d.terms)
    comp_draws = {comp_names[0]: s["b_within"] * ratio, "between_therapist": s["b_between"] * ratio}
    if d.design == "session":
        comp_draws["between_patient"] = s["b_between_patient"] * ratio
    for comp in comp_names:
        for k, p in enumerate(d.processes):
            named[f"{comp}[{p}]"] = comp_draws[comp][..., k]
    for k, c in enumerate(d.adjust):
        named[f"coef[{c}]"] = s["g_adjust"][..., k] * d.sy / d.sa[k]
    intercept = d.my + d.sy * s["g00"]
    for k in range(len(d.adjust)):
        intercept = intercept - named[f"coef[{d.adjust[k]}]"] * d.ma[k]
    named["intercept"] = intercept
    for m, label in enumerate(d.moderator_labels):
        named[f"main_effect[{label}]"] = s["g02"][..., m] * d.sy / d.sw[m]
        for k, p in enumerate(d.processes):
            named[f"within_slope[{p}, {label}]"] = s["g11"][..., m, k] * ratio[k] / d.sw[m]
            named[f"between_association[{p}, {label}]"] = s["g03"][..., m, k] * ratio[k] / d.sw[m]
            named[f"process_level[{p}, {label}]"] = s["pi"][..., m, k] * d.sx[k] / d.sw[m]
    named["intercept_sd"] = s["sd_u"][..., P] * d.sy
    for k, p in enumerate(d.processes):
        named[f"slope_sd[{p}]"] = s["sd_u"][..., k] * ratio[k]
    G = np.einsum("...ik,...jk->...ij", s["L_u"], s["L_u"])
    re_names = list(d.processes) + ["intercept"]
    for i in range(1 + P):
        for j in range(i + 1, 1 + P):
            named[f"corr[{re_names[i]}, {re_names[j]}]"] = G[..., i, j]
    if d.design == "session":
        named["patient_intercept_sd"] = s["sd_v"] * d.sy
    named["residual_sd"] = s["sigma_y"] * d.sy
    for k, p in enumerate(d.processes):
        named[f"process_mean[{p}]"] = d.mx[k] + d.sx[k] * s["kappa"][..., k]
        named[f"therapist_sd[{p}]"] = s["tau_x"][..., k] * d.sx[k]
        if d.design == "session":
            named[f"patient_sd[{p}]"] = s["delta_x"][..., k] * d.sx[k]
        named[f"{'within_patient' if d.design == 'session' else 'within_therapist'}_sd[{p}]"] = (
            s["sigma_x"][..., k] * d.sx[k])
    slopes = s["slope"] * ratio  # (C, D, J, P)
    for j, t in enumerate(d.therapists):
        for k, p in enumerate(d.processes):
            named[f"slope[{t}, {p}]"] = slopes[..., j, k]

    names = list(named)
    stacked = np.stack([named[n] for n in names], axis=-1)
    q = _quantiles(stacked)
    diag_frame = _diagnostics(az, stacked)
    summary = pd.DataFrame({"parameter": names, "mean": q["mean"], "sd": q["sd"], "q2.5": q["q2.5"],
                            "q97.5": q["q97.5"]})
    summary = pd.concat([summary, diag_frame], axis=1)
    diag = summary.set_index("parameter")[["r_hat", "ess_bulk"]].to_dict("index")

    effects, contextual = [], []
    for k, p in enumerate(d.processes):
        for comp in comp_names:
            effects.append({"process": p, "component": comp, "term": d.terms[comp][k],
                            **_row(f"{comp}[{p}]", named[f"{comp}[{p}]"], diag)})
        base = comp_names[0]
        for comp in comp_names[1:]:
            diff = named[f"{comp}[{p}]"] - named[f"{base}[{p}]"]
            row = _quantiles(diff[..., None])
            contextual.append({"process": p, "component": comp, "versus": base,
                               "estimate": float(row["mean"][0]), "se": float(row["sd"][0]),
                               "ci_low": float(row["q2.5"][0]), "ci_high": float(row["q97.5"][0])})
    adjustments = [{"term": c, **_row(f"coef[{c}]", named[f"coef[{c}]"], diag)} for c in d.adjust]
    moderators = []
    for m, label in enumerate(d.moderator_labels):
        for p in d.processes:
            for target in ("within_slope", "between_association"):
                name = f"{target}[{p}, {label}]"
                r = _row(name, named[name], diag)
                moderators.append({"process": p, "moderator": label, "column": d.moderators[m], "target": target,
                                   **r, "therapists": len(d.therapists), "therapists_missing": d.missing_moderator})
    slope_sd = []
    for k, p in enumerate(d.processes):
        name = f"slope_sd[{p}]"
        slope_sd.append({"process": p, "component": comp_names[0], "term": d.terms[comp_names[0]][k],
                         **_row(name, named[name], diag), "median": float(np.median(named[name]))})

    therapists = []
    flat_slopes = slopes.reshape((-1,) + slopes.shape[2:])  # (draws, J, P)
    flat_within = comp_draws[comp_names[0]].reshape(-1, P)
    for k, p in enumerate(d.processes):
        sl = flat_slopes[..., k]
        dev = sl - flat_within[:, k][:, None]
        ranks = _ranks(benefit_sign * sl)
        rq = np.quantile(ranks, [0.5, 0.025, 0.975], axis=0, method="inverted_cdf")
        sq = np.quantile(sl, [0.025, 0.975], axis=0)
        prob = (benefit_sign * dev > 0).mean(axis=0)
        for j, t in enumerate(d.therapists):
            therapists.append({
                "process": p, "term": d.terms[comp_names[0]][k], "therapist": t,
                "slope": float(sl[:, j].mean()), "se": float(sl[:, j].std(ddof=1)) if len(sl) > 1 else np.nan,
                "ci_low": float(sq[0, j]), "ci_high": float(sq[1, j]),
                "deviation": float(dev[:, j].mean()), "deviation_sd": float(dev[:, j].std(ddof=1)) if len(dev) > 1
                else np.nan, "prob_stronger_than_average": float(prob[j]),
                "rank_median": float(rq[0, j]), "rank_low": float(rq[1, j]), "rank_high": float(rq[2, j]),
                "n_patients": int(d.n_patients[j]),
            })
    mod_cols = ["process", "moderator", "column", "target", "estimate", "se", "ci_low", "ci_high", "r_hat",
                "ess_bulk", "therapists", "therapists_missing"]
    return {"summary": summary, "effects": pd.DataFrame(effects), "contextual": pd.DataFrame(contextual),
            "adjustments": pd.DataFrame(adjustments), "moderators": pd.DataFrame(moderators, columns=mod_cols),
            "slope_sd": pd.DataFrame(slope_sd), "therapists": pd.DataFrame(therapists)}


def _verdict(summary: pd.DataFrame, divergences: int) -> tuple[bool, list[str], float, float, float]:
    """The convergence rule of :class:`BayesFit` and its sentence."""
    r = summary["r_hat"].to_numpy(float)
    bulk = summary["ess_bulk"].to_numpy(float)
    tail = summary["ess_tail"].to_numpy(float)
    names = summary["parameter"].to_numpy()

    def worst(values: np.ndarray, high: bool) -> tuple[float, str]:
        bad = np.where(np.isfinite(values), values, np.inf if high else -np.inf)
        i = int(np.argmax(bad) if high else np.argmin(bad))
        return float(values[i]), str(names[i])

    max_r, r_name = worst(r, True)
    min_b, b_name = worst(bulk, False)
    min_t, t_name = worst(tail, False)
    problems = []
    if divergences:
        problems.append(f"{divergences} divergent transition(s) after warmup")
    if not np.isfinite(r).all() or max_r > R_HAT_MAX:
        problems.append(f"R-hat up to {max_r:.3f} > {R_HAT_MAX} ({r_name})")
    if not np.isfinite(bulk).all() or min_b < ESS_MIN:
        problems.append(f"bulk ESS down to {min_b:.0f} < {ESS_MIN:.0f} ({b_name})")
    if not np.isfinite(tail).all() or min_t < ESS_MIN:
        problems.append(f"tail ESS down to {min_t:.0f} < {ESS_MIN:.0f} ({t_name})")
    if problems:
        msg = ("The sampler did not converge: " + "; ".join(problems) + ". The estimates are not an answer: "
               "run longer (more warmup and draws) or with more chains, and check the data.")
        return False, [msg], max_r, min_b, min_t
    msg = (f"Converged: no divergent transition, R-hat at most {max_r:.3f}, bulk ESS at least {min_b:.0f} and tail "
           f"ESS at least {min_t:.0f} for every reported parameter.")
    return True, [msg], max_r, min_b, min_t


# ---------------------------------------------------------------------------------- fit


def fit_bayes(
    table: PatientTable | SessionTable,
    moderators: pd.DataFrame | None = None,
    *,
    seed: int = 1,
    chains: int = CHAINS,
    warmup: int = 1000,
    draws: int = 1000,
    progress: bool = False,
) -> BayesFit:
    """Fit the latent decomposition of ``table``'s design by NUTS (module docstring).

    ``moderators``: one row per therapist, column ``therapist`` plus moderator columns (as
    :func:`theralens.data.validate.validate_therapists` returns it); all moderators enter one
    model, centred at their mean over the therapists in the model; therapists with a missing
    value are left out (said in ``messages``). ``seed`` makes the run reproducible; ``chains``
    run sequentially, each with ``warmup`` adaptation and ``draws`` kept iterations. Check
    ``converged`` before using any estimate.
    """
    for name, value, least in (("chains", chains, 1), ("warmup", warmup, 1), ("draws", draws, 2)):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < least:
            raise InputError(f"fit_bayes: {name} must be a whole number of at least {least}, got {value!r}")
    jax, numpyro, az = _backend()
    from numpyro.infer import MCMC, NUTS

    t0 = time.perf_counter()
    d = _inputs(table, moderators)
    session = d.design == "session"
    layout = _layout(d.x.shape[1], len(d.therapists), d.a.shape[1], d.w.shape[1], session)
    start = _initial(np.random.default_rng(int(seed)), layout, int(chains))
    with jax.enable_x64(True), jax.default_device(jax.devices("cpu")[0]), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        data = {k: jax.numpy.asarray(v) for k, v in _arrays(d).items()}

        # jitted: NumPyro evaluates the potential and its gradient once outside its compiled loop
        # (to check the initial point); unjitted, that evaluation compiles every operation on its own
        # (about 400 compilations, 25 s on the first fit of a process)
        @jax.jit
        def potential(theta: Any) -> Any:
            return -(_log_prior(jax, theta, layout)
                     + _log_likelihood(jax, _values(jax.numpy, theta, layout), data, session))

        kernel = NUTS(potential_fn=potential, target_accept_prob=TARGET_ACCEPT)
        mcmc = MCMC(kernel, num_warmup=int(warmup), num_samples=int(draws), num_chains=int(chains),
                    chain_method=CHAIN_METHOD, progress_bar=progress)
        init = jax.numpy.asarray(start if chains > 1 else start[0])
        mcmc.run(jax.random.PRNGKey(int(seed)), init_params=init, extra_fields=("diverging",))
        theta = np.asarray(mcmc.get_samples(group_by_chain=True), dtype=float)
        divergences = int(np.asarray(mcmc.get_extra_fields()["diverging"]).sum())
    samples = _draws(d, theta.reshape(int(chains), int(draws), -1), layout)
    tables = _results(d, samples, az, table.benefit_sign)
    converged, messages, max_r, min_b, min_t = _verdict(tables["summary"], divergences)
    counts = {"therapists": len(d.therapists), "patients": int(len(d.pj)), "rows": len(d.y)}
    return BayesFit(
        design=d.design, **tables, divergences=divergences, max_r_hat=max_r, min_ess_bulk=min_b, min_ess_tail=min_t,
        converged=converged, messages=messages + d.notes, priors=_priors(d), seed=int(seed), chains=int(chains),
        warmup=int(warmup), draws=int(draws), seconds=time.perf_counter() - t0, benefit_sign=table.benefit_sign,
        counts=counts,
    )
