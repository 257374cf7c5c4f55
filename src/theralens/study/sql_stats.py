"""Sufficient statistics of a model over rows that stay in DuckDB: the statistics pass of the DuckDB path.

:func:`sufficient_stats` reduces a DuckDB relation (a table or view of the analysis rows) to the
engine's :class:`~theralens.model.stats.SufficientStats` by GROUP BY, summing products of
model-matrix columns (SUM(a*b)) per innermost group and per group of every coarser level
(docs/design/engine.md, "Statistics per innermost cluster"). It is the SQL twin of
:meth:`SufficientStats.from_frame <theralens.model.stats.SufficientStats.from_frame>` for rows in
memory: the one definition C = W'W per cluster computed by each of layout.md's two data adapters
on its own rows (tests/data/test_scan.py holds them equal). It lives in the study layer because
it builds the model's objects from the data layer's relations (:mod:`theralens.data.scan`); the
study's holders of the analysis rows (:mod:`theralens.study.rows`) fit from it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from theralens.data.scan import quote_identifier
from theralens.errors import InputError
from theralens.model.design import Level
from theralens.model.formula import parse_formula
from theralens.model.stats import SufficientStats, design_order, placed

__all__ = ["RowSums", "column_sql", "derived_stats", "grouping_order", "key_sql", "row_sums", "sufficient_stats"]


def column_sql(name: str) -> str:
    """SQL of a model-matrix column named as formulaic names it: the intercept, a column, or a product a:b
    (the statistics pass sums products of these; :mod:`theralens.study.rows` computes fitted values with them)."""
    if name in ("Intercept", "(Intercept)", "1"):
        return "1.0"
    return "(" + " * ".join(f"CAST({quote_identifier(part)} AS DOUBLE)" for part in name.split(":")) + ")"


def sufficient_stats(con: Any, relation: str, formula: str, *, sample_groups: int = 200) -> SufficientStats:
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
    layout = _layout(con, relation, formula, groups, sample_groups)
    exprs = [column_sql(c) for c in _columns(layout)]
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
    return _assemble(layout, labels, parents, counts, inner, sums, total, int(n_all - counts.sum()))


def _layout(con: Any, relation: str, formula: str, groups: list[tuple[str, tuple[str, ...]]],
            sample_groups: int = 200) -> SufficientStats:
    """The model's layout (column names, terms, theta) from the rows of its first ``sample_groups``
    outermost groups (by label)."""
    top = key_sql(groups[-1][1])
    sample = con.execute(f"SELECT * FROM {relation} WHERE {top} IN (SELECT DISTINCT {top} "
                         f"FROM {relation} ORDER BY 1 LIMIT {int(sample_groups)})").df()
    layout = SufficientStats.from_frame(formula, sample, order=[g for g, _ in groups])
    if [lv.group for lv in layout.levels] != [g for g, _ in groups]:
        raise InputError(f"sufficient statistics by SQL need nested grouping factors; the formula {formula!r} "
                         f"has {[lv.group for lv in layout.levels]}")
    return layout


def _columns(layout: SufficientStats) -> list[str]:
    """The columns of W = [Z_1, .., Z_D, X, y] by name."""
    columns = [c for lv in layout.levels for t in lv.terms for c in t.columns]
    return columns + list(layout.fixed_names) + [layout.formula.response]


def _assemble(layout: SufficientStats, labels: list[np.ndarray], parents: list[np.ndarray], counts: np.ndarray,
              inner: np.ndarray, sums: list[np.ndarray | None], total: np.ndarray, n_dropped: int) -> SufficientStats:
    """:class:`SufficientStats` of ``layout``'s model from its sums (groups in any order), numbered as
    every other constructor numbers them."""
    levels = []
    for lv, lab in zip(layout.levels, labels, strict=True):
        new = Level(group=lv.group, terms=lv.terms, codes=None, labels=lab, numeric=lv.numeric)
        new.theta_slices = list(lv.theta_slices)
        levels.append(new)
    stats = SufficientStats(fixed_names=list(layout.fixed_names), terms=layout.terms, levels=levels,
                            parents=parents, counts=counts, inner=inner, sums=sums,
                            total=total, formula=layout.formula, n_dropped=n_dropped)
    return SufficientStats.combine([stats])


def _groups_of(con: Any, relation: str, formula: str) -> list[tuple[str, tuple[str, ...]]]:
    """(name, factors) of every grouping factor of ``formula``, innermost first: by their number of
    factors (``therapist:patient`` inside ``therapist``), then by their number of groups in
    ``relation`` (``therapist`` inside ``service``)."""
    groups = _formula_groups(formula)
    if not groups:
        raise InputError(f"sufficient statistics by SQL need a grouping factor; {formula!r} has none")
    # groups are counted (a pass over the rows each) only where the number of factors leaves a tie
    ties = {g for g, f in groups if sum(len(f2) == len(f) for _, f2 in groups) > 1}
    sizes = {g: con.execute(f"SELECT count(DISTINCT {key_sql(f)}) FROM {relation}").fetchone()[0] if g in ties
             else 0 for g, f in groups}
    groups.sort(key=lambda g: (-len(g[1]), -sizes[g[0]]))
    return groups


def _formula_groups(formula: str) -> list[tuple[str, tuple[str, ...]]]:
    """(name, factors) of every grouping factor of ``formula``, in the formula's order."""
    return list(dict.fromkeys((spec.group, tuple(spec.factors)) for spec in parse_formula(formula).random))


def key_sql(factors: tuple[str, ...]) -> str:
    """SQL of a group's label as the model design writes it: the factors' ids joined by ':'."""
    parts = [f"CAST({quote_identifier(f)} AS VARCHAR)" for f in factors]
    return parts[0] if len(parts) == 1 else "concat_ws(':', " + ", ".join(parts) + ")"


def grouping_order(con: Any, relation: str, formula: str) -> list[str]:
    """The grouping factors of ``formula`` innermost first, as :func:`sufficient_stats` orders them
    over ``relation`` (what statistics of parts of the rows need: ``from_frame(..., order=)``)."""
    return [g for g, _ in _groups_of(con, relation, formula)]


# --------------------------------------------------------------------------- one pass for a family of models

_INTERCEPT = ("Intercept", "(Intercept)", "1")


def _split(name: str, constants: set[str]) -> tuple[list[str], tuple[str, ...]]:
    """A column's name as (its factors constant within therapist, the sorted rest: its row-level part)."""
    parts = [] if name in _INTERCEPT else name.split(":")
    return [f for f in parts if f in constants], tuple(sorted(f for f in parts if f not in constants))


@dataclass
class RowSums:
    """Per-group sums of products of row-level columns, from which :func:`derived_stats` builds the
    statistics of every model whose columns are such a column times factors constant within
    therapist (between-therapist components, moderators), with no further pass over the rows.

    For every therapist j and row-level columns r_a, r_b its sum S_j[a, b] = SUM(r_a r_b); when
    patients are a level inside therapists, for every patient i and row-level column r_z of the
    patient level's Z its sums P_i[z, b] = SUM(r_z r_b). A model column c = t_c(j) r_a(c) (t_c the
    product of its constant factors) then has SUM over therapist j of c c' = t_c t_c' S_j[a, a'],
    and over patient i of therapist j SUM(z c') = t_z t_c' P_i[z, a'] (engine.md, "Statistics per
    innermost cluster": the sums are additive, constants factor out of them). Coarser levels than
    therapist (service) are sums of their therapists' blocks.
    """

    groups: list[tuple[str, tuple[str, ...]]]  # innermost first, as _groups_of orders them
    therapist_level: int  # index of the therapist level in groups (0: no patient level)
    columns: dict[tuple[str, ...], int]  # row-level part -> index into the sums
    inner_columns: dict[tuple[str, ...], int]  # row-level parts of the patient level's Z (patient level only)
    labels: list[np.ndarray]  # per level, in the numbering of a design (model/stats.py design_order)
    parents: list[np.ndarray]  # per level but the outermost, its parent's index
    counts: np.ndarray  # rows per group of the innermost level
    patient_sums: np.ndarray | None  # patients x |inner_columns| x |columns|
    therapist_sums: np.ndarray  # therapists x |columns| x |columns|
    values: dict[str, np.ndarray]  # constant column -> its value per therapist (NaN: not constant)


def row_sums(con: Any, relation: str, formula: str, constants: tuple[str, ...]) -> RowSums | None:
    """The :class:`RowSums` of the row-level parts of ``formula``'s columns over ``relation``
    (two GROUP BY passes: per patient and per therapist), with the per-therapist value of every
    column of ``constants`` found in the relation. None when the relation does not fit the scheme:
    no therapist level, or a row without a value in one of those columns (models on fewer columns
    would keep rows that these sums leave out)."""
    groups = _groups_of(con, relation, formula)
    factors = [f for _, f in groups]
    if factors[0] == ("therapist",):
        h = 0
    elif factors[0] == ("therapist", "patient") and len(factors) > 1 and factors[1] == ("therapist",):
        h = 1
    else:
        return None
    if len(groups) - h > 2:
        return None
    layout = _layout(con, relation, formula, groups)
    have = {r[0] for r in con.execute(f"DESCRIBE {relation}").fetchall()}
    const = [c for c in constants if c in have]
    const_set = set(const)
    names_w = _columns(layout)
    parts = list(dict.fromkeys(_split(n, const_set)[1] for n in names_w))
    if any(f not in have for part in parts for f in part):
        return None
    q1 = layout.q[0]
    zparts = list(dict.fromkeys(_split(n, const_set)[1] for n in names_w[:q1])) if h == 1 else []
    exprs = ["1.0" if not part else column_sql(":".join(part)) for part in parts]
    cexprs = [column_sql(c) for c in const]
    complete = " AND ".join(f"{e} IS NOT NULL" for e in exprs + cexprs) or "TRUE"
    n_incomplete = con.execute(f"SELECT count(*) FILTER (WHERE NOT ({complete})) FROM {relation}").fetchone()[0]
    if n_incomplete:
        return None
    keys = [key_sql(f) for _, f in groups]
    D = len(groups)

    def fetch(sql: str) -> dict[str, np.ndarray]:
        return {k: np.asarray(v) for k, v in con.execute(sql).fetchnumpy().items()}

    def text(values: np.ndarray) -> np.ndarray:
        out = np.empty(len(values), dtype=object)
        out[:] = [str(v) for v in values.tolist()]
        return out

    d = len(exprs)
    pairs = [(i, j) for i in range(d) for j in range(i, d)]
    parent = f", min({keys[h + 1]}) AS parent" if h + 1 < D else ""
    extremes = "".join(f", min({e}) AS lo{k}, max({e}) AS hi{k}" for k, e in enumerate(cexprs))
    per_t = fetch(f"SELECT {keys[h]} AS g{parent}, count(*) AS n{extremes}, "
                  + ", ".join(f"sum({exprs[i]} * {exprs[j]}) AS s{k}" for k, (i, j) in enumerate(pairs))
                  + f" FROM {relation} GROUP BY 1 ORDER BY 1")
    t_labels = text(per_t["g"])
    S = np.zeros((len(t_labels), d, d))
    for k, (i, j) in enumerate(pairs):
        S[:, i, j] = S[:, j, i] = np.asarray(per_t[f"s{k}"], dtype=float)
    values = {}
    for k, c in enumerate(const):
        lo, hi = np.asarray(per_t[f"lo{k}"], dtype=float), np.asarray(per_t[f"hi{k}"], dtype=float)
        values[c] = np.where(lo == hi, lo, np.nan)
    labels, parents = [t_labels], []
    counts = np.asarray(per_t["n"], dtype=np.int64)
    P = None
    if h == 1:
        zx = [(z, j) for z in range(len(zparts)) for j in range(d)]
        zexprs = [exprs[parts.index(part)] for part in zparts]
        per_p = fetch(f"SELECT {keys[0]} AS g, min({keys[1]}) AS parent, count(*) AS n, "
                      + ", ".join(f"sum({zexprs[z]} * {exprs[j]}) AS s{k}" for k, (z, j) in enumerate(zx))
                      + f" FROM {relation} GROUP BY 1 ORDER BY 1")
        labels.insert(0, text(per_p["g"]))
        parents.append(pd.Index(t_labels).get_indexer(text(per_p["parent"])).astype(np.int64))
        counts = np.asarray(per_p["n"], dtype=np.int64)
        P = np.column_stack([np.asarray(per_p[f"s{k}"], dtype=float) for k in range(len(zx))]
                            ).reshape(len(counts), len(zparts), d)
    if h + 1 < D:  # the service level: its labels and every therapist's service
        outer = text(per_t["parent"])
        s_labels = np.array(sorted(set(outer.tolist())), dtype=object)
        labels.append(s_labels)
        parents.append(pd.Index(s_labels).get_indexer(outer).astype(np.int64))
    # into the numbering of a design once (subsets of it, as the models take, keep it)
    order = design_order(labels, parents, [lv.numeric for lv in layout.levels])
    labels = [placed(labels[l], order[l]) for l in range(D)]
    parents = [placed(order[l + 1][parents[l]], order[l]) for l in range(D - 1)]
    counts = placed(counts, order[0])
    S = placed(S, order[h])
    values = {c: placed(v, order[h]) for c, v in values.items()}
    if P is not None:
        P = placed(P, order[0])
    return RowSums(groups=groups, therapist_level=h, columns={p: i for i, p in enumerate(parts)},
                   inner_columns={p: i for i, p in enumerate(zparts)}, labels=labels, parents=parents, counts=counts,
                   patient_sums=P, therapist_sums=S, values=values)


def derived_stats(con: Any, relation: str, formula: str, base: RowSums,
                  moderators: pd.DataFrame | None = None) -> SufficientStats | None:
    """The statistics of ``formula`` over ``relation`` (the rows of ``base``, or of the therapists in
    ``moderators`` with its columns) from ``base`` alone (:class:`RowSums`); None when a column of
    the model is not a row-level part of ``base`` times constant factors, or its grouping differs
    (then :func:`sufficient_stats` makes its own pass)."""
    if set(_formula_groups(formula)) != set(base.groups):
        return None
    groups = base.groups
    layout = _layout(con, relation, formula, groups)
    h = base.therapist_level
    t_labels = base.labels[h]
    values = dict(base.values)
    if moderators is not None:
        index = pd.Index(moderators["therapist"].astype(str)).get_indexer(t_labels)
        for c in moderators.columns:
            if c != "therapist":
                col = pd.to_numeric(moderators[c], errors="coerce").to_numpy(dtype=float)
                values[c] = np.where(index >= 0, col[np.maximum(index, 0)], np.nan)
        in_table = index >= 0
    else:
        in_table = np.ones(len(t_labels), dtype=bool)
    names = _columns(layout)
    constant = set(values)
    T = np.ones((len(t_labels), len(names)))
    r = []
    for k, name in enumerate(names):
        consts, part = _split(name, constant)
        if part not in base.columns:
            return None
        r.append(base.columns[part])
        for c in consts:
            T[:, k] *= values[c]
    keep = in_table & np.all(np.isfinite(T), axis=1)
    if keep.sum() < 1 or not np.all(np.isfinite(T[in_table])):
        return None  # a constant factor missing or varying within a kept therapist: the model's own pass
    q1 = layout.q[0]
    Tk = T[keep]
    S = base.therapist_sums[keep][:, r][:, :, r] * Tk[:, :, None] * Tk[:, None, :]
    new_t = np.cumsum(keep) - 1
    labels: list[np.ndarray] = []
    parents: list[np.ndarray] = []
    sums: list[np.ndarray | None] = [None]
    if h == 0:
        counts = base.counts[keep]
        inner = S[:, :q1, :].copy()
        labels.append(t_labels[keep])
    else:
        z = [base.inner_columns.get(_split(n, constant)[1]) for n in names[:q1]]
        if any(i is None for i in z):
            return None
        pmask = keep[base.parents[0]]
        whole = bool(pmask.all())  # every patient kept: the base's arrays are shared, not copied
        own = base.parents[0] if whole else base.parents[0][pmask]
        inner = _patient_blocks(base.patient_sums, None if whole else np.flatnonzero(pmask), own, z, r,
                                T[:, :q1, None] * T[:, None, :])
        counts = base.counts if whole else base.counts[pmask]
        labels += [base.labels[0] if whole else base.labels[0][pmask], t_labels[keep]]
        parents.append(new_t[own].astype(np.int64))
        sums.append(S)
    if h + 1 < len(base.groups):  # services: the sums of their kept therapists
        outer = base.parents[h][keep]
        used = np.unique(outer)
        new_s = np.full(len(base.labels[h + 1]), -1, dtype=np.int64)
        new_s[used] = np.arange(len(used))
        agg = np.zeros((len(used),) + S.shape[1:])
        np.add.at(agg, new_s[outer], S)
        labels.append(base.labels[h + 1][used])
        parents.append(new_s[outer])
        sums.append(agg)
    return SufficientStats.numbered(layout, labels, parents, counts, inner, sums, S.sum(axis=0))



PATIENT_CHUNK = 1 << 18  # patients per step of _patient_blocks


def _patient_blocks(P: np.ndarray, rows: np.ndarray | None, own: np.ndarray, z: list[int], r: list[int],
                    TT: np.ndarray) -> np.ndarray:
    """A model's per-patient blocks from the base's: P[i][z][:, r] * TT[therapist of i] for the
    patients ``rows`` (None: all), chunk by chunk, so that no copy of the whole base array is made
    on the way (at 12.5 million patients each such copy is 1-2 GB)."""
    n = len(own)
    out = np.empty((n, len(z), len(r)))
    zi, ri = np.asarray(z)[:, None], np.asarray(r)[None, :]
    for s in range(0, n, PATIENT_CHUNK):
        e = min(s + PATIENT_CHUNK, n)
        block = P[s:e] if rows is None else P[rows[s:e]]
        np.multiply(block[:, zi, ri], TT[own[s:e]], out=out[s:e])
    return out
