"""Sufficient statistics of a nested linear mixed model: the engine's only input.

For nested random effects with residual covariance sigma^2 I, the REML and ML criteria depend
on the data only through the cross-products C_p = W_p' W_p of W = [Z_1, ..., Z_D, X, y] over the
rows of each innermost cluster p (patients, say; engine.md, after Bates et al. 2015, JSS 67(1),
eqs. 10-36), and they are additive over any partition of the patients. The elimination of the
innermost level needs per patient only the q_1 rows Z_1p' W_p of C_p (with a patient intercept:
n_p and the sums of Z_2, X and y over the patient's rows), and the rest of C_p only summed over
the patients of each parent (therapist); every coarser level needs only sums over its groups. So
:class:`SufficientStats` keeps

- ``inner`` (G_1, q_1, d): Z_1p' W_p for every innermost cluster p, and ``counts`` (its rows);
- ``sums[l]`` (G_l, d, d) for the coarser levels l = 1 .. D-1: the sum of C_p over the innermost
  clusters of each level-l group (``sums[0]`` is None), and ``total`` (d, d) over all rows;
- the layout: ``levels`` (grouping factor, terms, labels of the groups; groups numbered so that
  the children of a parent are contiguous), ``parents`` (the level-(l+1) group of every level-l
  group), ``fixed_names``, ``terms`` (lme4 order, theta layout).

Memory grows with patients x columns (q_1 d numbers per patient), not patients x columns^2.
Statistics come from a :class:`~theralens.model.design.Design` (:meth:`SufficientStats.from_design`,
what :func:`~theralens.model.fit.fit_mixed` does), from a data frame
(:meth:`SufficientStats.from_frame`), from arrays (:meth:`SufficientStats.from_arrays`) or by
summing the statistics of parts of the data (:meth:`SufficientStats.combine`, ``+``): a patient
whose rows are split across parts is merged by summing. :func:`~theralens.model.fit.fit_stats`
fits from statistics alone.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd

from theralens.errors import InputError
from theralens.model.design import Design, Level, Term, ThetaLayout, build_design, independent_columns
from theralens.model.formula import ParsedFormula, RandomTermSpec, parse_formula

__all__ = ["SufficientStats", "cross_products", "design_order", "nesting_order", "placed"]


@dataclass
class SufficientStats(ThetaLayout):
    """Per-innermost-cluster rows, per-group sums and the layout of a nested model (module docstring).

    Columns of the blocks: W = [Z_1, ..., Z_D, X, y] (levels innermost first, each level's terms
    in order), d = sum q_l + k + 1. ``order[l]``, for statistics built from a design, maps the
    design's group index at level l to the index here (None otherwise).
    """

    fixed_names: list[str]
    terms: list[Term]
    levels: list[Level]
    parents: list[np.ndarray]
    counts: np.ndarray
    inner: np.ndarray
    sums: list[np.ndarray | None]
    total: np.ndarray
    formula: ParsedFormula | None = None
    n_dropped: int = 0
    dropped_columns: list[str] = field(default_factory=list)
    order: list[np.ndarray] | None = field(default=None, repr=False)

    # -- sizes ------------------------------------------------------------------------------
    @property
    def n(self) -> int:
        return int(self.counts.sum())

    @property
    def k(self) -> int:
        return len(self.fixed_names)

    @property
    def d(self) -> int:
        return int(self.total.shape[0])

    @property
    def D(self) -> int:
        return len(self.levels)

    @property
    def q(self) -> list[int]:
        return [lv.q for lv in self.levels]

    @property
    def yy(self) -> float:
        return float(self.total[-1, -1])

    def group_sums(self, l: int) -> np.ndarray:
        """Sum of C_p over the innermost clusters of each level-l group, (G_l, d, d); l >= 1."""
        out = self.sums[l]
        if out is None:
            raise ValueError("the innermost level keeps only its rows of C_p (inner)")
        return out

    def parent_sums(self) -> np.ndarray:
        """Sum of C_p over the innermost clusters of each parent (level 1; the top: one block)."""
        return self.group_sums(1) if self.D > 1 else self.total[None]

    def theta_scale(self) -> np.ndarray:
        """Scale of each theta entry (:meth:`ThetaLayout.theta_scale_from`) from ``total``'s diagonal."""
        diag = np.diagonal(self.total)
        offs = np.cumsum([0] + self.q)
        return self.theta_scale_from([diag[offs[l] : offs[l + 1]] for l in range(self.D)], self.n)

    # -- constructors -------------------------------------------------------------------------
    @classmethod
    def from_design(cls, design: Design) -> SufficientStats:
        """The statistics of a design's rows (one pass over the rows: each product of two columns
        summed per innermost cluster when it involves a Z_1 column, else per level-1 group)."""
        levels = design.levels
        D = len(levels)
        order = nesting_order([lv.ngroups for lv in levels], design.parents)
        codes = [order[l][lv.codes] if not np.array_equal(order[l], np.arange(lv.ngroups)) else lv.codes
                 for l, lv in enumerate(levels)]
        columns = [t.Z[:, i] for lv in levels for t in lv.terms for i in range(t.q)]  # type: ignore[index]
        columns += [design.X[:, j] for j in range(design.X.shape[1])] + [design.y]
        q0, G0 = levels[0].q, levels[0].ngroups
        inner = cross_products(columns, codes[0], G0, rows=q0)
        if D > 1:
            sums: list[np.ndarray | None] = [None, cross_products(columns, codes[1], levels[1].ngroups)]
        else:
            sums = [None]
        parents = [_renumber(order[l], order[l + 1], design.parents[l]) for l in range(D - 1)]
        for l in range(2, D):
            sums.append(_sum_groups(sums[l - 1], parents[l - 1], levels[l].ngroups))  # type: ignore[arg-type]
        total = sums[-1].sum(axis=0) if D > 1 else cross_products(columns, np.zeros(len(design.y), np.int64), 1)[0]
        counts = np.bincount(codes[0], minlength=G0).astype(np.int64)
        new_levels, new_terms = _layout(design.terms, levels, [_reorder_labels(lv.labels, order[l])
                                                               for l, lv in enumerate(levels)])
        return cls(fixed_names=list(design.fixed_names), terms=new_terms, levels=new_levels, parents=parents,
                   counts=counts, inner=inner, sums=sums, total=total, formula=design.formula,
                   n_dropped=design.n_dropped, dropped_columns=list(design.dropped_columns), order=order)

    @classmethod
    def from_frame(cls, formula: str | ParsedFormula, data: pd.DataFrame,
                   order: Sequence[str] | None = None) -> SufficientStats:
        """Statistics of one part of the data (or all of it), written as for
        :func:`~theralens.model.fit.fit_mixed`. Aliased fixed-effect columns are kept (they are
        a property of the whole data: :func:`~theralens.model.fit.fit_stats` drops them).
        ``order``: the grouping factors innermost first (default: by their number of groups in
        this part; give it when a part may have as many therapists as patients)."""
        parsed = parse_formula(formula) if isinstance(formula, str) else formula
        return cls.from_design(build_design(parsed, data, part=True, factor_order=order))

    @classmethod
    def from_arrays(
        cls,
        y: np.ndarray,
        X: np.ndarray,
        groups: Mapping[str, np.ndarray],
        random: Mapping[str, tuple[np.ndarray, Sequence[str]]] | None = None,
        fixed_names: Sequence[str] | None = None,
        response: str = "y",
    ) -> SufficientStats:
        """Statistics from arrays: ``y`` (n,), ``X`` (n, k), ``groups`` the id of every row for
        each grouping factor, innermost first (each nested in the next), and ``random`` the
        random-effects matrix of each grouping factor with its column names (default: a random
        intercept). ``fixed_names`` default to ``x1 .. xk``."""
        y = np.asarray(y, dtype=float)
        X = np.asarray(X, dtype=float).reshape(len(y), -1)
        names = list(fixed_names) if fixed_names is not None else [f"x{j + 1}" for j in range(X.shape[1])]
        if len(names) != X.shape[1]:
            raise InputError(f"fixed_names has {len(names)} names for the {X.shape[1]} columns of X: "
                             "give one name per column")
        if not groups:
            raise InputError("groups is empty: give the ids of every row for at least one grouping factor")
        random = dict(random or {})
        specs, raw = [], []
        for g, ids in groups.items():
            ids = np.asarray(ids)
            if len(ids) != len(y):
                raise InputError(f"groups['{g}'] has {len(ids)} ids for {len(y)} rows: give one id per row")
            Z, cols = random.get(g, (np.ones((len(y), 1)), ["(Intercept)"]))
            Z = np.asarray(Z, dtype=float).reshape(len(y), -1)
            spec = RandomTermSpec(lhs=" + ".join(cols), group=g, factors=(g,))
            codes, labels = _codes(ids)
            raw.append((spec, Term(spec=spec, columns=list(cols), Z=Z, name=g), codes, labels))
            specs.append(spec)
        raw.sort(key=lambda t: -len(t[3]))
        offsets = np.cumsum([0] + [t[1].ntheta for t in raw])
        levels = []
        for i, (spec, term, codes, labels) in enumerate(raw):
            lv = Level(group=spec.group, terms=[term], codes=codes, labels=labels,
                       numeric=(ids.dtype.kind in "iuf",))
            lv.theta_slices = [slice(int(offsets[i]), int(offsets[i + 1]))]
            levels.append(lv)
        parents = []
        for fine, coarse in zip(levels[:-1], levels[1:]):
            parent = np.empty(fine.ngroups, dtype=np.int64)
            parent[fine.codes] = coarse.codes
            if not np.array_equal(parent[fine.codes], coarse.codes):
                raise InputError(f"groups['{fine.group}'] is not nested in groups['{coarse.group}']: a "
                                 f"{fine.group} id appears under two {coarse.group} ids - give each one "
                                 f"{coarse.group}")
            parents.append(parent)
        rhs = " + ".join(names) if names else "1"
        parsed = ParsedFormula(response=response, fixed=rhs, random=tuple(specs),
                               text=f"{response} ~ {rhs}" + "".join(f" + ({s.lhs} | {s.group})" for s in specs))
        design = Design(formula=parsed, y=y, X=X, fixed_names=names, terms=[t[1] for t in raw], levels=levels,
                        parents=parents, n_dropped=0, dropped_columns=[], row_index=pd.RangeIndex(len(y)))
        return cls.from_design(design)

    @classmethod
    def combine(cls, parts: Sequence[SufficientStats]) -> SufficientStats:
        """The statistics of the union of ``parts`` (parts of the rows of one data set, in any
        split): groups are matched by their labels and summed, so that a patient whose rows lie in
        several parts is one patient; it must sit under the same parent in every part."""
        parts = list(parts)
        if not parts:
            raise InputError("no statistics to combine: give at least one part")
        first = parts[0]
        for other in parts[1:]:
            _check_same_model(first, other)
        D = first.D
        union = [_sorted_labels(np.concatenate([p.levels[l].labels for p in parts]), first.levels[l].numeric)
                 for l in range(D)]
        index = [pd.Index(u) for u in union]
        maps = [[index[l].get_indexer(p.levels[l].labels) for l in range(D)] for p in parts]
        G = [len(u) for u in union]
        parents = []
        for l in range(D - 1):
            par = np.full(G[l], -1, dtype=np.int64)
            for p, m in zip(parts, maps):
                mine = m[l + 1][p.parents[l]]
                seen = par[m[l]]
                clash = (seen >= 0) & (seen != mine)
                if clash.any():
                    g = int(m[l][np.flatnonzero(clash)[0]])
                    raise InputError(
                        f"{first.levels[l].group} '{union[l][g]}' sits under {first.levels[l + 1].group} "
                        f"'{union[l + 1][seen[clash][0]]}' in one part and '{union[l + 1][mine[clash][0]]}' in "
                        f"another: the parts are not of one nested data set - give each {first.levels[l].group} "
                        f"a single {first.levels[l + 1].group}")
                par[m[l]] = mine
            parents.append(par)
        inner = np.zeros((G[0],) + first.inner.shape[1:])
        counts = np.zeros(G[0], dtype=np.int64)
        sums: list[np.ndarray | None] = [None] + [np.zeros((G[l], first.d, first.d)) for l in range(1, D)]
        for p, m in zip(parts, maps):
            np.add.at(inner, m[0], p.inner)
            np.add.at(counts, m[0], p.counts)
            for l in range(1, D):
                np.add.at(sums[l], m[l], p.group_sums(l))  # type: ignore[arg-type]
        total = np.sum([p.total for p in parts], axis=0)
        order = nesting_order(G, parents)
        parents = [_renumber(order[l], order[l + 1], parents[l]) for l in range(D - 1)]
        inner = placed(inner, order[0])
        counts = placed(counts, order[0])
        sums = [None] + [placed(sums[l], order[l]) for l in range(1, D)]  # type: ignore[arg-type]
        return cls.numbered(first, [_reorder_labels(union[l], order[l]) for l in range(D)], parents, counts, inner,
                            sums, total, n_dropped=sum(p.n_dropped for p in parts))

    @classmethod
    def numbered(cls, layout: SufficientStats, labels: Sequence[np.ndarray], parents: Sequence[np.ndarray],
                 counts: np.ndarray, inner: np.ndarray, sums: Sequence[np.ndarray | None], total: np.ndarray,
                 n_dropped: int = 0) -> SufficientStats:
        """The statistics of ``layout``'s model (its terms, levels and formula; any statistics of it)
        from blocks whose groups are already numbered as a design numbers them (:func:`design_order`):
        row-free copies of the layout's levels get ``labels``."""
        levels, terms = _layout(layout.terms, layout.levels, list(labels))
        return cls(fixed_names=list(layout.fixed_names), terms=terms, levels=levels, parents=list(parents),
                   counts=counts, inner=inner, sums=list(sums), total=total, formula=layout.formula,
                   n_dropped=int(n_dropped), dropped_columns=list(layout.dropped_columns))

    def __add__(self, other: SufficientStats) -> SufficientStats:
        return SufficientStats.combine([self, other])

    # -- the whole data's checks --------------------------------------------------------------
    def without_aliased(self) -> SufficientStats:
        """These statistics with aliased fixed-effect columns dropped (:func:`independent_columns`
        on X'X, as lme4 drops them); itself when X has full rank."""
        q = sum(self.q)
        k = self.k
        keep = independent_columns(self.total[q : q + k, q : q + k], self.n)
        if len(keep) == k:
            return self
        idx = np.r_[np.arange(q), q + keep, q + k]
        sums = [None if s is None else s[:, idx][:, :, idx] for s in self.sums]
        return replace(self, fixed_names=[self.fixed_names[int(i)] for i in keep], inner=self.inner[:, :, idx],
                       sums=sums, total=self.total[idx][:, idx],
                       dropped_columns=self.dropped_columns + [n for j, n in enumerate(self.fixed_names)
                                                               if j not in set(keep.tolist())])


def nesting_order(sizes: Sequence[int], parents: Sequence[np.ndarray]) -> list[np.ndarray]:
    """For every level, the new index of each group such that the children of every parent are
    contiguous and parents come in order (innermost clusters sorted by their ancestor chain)."""
    D = len(sizes)
    chain = [np.arange(sizes[0])]
    for l in range(D - 1):
        chain.append(parents[l][chain[-1]])
    srt = np.lexsort(tuple(chain))
    out = []
    for l in range(D):
        seq = chain[l][srt]
        _, first = np.unique(seq, return_index=True)
        old_in_order = seq[np.sort(first)]
        new = np.empty(sizes[l], dtype=np.int64)
        new[old_in_order] = np.arange(len(old_in_order))
        out.append(new)
    return out


def design_order(labels: Sequence[np.ndarray], parents: Sequence[np.ndarray],
                 numeric: Sequence[tuple[bool, ...]]) -> list[np.ndarray]:
    """For every level (innermost first; distinct ``labels``, ``parents[l]`` the index of each
    group's parent at level l + 1), the index of each group in the numbering of a design: labels
    sorted as :func:`_sorted_labels` sorts them, then children contiguous under parents in order
    (:func:`nesting_order`), as :meth:`SufficientStats.combine` numbers groups. Dropping groups
    with all their descendants keeps the order of the others, so a subset needs no new numbering."""
    D = len(labels)
    rank = [pd.Index(_sorted_labels(labels[l], numeric[l])).get_indexer(
        np.array([str(v) for v in labels[l].tolist()], dtype=object)) for l in range(D)]
    ranked_parents = []
    for l in range(D - 1):
        par = np.empty(len(labels[l]), dtype=np.int64)
        par[rank[l]] = rank[l + 1][parents[l]]
        ranked_parents.append(par)
    nest = nesting_order([len(x) for x in labels], ranked_parents)
    return [nest[l][rank[l]] for l in range(D)]


def _sorted_labels(labels: np.ndarray, numeric: tuple[bool, ...]) -> np.ndarray:
    """The distinct labels in the order a design numbers its groups: piece by piece (``a:b``
    labels of interactions), by value where the factor's ids are numbers
    (:attr:`Level.numeric <theralens.model.design.Level.numeric>`), as text otherwise."""
    parts = max(len(numeric), 1)
    uniq = pd.unique(np.array([str(v) for v in labels.tolist()], dtype=object))
    if not len(uniq):
        return np.empty(0, dtype=object)  # (numpy.strings.partition fails on an empty array)
    rest = np.asarray(uniq, dtype=str)
    pieces, whole = [], True
    for i in range(parts):  # split at the first parts - 1 colons, vectorised (numpy.strings)
        if i == parts - 1:
            pieces.append(rest)
            break
        head, sep, rest = np.strings.partition(rest, ":")
        whole = whole and bool((sep == ":").all())
        pieces.append(head)
    if not whole:
        # labels with fewer pieces than factors: compare them piece by piece as tuples
        def key(label: str) -> tuple[float | str, ...]:
            split = label.split(":", parts - 1)
            return tuple(float(x) if i < len(numeric) and numeric[i] else x for i, x in enumerate(split))

        order = np.array(sorted(range(len(uniq)), key=lambda k: key(uniq[k])), dtype=np.int64)
    else:
        keys = [piece.astype(float) if i < len(numeric) and numeric[i]
                else pd.factorize(piece, sort=True)[0]  # ranks in text order
                for i, piece in enumerate(pieces)]
        order = np.lexsort(keys[::-1])
    out = np.empty(len(uniq), dtype=object)
    out[:] = uniq[order]
    return out


def _renumber(order_fine: np.ndarray, order_coarse: np.ndarray, parent: np.ndarray) -> np.ndarray:
    """Parents in the new numbering of both levels."""
    out = np.empty(len(parent), dtype=np.int64)
    out[order_fine] = order_coarse[parent]
    return out


def placed(a: np.ndarray, order: np.ndarray) -> np.ndarray:
    """``a`` with the row of old index i moved to ``order[i]`` (into the numbering that
    :func:`nesting_order` or :func:`design_order` gives)."""
    out = np.empty_like(a)
    out[order] = a
    return out


def _reorder_labels(labels: np.ndarray, order: np.ndarray) -> np.ndarray:
    return placed(np.asarray(labels, dtype=object), order)


def _sum_groups(C: np.ndarray, parent: np.ndarray, G: int) -> np.ndarray:
    """Sums of the blocks C (one per group) over the groups of each parent (parents sorted)."""
    starts = np.flatnonzero(np.r_[True, np.diff(parent) != 0])
    return np.add.reduceat(C, starts, axis=0) if len(starts) == G else np.stack(
        [C[parent == g].sum(axis=0) for g in range(G)])


def _layout(terms: list[Term], levels: list[Level], labels: list[np.ndarray]) -> tuple[list[Level], list[Term]]:
    """Row-free copies of ``levels`` (with ``labels``) and of ``terms`` (lme4 order)."""
    copies = {id(t): Term(spec=t.spec, columns=list(t.columns), Z=None, name=t.name) for t in terms}
    out = []
    for lv, lab in zip(levels, labels):
        new = Level(group=lv.group, terms=[copies[id(t)] for t in lv.terms], codes=None, labels=lab,
                    numeric=lv.numeric)
        new.theta_slices = list(lv.theta_slices)
        out.append(new)
    return out, [copies[id(t)] for t in terms]


def _check_same_model(a: SufficientStats, b: SufficientStats) -> None:
    """Statistics can be summed only when they are of the same model and columns."""
    what = None
    if [lv.group for lv in a.levels] != [lv.group for lv in b.levels]:
        what = "grouping factors (innermost first: " + ", ".join(lv.group for lv in a.levels) + " vs " + ", ".join(
            lv.group for lv in b.levels) + "; pass order= to from_frame)"
    elif [t.columns for t in a.terms] != [t.columns for t in b.terms]:
        what = "random-effects columns"
    elif a.fixed_names != b.fixed_names:
        extra = sorted(set(a.fixed_names) ^ set(b.fixed_names))
        what = "fixed-effect columns" + (f" ({', '.join(extra)} in one part only)" if extra else " (order)")
    if what is not None:
        raise InputError(f"cannot sum statistics of different models: the parts differ in their {what} - build "
                         "every part with the same formula (a factor needs the same levels in every part)")


def _codes(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    codes, uniques = pd.factorize(pd.Series(ids), sort=True)
    labels = np.empty(len(uniques), dtype=object)
    labels[:] = list(map(str, uniques.tolist()))
    return codes.astype(np.int64), labels


def cross_products(W: list[np.ndarray], codes: np.ndarray, G: int, rows: int | None = None) -> np.ndarray:
    """C_g = W_g' W_g for every group g (rows of W with ``codes == g``), one segment sum per pair;
    ``W`` is given as its list of columns. With ``rows``, only the first ``rows`` rows of each
    C_g, (G, rows, d).

    Identical columns (the intercept in Z and X, a random slope that is also a fixed effect)
    share their products, so each distinct pair is summed once; products with a column of ones
    are the column itself. Rows sorted by group (the usual layout: sessions of a patient
    together) are summed by ``np.add.reduceat``, others by ``np.bincount``.
    """
    d = len(W)
    nr = d if rows is None else rows
    rep = list(range(d))  # the first column identical to each column
    for j in range(d):
        for i in range(j):
            if rep[i] == i and np.array_equal(W[i][:64], W[j][:64]) and np.array_equal(W[i], W[j]):
                rep[j] = i
                break
    uniq = sorted(set(rep))
    pos = {c: t for t, c in enumerate(uniq)}
    u = len(uniq)
    seg_sum = _segment_summer(codes, G)
    cols = [np.ascontiguousarray(W[c]) for c in uniq]
    ones = [bool(w[0] == 1.0 and np.all(w == 1.0)) for w in cols]
    members = [[j for j in range(d) if pos[rep[j]] == a] for a in range(u)]  # the columns equal to each
    C = np.empty((G, nr, d))
    for a in range(u):
        wa = cols[a]
        for b in range(a, u):
            if min(members[a]) >= nr and min(members[b]) >= nr:
                continue
            wb = cols[b]
            if ones[a]:
                col = seg_sum(None if ones[b] else wb)
            else:
                col = seg_sum(wa if ones[b] else wa * wb)
            for i in members[a]:
                for j in members[b]:
                    if i < nr:
                        C[:, i, j] = col
                    if j < nr:
                        C[:, j, i] = col
    return C


def _segment_summer(codes: np.ndarray, G: int) -> Callable[[np.ndarray | None], np.ndarray]:
    """A function summing a row vector over the groups of ``codes`` (None: counting the rows).

    Rows sorted by group with every group present use ``np.add.reduceat`` (about twice as fast),
    others ``np.bincount``.
    """
    if len(codes) and codes[0] == 0 and bool(np.all(codes[1:] >= codes[:-1])):
        starts = np.flatnonzero(np.r_[True, codes[1:] != codes[:-1]])
        if len(starts) == G:
            counts = np.diff(np.r_[starts, len(codes)]).astype(float)
            return lambda w: counts if w is None else np.add.reduceat(w, starts)
    return lambda w: np.bincount(codes, weights=w, minlength=G).astype(float)
