"""Model matrices and the nesting structure of the grouping factors.

Turns a :class:`~theralens.model.formula.ParsedFormula` and a table into the fixed-effects
matrix X (through ``formulaic``, columns named as lme4 names them), one random-effects block
Z_l per grouping factor, and the tree that nests the grouping factors inside each other
(innermost first). This is lme4's ``lFormula`` step (Bates et al. 2015, sec. 2).
"""

from __future__ import annotations

import gc
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
import pandas as pd
from formulaic import Formula, model_matrix

from theralens.errors import InputError, ModelSpecError
from theralens.model.formula import ParsedFormula, RandomTermSpec

_LEVEL = re.compile(r"^(?P<var>.*)\[(?:T\.)?(?P<level>.*)\]$")


@dataclass
class Term:
    """A random-effects term: its columns (lme4 names), its model matrix Z (None in sufficient
    statistics, which keep no rows) and how many theta entries it owns."""

    spec: RandomTermSpec
    columns: list[str]
    Z: np.ndarray | None
    name: str  # lme4's grp label in VarCorr, e.g. "Subject" or "Subject.1"

    @property
    def q(self) -> int:
        return len(self.columns)

    @property
    def ntheta(self) -> int:
        return self.q * (self.q + 1) // 2


@dataclass
class Level:
    """One grouping factor with all the terms that share it (block-diagonal Lambda)."""

    group: str
    terms: list[Term]
    codes: np.ndarray | None  # group index per row (None in sufficient statistics, which keep no rows)
    labels: np.ndarray  # label of each group index
    theta_slices: list[slice] = field(default_factory=list)
    #: per factor of the grouping (``a:b``: two), whether its ids are numbers: the groups are
    #: numbered in the order of the ids, by value for numbers, as text otherwise
    numeric: tuple[bool, ...] = ()
    _fill: tuple[np.ndarray, np.ndarray, np.ndarray] | None = field(default=None, repr=False)

    @property
    def q(self) -> int:
        return sum(t.q for t in self.terms)

    @property
    def ngroups(self) -> int:
        return len(self.labels)

    def lambda_matrix(self, theta: np.ndarray) -> np.ndarray:
        """Lambda_l: block-diagonal, each block lower triangular, filled column-major (lme4)."""
        if self._fill is None:
            rows, cols, idx = [], [], []
            off = 0
            for term, sl in zip(self.terms, self.theta_slices):
                r, c = colmajor_tril(term.q)
                rows.extend(r + off)
                cols.extend(c + off)
                idx.extend(range(sl.start, sl.stop))
                off += term.q
            self._fill = (np.array(rows), np.array(cols), np.array(idx))
        rows, cols, idx = self._fill
        lam = np.zeros((self.q, self.q))
        lam[rows, cols] = theta[idx]
        return lam


def colmajor_tril(q: int) -> tuple[np.ndarray, np.ndarray]:
    """Row and column indices of a q x q lower triangle in column-major order (lme4's theta)."""
    rows, cols = [], []
    for j in range(q):
        for i in range(j, q):
            rows.append(i)
            cols.append(j)
    return np.array(rows, dtype=int), np.array(cols, dtype=int)


class ThetaLayout:
    """The layout of theta over the random-effects terms, shared by a :class:`Design` (rows) and
    :class:`~theralens.model.stats.SufficientStats` (no rows): ``terms`` in lme4 order and
    ``levels`` in nesting order."""

    terms: list[Term]
    levels: list[Level]

    @property
    def ntheta(self) -> int:
        return sum(t.ntheta for t in self.terms)

    def theta_lower_bounds(self) -> np.ndarray:
        lower = []
        for t in self.terms:
            rows, cols = colmajor_tril(t.q)
            lower.extend(0.0 if r == c else -np.inf for r, c in zip(rows, cols))
        return np.array(lower)

    def theta_scale_from(self, sumsq: list[np.ndarray], n: int) -> np.ndarray:
        """Scale of each theta entry: the root mean square of the Z column of its row (Lambda's
        row i multiplies column i of Z), from ``sumsq[l]``, the sums of squares of level l's Z
        columns over the n rows, so that scaled theta values are of order one."""
        out = np.empty(self.ntheta)
        for lv, sq in zip(self.levels, sumsq):
            scales = np.sqrt(np.maximum(np.asarray(sq, dtype=float) / n, 1e-300))
            off = 0
            for term, sl in zip(lv.terms, lv.theta_slices):
                rows, _ = colmajor_tril(term.q)
                out[sl] = scales[off + rows]
                off += term.q
        return out

    def theta_names(self) -> list[str]:
        names = []
        for t in self.terms:
            rows, cols = colmajor_tril(t.q)
            for r, c in zip(rows, cols):
                g = t.spec.group  # lme4 names theta by the factor, without the ".1" suffix
                if r == c:
                    names.append(f"{g}.{t.columns[r]}")
                else:
                    names.append(f"{g}.{t.columns[r]}.{t.columns[c]}")
        return names


@dataclass
class Design(ThetaLayout):
    """The rows of a model: y, X, the random-effects levels (innermost first) and the tree.

    The engine fits from the sufficient statistics built from it
    (:class:`~theralens.model.stats.SufficientStats`); the rows serve fitted values and residuals."""

    formula: ParsedFormula
    y: np.ndarray
    X: np.ndarray
    fixed_names: list[str]
    terms: list[Term]  # lme4 order: decreasing number of groups (theta order)
    levels: list[Level]  # nesting order: innermost (most groups) first
    parents: list[np.ndarray]  # parents[l][g] = index of level l+1 group containing group g
    n_dropped: int
    dropped_columns: list[str]
    row_index: pd.Index

    @property
    def n(self) -> int:
        return len(self.y)

    @property
    def k(self) -> int:
        return self.X.shape[1]

    def theta_scale(self) -> np.ndarray:
        """Scale of each theta entry (:meth:`ThetaLayout.theta_scale_from`) from the rows."""
        sumsq = [np.concatenate([np.einsum("ij,ij->j", t.Z, t.Z) for t in lv.terms]) for lv in self.levels]
        return self.theta_scale_from(sumsq, self.n)


def _lme4_name(column: str, order: dict[str, int]) -> str:
    """Translate a formulaic column name to lme4's: ``Intercept`` -> ``(Intercept)``,
    ``g[T.b]`` -> ``gb`` and interaction parts ordered by first appearance in the formula."""
    if column == "Intercept":
        return "(Intercept)"
    parts = column.split(":")
    keyed = []
    for p in parts:
        m = _LEVEL.match(p)
        var = m.group("var") if m else p
        label = f"{var}{m.group('level')}" if m else p
        base = re.sub(r"^C\((.*?)\)$", r"\1", var)
        keyed.append((order.get(base, order.get(var, 10**6)), label))
    keyed.sort(key=lambda kv: kv[0])
    return ":".join(label for _, label in keyed)


@lru_cache(maxsize=256)
def _formulaic(rhs: str) -> Formula | str:
    """formulaic's parse of ``rhs``, kept: a pure function of the text (half the cost of a model
    matrix of a few thousand rows; a power study builds the same few thousands of times). The text
    itself where the parse needs the data (``.``, the other columns) or fails (formulaic then
    parses, and reports, it with the data). The model spec (levels, transforms) is built anew from
    each data set."""
    try:
        return Formula(rhs)
    except Exception:  # formulaic raises many types
        return rhs


def _model_matrix(
    rhs: str, data: pd.DataFrame, order: dict[str, int], what: str
) -> tuple[np.ndarray, list[str], list[str]]:
    """The model matrix of ``rhs`` through formulaic, its lme4 column names and formulaic's."""
    try:
        mm = model_matrix(_formulaic(rhs), data, na_action="ignore", output="numpy")
    except Exception as exc:  # formulaic raises many types; report as one line
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ModelSpecError(f"cannot build the {what} from '{rhs}': {msg}") from None
    raw = list(mm.model_spec.column_names)
    X = np.asarray(mm, dtype=float)
    del mm
    # formulaic's materializer leaves reference cycles that hold evaluated columns of the data;
    # free them now (they are young: a generation-1 pass finds them in well under a
    # millisecond) rather than whenever Python's cyclic collector next runs, which on large
    # data let several fits' worth of them pile up (peak memory of repeated fits)
    gc.collect(1)
    return X, [_lme4_name(c, order) for c in raw], raw


_TOKEN = re.compile(r"^[A-Za-z_.][A-Za-z0-9_.]*$")


def _plain_columns(rhs: str) -> list[str] | None:
    """The column names of a random-effects term made of ``1``/``0`` and plain names (the
    intercept, as ``(Intercept)``, first and then the names in the order written, as formulaic
    builds it), or None for anything else (interactions, functions, repeated names, no column)."""
    tokens = [t.strip() for t in rhs.split("+")]
    intercept = "0" not in tokens
    names_only = [t for t in tokens if t not in ("0", "1")]
    if (not all(_TOKEN.match(t) for t in names_only) or len(set(names_only)) != len(names_only)
            or ("0" in tokens and "1" in tokens)):
        return None
    if not intercept and not names_only:
        return None
    return (["(Intercept)"] if intercept else []) + names_only


def _columns_of(rhs: str, X: np.ndarray, raw: list[str]) -> tuple[np.ndarray, list[str]] | None:
    """The model matrix of a random-effects term read off the fixed-effects matrix, when it can be.

    A term of plain names (:func:`_plain_columns`) of numeric columns that are themselves columns
    of the fixed-effects matrix (``raw``: formulaic's names, which name a numeric variable by itself
    and a categorical one ``x[T.level]``); anything else returns None: the term then goes through
    formulaic. The matrix is stored column by column (Fortran order), so that its columns are
    contiguous for the cross-products.
    """
    cols = _plain_columns(rhs)
    if cols is None or not all(t in raw for t in cols if t != "(Intercept)"):
        return None
    Z = np.empty((X.shape[0], len(cols)), order="F")
    for i, t in enumerate(cols):
        Z[:, i] = 1.0 if t == "(Intercept)" else X[:, raw.index(t)]
    return Z, cols


def with_random_columns(design: Design, parsed: ParsedFormula) -> Design | None:
    """The design of ``parsed`` on ``design``'s rows, built without evaluating a formula, when
    ``parsed`` has ``design``'s response, fixed part and random terms (the same grouping factors in
    the same order) and each of its terms is made of plain names (:func:`_plain_columns`) among the
    columns of ``design``'s term of that factor: ``(1 + x | g)`` from ``(1 + x + z | g)``, a random
    slope left out. What :func:`build_design` builds from the same data (the same rows, y, X, groups
    and order; Z the selected columns, theta laid out for the new terms); None for other formulas."""
    f = design.formula
    if (parsed.response != f.response or parsed.fixed != f.fixed or len(parsed.random) != len(f.random)
            or any(a.group != b.group or a.factors != b.factors for a, b in zip(parsed.random, f.random))):
        return None
    spec_of = {id(old): new for old, new in zip(f.random, parsed.random)}
    new_terms: dict[int, Term] = {}
    for t in design.terms:
        spec = spec_of.get(id(t.spec))
        cols = None if spec is None or t.Z is None else _plain_columns(spec.lhs)
        if cols is None or not all(c in t.columns for c in cols):
            return None
        Z = np.asfortranarray(t.Z[:, [t.columns.index(c) for c in cols]])
        new_terms[id(t)] = Term(spec=spec, columns=cols, Z=Z, name=t.name)
    terms = [new_terms[id(t)] for t in design.terms]
    offsets = np.cumsum([0] + [t.ntheta for t in terms])
    where = {id(t): i for i, t in enumerate(design.terms)}
    levels = []
    for lv in design.levels:
        new = Level(group=lv.group, terms=[new_terms[id(t)] for t in lv.terms], codes=lv.codes, labels=lv.labels,
                    numeric=lv.numeric)
        new.theta_slices = [slice(int(offsets[where[id(t)]]), int(offsets[where[id(t)] + 1])) for t in lv.terms]
        levels.append(new)
    return Design(formula=parsed, y=design.y, X=design.X, fixed_names=list(design.fixed_names), terms=terms,
                  levels=levels, parents=list(design.parents), n_dropped=design.n_dropped,
                  dropped_columns=list(design.dropped_columns), row_index=design.row_index)


def _factorize(col: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """Sorted integer codes of one id column, and its labels as text."""
    # (text ids are not converted to a numpy object array first: that copy costs more than factorizing)
    values = col.to_numpy() if isinstance(col.dtype, np.dtype) and col.dtype.kind in "iu" else None
    if values is not None and len(values) and bool(np.all(values[1:] >= values[:-1])):
        # integer ids in sorted order (rows sorted by patient, say): codes from the changes
        change = values[1:] != values[:-1]
        codes = np.zeros(len(values), dtype=np.int64)
        np.cumsum(change, out=codes[1:])
        uniques = values[np.r_[0, np.flatnonzero(change) + 1]]
    else:
        try:
            codes, uniques = pd.factorize(col, sort=True)
        except TypeError:  # mixed types that do not sort: compare as text
            codes, uniques = pd.factorize(col.astype(str), sort=True)
    labels = np.empty(len(uniques), dtype=object)
    labels[:] = list(map(str, uniques.tolist()))
    return codes.astype(np.int64, copy=False), labels


def _numeric_ids(data: pd.DataFrame, factors: tuple[str, ...]) -> tuple[bool, ...]:
    """Whether the ids of each factor are numbers (sorted by value, as :func:`_factorize` sorts them)."""
    return tuple(isinstance(data[f].dtype, np.dtype) and data[f].dtype.kind in "iuf" for f in factors)


def _group_codes(data: pd.DataFrame, factors: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Integer codes of the grouping factor made of ``factors`` and their labels.

    An interaction ``a:b`` is labelled ``"a_level:b_level"`` in the order of the factor name,
    as lme4 labels the levels of ``b:a`` groups."""
    parts = [_factorize(data[f]) for f in factors]
    if len(parts) == 1:
        return parts[0]
    key = np.zeros(len(data), dtype=np.int64)
    for codes, uniques in parts:
        key = key * len(uniques) + codes
    ukeys, codes = np.unique(key, return_inverse=True)
    rem = ukeys.astype(np.int64)
    pieces = []
    for _codes, uniques in reversed(parts):
        pieces.append(uniques[rem % len(uniques)])
        rem = rem // len(uniques)
    pieces.reverse()
    labels = np.array([":".join(t) for t in zip(*pieces)], dtype=object)
    return codes.astype(np.int64).ravel(), labels


def independent_columns(gram: np.ndarray, n: int) -> np.ndarray:
    """Indices of the fixed-effect columns to keep, from X'X alone (``gram``, n rows): aliased
    columns are dropped, the later of them going, as lme4 drops them.

    With c = max(n, k) eps 1e3, X has full rank when its smallest singular value exceeds c times
    its largest (checked on the eigenvalues of X'X, allowing for the rounding of X'X and of its
    eigenvalues). Otherwise a Cholesky factorisation of X'X in column order drops every column
    whose squared residual norm, after the columns kept before it, is below c times its own
    squared norm (R's LINPACK QR ``dqrdc2``, which lme4 uses, likewise moves such columns out of
    the way and keeps the order of the others); c separates exactly aliased columns from the
    rounding of X'X.
    """
    k = gram.shape[0]
    if k == 0:
        return np.arange(0)
    c = max(n, k) * np.finfo(float).eps * 1e3
    ev = np.linalg.eigvalsh(gram)
    err = 2.0 * (k + 1) * n * np.finfo(float).eps * float(np.trace(gram))
    if ev[0] - err > c * c * (ev[-1] + err):
        return np.arange(k)
    keep: list[int] = []
    L = np.zeros((k, k))  # rows: the kept columns' Cholesky factor, column by column
    for j in range(k):
        own = float(gram[j, j])
        below = L[j, : len(keep)]
        resid = own - float(below @ below)
        if own <= 0 or resid <= c * own:
            continue  # aliased with the columns before it (or all zero)
        m = len(keep)
        L[j, m] = np.sqrt(resid)
        for i in range(j + 1, k):
            L[i, m] = (float(gram[i, j]) - float(L[i, :m] @ L[j, :m])) / L[j, m]
        keep.append(j)
    return np.array(keep, dtype=np.int64)


def _drop_rank_deficient(X: np.ndarray, names: list[str]) -> tuple[np.ndarray, list[str], list[str]]:
    """Drop aliased fixed-effect columns (:func:`independent_columns` on X'X)."""
    keep = independent_columns(X.T @ X, X.shape[0])
    if len(keep) == X.shape[1]:
        return X, names, []
    dropped = [names[i] for i in range(X.shape[1]) if i not in set(keep.tolist())]
    return X[:, keep], [names[int(i)] for i in keep], dropped


def build_design(parsed: ParsedFormula, data: pd.DataFrame, part: bool = False,
                 factor_order: Sequence[str] | None = None) -> Design:
    """Build y, X and the nested random-effects levels for ``parsed`` on ``data``.

    Rows with a missing value in any column the formula uses are dropped and counted.
    Crossed or partially crossed grouping factors raise :class:`ModelSpecError`. With ``part``
    the rows are one part of the data (partial sufficient statistics): aliased columns are kept
    and rows may be fewer than fixed effects, since both are properties of the whole data.
    ``factor_order`` names the grouping factors innermost first; by default they are ordered by their
    number of groups, as lme4 orders its terms (a part of the data may have as many groups of a
    coarser factor as of a finer one: its statistics then need the whole data's order).
    """
    if not isinstance(data, pd.DataFrame):
        raise InputError("data must be a pandas DataFrame")
    order = {v: i for i, v in enumerate(parsed.variables())}
    used = [c for c in data.columns if c in order]
    if parsed.response not in data.columns:
        raise InputError(f"response column '{parsed.response}' is not in the data")
    for term in parsed.random:
        for f in term.factors:
            if f not in data.columns:
                raise InputError(f"grouping column '{f}' of the term '({term.lhs} | {term.group})' is not in the data")
    complete = np.ones(len(data), bool)
    for c in used:
        dtype = data[c].dtype
        if not isinstance(dtype, np.dtype):  # pandas' own dtypes (text, nullable): no numpy copy
            complete &= data[c].notna().to_numpy()
        elif dtype.kind in "f":
            complete &= ~np.isnan(data[c].to_numpy())
        elif dtype.kind not in "iub":  # numpy integers and booleans have no missing values
            complete &= data[c].notna().to_numpy()
    n_dropped = int((~complete).sum())
    # without missing values the columns are used as they are (no copy of the table)
    frame = data.loc[complete, used] if n_dropped else data
    if len(frame) == 0:
        raise InputError("no complete rows: every row has a missing value in a column the formula uses")
    y = pd.to_numeric(frame[parsed.response], errors="coerce").to_numpy(dtype=float)
    if not np.isfinite(y).all():
        raise InputError(f"response column '{parsed.response}' has non-numeric or infinite values")

    X_all, all_names, raw_names = _model_matrix(parsed.fixed, frame, order, "fixed-effects matrix")
    X, fixed_names, dropped_cols = (X_all, all_names, []) if part else _drop_rank_deficient(X_all, all_names)
    if len(y) <= X.shape[1] and not part:
        raise InputError(f"only {len(y)} complete rows for {X.shape[1]} fixed effects "
                         f"({', '.join(fixed_names)}); a mixed model needs more rows than fixed effects - "
                         "add data or drop predictors")

    # random-effects terms
    raw_terms: list[tuple[RandomTermSpec, np.ndarray, list[str], np.ndarray, np.ndarray]] = []
    for spec in parsed.random:
        if spec.lhs.strip() == "1":  # a random intercept: no formula to evaluate
            Z, cols = np.ones((len(frame), 1)), ["(Intercept)"]
        else:  # columns of the fixed part are reused; other terms go through formulaic
            found = _columns_of(spec.lhs, X_all, raw_names)
            Z, cols = found if found is not None else _model_matrix(
                spec.lhs, frame, order, f"random-effects term ({spec.lhs} | {spec.group})")[:2]
        if Z.shape[1] == 0:
            raise ModelSpecError(f"random-effects term ({spec.lhs} | {spec.group}) has no columns")
        codes, labels = _group_codes(frame, spec.factors)
        raw_terms.append((spec, Z, cols, codes, labels))
    # lme4 orders terms by decreasing number of groups (stable)
    rank = _factor_rank(factor_order, [t[0].group for t in raw_terms])
    raw_terms.sort(key=lambda t: rank(t[0].group, len(t[4])))
    seen: dict[str, int] = {}
    terms: list[Term] = []
    by_group: dict[str, list[int]] = {}
    for i, (spec, Z, cols, _codes, _labels) in enumerate(raw_terms):
        count = seen.get(spec.group, 0)
        seen[spec.group] = count + 1
        name = spec.group if count == 0 else f"{spec.group}.{count}"
        terms.append(Term(spec=spec, columns=cols, Z=Z, name=name))
        by_group.setdefault(spec.group, []).append(i)

    # one level per grouping factor; theta slices follow term order
    offsets = np.cumsum([0] + [t.ntheta for t in terms])
    level_list: list[Level] = []
    for group, idx in by_group.items():
        codes, labels = raw_terms[idx[0]][3], raw_terms[idx[0]][4]
        lev = Level(group=group, terms=[terms[i] for i in idx], codes=codes, labels=labels,
                    numeric=_numeric_ids(frame, raw_terms[idx[0]][0].factors))
        lev.theta_slices = [slice(int(offsets[i]), int(offsets[i + 1])) for i in idx]
        level_list.append(lev)
    level_list.sort(key=lambda lv: rank(lv.group, lv.ngroups))
    parents = _check_nesting(level_list, frame)
    return Design(
        formula=parsed,
        y=y,
        X=X,
        fixed_names=fixed_names,
        terms=terms,
        levels=level_list,
        parents=parents,
        n_dropped=n_dropped,
        dropped_columns=dropped_cols,
        row_index=frame.index,
    )


def _factor_rank(order: Sequence[str] | None, groups: list[str]) -> Callable[[str, int], int]:
    """Sort key of a grouping factor: its place in ``order``, or minus its number of groups."""
    if order is None:
        return lambda group, ngroups: -ngroups
    missing = sorted(set(groups) - set(order))
    if missing:
        raise InputError(f"order names the grouping factors {', '.join(order)} but the formula also has "
                         f"{', '.join(missing)}: name every grouping factor, innermost first")
    place = {g: i for i, g in enumerate(order)}
    return lambda group, ngroups: place[group]


def _check_nesting(levels: list[Level], frame: pd.DataFrame) -> list[np.ndarray]:
    """Each group of a finer factor must sit inside exactly one group of the next coarser one.

    Returns ``parents[l]``: for each group of level l its group in level l+1.
    """
    parents = []
    for fine, coarse in zip(levels[:-1], levels[1:]):
        parent = np.empty(fine.ngroups, dtype=np.int64)
        parent[fine.codes] = coarse.codes  # one of the coarse groups of each fine group
        if np.array_equal(parent[fine.codes], coarse.codes):  # every row agrees: nested
            parents.append(parent)
            continue
        key = np.unique(fine.codes * np.int64(coarse.ngroups) + coarse.codes)
        f_of, c_of = key // coarse.ngroups, key % coarse.ngroups
        bad = np.flatnonzero(np.bincount(f_of, minlength=fine.ngroups) > 1)
        g = int(bad[0])
        homes = c_of[f_of == g][:2]
        fine_name = "/".join(fine.terms[0].spec.factors)
        raise ModelSpecError(
            f"grouping factors '{fine.group}' and '{coarse.group}' are crossed, not nested: "
            f"{fine_name} '{fine.labels[g]}' appears under {coarse.group} "
            f"'{coarse.labels[homes[0]]}' and '{coarse.labels[homes[1]]}' "
            f"({len(bad)} such {fine.group} groups); theralens fits nested random effects only - "
            f"give each {fine.group} a single {coarse.group}, or make ids unique within "
            f"{coarse.group} and use (1 | {coarse.group}:{fine.group})"
        )
    return parents


def model_matrix_like(rhs: str, data: pd.DataFrame, reference: pd.DataFrame,
                      parsed: ParsedFormula) -> tuple[np.ndarray, list[str]]:
    """The model matrix of ``rhs`` for new rows ``data``, coded as on ``reference`` (the rows a
    model was fitted to: the same factor levels, reference categories and transforms), and its
    lme4 column names; rows with a missing value give NaN rows (R's ``na.pass``)."""
    order = {v: i for i, v in enumerate(parsed.variables())}
    try:
        spec = model_matrix(_formulaic(rhs), reference, na_action="ignore").model_spec
        mm = spec.get_model_matrix(data, na_action="ignore", output="numpy")
    except Exception as exc:  # formulaic raises many types (e.g. a level the fit never saw)
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ModelSpecError(f"cannot build '{rhs}' for the new data: {msg}") from None
    X = np.asarray(mm, dtype=float)
    names = [_lme4_name(c, order) for c in spec.column_names]
    del mm, spec
    gc.collect(1)  # formulaic's reference cycles (see _model_matrix)
    return X, names


def group_labels(data: pd.DataFrame, factors: tuple[str, ...]) -> np.ndarray:
    """Each row's group label for the grouping factor made of ``factors``, as :class:`Level`
    labels its groups (an id that is missing gives None)."""
    complete = data[list(factors)].notna().all(axis=1).to_numpy()
    out = np.full(len(data), None, dtype=object)
    if complete.any():
        codes, labels = _group_codes(data.loc[complete], factors)
        out[complete] = labels[codes]
    return out
