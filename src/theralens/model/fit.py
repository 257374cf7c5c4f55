"""Fit a nested linear mixed model and hold the result (lme4's ``lmer`` + ``mkMerMod``).

    fit = fit_mixed("outcome ~ alliance + (1 + alliance | therapist) + (1 | patient)", df)
    fit.summary()

Estimation: REML by default (Bates et al. 2015, JSS 67(1)); fixed-effect tests use
Satterthwaite degrees of freedom as lmerTest does (Kuznetsova et al. 2017, JSS 82(13)), or
another ``ddf`` (:mod:`theralens.model.ddf`): ``"kenward-roger"`` (Kenward & Roger 1997, as
pbkrtest; :mod:`theralens.model.kenward_roger`), ``"residual"`` or ``"asymptotic"``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import NoReturn

import numpy as np
import pandas as pd
from scipy import stats

from theralens.display import Summary, interval_columns
from theralens.errors import InputError
from theralens.model.criterion import NestedCriterion, Solution, criterion_from_profile
from theralens.model.ddf import check_ddf, ddf_label, ddf_method_line
from theralens.model.design import Design, build_design, colmajor_tril, group_labels, model_matrix_like
from theralens.model.formula import ParsedFormula, parse_formula
from theralens.model.kenward_roger import KenwardRoger, failed_kenward_roger, kenward_roger
from theralens.model.optimize import OptimizerRecord, minimize_theta
from theralens.model.satterthwaite import satterthwaite
from theralens.model.stats import SufficientStats
from theralens.model.threads import one_blas_thread

SINGULAR_TOL = 1e-4  # lme4's isSingular() tolerance on theta diagonals


class _ReleasedCriterion:
    """Stands for the criterion of a fit whose statistics were released
    (:meth:`MixedResult.release_statistics`): every use says so in one line."""

    def __getattr__(self, name: str) -> None:
        if name.startswith("__"):  # copy, pickle and friends look for optional hooks
            raise AttributeError(name)
        self.refuse()

    @staticmethod
    def refuse() -> NoReturn:
        raise InputError("this fit's statistics were released after its results were read (the DuckDB path frees "
                         "the per-patient statistics of the study's reduced, moderator and ancillary models once "
                         "they take 32 MB): refit the model with fit_stats or fit_mixed for df, p-values, intervals "
                         "or random effects")


@dataclass
class MixedResult:
    """A fitted nested linear mixed model.

    Fields and views (names follow lme4/lmerTest):

    - ``formula``, ``reml`` (bool), ``nobs``, ``ngroups`` (dict: grouping factor -> count),
      ``n_dropped`` (rows dropped for missing values), ``dropped_columns`` (aliased
      fixed-effect columns dropped, as lme4 does), ``notes``.
    - ``ddf``: the degrees-of-freedom method of the tests (:mod:`theralens.model.ddf`:
      ``"satterthwaite"``, ``"kenward-roger"``, ``"residual"``, ``"asymptotic"``);
      ``with_ddf(method)`` is the same fit with another method, without refitting.
    - ``fixed_effects``, ``std_errors``, ``df``, ``t_values``, ``p_values`` (pandas Series
      indexed by lme4 coefficient names, by the ``ddf`` method: with Kenward-Roger the SEs are
      the adjusted ones, as lmerTest's ``summary(m, ddf = "Kenward-Roger")``; statsmodels'
      names ``params``, ``bse``, ``tvalues``, ``pvalues`` are the same Series) and
      ``conf_int(level)`` (Wald intervals with the t quantile of ``df``, columns ``2.5 %`` /
      ``97.5 %`` as lme4's ``confint``); ``vcov`` (DataFrame: lme4's unadjusted ``vcov(m)``
      whatever ``ddf``), ``vcov_adjusted`` (Kenward-Roger's, pbkrtest's ``vcovAdj(m)``) and
      ``kenward_roger`` (:class:`~theralens.model.kenward_roger.KenwardRoger`, its pieces).
    - ``varcorr``: DataFrame in the layout of ``as.data.frame(VarCorr(m))`` (grp, var1, var2,
      vcov, sdcor); ``sigma``; ``theta`` (Series with lme4's names).
    - ``reml_criterion`` (lme4's REMLcrit; REML fits), ``deviance`` (ML deviance at the
      estimates), ``loglik``, ``aic``, ``bic`` (from the REML log-likelihood for REML fits,
      as lme4 reports them).
    - ``random_effects(group)``: conditional modes with conditional SDs (``ranef(condVar =
      TRUE)``); ``fitted()``, ``residuals()``, ``predict(newdata, include_random)``.
    - ``converged``, ``singular``, ``optimizer`` (:class:`OptimizerRecord`).
    - ``summary()`` (text, ``.tables``, HTML: :class:`~theralens.display.Summary`); in a
      notebook the fit shows that summary, and ``repr`` is a few lines.
    """

    formula: str
    reml: bool
    design: Design | SufficientStats = field(repr=False)  # the rows, or the statistics of a fit_stats fit
    criterion: NestedCriterion = field(repr=False)
    solution: Solution = field(repr=False)
    optimizer: OptimizerRecord
    notes: list[str] = field(default_factory=list)
    data: pd.DataFrame | None = field(default=None, repr=False)
    ddf: str = "satterthwaite"

    def __post_init__(self) -> None:
        self.ddf = check_ddf(self.ddf)
        if self.ddf == "kenward-roger" and not self.reml:
            raise InputError(_KR_NEEDS_REML)

    # -- sizes ------------------------------------------------------------------------------
    @property
    def nobs(self) -> int:
        return self.design.n

    @property
    def n_dropped(self) -> int:
        return self.design.n_dropped

    @property
    def dropped_columns(self) -> list[str]:
        return list(self.design.dropped_columns)

    @property
    def ngroups(self) -> dict[str, int]:
        return {lv.group: lv.ngroups for lv in self.design.levels}

    # -- fixed effects ------------------------------------------------------------------
    @property
    def fixed_names(self) -> list[str]:
        return list(self.design.fixed_names)

    @property
    def fixed_effects(self) -> pd.Series:
        return pd.Series(self.solution.beta, index=self.fixed_names, name="estimate")

    @cached_property
    def vcov(self) -> pd.DataFrame:
        from scipy.linalg import solve_triangular

        RX = self.solution.profile.RX
        inv = solve_triangular(RX, np.eye(RX.shape[0]), lower=True)
        return pd.DataFrame(self.sigma**2 * inv.T @ inv, index=self.fixed_names, columns=self.fixed_names)

    @cached_property
    def kenward_roger(self) -> KenwardRoger:
        """The Kenward-Roger pieces of this REML fit (:mod:`theralens.model.kenward_roger`). Where
        they cannot be computed (a degenerate fit: the marginal covariance or the information is
        not invertible), the fit's notes say so and the adjusted covariance, df and p are NaN
        (lmerTest would fall back to Satterthwaite with a warning)."""
        if not self.reml:
            raise InputError(_KR_NEEDS_REML)
        if isinstance(self.criterion, _ReleasedCriterion):
            self.criterion.refuse()
        try:
            with one_blas_thread(), np.errstate(divide="raise", over="raise", invalid="raise"):
                return kenward_roger(self.criterion.stats, self.solution.theta, self.solution.sigma2,
                                     self.vcov.to_numpy())
        except (np.linalg.LinAlgError, FloatingPointError, ValueError):
            self.notes.append("Kenward-Roger's adjusted covariance and degrees of freedom could not be computed "
                              "for this fit; the adjusted SEs, df and p-values are NaN")
            return failed_kenward_roger(self.criterion.stats, self.vcov.to_numpy())

    @property
    def vcov_adjusted(self) -> pd.DataFrame:
        """Kenward & Roger's (1997) adjusted covariance of the fixed effects (pbkrtest's ``vcovAdj``)."""
        return pd.DataFrame(self.kenward_roger.vcov_adjusted, index=self.fixed_names, columns=self.fixed_names)

    def _test_vcov(self) -> np.ndarray:
        """The covariance the tests use: Kenward-Roger's adjusted one with that method, else vcov."""
        return self.kenward_roger.vcov_adjusted if self.ddf == "kenward-roger" else self.vcov.to_numpy()

    def with_ddf(self, ddf: str) -> MixedResult:
        """This fit with tests by another degrees-of-freedom method (no refit; what has been
        computed for the other methods is shared)."""
        method = check_ddf(ddf)
        other = replace(self, ddf=method, notes=list(self.notes))
        for cached in ("vcov", "_satterthwaite", "kenward_roger"):
            if cached in self.__dict__:
                other.__dict__[cached] = self.__dict__[cached]
        return other

    def release_statistics(self) -> None:
        """Free what this fit keeps of the data for later computations: the per-innermost-cluster
        statistics (``design.inner``), the criterion with its elimination caches and the
        innermost level's conditional modes. What the fit has computed stays: estimates,
        ``vcov`` (and ``vcov_adjusted`` with Kenward-Roger), ``varcorr``, the criteria,
        ``std_errors``, ``singular``. Anything that needs the statistics again (df and p-values
        not yet computed, profile or bootstrap intervals, random effects, ``with_ddf`` to
        another method, predictions) then raises InputError.

        The DuckDB path of the study (:mod:`theralens.study.rows`) calls it for models it has
        used (the reduced models of the likelihood-ratio tests, the moderator and ancillary
        models, once their tables are made): at 12.5 million patients each model's statistics
        take 1.3-1.6 GB."""
        if isinstance(self.criterion, _ReleasedCriterion):
            return
        self.vcov  # noqa: B018 - computed (cached) while the statistics are here
        if self.ddf == "kenward-roger":
            self.kenward_roger  # noqa: B018
        stats_ = self.design
        if isinstance(stats_, SufficientStats):
            self.design = replace(stats_, inner=stats_.inner[:0].copy(), order=None)
        self.criterion = _ReleasedCriterion()  # type: ignore[assignment]
        sol = self.solution
        if sol.b:
            self.solution = replace(sol, b=[sol.b[0][:0].copy(), *sol.b[1:]],
                                    condvar=[sol.condvar[0][:0].copy(), *sol.condvar[1:]])

    @property
    def std_errors(self) -> pd.Series:
        return pd.Series(np.sqrt(np.diag(self._test_vcov())), index=self.fixed_names, name="std_error")

    @cached_property
    def _satterthwaite(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if isinstance(self.criterion, _ReleasedCriterion):
            self.criterion.refuse()
        try:
            with one_blas_thread():
                return satterthwaite(self.criterion, self.solution.theta, self.sigma, self.reml)
        except (np.linalg.LinAlgError, FloatingPointError, ValueError):
            # a degenerate fit (e.g. residual SD near zero) where the deviance cannot be
            # differentiated: say so instead of inventing degrees of freedom
            self.notes.append("Satterthwaite degrees of freedom could not be computed for this fit "
                              "(the deviance is not differentiable here); df and p-values are NaN")
            k, m = self.design.k, self.design.ntheta + 1
            return np.full(k, np.nan), np.full((m, m), np.nan), np.full((k * k, m), np.nan)

    @property
    def df(self) -> pd.Series:
        """Denominator df of each coefficient's t-test, by the ``ddf`` method."""
        k = len(self.fixed_names)
        if self.ddf == "satterthwaite":
            values = self._satterthwaite[0]
        elif self.ddf == "kenward-roger":
            values = self.kenward_roger.coefficient_df()
        elif self.ddf == "residual":
            values = np.full(k, float(self.nobs - k))
        else:
            values = np.full(k, np.inf)
        return pd.Series(values, index=self.fixed_names, name="df")

    @property
    def t_values(self) -> pd.Series:
        return (self.fixed_effects / self.std_errors).rename("t_value")

    @property
    def p_values(self) -> pd.Series:
        t = self.t_values.to_numpy()
        return pd.Series(2 * stats.t.sf(np.abs(t), self.df.to_numpy()), index=self.fixed_names, name="p_value")

    def conf_int(self, level: float = 0.95) -> pd.DataFrame:
        """Wald intervals estimate +- t_{df}(1 - (1 - level)/2) * SE with the ``ddf`` method's
        df and SE (normal quantiles for ``"asymptotic"``).

        Columns are named as lme4's ``confint`` names them: ``2.5 %`` and ``97.5 %`` at level
        0.95, ``5 %`` and ``95 %`` at 0.90. ``level`` is the coverage, not statsmodels' alpha.
        """
        if not 0 < level < 1:
            raise InputError(f"conf_int: level must lie between 0 and 1 (got {level}); e.g. 0.95 for 95% intervals")
        q = stats.t.ppf(0.5 + level / 2, self.df.to_numpy())
        est, se = self.fixed_effects.to_numpy(), self.std_errors.to_numpy()
        low, high = interval_columns(level)
        return pd.DataFrame({low: est - q * se, high: est + q * se}, index=self.fixed_names)

    # statsmodels' names for the same Series (fixed effects only, as MixedLM's fe_params)
    @property
    def params(self) -> pd.Series:
        return self.fixed_effects

    @property
    def bse(self) -> pd.Series:
        return self.std_errors

    @property
    def tvalues(self) -> pd.Series:
        return self.t_values

    @property
    def pvalues(self) -> pd.Series:
        return self.p_values

    def contrast(self, L: np.ndarray | dict[str, float]) -> dict[str, float]:
        """Estimate, SE, df, t and p of the 1-df contrast L' beta by the ``ddf`` method (with
        Kenward-Roger: the adjusted SE and pbkrtest's ``Lb_ddf``)."""
        from theralens.model.satterthwaite import contrast_df

        if isinstance(L, dict):
            vec = np.zeros(len(self.fixed_names))
            for name, w in L.items():
                vec[self.fixed_names.index(name)] = w
            L = vec
        L = np.asarray(L, dtype=float)
        est = float(L @ self.solution.beta)
        se = float(np.sqrt(L @ self._test_vcov() @ L))
        if self.ddf == "satterthwaite":
            _, A, jac = self._satterthwaite
            df = contrast_df(L, self.vcov.to_numpy(), A, jac)
        elif self.ddf == "kenward-roger":
            df = self.kenward_roger.contrast_df(L)
        elif self.ddf == "residual":
            df = float(self.nobs - len(self.fixed_names))
        else:
            df = float("inf")
        t = est / se
        return {"estimate": est, "se": se, "df": df, "t": t, "p": float(2 * stats.t.sf(abs(t), df))}

    # -- variance components ----------------------------------------------------------------
    @property
    def sigma(self) -> float:
        return float(np.sqrt(self.solution.sigma2))

    @property
    def theta(self) -> pd.Series:
        return pd.Series(self.solution.theta, index=self.design.theta_names(), name="theta")

    def _term_covariances(self) -> list[tuple[str, list[str], np.ndarray]]:
        """(grp name, columns, covariance matrix sigma^2 Lambda_t Lambda_t') per term."""
        out = []
        th = self.solution.theta
        for lv in self.design.levels:
            lam = lv.lambda_matrix(th)
            off = 0
            for term in lv.terms:
                q = term.q
                block = lam[off : off + q, off : off + q]
                out.append((term.name, term.columns, self.solution.sigma2 * block @ block.T))
                off += q
        order = {t.name: i for i, t in enumerate(self.design.terms)}
        out.sort(key=lambda x: order[x[0]])
        return out

    @property
    def varcorr(self) -> pd.DataFrame:
        rows = []
        for name, cols, cov in self._term_covariances():
            sd = np.sqrt(np.diag(cov))
            for i, c in enumerate(cols):
                rows.append({"grp": name, "var1": c, "var2": None, "vcov": cov[i, i], "sdcor": sd[i]})
            for j in range(len(cols)):
                for i in range(j + 1, len(cols)):
                    corr = cov[i, j] / (sd[i] * sd[j]) if sd[i] > 0 and sd[j] > 0 else np.nan
                    rows.append({"grp": name, "var1": cols[j], "var2": cols[i], "vcov": cov[i, j], "sdcor": corr})
        rows.append({"grp": "Residual", "var1": None, "var2": None, "vcov": self.sigma**2, "sdcor": self.sigma})
        return pd.DataFrame(rows, columns=["grp", "var1", "var2", "vcov", "sdcor"])

    def conf_int_varcorr(
        self,
        level: float = 0.95,
        method: str = "profile",
        *,
        rows: list[tuple[str, str | None, str | None]] | None = None,
        nsim: int = 1000,
        seed: int | None = None,
        progress: bool = True,
        likelihood: str = "ml",
        boundary: str = "two-sided",
    ) -> pd.DataFrame:
        """Intervals for every random-effect SD and correlation and the residual SD, in the
        layout of :attr:`varcorr` (``grp``, ``var1``, ``var2``, ``sdcor`` = the estimate, then
        the bounds named as lme4's ``confint`` names them: ``2.5 %``, ``97.5 %`` at 0.95).

        - ``method="profile"``: profile-likelihood intervals as lme4's ``confint(m, method =
          "profile")`` (:mod:`theralens.model.profile`). As lme4 does, the likelihood profiled is
          the ML one, also for a REML fit (lme4 refits by ML first), so the bounds are those of
          lme4 while ``sdcor`` stays this fit's estimate. A bound not reached inside the parameter
          space is its edge (0 for an SD, -1 or 1 for a correlation). ``likelihood="reml"``
          profiles the REML criterion of a REML fit instead (around the REML estimates; not lme4's).
          ``boundary="one-sided"`` (not lme4's): an SD interval that reaches 0 cannot miss the truth
          from below, so its upper bound becomes the one-sided level-``level`` bound (zeta = z_level;
          :mod:`theralens.model.profile`). ``boundary="boundary-aware"`` (not lme4's): the SD
          intervals invert the likelihood-ratio test with the distribution it has near the
          boundary 0 (Feldman & Cousins' unified interval; :mod:`theralens.model.profile`), which
          keeps the coverage at ``level`` where lme4's over-covers. ``attrs["adjusted"]`` lists
          the rows the rule changed.
        - ``method="bootstrap"``: parametric-bootstrap percentile intervals (lme4's ``method =
          "boot"``, :mod:`theralens.model.bootstrap`): ``nsim`` responses drawn from this fit, each
          refitted as this fit was (REML or ML), with a progress bar (``progress``) and ``seed``;
          refits that do not converge are left out and counted in ``attrs["failed"]``.

        ``rows`` restricts the result to some (grp, var1, var2) rows (e.g. ``[("therapist",
        "alliance", None)]`` for one slope SD): a profile is then computed for those alone.
        """
        from theralens.model.profile import BOUNDARY_RULES, profile_intervals, varcorr_parameters

        if not 0 < level < 1:
            raise InputError(f"conf_int_varcorr: level must lie between 0 and 1 (got {level}); e.g. 0.95")
        methods = ("profile", "bootstrap")
        if method not in methods:
            raise InputError(f"conf_int_varcorr: method must be one of {', '.join(methods)} (got {method!r})")
        if likelihood not in ("ml", "reml") or (likelihood == "reml" and not self.reml):
            raise InputError(f"conf_int_varcorr: likelihood must be 'ml', or 'reml' for a REML fit (got {likelihood!r}"
                             f" for a{' REML' if self.reml else 'n ML'} fit)")
        if boundary not in BOUNDARY_RULES or (boundary != "two-sided" and method != "profile"):
            raise InputError(f"conf_int_varcorr: boundary must be 'two-sided', or 'one-sided' or 'boundary-aware' with "
                             f"method='profile' (got {boundary!r} with method={method!r})")
        every = varcorr_parameters(self.design)  # the rows of varcorr, in its order
        params = every
        if rows is not None:
            keys = {(p.grp, p.var1, p.var2): p for p in every}
            missing = [r for r in rows if tuple(r) not in keys]
            if missing:
                known = "; ".join(str((p.grp, p.var1, p.var2)) for p in every)
                raise InputError(f"conf_int_varcorr: no variance component {missing[0]} in this model; it has {known}")
            params = [keys[tuple(r)] for r in rows]  # type: ignore[index]
        idx = [every.index(p) for p in params]
        low, high = interval_columns(level)
        frame = pd.DataFrame({"grp": [p.grp for p in params], "var1": pd.Series([p.var1 for p in params], dtype=object),
                              "var2": pd.Series([p.var2 for p in params], dtype=object),
                              "sdcor": self.varcorr["sdcor"].to_numpy()[idx]})
        with one_blas_thread():
            if method == "profile":
                base = self if (not self.reml or likelihood == "reml") else _fit_criterion(
                    self.criterion, self.formula, False, self.solution.theta, self.design)
                prof = profile_intervals(base.criterion, base.solution.theta, base.sigma, base.reml, level, params,
                                         boundary=boundary)
                frame[low], frame[high] = prof[low].to_numpy(), prof[high].to_numpy()
                frame.attrs.update(method="profile", level=level, likelihood="REML" if base.reml else "ML",
                                   boundary=boundary, adjusted=[i for i, o in enumerate(prof["adjusted"]) if o])
                return frame
            from theralens.model.bootstrap import bootstrap_statistics, percentile_bounds

            def statistic(d: Design) -> np.ndarray | None:
                refit = fit_design(d, self.formula, reml=self.reml, start=self.solution.theta)
                return refit.varcorr["sdcor"].to_numpy()[idx] if refit.converged else None

            samples, failed = bootstrap_statistics(self._rows(), self.solution.beta, self.solution.theta,
                                                   self.sigma, statistic, nsim, seed, progress)
            lo, hi = percentile_bounds(samples, level)
            frame[low] = lo if len(lo) else np.nan
            frame[high] = hi if len(hi) else np.nan
            frame.attrs.update(method="bootstrap", level=level, nsim=nsim, failed=failed, seed=seed)
            return frame

    # -- criteria ---------------------------------------------------------------------------
    @property
    def reml_criterion(self) -> float | None:
        if not self.reml:
            return None
        return criterion_from_profile(self.solution.profile, self.nobs, self.design.k, True)

    @property
    def deviance(self) -> float:
        return criterion_from_profile(self.solution.profile, self.nobs, self.design.k, False)

    @property
    def npar(self) -> int:
        return self.design.k + self.design.ntheta + 1

    @property
    def loglik(self) -> float:
        crit = self.reml_criterion if self.reml else self.deviance
        return -0.5 * float(crit)

    @property
    def aic(self) -> float:
        return -2 * self.loglik + 2 * self.npar

    @property
    def bic(self) -> float:
        return -2 * self.loglik + np.log(self.nobs) * self.npar

    @property
    def converged(self) -> bool:
        return bool(self.optimizer.converged)

    @property
    def singular(self) -> bool:
        lower = self.design.theta_lower_bounds()
        th = self.solution.theta
        diag = np.isfinite(lower)
        return bool(np.any(th[diag] < SINGULAR_TOL))

    # -- random effects ---------------------------------------------------------------------
    def random_effects(self, group: str | None = None) -> pd.DataFrame:
        """Conditional modes and conditional SDs, tidy (grp, level, term, estimate, cond_sd).

        ``group`` selects one grouping factor (e.g. ``"therapist"``); all by default.
        """
        frames = []
        for l, lv in enumerate(self.design.levels):
            if group is not None and lv.group != group:
                continue
            labels = self.criterion.labels[l]
            cols = [c for t in lv.terms for c in t.columns]
            b = self.solution.b[l]
            sd = np.sqrt(np.maximum(np.diagonal(self.solution.condvar[l], axis1=1, axis2=2), 0))
            order = np.argsort(labels.astype(str), kind="stable")
            for j, c in enumerate(cols):
                frames.append(pd.DataFrame({
                    "grp": lv.group, "level": labels[order].astype(str), "term": c,
                    "estimate": b[order, j], "cond_sd": sd[order, j],
                }))
        if not frames:
            known = ", ".join(lv.group for lv in self.design.levels)
            raise KeyError(f"no grouping factor '{group}'; the model has: {known}")
        return pd.concat(frames, ignore_index=True)

    def _rows(self) -> Design:
        if not isinstance(self.design, Design):
            raise InputError("fitted values and residuals need the rows of the data, and this fit was made from "
                             "sufficient statistics alone (fit_stats): fit with fit_mixed(formula, data) for them")
        return self.design

    def _fitted_values(self) -> np.ndarray:
        """X beta + sum_l Z_l b_l for every row of the design."""
        design = self._rows()
        order = self.criterion.stats.order
        assert order is not None  # statistics built from these rows
        out = design.X @ self.solution.beta if design.k else np.zeros(design.n)
        for l, lv in enumerate(design.levels):
            Z = np.hstack([t.Z for t in lv.terms])  # type: ignore[misc]
            out = out + np.einsum("ij,ij->i", Z, self.solution.b[l][order[l][lv.codes]])
        return out

    def fitted(self) -> pd.Series:
        return pd.Series(self._fitted_values(), index=self._rows().row_index, name="fitted")

    def residuals(self) -> pd.Series:
        design = self._rows()
        return pd.Series(design.y - self._fitted_values(), index=design.row_index, name="residual")

    def predict(self, newdata: pd.DataFrame | None = None, include_random: bool = True) -> pd.Series:
        """Predictions X beta (``include_random=False``: population level) or X beta + Z b
        (conditional on the conditional modes b), as lme4's ``predict(m, newdata, re.form)``.

        Without ``newdata`` the fitted rows are predicted (with ``include_random`` this is
        :meth:`fitted`). ``newdata`` is coded as the fitted data were (same factor levels). A
        group that the fit has not seen (or a missing id) gets 0 for its level's random
        effects, as lme4's ``allow.new.levels = TRUE``; the number of such rows per grouping
        factor is in ``attrs["new_levels"]``. A row with a missing predictor gives NaN.
        """
        if newdata is None:
            fitted = self.fitted()  # (a fit without rows says so here)
            if include_random:
                return fitted.rename("predicted")
            return pd.Series(self.design.X @ self.solution.beta, index=fitted.index, name="predicted")
        if not isinstance(newdata, pd.DataFrame):
            raise InputError("predict: newdata must be a pandas DataFrame with the model's columns")
        if self.data is None:
            raise InputError("predict: this fit does not keep its data (it was fitted from a design or from "
                             "sufficient statistics); fit it with fit_mixed to predict new data")
        parsed = self.design.formula
        parts = [parsed.fixed] + ([f"{t.lhs} + {' + '.join(t.factors)}" for t in parsed.random] if include_random
                                  else [])  # the population level needs no grouping columns (lme4's re.form = NA)
        used = ParsedFormula(parsed.response, parsed.fixed, (), " + ".join(parts)).variables()
        needed = [v for v in used if v != parsed.response and v in self.data.columns]
        absent = [v for v in needed if v not in newdata.columns]
        if absent:
            raise InputError(f"predict: newdata has no column {absent[0]!r}; the model uses "
                             f"{', '.join(repr(v) for v in needed)}")
        reference = self.data.loc[self.design.row_index, needed]
        rows = newdata[needed]
        X, names = model_matrix_like(parsed.fixed, rows, reference, parsed)
        pos = {n: i for i, n in enumerate(names)}
        out = X[:, [pos[n] for n in self.fixed_names]] @ self.solution.beta if self.fixed_names else np.zeros(len(rows))
        new_levels: dict[str, int] = {}
        if include_random:
            for lv in self.design.levels:
                Z = np.hstack([np.ones((len(rows), 1)) if t.spec.lhs.strip() == "1"
                               else model_matrix_like(t.spec.lhs, rows, reference, parsed)[0] for t in lv.terms])
                modes = self.random_effects(lv.group)
                q = Z.shape[1]
                labels = modes["level"].to_numpy()[: lv.ngroups]
                b = modes["estimate"].to_numpy().reshape(q, lv.ngroups).T
                where = {label: g for g, label in enumerate(labels)}
                idx = np.array([where.get(v, -1) if v is not None else -1
                                for v in group_labels(rows, lv.terms[0].spec.factors)], dtype=np.int64)
                seen = idx >= 0
                new_levels[lv.group] = int((~seen).sum())
                out = out + np.where(seen, np.einsum("ij,ij->i", Z, b[np.maximum(idx, 0)]), 0.0)
        result = pd.Series(out, index=newdata.index, name="predicted")
        result.attrs["new_levels"] = new_levels
        return result

    # -- presentation -------------------------------------------------------------------------
    def coef_table(self) -> pd.DataFrame:
        """Fixed effects as lmerTest's ``summary()`` coefficient table."""
        return pd.DataFrame({
            "Estimate": self.fixed_effects, "Std. Error": self.std_errors, "df": self.df,
            "t value": self.t_values, "Pr(>|t|)": self.p_values,
        })

    def summary(self) -> Summary:
        """Summary laid out like lmerTest's ``summary(lmer(...))``: ``print()`` gives the text,
        ``.tables`` the fit statistics (``fit``), ``groups``, ``random_effects`` (VarCorr) and
        ``fixed_effects`` (the coefficient table) as DataFrames, ``as_html()`` the notebook view."""
        method = "REML" if self.reml else "maximum likelihood"
        lines = [
            f"Linear mixed model fit by {method}. {ddf_method_line(self.ddf)} [theralens]",
            f"Formula: {self.formula}",
            "",
        ]
        if self.reml:
            lines.append(f"REML criterion at convergence: {self.reml_criterion:.4f}")
        else:
            lines.append(f"     AIC      BIC   logLik deviance\n{self.aic:8.1f} {self.bic:8.1f} {self.loglik:8.1f} "
                         f"{self.deviance:8.1f}")
        lines += ["", "Random effects:", " Groups   Name        Variance Std.Dev. Corr"]
        for name, cols, cov in self._term_covariances():
            sd = np.sqrt(np.diag(cov))
            for i, c in enumerate(cols):
                corr = ""
                if i:
                    corr = " ".join(f"{cov[i, j] / (sd[i] * sd[j]):5.2f}" if sd[i] * sd[j] > 0 else "  NaN"
                                    for j in range(i))
                lines.append(f" {name if i == 0 else '':<8} {c:<11} {cov[i, i]:8.4g} {sd[i]:8.4g} {corr}")
        lines.append(f" {'Residual':<8} {'':<11} {self.sigma**2:8.4g} {self.sigma:8.4g}")
        groups = ", ".join(f"{g}, {n}" for g, n in self.ngroups.items())
        lines.append(f"Number of obs: {self.nobs}, groups:  {groups}")
        if self.n_dropped:
            lines.append(f"({self.n_dropped} rows dropped for missing values)")
        lines += ["", "Fixed effects:", self.coef_table().to_string(float_format=lambda v: f"{v:.4g}")]
        status = "converged" if self.converged else "NOT converged"
        opt = self.optimizer
        lines += ["", f"Optimizer: {opt.method}, {opt.evaluations} evaluations "
                      f"({opt.gradient_evaluations} with the gradient), "
                      f"max|gradient| {opt.gradient_norm:.2g}: {status}"]
        if self.singular:
            lines.append("boundary (singular) fit: a variance is estimated at zero (see varcorr)")
        lines += self.optimizer.messages + self.notes
        tables = {"fit": self._fit_table(), "groups": pd.DataFrame({"groups": self.ngroups}),
                  "random_effects": self.varcorr, "fixed_effects": self.coef_table()}
        head = [*self._status_lines()[1:], *self.optimizer.messages, *self.notes]
        return Summary(f"Linear mixed model fit by {method} (t-tests: {ddf_label(self.ddf)})", "\n".join(lines), tables,
                       head, index={"fit": False, "random_effects": False})

    def _fit_table(self) -> pd.DataFrame:
        """Fit statistics as a two-column table (statistic, value)."""
        rows: list[tuple[str, object]] = [("method", "REML" if self.reml else "ML"), ("observations", self.nobs)]
        rows += [(f"groups: {g}", n) for g, n in self.ngroups.items()]
        if self.reml:
            rows.append(("REML criterion", self.reml_criterion))
        rows += [("AIC", self.aic), ("BIC", self.bic), ("logLik", self.loglik), ("deviance", self.deviance),
                 ("residual SD", self.sigma), ("converged", self.converged), ("singular", self.singular),
                 ("optimizer", self.optimizer.method), ("evaluations", self.optimizer.evaluations)]
        return pd.DataFrame(rows, columns=["statistic", "value"])

    def _status_lines(self) -> list[str]:
        """What the fit is, in a few lines (no arrays): the repr and the notebook header."""
        method = "REML" if self.reml else "ML"
        groups = ", ".join(f"{g} {n}" for g, n in self.ngroups.items())
        crit = (f"REML criterion {self.reml_criterion:.4f}" if self.reml
                else f"deviance {self.deviance:.4f}, AIC {self.aic:.1f}")
        state = ("converged" if self.converged else "NOT converged") + (", singular" if self.singular else
                                                                        ", not singular")
        return [f"<MixedResult: linear mixed model fit by {method}>", f"Formula: {self.formula}",
                f"{self.nobs} observations; groups: {groups}", f"{crit}; {state}"]

    def __str__(self) -> str:
        return str(self.summary())

    def __repr__(self) -> str:
        return "\n".join(self._status_lines())

    def _repr_html_(self) -> str:
        return self.summary().as_html()


def fit_mixed(
    formula: str,
    data: pd.DataFrame,
    reml: bool = True,
    start: np.ndarray | None = None,
    ddf: str = "satterthwaite",
) -> MixedResult:
    """Fit a linear mixed model with nested random effects, written in lme4 syntax.

    Supported random parts: ``(1 | g)``, ``(1 + x | g)``, ``(0 + x | g)``, ``(x || g)``,
    ``(1 | a/b)`` and ``(1 | a:b)``, nested up to any depth. Crossed grouping factors raise
    :class:`~theralens.errors.ModelSpecError`. Rows with missing values in used columns are
    dropped and counted (``n_dropped``). REML by default; ``reml=False`` for ML. ``ddf``: the
    df method of the fixed-effect tests (:mod:`theralens.model.ddf`: ``"satterthwaite"``,
    ``"kenward-roger"`` (REML only, as lmerTest), ``"residual"``, ``"asymptotic"``). Runs with
    one BLAS thread (:mod:`theralens.model.threads`: faster for the engine's small blocks).
    """
    _check_ddf_for(ddf, reml)
    parsed = parse_formula(formula)
    with one_blas_thread():
        design = build_design(parsed, data)
        fit = fit_design(design, formula, reml=reml, start=start, ddf=ddf)
    fit.data = data
    if design.n_dropped:
        fit.notes.append(f"{design.n_dropped} rows with missing values were dropped")
    if design.dropped_columns:
        fit.notes.append("fixed-effect model matrix is rank deficient; dropped: " + ", ".join(design.dropped_columns))
    return fit


def fit_design(design: Design, formula: str, reml: bool = True, start: np.ndarray | None = None,
               ddf: str = "satterthwaite") -> MixedResult:
    """Fit a ready :class:`~theralens.model.design.Design` (lme4's ``mkLmerDevfun`` ->
    ``optimizeLmer`` -> ``mkMerMod`` after ``lFormula``): criterion from the sufficient
    statistics, BFGS on the analytic gradient (BOBYQA as fallback) from ``start``, by default
    from moment estimates (:func:`moment_start`) or else lme4's start, then the solution.

    :func:`fit_mixed` is ``build_design`` followed by this step; designs built from arrays
    (the power simulations) call it directly. ``formula`` is kept in the result; ``ddf`` as in
    :func:`fit_mixed`.
    """
    _check_ddf_for(ddf, reml)
    with one_blas_thread():
        return _fit_criterion(NestedCriterion(design), formula, reml, start, design, ddf=ddf)


def fit_stats(stats: SufficientStats, reml: bool = True, start: np.ndarray | None = None,
              ddf: str = "satterthwaite") -> MixedResult:
    """Fit from sufficient statistics alone (:class:`~theralens.model.stats.SufficientStats`:
    from a frame, from arrays, or summed over parts of the data), with the same criterion,
    optimizer, df methods (``ddf``; Kenward-Roger too: it needs only the statistics) and
    likelihood-ratio tests as :func:`fit_mixed` (which is statistics from the rows followed by
    this fit). Aliased fixed-effect columns of the whole data are dropped first, as lme4 drops
    them. The result has no rows: ``fitted()`` and ``residuals()`` raise
    :class:`~theralens.errors.InputError`.
    """
    _check_ddf_for(ddf, reml)
    whole = stats.without_aliased()
    if whole.n <= whole.k:
        raise InputError(f"only {whole.n} rows in the statistics for {whole.k} fixed effects "
                         f"({', '.join(whole.fixed_names)}); a mixed model needs more rows than fixed effects - "
                         "add data or drop predictors")
    formula = whole.formula.text if whole.formula is not None else ""
    with one_blas_thread():
        fit = _fit_criterion(NestedCriterion(whole), formula, reml, start, whole, ddf=ddf)
    if whole.n_dropped:
        fit.notes.append(f"{whole.n_dropped} rows with missing values were dropped")
    if whole.dropped_columns:
        fit.notes.append("fixed-effect model matrix is rank deficient; dropped: " + ", ".join(whole.dropped_columns))
    return fit


_KR_NEEDS_REML = ("Kenward-Roger degrees of freedom are defined for REML fits only (as in lmerTest): fit with "
                  "reml=True, or choose ddf='satterthwaite' for an ML fit")


def _check_ddf_for(ddf: str, reml: bool) -> None:
    """Refuse an unknown ``ddf`` or Kenward-Roger with ML before any fitting."""
    if check_ddf(ddf) == "kenward-roger" and not reml:
        raise InputError(_KR_NEEDS_REML)


def _fit_criterion(crit: NestedCriterion, formula: str, reml: bool, start: np.ndarray | None,
                   rows: Design | SufficientStats, ddf: str = "satterthwaite") -> MixedResult:
    """Optimise the criterion and build the result (the step every fit entry shares); ``rows``
    is what the result keeps as its ``design``."""
    design = crit.design
    lower = design.theta_lower_bounds()
    scale = design.theta_scale()
    if start is not None:
        x0 = np.asarray(start, dtype=float)
    else:  # moment estimates of the standard deviations; else lme4's start, 1 on the diagonals
        moments = moment_start(crit, scale)
        x0 = moments if moments is not None else np.where(np.isfinite(lower), 1.0, 0.0) / scale
    rec = minimize_theta(lambda th: crit.criterion(th, reml), x0, lower, scale=scale,
                         fg=lambda th: crit.value_and_gradient(th, reml))
    sol = crit.solve(rec.final, reml)
    return MixedResult(formula=formula, reml=reml, design=rows, criterion=crit, solution=sol,
                       optimizer=rec, notes=[], data=None, ddf=ddf)


#: Moment-based starting diagonals of Lambda are clipped to this range, on the scaled parameters. The
#: lower end keeps a start off the saddle at zero; at 0.3 it lay above the moment estimates of small
#: therapist slope SDs (44k-row user-path benchmark, in theta: a start of 0.44 and 0.48 instead of the
#: moment estimates 0.076 and 0.080, optimum 0.057 and 0.046), and BFGS took 36 evaluations instead
#: of 24 (benchmarks/RESULTS.md, 2026-12-03).
START_RANGE = (0.05, 3.0)
START_ROWS = 3  # a group's own fit counts for the start with at least this many rows per random term


def moment_start(crit: NestedCriterion, scale: np.ndarray) -> np.ndarray | None:
    """A starting theta from per-group least squares (a method of moments), or None.

    Everything comes from the sufficient statistics: beta by ordinary least squares on all rows;
    sigma^2 pooled within the innermost clusters, after each cluster's own least-squares fit of
    its random-effect columns (where that fit exists); and for every level the coefficients b_g
    of each group's own fit of Z_l to the OLS residuals, whose variance over the groups exceeds
    sigma^2 times the mean of diag (Z_g'Z_g)^{-1} by the level's variances (Swamy 1970; coarser
    levels also absorb the finer ones: a start, not an estimate). Only the standard deviations
    are used (a diagonal Lambda, sd / sigma), kept within ``START_RANGE`` on the scaled parameters
    (``scale``, as the optimizer sees them): noisy per-group fits give poor correlations, and a
    diagonal at zero is a saddle point of the criterion. None when most groups of a level are
    too small for a fit of their own (fewer than ``START_ROWS`` rows per random term, or an
    ill-conditioned Z_g'Z_g), as with a few patients per therapist: the fit then starts where
    lme4 does.

    Starting here instead of at lme4's theta = 1 saves BFGS a fifth of its evaluations on
    typical therapy data; the optimum is the same.
    """
    design = crit.design
    stats = crit.stats
    q, k = crit.q, crit.k
    offs = np.cumsum([0] + q)
    R = slice(int(offs[-1]), crit.d)  # [X, y]
    try:
        tot = stats.total
        v = np.r_[-np.linalg.solve(tot[:-1, :-1][-k:, -k:], tot[-k - 1 : -1, -1]) if k else [], 1.0]  # [-beta, 1]
        n_rows = stats.counts.astype(float)
        sigma2 = 0.0
        theta = np.zeros(design.ntheta)
        for l, lv in enumerate(design.levels):
            ql = q[l]
            zl = slice(int(offs[l]), int(offs[l + 1]))
            Cl = stats.inner if l == 0 else stats.group_sums(l)  # the rows of Z_l' W per group
            G = Cl.shape[0]
            n_g = n_rows if l == 0 else np.bincount(crit.anc[0][l], weights=n_rows, minlength=G)
            if np.count_nonzero(n_g >= START_ROWS * ql) < max(ql + 2, 0.5 * G):
                return None  # most groups too small to fit on their own
            rows = slice(0, ql) if l == 0 else zl
            Zr = Cl[:, rows, R] @ v  # Z_g' (y - X beta)
            ZZ = Cl[:, rows, zl]
            if ql == 1:
                zz = ZZ.reshape(G)
                own = zz > 0  # groups with a fit of their own
                zinv = 1.0 / np.where(own, zz, 1.0)
                coef = Zr[:, 0] * zinv
                explained = float((Zr[own, 0] * coef[own]).sum())
                ok = own & (n_g >= START_ROWS)
                b = coef[ok, None]
                noise = zinv[ok, None]
            else:
                dg = np.diagonal(ZZ, axis1=1, axis2=2)
                sd = np.sqrt(np.where(dg > 0, dg, 1.0))
                own = (np.all(dg > 0, axis=1) & (n_g >= ql)
                       & (np.linalg.det(ZZ / (sd[:, :, None] * sd[:, None, :])) > 1e-6))  # well-conditioned fits
                Zinv = np.linalg.inv(ZZ[own])
                coef = np.einsum("gij,gj->gi", Zinv, Zr[own])
                explained = float((Zr[own] * coef).sum())
                ok = own & (n_g >= START_ROWS * ql)
                keep = ok[own]
                b = coef[keep]
                noise = np.diagonal(Zinv, axis1=1, axis2=2)[keep]
            if ok.sum() < max(ql + 2, 0.5 * G):  # or too many ill-conditioned
                return None
            if l == 0:  # pooled residual variance within the innermost clusters, after their own fits
                rss = float(v @ tot[R, R] @ v) - explained
                dof = float(n_rows.sum()) - float(own.sum()) * ql - k
                if not (dof > 0 and rss > 0):
                    return None
                sigma2 = rss / dof
            var = b.var(axis=0, ddof=1) - sigma2 * noise.mean(axis=0)
            sds = np.sqrt(np.maximum(var, 0.0) / sigma2)
            off = 0
            for term, sl in zip(lv.terms, lv.theta_slices):
                rows_, cols = colmajor_tril(term.q)
                theta[sl] = np.where(rows_ == cols, sds[off + rows_], 0.0)
                off += term.q
    except (np.linalg.LinAlgError, FloatingPointError, ValueError):
        return None
    diag = np.isfinite(design.theta_lower_bounds())
    theta[diag] = np.clip(theta[diag] * scale[diag], *START_RANGE) / scale[diag]
    return theta if np.all(np.isfinite(theta)) else None
