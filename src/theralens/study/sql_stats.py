"""Sufficient statistics of a model over rows that stay in DuckDB: the statistics pass of the DuckDB path.

:func:`sufficient_stats` reduces a DuckDB relation (a table or view of the analysis rows) to the
engine's :class:`~theralens.model.stats.SufficientStats` by GROUP BY, summing products of
model-matrix columns (SUM(a*b)) per innermost group and per group of every coarser level
(engine.md in the repository's docs, "Statistics per innermost cluster"). It is the SQL twin of
:meth:`SufficientStats.from_frame <theralens.model.stats.SufficientStats.from_frame>` for rows in
memory: the one definition C = W'W per cluster computed by each of layout.md's two data adapters
on its own rows (tests/data/test_scan.py holds them equal). It lives in the study layer because
it builds the model's objects from the data layer's relations (:mod:`theralens.data.scan`); the
study's holders of the analysis rows (:mod:`theralens.study.rows`) fit from it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from theralens.data.scan import quote_identifier
from theralens.errors import InputError
from theralens.model.design import Level
from theralens.model.formula import parse_formula
from theralens.model.stats import SufficientStats

__all__ = ["column_sql", "grouping_order", "key_sql", "sufficient_stats"]


def column_sql(name: str) -> str:
    """SQL of a model-matrix column named as formulaic names it: the intercept, a column, or a product a:b
    (the statistics pass sums products of these; :mod:`theralens.study.rows` computes fitted values with them)."""
    if name in ("Intercept", "(Intercept)", "1"):
        return "1.0"
    return "(" + " * ".join(f"CAST({quote_identifier(part)} AS DOUBLE)" for part in name.split(":")) + ")"


def sufficient_stats(con: Any, relation: str, formula: str, *, sample_groups: int = 200) -> Any:
    """:class:`~theralens.model.stats.SufficientStats` of ``formula`` over the rows of a DuckDB
    ``relation`` (a table or view), by GROUP BY: per innermost group (patient) its count and the
    sums SUM(z_i * w_j) of its q_1 rows of W'W, per group of every coarser level (therapist,
    service) every SUM(w_i * w_j) of W = [Z_1, .., Z_D, X, y] (engine.md, "Statistics per
    innermost cluster"); with one grouping factor, the totals by one SUM over all rows. No row
    leaves DuckDB.

    This is the statistics pass of the DuckDB path; :meth:`SufficientStats.from_frame
    <theralens.model.stats.SufficientStats.from_frame>` is that of rows in memory. Both compute
    the one definition C = W'W per cluster, as layout.md's two data adapters do, for inputs that
    fit in memory and inputs that do not; tests/data/test_scan.py holds them equal.

    Nested grouping factors (e.g. ``(1 | therapist:patient)`` inside ``(... | therapist)``,
    inside ``(1 | service)``), innermost first by their number of factors, then of groups; the
    fixed effects are columns of the relation or their products (``a:b``). The layout (column
    names, terms, theta) is that of the same formula on a few groups' rows; rows with a missing
    value in a column of the model are left out (counted, as ``fit_mixed`` drops them).
    """
    groups = _groups_of(con, relation, formula)
    keys = [key_sql(factors) for _, factors in groups]
    top = keys[-1]
    sample = con.execute(f"SELECT * FROM {relation} WHERE {top} IN (SELECT DISTINCT {top} "
                         f"FROM {relation} ORDER BY 1 LIMIT {int(sample_groups)})").df()
    layout = SufficientStats.from_frame(formula, sample, order=[g for g, _ in groups])
    if [lv.group for lv in layout.levels] != [g for g, _ in groups]:
        raise InputError(f"sufficient statistics by SQL need nested grouping factors; the formula {formula!r} "
                         f"has {[lv.group for lv in layout.levels]}")
    columns = [c for lv in layout.levels for t in lv.terms for c in t.columns]
    columns += list(layout.fixed_names) + [layout.formula.response]
    exprs = [column_sql(c) for c in columns]
    d, q1, D = len(exprs), layout.q[0], len(groups)
    complete = " AND ".join(f"{e} IS NOT NULL" for e in exprs)
    n_all = con.execute(f"SELECT count(*) FROM {relation}").fetchone()[0]
    rows = f"(SELECT * FROM {relation} WHERE {complete})"
    pairs = [(i, j) for i in range(d) for j in range(i, d)]
    full = ", ".join(f"sum({exprs[i]} * {exprs[j]}) AS s{k}" for k, (i, j) in enumerate(pairs))

    def fetch(sql: str) -> dict[str, np.ndarray]:
        """Columns of a query's result as numpy arrays (no Python tuple per group)."""
        return {k: np.asarray(v) for k, v in con.execute(sql).fetchnumpy().items()}

    def blocks(res: dict[str, np.ndarray]) -> np.ndarray:
        values = np.column_stack([np.asarray(res[f"s{k}"], dtype=float) for k in range(len(pairs))])
        out = np.zeros((len(values), d, d))
        for k, (i, j) in enumerate(pairs):
            out[:, i, j] = values[:, k]
            out[:, j, i] = values[:, k]
        return out

    def parent_sql(l: int) -> str:
        return f", min({keys[l + 1]}) AS parent" if l + 1 < D else ", NULL AS parent"

    def labels_of(res: dict[str, np.ndarray]) -> np.ndarray:
        out = np.empty(len(res["g"]), dtype=object)
        out[:] = [str(v) for v in res["g"].tolist()]
        return out

    inner_pairs = [(i, j) for i in range(q1) for j in range(d)]
    per_inner = fetch(f"SELECT {keys[0]} AS g{parent_sql(0)}, count(*) AS n, "
                      + ", ".join(f"sum({exprs[i]} * {exprs[j]}) AS s{k}" for k, (i, j) in enumerate(inner_pairs))
                      + f" FROM {rows} GROUP BY 1 ORDER BY 1")
    labels = [labels_of(per_inner)]
    parent_labels = [per_inner["parent"]]
    counts = np.asarray(per_inner["n"], dtype=np.int64)
    inner = np.column_stack([np.asarray(per_inner[f"s{k}"], dtype=float) for k in range(len(inner_pairs))]
                            ).reshape(len(counts), q1, d)
    sums: list[np.ndarray | None] = [None]
    for l in range(1, D):
        per = fetch(f"SELECT {keys[l]} AS g{parent_sql(l)}, {full} FROM {rows} GROUP BY 1 ORDER BY 1")
        labels.append(labels_of(per))
        parent_labels.append(per["parent"])
        sums.append(blocks(per))
    total = sums[-1].sum(axis=0) if D > 1 else blocks(fetch(f"SELECT {full} FROM {rows}"))[0]
    parents = []
    for l in range(D - 1):
        where = pd.Index(labels[l + 1]).get_indexer([str(v) for v in parent_labels[l].tolist()])
        parents.append(where.astype(np.int64))
    levels = []
    for lv, lab in zip(layout.levels, labels, strict=True):
        new = Level(group=lv.group, terms=lv.terms, codes=None, labels=lab, numeric=lv.numeric)
        new.theta_slices = list(lv.theta_slices)
        levels.append(new)
    stats = SufficientStats(fixed_names=list(layout.fixed_names), terms=layout.terms, levels=levels,
                            parents=parents, counts=counts, inner=inner, sums=sums,
                            total=total, formula=layout.formula, n_dropped=int(n_all - counts.sum()))
    return SufficientStats.combine([stats])  # groups numbered as every other constructor numbers them


def _groups_of(con: Any, relation: str, formula: str) -> list[tuple[str, tuple[str, ...]]]:
    """(name, factors) of every grouping factor of ``formula``, innermost first: by their number of
    factors (``therapist:patient`` inside ``therapist``), then by their number of groups in
    ``relation`` (``therapist`` inside ``service``)."""
    groups = list(dict.fromkeys((spec.group, tuple(spec.factors)) for spec in parse_formula(formula).random))
    if not groups:
        raise InputError(f"sufficient statistics by SQL need a grouping factor; {formula!r} has none")
    # groups are counted (a pass over the rows each) only where the number of factors leaves a tie
    ties = {g for g, f in groups if sum(len(f2) == len(f) for _, f2 in groups) > 1}
    sizes = {g: con.execute(f"SELECT count(DISTINCT {key_sql(f)}) FROM {relation}").fetchone()[0] if g in ties
             else 0 for g, f in groups}
    groups.sort(key=lambda g: (-len(g[1]), -sizes[g[0]]))
    return groups


def key_sql(factors: tuple[str, ...]) -> str:
    """SQL of a group's label as the model design writes it: the factors' ids joined by ':'."""
    parts = [f"CAST({quote_identifier(f)} AS VARCHAR)" for f in factors]
    return parts[0] if len(parts) == 1 else "concat_ws(':', " + ", ".join(parts) + ")"


def grouping_order(con: Any, relation: str, formula: str) -> list[str]:
    """The grouping factors of ``formula`` innermost first, as :func:`sufficient_stats` orders them
    over ``relation`` (what statistics of parts of the rows need: ``from_frame(..., order=)``)."""
    return [g for g, _ in _groups_of(con, relation, formula)]
