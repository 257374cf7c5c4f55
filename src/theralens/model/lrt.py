"""Likelihood-ratio tests between nested mixed models (cf. MixedModels.jl's
``likelihoodratiotest`` and lme4's ``anova``).

- Fixed effects: the models must share the random part; they are compared by ML, refitting
  REML fits with ``reml=False`` first, from their sufficient statistics (REML criteria of
  models with different fixed effects are not comparable). Reference: chi2 with the difference
  in parameters.
- Random effects: the models must share the fixed part; REML (or ML) criteria are compared.
  Variances tested on their boundary use the chi-bar-square mixture (Self & Liang 1987;
  Stram & Lee 1994); other random-part differences fall back to a plain chi2, which is
  conservative, and the result says so.
Anything else is refused with the reason.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
from scipy import stats

from theralens.errors import ModelSpecError
from theralens.model.chibar import ChiBarSquare, independent_mixture, slope_mixture
from theralens.model.fit import MixedResult, fit_stats
from theralens.model.stats import SufficientStats


@dataclass
class LRTResult:
    """Outcome of :func:`lrt`: ``statistic``, ``df`` (parameter difference), ``p_value``,
    ``reference`` (the distribution used, in words), ``method`` ("REML" or "ML"),
    ``refitted`` (whether REML fits were refitted by ML), ``tested`` (what differs),
    and ``table`` (one row per model: npar, criterion)."""

    statistic: float
    df: int
    p_value: float
    reference: str
    method: str
    refitted: bool
    tested: str
    table: pd.DataFrame

    def summary(self) -> str:
        return (f"Likelihood-ratio test ({self.method}) of {self.tested}\n"
                f"{self.table.to_string()}\n"
                f"LRT = {self.statistic:.4f}, df = {self.df}, p = {self.p_value:.4g} "
                f"(reference: {self.reference})")


def _blocks(fit: MixedResult) -> dict[str, list[frozenset[str]]]:
    out: dict[str, list[frozenset[str]]] = {}
    for lv in fit.design.levels:
        out[lv.group] = [frozenset(t.columns) for t in lv.terms]
    return out


def _same_data(a: MixedResult, b: MixedResult) -> bool:
    """Both fits of the same rows, as far as their statistics tell: the count and sum of squares
    of the response (summed in another order when the innermost clusters differ)."""
    ya, yb = (f.design.yy if isinstance(f.design, SufficientStats) else f.criterion.stats.yy for f in (a, b))
    return a.nobs == b.nobs and abs(ya - yb) <= 1e-12 * max(abs(ya), abs(yb))


def _random_reference(small: MixedResult, large: MixedResult) -> tuple[ChiBarSquare | None, int, str]:
    bs, bl = _blocks(small), _blocks(large)
    dpar = large.design.ntheta - small.design.ntheta
    for g, blocks in bs.items():
        if g not in bl:
            raise ModelSpecError(f"the random part of the smaller model has grouping factor '{g}' "
                                 "that the larger lacks: the models are not nested")
        for blk in blocks:
            if not any(blk <= big for big in bl[g]):
                raise ModelSpecError(f"the smaller model's random term over {sorted(blk)} | {g} is not "
                                     "part of the larger model: the models are not nested")
    # what does the larger model add?
    added: list[tuple[str, frozenset[str], frozenset[str]]] = []
    for g, blocks in bl.items():
        for big in blocks:
            inside = [blk for blk in bs.get(g, []) if blk <= big]
            covered = frozenset().union(*inside) if inside else frozenset()
            if covered != big or len(inside) > 1:
                added.append((g, big, covered))
    if len(added) == 1:
        g, big, covered = added[0]
        inside = [blk for blk in bs.get(g, []) if blk <= big]
        if len(big - covered) == 1 and len(inside) <= 1:
            return slope_mixture(len(big)), dpar, f"the random effect {sorted(big - covered)[0]} | {g}"
    if added and all(len(big) == 1 and not covered for _, big, covered in added):
        names = ", ".join(f"{sorted(big)[0]} | {g}" for g, big, _ in added)
        return independent_mixture(len(added)), dpar, f"the independent random effects {names}"
    return None, dpar, "the random-effects structure"


def _ml_refit(fit: MixedResult) -> MixedResult:
    """``fit`` refitted by ML from its own sufficient statistics (the rows are not needed)."""
    out = fit_stats(fit.criterion.stats, reml=False)
    out.formula, out.data = fit.formula, fit.data
    return out


def lrt(smaller: MixedResult, larger: MixedResult) -> LRTResult:
    """Likelihood-ratio test of ``smaller`` against ``larger`` (see the module docstring)."""
    if not _same_data(smaller, larger):
        raise ModelSpecError("likelihood-ratio tests need both models fitted to the same rows "
                             f"({smaller.nobs} vs {larger.nobs} observations)")
    same_fixed = smaller.fixed_names == larger.fixed_names
    same_random = _blocks(smaller) == _blocks(larger)
    if same_fixed and same_random:
        raise ModelSpecError("the two models have the same fixed and random parts: nothing to test")
    if not same_fixed and not same_random:
        raise ModelSpecError("the models differ in both fixed and random parts; test one at a time")
    refitted = False
    if not same_fixed:
        if not set(smaller.fixed_names) < set(larger.fixed_names):
            raise ModelSpecError("the smaller model's fixed effects are not a subset of the larger's: not nested")
        a, b = smaller, larger
        if a.reml or b.reml:
            a = _ml_refit(a) if a.reml else a
            b = _ml_refit(b) if b.reml else b
            refitted = True
        ca, cb = a.deviance, b.deviance
        dpar = b.npar - a.npar
        stat = max(ca - cb, 0.0)
        p = float(stats.chi2.sf(stat, dpar))
        reference = f"chi2({dpar})"
        tested = "fixed effects " + ", ".join(n for n in larger.fixed_names if n not in smaller.fixed_names)
        method = "ML"
    else:
        if smaller.reml != larger.reml:
            raise ModelSpecError("one model was fitted by REML and the other by ML: fit both the same way")
        a, b = smaller, larger
        mix, dpar, tested = _random_reference(smaller, larger)
        crit_a = a.reml_criterion if a.reml else a.deviance
        crit_b = b.reml_criterion if b.reml else b.deviance
        stat = max(float(crit_a) - float(crit_b), 0.0)
        if mix is not None:
            p = mix.sf(stat)
            reference = f"chi-bar-square mixture {mix.describe()}"
        else:
            p = float(stats.chi2.sf(stat, dpar))
            reference = f"chi2({dpar}) (conservative: no boundary mixture for this comparison)"
        method = "REML" if a.reml else "ML"
        ca, cb = crit_a, crit_b
    table = pd.DataFrame({"formula": [a.formula, b.formula], "npar": [a.npar, b.npar],
                          "criterion": [ca, cb]}, index=["smaller", "larger"])
    return LRTResult(statistic=stat, df=int(dpar), p_value=float(p), reference=reference, method=method,
                     refitted=refitted, tested=tested, table=table)
