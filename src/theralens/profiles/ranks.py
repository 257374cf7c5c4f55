"""Where a therapist ranks among peers, with the uncertainty of that rank (models.md "Profiles").

Each therapist's deviation u1j from the average slope is summarised by its conditional
mode and conditional SD (lme4's ``ranef(condVar = TRUE)``). Treating these as independent
normal posteriors N(u_hat_j, cond_sd_j^2), we draw all therapists' deviations together
``draws`` times, rank them in the benefit direction in each draw (rank 1 = most benefit)
and report the median rank and the 2.5% and 97.5% quantiles of the ranks. Ties (e.g. a
conditional SD of 0 when the slope variance is estimated at zero) are broken at random,
so indistinguishable therapists get wide rank intervals, as they should.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

__all__ = ["DEFAULT_DRAWS", "DEFAULT_SEED", "rank_intervals"]

#: Monte Carlo draws for rank intervals, and the fixed seed that makes them reproducible.
DEFAULT_DRAWS = 4000
DEFAULT_SEED = 20220


def rank_intervals(
    deviation: pd.Series,
    deviation_sd: pd.Series,
    benefit_sign: int,
    draws: int = DEFAULT_DRAWS,
    seed: int = DEFAULT_SEED,
) -> pd.DataFrame:
    """Median rank and 95% rank interval of every therapist (index = therapist).

    ``deviation`` and ``deviation_sd``: u1j and its conditional SD, indexed by therapist;
    ``benefit_sign``: -1 when a higher outcome is worse (a more negative slope is more
    benefit), +1 otherwise. Returns columns ``rank_median``, ``rank_low``, ``rank_high``
    (1 = most benefit), ``prob_top_quarter`` and ``n_ranked``; therapists with a missing
    deviation or SD are not ranked (NaN) and do not count as peers.
    """
    if benefit_sign not in (-1, 1):
        raise ValueError(f"benefit_sign must be -1 or +1, got {benefit_sign!r}")
    dev = pd.to_numeric(deviation, errors="coerce").astype(float)
    sd = pd.to_numeric(deviation_sd, errors="coerce").astype(float).reindex(dev.index)
    ok = np.isfinite(dev.to_numpy()) & np.isfinite(sd.to_numpy()) & (sd.to_numpy() >= 0)
    out = pd.DataFrame(index=dev.index, columns=["rank_median", "rank_low", "rank_high", "prob_top_quarter"],
                       dtype=float)
    n = int(ok.sum())
    out["n_ranked"] = n
    if n == 0:
        return out
    rng = np.random.default_rng(seed)
    mu = benefit_sign * dev.to_numpy()[ok]
    s = sd.to_numpy()[ok]
    benefit = mu[None, :] + s[None, :] * rng.standard_normal((draws, n))
    tiebreak = rng.random((draws, n))
    # order[d] lists therapists from most to least benefit in draw d
    order = np.lexsort((tiebreak, -benefit), axis=1)
    ranks = np.empty_like(order)
    rows = np.arange(draws)[:, None]
    ranks[rows, order] = np.arange(1, n + 1)[None, :]
    q = np.quantile(ranks, [0.5, 0.025, 0.975], axis=0, method="inverted_cdf")
    top = max(1, int(np.ceil(n / 4)))
    out.loc[ok, "rank_median"] = q[0]
    out.loc[ok, "rank_low"] = q[1]
    out.loc[ok, "rank_high"] = q[2]
    out.loc[ok, "prob_top_quarter"] = (ranks <= top).mean(axis=0)
    return out
