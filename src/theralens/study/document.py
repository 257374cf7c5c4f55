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
import platform
from functools import cache
from importlib import metadata, resources
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from theralens.errors import InputError

__all__ = ["MAX_POINTS", "SCHEMA_VERSION", "normal_qq", "read_document", "residual_summary", "sample_summary",
           "schema", "software_versions", "validate_document"]

#: Version of the document layout; a document of another version is refused, not guessed at.
SCHEMA_VERSION = 2
#: At most this many points of a residual plot are kept (evenly spaced in the order drawn).
MAX_POINTS = 2000


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
    q = stats.norm.ppf((np.arange(1, n + 1) - 0.5) / n) if n else np.zeros(0)
    keep = _spaced(n, max_points)
    return {"theoretical": q[keep].tolist(), "sample": v[keep].tolist(),
            "mean": float(np.mean(v)) if n else None, "sd": float(np.std(v, ddof=1)) if n > 1 else None}


def residual_summary(fitted: Any, residuals: Any, max_points: int = MAX_POINTS) -> dict[str, Any]:
    """What the diagnostics plots of a model draw, without any identifier: the residuals
    against the fitted values in the order of the fitted values (at most ``max_points``,
    evenly spaced) with their running mean (window n / 10, at least 5; computed on all
    rows), and the normal Q-Q coordinates of the residuals (:func:`normal_qq`)."""
    f = np.asarray(fitted, dtype=float)
    r = np.asarray(residuals, dtype=float)
    ok = np.isfinite(f) & np.isfinite(r)
    f, r = f[ok], r[ok]
    order = np.argsort(f, kind="stable")
    fs, rs = f[order], r[order]
    n = len(f)
    smooth = np.full(n, np.nan)
    if n > 10:
        w = max(5, n // 10)
        smooth = pd.Series(rs).rolling(w, center=True, min_periods=max(2, w // 2)).mean().to_numpy()
    keep = _spaced(n, max_points)
    return {
        "n": n,
        "fitted": fs[keep].tolist(),
        "residual": rs[keep].tolist(),
        "running_mean": [None if not np.isfinite(x) else float(x) for x in smooth[keep]],
        "residual_qq": normal_qq(r, max_points),
    }


def _moments(x: np.ndarray) -> dict[str, float | None]:
    x = x[np.isfinite(x)]
    return {"mean": float(x.mean()) if len(x) else None, "sd": float(x.std(ddof=1)) if len(x) > 1 else None,
            "min": float(x.min()) if len(x) else None, "max": float(x.max()) if len(x) else None}


def sample_summary(sessions: pd.DataFrame, processes: tuple[str, ...], covariates: tuple[str, ...],
                   time_kind: str) -> dict[str, Any]:
    """What the validated sessions look like, in the numbers a power study needs to simulate a
    study like this one (``theralens power --from``; docs/power.md): no identifiers.

    ``sessions_per_patient``: [[k, number of patients with k rows], ...]; ``outcome_assessments``
    (mean per patient); ``outcome_gap``: median time between a patient's consecutive outcome
    assessments (session numbers; null for dates); ``baseline``: moments of each patient's first
    outcome; ``processes``: per process the moments of all ratings, ``within_patient_sd`` (SD of
    ratings about their patient's mean, pooled: sqrt(sum (x - xbar_i)^2 / (n - P))) and
    ``missing_share`` (rows without a rating); ``covariates``: per covariate its kind (binary
    when every value is 0 or 1) and the moments of the patients' first values.
    """
    pat = sessions["patient"].astype(str).to_numpy()
    codes, uniques = pd.factorize(pat)
    P = len(uniques)
    rows = np.bincount(codes, minlength=P)
    k, n = np.unique(rows, return_counts=True)
    y = sessions["outcome"].to_numpy(dtype=float)
    has_y = np.isfinite(y)
    first_y = pd.Series(y[has_y]).groupby(codes[has_y]).first().to_numpy()
    gap = None
    if time_kind == "number":
        t = sessions["time"].to_numpy(dtype=float)[has_y]
        same = codes[has_y][1:] == codes[has_y][:-1]
        gaps = np.diff(t)[same]
        gap = float(np.median(gaps)) if len(gaps) else None
    out: dict[str, Any] = {
        "sessions_per_patient": [[int(a), int(b)] for a, b in zip(k, n)],
        "outcome_assessments": float(has_y.sum() / max(P, 1)),
        "outcome_gap": gap,
        "baseline": _moments(first_y),
        "processes": {},
        "covariates": {},
    }
    for p in processes:
        x = sessions[p].to_numpy(dtype=float)
        ok = np.isfinite(x)
        c = codes[ok]
        means = np.bincount(c, weights=x[ok], minlength=P) / np.maximum(np.bincount(c, minlength=P), 1)
        dof = ok.sum() - len(np.unique(c))
        ss = float(((x[ok] - means[c]) ** 2).sum())
        out["processes"][p] = {**_moments(x), "within_patient_sd": float(np.sqrt(ss / dof)) if dof > 0 else None,
                               "missing_share": float(1.0 - ok.mean()) if len(x) else None}
    for cov in covariates:
        v = pd.Series(sessions[cov].to_numpy(dtype=float)).groupby(codes).first().to_numpy()
        fin = v[np.isfinite(v)]
        binary = bool(len(fin)) and bool(np.isin(fin, (0.0, 1.0)).all())
        out["covariates"][cov] = {"kind": "binary" if binary else "continuous", **_moments(v)}
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
