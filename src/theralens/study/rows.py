"""The analysis rows of the aims: where the study's models get their statistics.

The aims (:mod:`theralens.study.aims`) fit every model of the study from one of two holders of
the same analysis table (one row per analysed patient, or per lagged pair):

- :class:`FrameRows`: the table as a pandas frame in memory (the pandas engine). Models are
  fitted by :func:`~theralens.model.fit.fit_mixed` (statistics from the rows, then the fit), so
  fitted values and residuals come from the rows.
- :class:`RelationRows`: the table as a DuckDB relation (the DuckDB engine,
  :mod:`theralens.data.scan`). Models are fitted by :func:`~theralens.model.fit.fit_stats` from
  the :class:`~theralens.model.stats.SufficientStats` that
  :func:`~theralens.study.sql_stats.sufficient_stats` computes by GROUP BY; no frame of the rows is
  built. Conditional modes need only the statistics; the residual summaries of the
  diagnostics need the rows, so they are a second pass in SQL: fitted values X beta + Z b
  with the conditional modes joined by group label, ordered by the fitted values and by the
  residuals with window functions, and only the plotted positions (at most
  :data:`~theralens.study.document.MAX_POINTS`) and the cumulative sums the running mean needs
  leave DuckDB. The summary itself is computed by the one implementation in
  :func:`theralens.study.document.residual_summary_from` on both paths.

- :class:`ClusterRows`: as :class:`RelationRows`, but each fit's statistics are computed per
  partition of a Parquet copy of the table on a dask.distributed cluster and summed on the
  client (``theralens analyze --scheduler ADDRESS``).

All give the aims the same four things: a model fit (:meth:`fit`), the rows of the therapists
with a moderator value (:meth:`with_moderators`), one row per therapist (:meth:`therapists`:
patients, rows, caseload means and between components) and the residual summary
(:meth:`diagnostics`).
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import pandas as pd

from theralens.errors import InputError
from theralens.model import MixedResult, fit_mixed
from theralens.model.fit import fit_stats
from theralens.model.stats import SufficientStats
from theralens.study.document import residual_summary, residual_summary_from
from theralens.study.sql_stats import (
    RowSums,
    column_sql,
    derived_stats,
    grouping_order,
    key_sql,
    row_sums,
    sufficient_stats,
)

__all__ = ["RELEASE_BYTES", "AnalysisRows", "ClusterRows", "FrameRows", "RelationRows", "as_rows", "partial_stats"]

_views = itertools.count()

#: A model of the DuckDB path whose per-patient statistics take at least this many bytes frees them
#: once the study has used it (:meth:`AnalysisRows.used`): about 300,000 patients of the session
#: design's models.
RELEASE_BYTES = 32 * 2**20


def _register(con: Any, name: str, frame: pd.DataFrame) -> None:
    """Register ``frame`` as ``name`` (after finishing any open result: a fetchone leaves one open)."""
    con.execute("SELECT 1").fetchall()
    con.register(name, frame)


class AnalysisRows:
    """The interface both holders of the analysis table share (module docstring)."""

    processes: tuple[str, ...]
    between: dict[str, str]

    def fit(self, formula: str, ddf: str) -> MixedResult:
        raise NotImplementedError

    def with_moderators(self, moderators: pd.DataFrame) -> AnalysisRows:
        """The rows of the therapists in ``moderators`` (column ``therapist`` as text), with its columns."""
        raise NotImplementedError

    def therapists(self) -> pd.DataFrame:
        """One row per therapist (``therapist`` as text, sorted): ``n_patients``, ``n_rows``, per
        process p ``p_caseload_mean`` and its between-therapist component (named as in the table),
        and ``service`` when the rows have services."""
        raise NotImplementedError

    def diagnostics(self, fit: MixedResult) -> dict[str, Any]:
        """:func:`~theralens.study.document.residual_summary` of ``fit`` (a model of these rows)."""
        raise NotImplementedError

    def used(self, fit: MixedResult) -> None:
        """The study has read what it needs of ``fit`` (a model of these rows). Rows in memory keep
        every fit whole, for the user; on the DuckDB path a fit whose per-patient statistics take
        at least :data:`RELEASE_BYTES` frees them
        (:meth:`~theralens.model.fit.MixedResult.release_statistics`): at 12.5 million patients
        1.3-1.6 GB per model, while smaller fits stay whole (their summary, df and intervals work)."""

    def fitted_all(self) -> None:
        """Every model of the study is fitted: free what was kept to fit more of them."""

    @property
    def n_rows(self) -> int:
        return int(self.therapists()["n_rows"].sum())

    @property
    def n_therapists(self) -> int:
        return len(self.therapists())

    @property
    def n_patients(self) -> int:
        return int(self.therapists()["n_patients"].sum())


def _therapist_columns(processes: tuple[str, ...], between: dict[str, str]) -> list[str]:
    out = []
    for p in processes:
        out += [f"{p}_caseload_mean", between[p]]
    return list(dict.fromkeys(out))


class FrameRows(AnalysisRows):
    """The analysis table as a pandas frame (``therapist`` and ``patient`` as text)."""

    def __init__(self, frame: pd.DataFrame, processes: tuple[str, ...], between: dict[str, str]) -> None:
        self.frame = frame
        self.processes = tuple(processes)
        self.between = dict(between)
        self._therapists: pd.DataFrame | None = None

    def fit(self, formula: str, ddf: str) -> MixedResult:
        return fit_mixed(formula, self.frame, ddf=ddf)

    def with_moderators(self, moderators: pd.DataFrame) -> FrameRows:
        d = self.frame.copy()
        d["therapist"] = d["therapist"].astype(str)
        return FrameRows(d.merge(moderators, on="therapist", how="inner"), self.processes, self.between)

    def therapists(self) -> pd.DataFrame:
        if self._therapists is None:
            t = self.frame.copy()
            t["therapist"] = t["therapist"].astype(str)
            by = t.groupby("therapist")
            out = pd.DataFrame({"n_patients": by["patient"].nunique(), "n_rows": by.size()})
            for c in _therapist_columns(self.processes, self.between) + (["service"] if "service" in t else []):
                out[c] = by[c].first()
            out.index.name = "therapist"
            self._therapists = out.reset_index()
        return self._therapists

    def diagnostics(self, fit: MixedResult) -> dict[str, Any]:
        return residual_summary(fit.fitted().to_numpy(dtype=float), fit.residuals().to_numpy(dtype=float))


class RelationRows(AnalysisRows):
    """The analysis table as the DuckDB relation ``relation`` of connection ``con``."""

    def __init__(self, con: Any, relation: str, processes: tuple[str, ...], between: dict[str, str],
                 root: RelationRows | None = None, moderators: pd.DataFrame | None = None) -> None:
        self.con = con
        self.relation = relation
        self.processes = tuple(processes)
        self.between = dict(between)
        self._therapists: pd.DataFrame | None = None
        self._root = root if root is not None else self  # the rows without moderators
        self._moderators = moderators
        self._sums: RowSums | None | bool = False  # the root's RowSums: False until computed, None if unusable

    def fit(self, formula: str, ddf: str) -> MixedResult:
        """The model from the root's one pass of :func:`~theralens.study.sql_stats.row_sums` when its
        columns allow (every model of the study), else from its own :func:`sufficient_stats` pass."""
        root = self._root
        if root._sums is False:
            root._sums = row_sums(root.con, root.relation, formula, tuple(self.between.values()))
        stats = None
        if root._sums is not None:
            stats = derived_stats(self.con, self.relation, formula, root._sums, self._moderators)
        if stats is None:
            stats = sufficient_stats(self.con, self.relation, formula)
        return fit_stats(stats, ddf=ddf)

    def used(self, fit: MixedResult) -> None:
        if isinstance(fit.design, SufficientStats) and fit.design.inner.nbytes >= RELEASE_BYTES:
            fit.release_statistics()

    def fitted_all(self) -> None:
        self._root._sums = False

    def with_moderators(self, moderators: pd.DataFrame) -> RelationRows:
        k = next(_views)
        table, view = f"study_moderators_{k}", f"study_rows_{k}"
        _register(self.con, table, moderators)
        extra = ", ".join(f'm."{c}"' for c in moderators.columns if c != "therapist")
        self.con.execute(f"""CREATE OR REPLACE TEMP VIEW {view} AS SELECT r.*{', ' + extra if extra else ''}
            FROM {self.relation} r JOIN {table} m ON CAST(r.therapist AS VARCHAR) = m.therapist""").fetchall()
        if self._moderators is not None:  # moderators of moderators: no shared pass
            return RelationRows(self.con, view, self.processes, self.between, root=None)
        return RelationRows(self.con, view, self.processes, self.between, root=self._root, moderators=moderators)

    def therapists(self) -> pd.DataFrame:
        if self._therapists is None:
            service = ["service"] if "service" in self._columns() else []
            cols = "".join(f', min("{c}") AS "{c}"'
                           for c in _therapist_columns(self.processes, self.between) + service)
            self._therapists = self.con.execute(
                f"""SELECT CAST(therapist AS VARCHAR) AS therapist, count(DISTINCT patient) AS n_patients,
                count(*) AS n_rows{cols} FROM {self.relation} GROUP BY 1 ORDER BY 1""").df()
        return self._therapists

    def diagnostics(self, fit: MixedResult) -> dict[str, Any]:
        """The residual summary by a second pass in SQL (module docstring)."""
        con = self.con
        fixed = " + ".join(f"{float(b)!r} * {column_sql(n)}" for n, b in fit.fixed_effects.items()) or "0.0"
        joins, random = [], []
        for l, lv in enumerate(fit.design.levels):
            factors = tuple(lv.terms[0].spec.factors)
            cols = [c for t in lv.terms for c in t.columns]
            # the conditional modes by group label, straight from the solution (random_effects()'s long,
            # sorted frame of every patient is gigabytes at 12.5 million patients)
            table = f"study_modes_{next(_views)}"
            b = np.asarray(fit.solution.b[l], dtype=float)
            frame = pd.DataFrame({"__key": np.asarray(fit.criterion.labels[l]).astype(str)})
            for j in range(len(cols)):
                frame[f"b{j}"] = b[:, j]
            _register(con, table, frame)
            joins.append(f"LEFT JOIN {table} m{l} ON m{l}.__key = {key_sql(factors)}")
            random += [f"coalesce(m{l}.b{j}, 0.0) * {column_sql(c)}" for j, c in enumerate(cols)]
        response = column_sql(fit.design.formula.response)
        used = [column_sql(c) for lv in fit.design.levels for t in lv.terms for c in t.columns]
        used += [column_sql(n) for n in fit.fixed_names] + [response]
        complete = " AND ".join(f"{e} IS NOT NULL" for e in used)
        # the order of residual_summary: by fitted value, ties by residual (rows equal in both are
        # interchangeable), so no identifier enters the sort keys (at 8M rows, string tie-breakers
        # made this pass three times slower)
        table = f"study_residuals_{next(_views)}"
        con.execute(f"""CREATE OR REPLACE TEMP TABLE {table} AS SELECT f, r,
            row_number() OVER (ORDER BY f, r) - 1 AS pos_f,
            row_number() OVER (ORDER BY r) - 1 AS pos_r,
            sum(r) OVER (ORDER BY f, r ROWS UNBOUNDED PRECEDING) AS cs
            FROM (SELECT *, {response} - f AS r FROM (SELECT *, {fixed} + {' + '.join(random) or '0.0'} AS f
                  FROM (SELECT * FROM {self.relation} WHERE {complete}) {' '.join(joins)}))
            WHERE isfinite(f) AND isfinite(r)""").fetchall()
        n, mean, sd = con.execute(f"SELECT count(*), avg(r), stddev_samp(r) FROM {table}").fetchone()

        def at(column: str, position: str, idx: np.ndarray) -> np.ndarray:
            wanted = pd.DataFrame({"pos": np.asarray(idx, dtype=np.int64)})
            _register(con, "study_wanted", wanted)
            got = con.execute(f"SELECT w.pos, t.{column} FROM study_wanted w JOIN {table} t ON t.{position} = w.pos "
                              "ORDER BY w.pos").fetchall()
            con.unregister("study_wanted")
            lookup = dict(got)
            return np.array([lookup[int(i)] for i in idx], dtype=float)

        try:
            return residual_summary_from(
                int(n), lambda idx: (at("f", "pos_f", idx), at("r", "pos_f", idx)), lambda idx: at("cs", "pos_f", idx),
                lambda idx: at("r", "pos_r", idx), None if mean is None else float(mean),
                None if sd is None else float(sd))
        finally:
            con.execute(f"DROP TABLE IF EXISTS {table}").fetchall()

    def _columns(self) -> list[str]:
        return [r[0] for r in self.con.execute(f"DESCRIBE {self.relation}").fetchall()]


class ClusterRows(RelationRows):
    """The analysis table in DuckDB on the client and as a Parquet data set (``parquet``) that the
    workers of a dask.distributed ``client`` read: the fits' statistics are computed per
    partition on the cluster (:func:`partial_stats`, dask.dataframe over the data set) and summed
    on the client (:meth:`SufficientStats.combine <theralens.model.stats.SufficientStats.combine>`:
    a patient split across partitions is one patient); the per-therapist rows and the residual
    summary come from DuckDB on the client, as for :class:`RelationRows`.

    ``moderators`` (therapist and moderator columns) are joined to every partition on the
    workers, as :meth:`with_moderators` joins them in DuckDB."""

    def __init__(self, con: Any, relation: str, processes: tuple[str, ...], between: dict[str, str],
                 parquet: str, client: Any, moderators: pd.DataFrame | None = None) -> None:
        super().__init__(con, relation, processes, between)
        self.parquet = parquet
        self.client = client
        self.moderators = moderators

    def fit(self, formula: str, ddf: str) -> MixedResult:
        return fit_stats(self.statistics(formula), ddf=ddf)

    def statistics(self, formula: str) -> SufficientStats:
        """The statistics of ``formula``: one :func:`partial_stats` per partition on the cluster, summed here."""
        import dask
        import dask.dataframe as dd

        order = grouping_order(self.con, self.relation, formula)
        parts = dd.read_parquet(self.parquet).to_delayed()
        tasks = [dask.delayed(partial_stats)(part, formula, order, self.moderators) for part in parts]
        partials = [p for p in self.client.gather(self.client.compute(tasks)) if p is not None]
        if not partials:
            raise InputError(f"no complete rows for the model {formula!r} in any partition of {self.parquet}")
        return SufficientStats.combine(partials)

    def with_moderators(self, moderators: pd.DataFrame) -> ClusterRows:
        view = super().with_moderators(moderators)
        return ClusterRows(self.con, view.relation, self.processes, self.between, self.parquet, self.client,
                           moderators)


def partial_stats(part: pd.DataFrame, formula: str, order: list[str],
                  moderators: pd.DataFrame | None = None) -> SufficientStats | None:
    """:meth:`SufficientStats.from_frame <theralens.model.stats.SufficientStats.from_frame>` of one
    partition of the analysis rows (grouping factors in ``order``, innermost first), with the
    moderator columns joined by therapist; None when no row of the partition is complete."""
    part = part.copy()
    part["therapist"] = part["therapist"].astype(str)
    if "patient" in part:
        part["patient"] = part["patient"].astype(str)
    if moderators is not None:
        part = part.merge(moderators, on="therapist", how="inner")
    if not len(part):
        return None
    try:
        return SufficientStats.from_frame(formula, part, order=order)
    except InputError as exc:
        if str(exc).startswith("no complete rows"):
            return None  # nothing complete in this partition: the others carry the model
        raise


def as_rows(data: pd.DataFrame | AnalysisRows, processes: tuple[str, ...], between: dict[str, str]) -> AnalysisRows:
    """``data`` as :class:`AnalysisRows` (a frame becomes :class:`FrameRows`)."""
    return data if isinstance(data, AnalysisRows) else FrameRows(data, processes, between)
