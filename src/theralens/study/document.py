"""The results document (``results.json``): its schema, reading and checking it, and the
summaries of the main model's residuals it keeps for the diagnostics plots.

The document is the record of a study analysis: the report and the therapist profiles are
drawn from it alone (``theralens report OUT/results.json`` rebuilds them). Its JSON Schema
ships beside this module (``results.schema.json``); table rows must hold the columns the
schema names, with their types, and may hold more (columns added to the aim tables flow
into the document without a change here).
"""

from __future__ import annotations

import json
import math
import platform
from collections.abc import Callable
from functools import cache
from importlib import metadata, resources
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from theralens.errors import InputError

__all__ = ["MAX_POINTS", "SCHEMA_VERSION", "json_ready", "normal_qq", "read_document", "records",
           "qq_from_order_statistics", "residual_summary",
           "residual_summary_from", "running_mean_at", "running_mean_window", "sample_summary",
           "schema", "software_versions", "validate_document"]

#: Version of the document layout; a document of another version is refused, not guessed at.
SCHEMA_VERSION = 2
#: At most this many points of a residual plot are kept (evenly spaced in the order drawn).
MAX_POINTS = 2000


def json_ready(v: Any) -> Any:
    """JSON-ready: numpy scalars to Python, NaN/inf to None, tuples to lists, recursively."""
    if isinstance(v, dict):
        return {str(k): json_ready(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [json_ready(x) for x in v]
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (np.floating, float)):
        f = float(v)
        return f if math.isfinite(f) else None
    if isinstance(v, np.bool_):
        return bool(v)
    if v is pd.NA or v is None:
        return None
    return v


def records(df: pd.DataFrame) -> list[dict[str, Any]]:
    """Every row of ``df`` with every column, JSON-ready (full precision; NaN as null): what
    :func:`json_ready` makes of each row, column by column (a table of 12,500 therapists per
    process has about a million values: no Python call per value for numbers)."""
    if not len(df.columns):
        return [{} for _ in range(len(df))]
    columns = []
    for c in df.columns:
        col = df[c]
        dtype = col.dtype
        if isinstance(dtype, np.dtype) and dtype.kind == "f":
            a = col.to_numpy()
            values = a.tolist()
            for i in np.flatnonzero(~np.isfinite(a)).tolist():
                values[i] = None
        elif isinstance(dtype, np.dtype) and dtype.kind in "iub":
            values = col.to_numpy().tolist()
        else:
            values = [json_ready(v) for v in col.tolist()]
        columns.append(values)
    names = [str(c) for c in df.columns]
    return [dict(zip(names, row)) for row in zip(*columns)]


@cache
def schema() -> dict[str, Any]:
    """The JSON Schema of ``results.json`` (``study/results.schema.json``)."""
    text = resources.files("theralens.study").joinpath("results.schema.json").read_text(encoding="utf-8")
    return json.loads(text)


def software_versions() -> dict[str, str]:
    """Versions of theralens, Python and the numerical libraries of this run."""
    out = {"theralens": "unknown", "Python": platform.python_version()}
    for name in ("theralens", "numpy", "scipy", "pandas", "formulaic", "nlopt", "matplotlib"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def _spaced(n: int, k: int) -> np.ndarray:
    """Indices of at most ``k`` of ``n`` items, evenly spaced, first and last included."""
    if n <= k:
        return np.arange(n)
    return np.unique(np.round(np.linspace(0, n - 1, k)).astype(int))


def normal_qq(values: Any, max_points: int = MAX_POINTS) -> dict[str, list[float]]:
    """Normal Q-Q coordinates of the finite ``values``: ``theoretical`` quantiles
    Phi^-1((i - 0.5) / n) and the ``sample`` order statistics (at most ``max_points`` of
    them, evenly spaced), with the reference line's ``mean`` and ``sd`` of all values."""
    v = np.asarray(values, dtype=float)
    v = np.sort(v[np.isfinite(v)])
    n = len(v)
    return qq_from_order_statistics(n, lambda idx: v[idx], float(np.mean(v)) if n else None,
                                    float(np.std(v, ddof=1)) if n > 1 else None, max_points)


def qq_from_order_statistics(n: int, at: Callable[[np.ndarray], np.ndarray], mean: float | None,
                             sd: float | None, max_points: int = MAX_POINTS) -> dict[str, Any]:
    """:func:`normal_qq` from ``n`` values known through ``at(idx)`` (their order statistics at
    the indices ``idx``) and their mean and SD: the one implementation, whether the values are
    an array or a column that stays in DuckDB (the study's rows on the SQL path)."""
    q = stats.norm.ppf((np.arange(1, n + 1) - 0.5) / n) if n else np.zeros(0)
    keep = _spaced(n, max_points)
    return {"theoretical": q[keep].tolist(), "sample": np.asarray(at(keep), dtype=float).tolist(),
            "mean": mean, "sd": sd}


def running_mean_window(n: int) -> tuple[int, int]:
    """(window, minimum count) of the residual plot's running mean: n / 10 (at least 5), at least
    half a window of rows (at least 2); the window of item i is rows i - w//2 .. i - w//2 + w - 1
    (pandas' ``rolling(w, center=True)``)."""
    w = max(5, n // 10)
    return w, max(2, w // 2)


def running_mean_at(keep: np.ndarray, n: int, cumsum_at: Callable[[np.ndarray], np.ndarray]) -> list[float | None]:
    """The running mean (:func:`running_mean_window`) at the items ``keep`` of ``n`` values in
    plot order, from their cumulative sums ``cumsum_at(idx)`` (sum of items 0..idx): (S_hi -
    S_lo-1) / (hi - lo + 1) where at least the minimum count of items is in the window; None
    elsewhere and when n <= 10."""
    if n <= 10:
        return [None] * len(keep)
    w, least = running_mean_window(n)
    lo = np.maximum(keep - w // 2, 0)
    hi = np.minimum(keep - w // 2 + w - 1, n - 1)
    idx = np.unique(np.r_[hi, lo - 1][np.r_[hi, lo - 1] >= 0])
    sums = dict(zip(idx.tolist(), np.asarray(cumsum_at(idx), dtype=float).tolist(), strict=True))
    out: list[float | None] = []
    for a, b in zip(lo.tolist(), hi.tolist(), strict=True):
        count = b - a + 1
        out.append((sums[b] - (sums[a - 1] if a > 0 else 0.0)) / count if count >= least else None)
    return out


def residual_summary(fitted: Any, residuals: Any, max_points: int = MAX_POINTS) -> dict[str, Any]:
    """What the diagnostics plots of a model draw, without any identifier: the residuals
    against the fitted values in the order of the fitted values (ties by residual; at most ``max_points``,
    evenly spaced) with their running mean (:func:`running_mean_at`; computed on all rows),
    and the normal Q-Q coordinates of the residuals (:func:`normal_qq`). The SQL path computes
    the same summary from a DuckDB relation with :func:`residual_summary_from` (the same code,
    other accessors)."""
    f = np.asarray(fitted, dtype=float)
    r = np.asarray(residuals, dtype=float)
    ok = np.isfinite(f) & np.isfinite(r)
    f, r = f[ok], r[ok]
    order = np.lexsort((r, f))  # by fitted value, ties by residual (the SQL path's order)
    fs, rs = f[order], r[order]
    csum = np.cumsum(rs)
    rsorted = np.sort(r)
    return residual_summary_from(len(f), lambda idx: (fs[idx], rs[idx]), lambda idx: csum[idx],
                                 lambda idx: rsorted[idx], float(np.mean(r)) if len(r) else None,
                                 float(np.std(r, ddof=1)) if len(r) > 1 else None, max_points)


def residual_summary_from(n: int, points_at: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]],
                          cumsum_at: Callable[[np.ndarray], np.ndarray], residual_order_at: Callable[[np.ndarray],
                                                                                                     np.ndarray],
                          mean: float | None, sd: float | None, max_points: int = MAX_POINTS) -> dict[str, Any]:
    """:func:`residual_summary` of ``n`` rows known through accessors: ``points_at(idx)`` the
    (fitted, residual) of the rows at positions ``idx`` in the order of the fitted values,
    ``cumsum_at(idx)`` the cumulative sums of the residuals in that order, ``residual_order_at``
    the residuals' order statistics, and the residuals' mean and SD."""
    keep = _spaced(n, max_points)
    f, r = points_at(keep)
    return {
        "n": n,
        "fitted": np.asarray(f, dtype=float).tolist(),
        "residual": np.asarray(r, dtype=float).tolist(),
        "running_mean": running_mean_at(keep, n, cumsum_at),
        "residual_qq": qq_from_order_statistics(n, residual_order_at, mean, sd, max_points),
    }


def _moments_sql(expr: str) -> str:
    return f"avg({expr}), stddev_samp({expr}), min({expr}), max({expr})"


def _moments(values: tuple[Any, ...]) -> dict[str, float | None]:
    mean, sd, lo, hi = (None if v is None or v != v else float(v) for v in values)
    return {"mean": mean, "sd": sd, "min": lo, "max": hi}


def sample_summary(sessions: pd.DataFrame | tuple[Any, str], processes: tuple[str, ...],
                   covariates: tuple[str, ...], time_kind: str) -> dict[str, Any]:
    """What the validated sessions look like, in the numbers a power study needs to simulate a
    study like this one (``theralens power --from``; docs/power.md): no identifiers.

    ``sessions``: the validated frame (sorted by therapist, patient and time), or (DuckDB
    connection, relation) holding the same rows (:mod:`theralens.data.scan`); both are read by
    the same SQL (a frame is registered with DuckDB), so the two engines share one
    implementation. ``sessions_per_patient``: [[k, number of patients with k rows], ...];
    ``outcome_assessments`` (mean per patient); ``outcome_gap``: median time between a
    patient's consecutive outcome assessments (session numbers; null for dates); ``baseline``:
    moments of each patient's first outcome; ``processes``: per process the moments of all
    ratings, ``within_patient_sd`` (SD of ratings about their patient's mean, pooled:
    sqrt(sum (x - xbar_i)^2 / (n - P))) and ``missing_share`` (rows without a rating);
    ``covariates``: per covariate its kind (binary when every value is 0 or 1) and the moments
    of the patients' first values.
    """
    if isinstance(sessions, pd.DataFrame):
        import duckdb

        con = duckdb.connect()
        frame = sessions[["patient", "time", "outcome", *processes, *covariates]].copy()
        frame["patient"] = frame["patient"].astype(str)
        frame["time"] = pd.to_numeric(frame["time"], errors="coerce") if time_kind == "number" else 0.0
        for c in ("outcome", *processes, *covariates):
            frame[c] = frame[c].astype(float)
        frame["__order"] = np.arange(len(frame), dtype=np.int64)
        con.register("sample_rows", frame)
        try:
            return _sample_sql(con, "sample_rows", "__order", processes, covariates, time_kind)
        finally:
            con.close()
    con, relation = sessions
    return _sample_sql(con, relation, "time, row", processes, covariates, time_kind)


def _sample_sql(con: Any, rel: str, order: str, processes: tuple[str, ...], covariates: tuple[str, ...],
                time_kind: str) -> dict[str, Any]:
    """:func:`sample_summary` over a DuckDB relation; ``order`` sorts a patient's rows by time."""

    def q(name: str) -> str:
        return '"' + name.replace('"', '""') + '"'

    hist = con.execute(f"""SELECT k, count(*) FROM (SELECT count(*) AS k FROM {rel} GROUP BY CAST(patient AS
        VARCHAR)) GROUP BY k ORDER BY k""").fetchall()
    P = sum(int(b) for _, b in hist)  # patients: the histogram's total
    n_y = con.execute(f"SELECT count(outcome) FROM {rel}").fetchone()[0]
    firsts = "".join(f", arg_min({q(c)}, {order.split(',')[0]}) FILTER (WHERE {q(c)} IS NOT NULL) AS {q(c)}"
                     for c in covariates)
    con.execute(f"""CREATE OR REPLACE TEMP TABLE sample_patients AS SELECT CAST(patient AS VARCHAR) AS patient,
        arg_min(outcome, {order.split(',')[0]}) FILTER (WHERE outcome IS NOT NULL) AS first_y{firsts}
        FROM {rel} GROUP BY 1""")
    gap = None
    if time_kind == "number":
        gap = con.execute(f"""SELECT median(g) FROM (SELECT time - lag(time) OVER (PARTITION BY CAST(patient AS
            VARCHAR) ORDER BY {order}) AS g FROM {rel} WHERE outcome IS NOT NULL)""").fetchone()[0]
    out: dict[str, Any] = {
        "sessions_per_patient": [[int(a), int(b)] for a, b in hist],
        "outcome_assessments": float(n_y / max(P, 1)),
        "outcome_gap": None if gap is None else float(gap),
        "baseline": _moments(con.execute(f"SELECT {_moments_sql('first_y')} FROM sample_patients").fetchone()),
        "processes": {},
        "covariates": {},
    }
    for p in processes:
        x = q(p)
        row = con.execute(f"""SELECT {_moments_sql(x)}, sum(dev * dev), count({x}),
            count(DISTINCT CASE WHEN {x} IS NOT NULL THEN patient END), count(*) FROM (SELECT {x},
            CAST(patient AS VARCHAR) AS patient, {x} - avg({x}) OVER (PARTITION BY CAST(patient AS VARCHAR)) AS dev
            FROM {rel})""").fetchone()
        ss, n_ok, n_pat, n_all = row[4], row[5], row[6], row[7]
        dof = n_ok - n_pat
        out["processes"][p] = {**_moments(row[:4]),
                               "within_patient_sd": float(np.sqrt(ss / dof)) if dof > 0 else None,
                               "missing_share": float(1.0 - n_ok / n_all) if n_all else None}
    for c in covariates:
        row = con.execute(f"""SELECT {_moments_sql(q(c))}, bool_and({q(c)} IN (0, 1)), count({q(c)})
            FROM sample_patients""").fetchone()
        binary = bool(row[5]) and bool(row[4])
        out["covariates"][c] = {"kind": "binary" if binary else "continuous", **_moments(row[:4])}
    return out


def validate_document(doc: Any, source: str = "results document") -> dict[str, Any]:
    """``doc`` if it is a results document of this version that matches the schema; else
    :class:`InputError` naming the first problem and its place."""
    if not isinstance(doc, dict):
        raise InputError(f"{source} is not a theralens results document (a JSON object is expected); "
                         "give the results.json that theralens analyze wrote")
    version = doc.get("schema_version")
    if version != SCHEMA_VERSION:
        raise InputError(f"{source} has schema_version {json.dumps(version)}, but this theralens reads version "
                         f"{SCHEMA_VERSION}; run theralens analyze again with this version to rebuild it")
    import jsonschema  # a run-time dependency of reading documents only

    validator = jsonschema.Draft202012Validator(schema())
    errors = list(validator.iter_errors(doc))
    if errors:
        first = min(_place(e) for e in errors)  # one answer for the same document, whatever the schema's order
        error = jsonschema.exceptions.best_match([e for e in errors if _place(e) == first])
        where = "/".join(str(p) for p in error.absolute_path) or "(top level)"
        what = error.message if len(error.message) <= 160 else error.message[:157] + "..."
        raise InputError(f"{source} does not match the results schema at {where}: {what}; "
                         "give a results.json written by theralens analyze, unedited")
    return doc


def _place(error: Any) -> tuple[tuple[int, int | str], ...]:
    """Sort key of a schema error's place (list positions by number, keys by name)."""
    return tuple((0, p) if isinstance(p, int) else (1, str(p)) for p in error.absolute_path)


def read_document(path: str | Path) -> dict[str, Any]:
    """Read and check the results document at ``path`` (:func:`validate_document`)."""
    p = Path(path)
    if p.is_dir():
        raise InputError(f"{p} is a folder; give the results.json file inside it ({p / 'results.json'})")
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"results file {p} not found; give the results.json that theralens analyze wrote") from None
    except UnicodeDecodeError:
        raise InputError(f"results file {p} is not UTF-8 text; give the results.json that theralens analyze "
                         "wrote") from None
    except OSError as exc:
        raise InputError(f"cannot read results file {p} ({exc.strerror}); check the path and its "
                         "permissions") from None
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"results file {p} is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg}); "
                         "give the results.json that theralens analyze wrote") from None
    return validate_document(doc, source=f"results file {p}")
