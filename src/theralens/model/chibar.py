"""Chi-bar-square mixtures for likelihood-ratio tests of variances on the boundary.

Self & Liang (1987); Stram & Lee (1994): testing whether a random slope's variance is zero
(together with its covariances with the q - 1 random effects it is correlated with) gives an
LRT statistic distributed as 0.5 chi2(q - 1) + 0.5 chi2(q); testing m independent variances
(each in its own uncorrelated term) gives the binomial mixture sum_j C(m, j) 2^-m chi2(j).
chi2(0) is a point mass at zero.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import comb

from scipy import stats


@dataclass(frozen=True)
class ChiBarSquare:
    """A mixture sum_j weights[j] * chi2(dfs[j])."""

    weights: tuple[float, ...]
    dfs: tuple[int, ...]

    def sf(self, x: float) -> float:
        """P(X >= x) under the mixture."""
        total = 0.0
        for w, df in zip(self.weights, self.dfs):
            total += w * (float(x <= 0) if df == 0 else float(stats.chi2.sf(x, df)))
        return min(1.0, total)

    def describe(self) -> str:
        parts = [f"{w:g} chi2({df})" for w, df in zip(self.weights, self.dfs)]
        return " + ".join(parts)


def slope_mixture(q: int) -> ChiBarSquare:
    """Removing one random effect from a correlated block of size q (Stram & Lee 1994)."""
    if q < 1:
        raise ValueError("q must be at least 1")
    return ChiBarSquare(weights=(0.5, 0.5), dfs=(q - 1, q))


def independent_mixture(m: int) -> ChiBarSquare:
    """Removing m variances that each stand in their own uncorrelated term."""
    return ChiBarSquare(weights=tuple(comb(m, j) / 2**m for j in range(m + 1)), dfs=tuple(range(m + 1)))
