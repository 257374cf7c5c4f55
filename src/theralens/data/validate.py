"""Check a sessions table and a therapist table, and bring them to canonical form.

The sessions table is long: one row per assessment of a patient, with the therapist id,
the patient id, the time of the assessment (a number such as the session, or a date), the
outcome and one or more process ratings (models.md, notation: therapist j, patient i,
assessment t). A row may hold only some of these values (in the published design the
process is rated every session and the outcome about every second one).

What is an error (raises :class:`~theralens.errors.InputError`, one line naming the file,
column, rows or therapist and how to fix it): a missing column; text, dates or infinite
values in a numeric column; a column with no values; time values that are neither numbers
nor dates; duplicated (patient, time) rows; a patient under two therapists; fewer than
three therapists; an outcome without variance; a process without variance within
therapists; no patient with two outcome assessments. In the therapist table: a missing id
or moderator column, duplicated ids, ids that are not in the sessions data, moderators
that are constant or neither numbers nor a few categories.

What is not an error but is counted (``ValidatedData.exclusions``): rows without a
therapist id, patient id or time, and rows with neither an outcome nor a process value.
They are dropped, and every drop is listed with its reason, the number of rows and of
patients touched, and the patients left with no row at all. Blank lines are ignored.

Row numbers in messages are the ones the user sees: a text file's line or a sheet's row
(the header is row 1, so the first data row is row 2), or the case number of an SPSS,
Stata or Parquet file (``df.attrs["first_data_row"]`` set by
:func:`theralens.data.read.read_table`; a DataFrame built in Python counts like a text file).

Canonical form: columns ``row`` (the user's row number), ``therapist`` and ``patient``
(ids as text: 3, 3.0 and "3" are the same therapist), ``time`` (float: the number as
given, or, for dates, weeks since the patient's first assessment, with the date kept in
``date``), ``outcome``, one column per process and covariate under a formula-safe name
(``ValidatedData.labels`` maps it back to the user's column name). Categorical text
columns used as covariates or therapist moderators are dummy-coded: two levels become one
0/1 column named after the level coded 1 (``yes``/``true`` is 1 when present, otherwise
the level later in alphabetical order); more levels become one 0/1 column per level except
the most frequent one (the reference).
"""

from __future__ import annotations

import keyword
import re
import unicodedata
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from theralens.data.config import StudyConfig
from theralens.errors import InputError, closest

__all__ = [
    "RESERVED_NAMES",
    "Exclusion",
    "ValidatedData",
    "safe_name",
    "validate_sessions",
    "validate_therapists",
]

#: Names used by theralens' own columns; a user column with such a name is renamed.
RESERVED_NAMES = frozenset(
    {"row", "therapist", "patient", "service", "time", "date", "outcome", "n_patients", "baseline", "final"}
)

MISSING_TOKENS = frozenset({"", "na", "n/a", "nan", "null", "none", ".", "-", "--", "missing", "#n/a", "?"})
_TRUE_LEVELS = {"yes", "true", "y", "ja", "si", "oui", "1"}
_FALSE_LEVELS = {"no", "false", "n", "nein", "non", "0"}
MAX_CATEGORIES = 10


@dataclass(frozen=True)
class Exclusion:
    """Rows dropped for one reason (never silently).

    Fields: ``reason``; ``rows`` (number of rows dropped); ``patients`` (patients who lost at
    least one row); ``patients_removed`` (patients left with no row at all);
    ``examples`` (up to 5 row numbers as the user sees them, or patient ids: keep them out
    of shared outputs unless ``[report] show_patient_ids`` is true).
    """

    reason: str
    rows: int
    patients: int
    patients_removed: int = 0
    examples: tuple[Any, ...] = ()

    def to_dict(self, *, examples: bool = False) -> dict[str, Any]:
        """JSON-ready form; ``examples`` (row numbers or patient ids) only when asked."""
        out: dict[str, Any] = {
            "reason": self.reason,
            "rows": int(self.rows),
            "patients": int(self.patients),
            "patients_removed": int(self.patients_removed),
        }
        if examples:
            out["examples"] = [e if isinstance(e, str) else int(e) for e in self.examples]
        return out


@dataclass
class ValidatedData:
    """A checked sessions table in canonical form.

    Fields:
        sessions: one row per assessment, sorted by therapist, patient and time; columns
            ``row``, ``therapist``, ``patient``, ``time``, (``date``), ``outcome``, then the
            processes and covariates under formula-safe names.
        processes: the process column names in ``sessions`` (formula-safe).
        covariates: the covariate column names in ``sessions`` (after dummy coding).
        labels: formula-safe name -> the user's name (column, or "column = level").
        exclusions: rows dropped, by reason (:class:`Exclusion`).
        counts: rows_read, rows_empty, rows_excluded, rows_used, therapists, patients,
            outcome_assessments, ``<process>_ratings``, patients_with_one_outcome.
        notes: sentences for the report (decisions taken while reading and checking).
        time_kind: ``"number"`` or ``"date"``.
        source: the file (or description) the data came from.
        config: the :class:`StudyConfig` used.
    """

    sessions: pd.DataFrame
    processes: tuple[str, ...]
    covariates: tuple[str, ...]
    labels: dict[str, str]
    exclusions: list[Exclusion]
    counts: dict[str, int]
    notes: list[str] = field(default_factory=list)
    time_kind: str = "number"
    source: str = "<data>"
    config: StudyConfig = field(default_factory=StudyConfig)

    @property
    def n_therapists(self) -> int:
        """Number of therapists after the checks."""
        return int(self.counts["therapists"])

    @property
    def n_patients(self) -> int:
        """Number of patients after the checks."""
        return int(self.counts["patients"])


# ----------------------------------------------------------------------------- helpers


def safe_name(name: str, taken: set[str] | frozenset[str] = frozenset()) -> str:
    """A valid, non-keyword Python identifier for ``name``, distinct from ``taken``.

    Accents are dropped, other characters become ``_``; a leading digit gets ``x``
    prepended; a name in :data:`RESERVED_NAMES` gets ``_score`` appended.
    """
    text = unicodedata.normalize("NFKD", str(name)).encode("ascii", "ignore").decode()
    s = re.sub(r"\W+", "_", text.strip()).strip("_") or "x"
    if s[0].isdigit():
        s = "x" + s
    if keyword.iskeyword(s) or s in RESERVED_NAMES:
        s = s + "_score"
    base, k = s, 2
    while s in taken:
        s = f"{base}_{k}"
        k += 1
    return s


def _suggest(name: str, options: list[str]) -> str:
    match = closest(name, options)
    if match:
        return f'did you mean "{match}"?'
    shown = ", ".join(f'"{o}"' for o in options[:12])
    more = ", ..." if len(options) > 12 else ""
    return f"the columns are {shown}{more}"


def _rows_text(rows: np.ndarray | list[int], limit: int = 3) -> str:
    rows = [int(r) for r in rows]
    word = "row" if len(rows) == 1 else "rows"
    shown = ", ".join(str(r) for r in rows[:limit])
    more = f" and {len(rows) - limit} more" if len(rows) > limit else ""
    return f"{word} {shown}{more}"


def _show(values: list[Any], limit: int = 3) -> str:
    return ", ".join(repr(v) if isinstance(v, str) else str(v) for v in values[:limit])


def _text_or_none(value: Any) -> str | None:
    """One cell as text, trimmed; None for a common missing-value token (or a blank)."""
    t = str(value).strip()
    return None if t.lower() in MISSING_TOKENS else t


def _as_text(series: pd.Series) -> pd.Series:
    """Text view (object dtype) with blanks and common missing-value tokens as None.

    A column of text (every filled cell a str: ids, labels) is converted one distinct value at a
    time (equal strings give equal text); other columns cell by cell (3 and 3.0 are equal keys but
    different text)."""
    arr = series.to_numpy(dtype=object)
    out = np.empty(len(arr), dtype=object)
    if pd.api.types.infer_dtype(arr, skipna=True) == "string":
        codes, uniques = pd.factorize(arr)  # missing cells (None, NaN, NA): code -1
        text = np.empty(len(uniques) + 1, dtype=object)  # the last one (None) for code -1
        text[:-1] = [_text_or_none(v) for v in uniques]
        out[:] = text[codes]
    else:
        missing = pd.isna(arr)
        for i, (v, m) in enumerate(zip(arr, missing, strict=True)):
            if not m:
                out[i] = _text_or_none(v)
    return pd.Series(out, index=series.index, dtype=object)


_INTEGRAL_TEXT = re.compile(r"^(-?\d+)\.0+$")


def normalize_ids(series: pd.Series) -> pd.Series:
    """Ids as text; integral floats lose their '.0' so that 3, 3.0 and "3" agree."""
    if pd.api.types.is_bool_dtype(series):
        series = series.astype("Int64")
    if pd.api.types.is_numeric_dtype(series):
        values = pd.to_numeric(series, errors="coerce").astype(float)
        out = pd.Series(pd.NA, index=series.index, dtype="object")
        ok = values.notna()
        integral = ok & np.isclose(values.fillna(0) % 1, 0)
        out[integral] = values[integral].astype("int64").astype(str)
        out[ok & ~integral] = values[ok & ~integral].astype(str)
        return out
    # the '.0' is dropped once per distinct id (a few hundred), not once per row
    codes, uniques = pd.factorize(_as_text(series).to_numpy(dtype=object))
    ids = np.empty(len(uniques) + 1, dtype=object)  # the last one (None) for a missing id
    ids[:-1] = [_INTEGRAL_TEXT.sub(r"\1", v) for v in uniques]
    return pd.Series(ids[codes], index=series.index, dtype=object)


def to_numeric(
    series: pd.Series,
    column: str,
    role: str,
    rows: np.ndarray,
    where: str,
    notes: list[str],
    labelled: bool = False,
) -> pd.Series:
    """Float version of a numeric column, or InputError naming offending rows."""
    if pd.api.types.is_bool_dtype(series):
        return series.astype(float)
    if pd.api.types.is_datetime64_any_dtype(series):
        raise InputError(
            f"{where}: column {column!r} ({role}) holds dates, not numbers; point the config at the numeric column"
        )
    if pd.api.types.is_numeric_dtype(series):
        out = pd.to_numeric(series, errors="coerce").astype(float)
    else:
        text = _as_text(series)
        out = pd.to_numeric(text, errors="coerce").astype(float)
        bad = (text.notna() & out.isna()).to_numpy()
        if bad.any():
            comma = text[bad].str.fullmatch(r"[+-]?\d+,\d+")
            if bool(comma.all()):
                out = pd.to_numeric(text.str.replace(",", ".", regex=False), errors="coerce")
                out = out.astype(float)
                notes.append(f"{where}: column {column!r} uses a decimal comma; read 2,5 as 2.5.")
                bad = (text.notna() & out.isna()).to_numpy()
        if bad.any():
            values = list(text[bad].astype(str))
            if labelled:
                raise InputError(
                    f"{where}: column {column!r} ({role}) must hold numbers, but the file marks it as "
                    f"nominal (categorical), so {_rows_text(rows[bad])} hold its value labels "
                    f"{_show(values)}; in SPSS set its measure to scale (Variable View) and save the file again"
                )
            raise InputError(
                f"{where}: column {column!r} ({role}) must hold numbers, but "
                f"{_rows_text(rows[bad])} hold {_show(values)}; "
                "replace them by numbers or leave the cells empty"
            )
    inf = np.isinf(out.to_numpy())
    if inf.any():
        raise InputError(
            f"{where}: column {column!r} ({role}) has infinite values in {_rows_text(rows[inf])}; "
            "replace them by the real values or leave the cells empty"
        )
    return out


_ISO = re.compile(r"^(\d{4})[-/.](\d{1,2})[-/.](\d{1,2})(?:[ T].*)?$")
_DOTS = re.compile(r"^(\d{1,2})\.(\d{1,2})\.(\d{2}|\d{4})(?:[ T].*)?$")
_SLASH = re.compile(r"^(\d{1,2})[/-](\d{1,2})[/-](\d{2}|\d{4})(?:[ T].*)?$")


def _year(text: str) -> int:
    y = int(text)
    if len(text) == 2:
        y += 2000 if y < 70 else 1900
    return y


def _make_date(y: int, m: int, d: int) -> date | None:
    try:
        return date(y, m, d)
    except ValueError:
        return None


def parse_dates(text: pd.Series, column: str, rows: np.ndarray, where: str, role: str = "time",
                fix: str = "write session numbers or dates like 2021-03-15") -> pd.Series:
    """Parse dates written in several formats (ISO, day.month.year, d/m/y or m/d/y, names).

    Slash dates are read day-first or month-first as the column shows (a first part above
    12 means day-first); a column where both or neither can be told is an error. ``role``
    and ``fix`` word the message about values that are not dates.
    """
    from dateutil import parser as dateparser

    parsed: dict[Any, date | None] = {}
    slash: dict[Any, tuple[int, int, int]] = {}
    for idx, value in text.dropna().items():
        v = str(value)
        if m := _ISO.match(v):
            parsed[idx] = _make_date(int(m[1]), int(m[2]), int(m[3]))
        elif m := _DOTS.match(v):
            parsed[idx] = _make_date(_year(m[3]), int(m[2]), int(m[1]))
        elif m := _SLASH.match(v):
            slash[idx] = (int(m[1]), int(m[2]), _year(m[3]))
        elif re.search(r"[A-Za-z]{3,}", v):
            try:
                parsed[idx] = dateparser.parse(v, dayfirst=True).date()
            except (ValueError, OverflowError):
                parsed[idx] = None
        else:
            parsed[idx] = None
    if slash:
        a = np.array([t[0] for t in slash.values()])
        b = np.array([t[1] for t in slash.values()])
        dayfirst, monthfirst = bool((a > 12).any()), bool((b > 12).any())
        keys = list(slash)
        if dayfirst and monthfirst:
            pos = [text.index.get_loc(k) for k in keys]
            raise InputError(
                f"{where}: column {column!r} mixes day/month and month/day dates "
                f"({_rows_text(rows[pos])}); write all dates as YYYY-MM-DD"
            )
        if not dayfirst and not monthfirst:
            pos = [text.index.get_loc(k) for k in keys]
            raise InputError(
                f"{where}: column {column!r} has dates such as {text[keys[0]]!r} "
                f"({_rows_text(rows[pos])}) that could be day/month or month/day; "
                "write them as YYYY-MM-DD"
            )
        for k, (x, y, yr) in slash.items():
            if dayfirst:
                parsed[k] = _make_date(yr, y, x)
            else:
                parsed[k] = _make_date(yr, x, y)
    bad = [k for k, v in parsed.items() if v is None]
    if bad:
        pos = [text.index.get_loc(k) for k in bad]
        raise InputError(
            f"{where}: column {column!r} ({role}) has values that are neither numbers nor dates in "
            f"{_rows_text(rows[pos])}: {_show([str(text[k]) for k in bad])}; {fix}"
        )
    out = pd.Series(pd.NaT, index=text.index, dtype="datetime64[ns]")
    for k, v in parsed.items():
        out[k] = pd.Timestamp(v)
    return out


def _codes_back(frame: pd.DataFrame, column: str, attrs: dict[str, Any], where: str, notes: list[str]) -> bool:
    """Give an outcome or process column whose SPSS/Stata value labels were applied (every
    code labelled, no measurement level recorded) its numeric codes back, with a note.

    A column the file marks "nominal" keeps its labels (validation then asks for a scale
    variable); labels shared by two codes raise InputError.
    """
    if column in set(attrs.get("nominal", [])):
        return False
    mapping = dict(attrs.get("value_labels", {}).get(column, {}))
    inverse: dict[Any, Any] = {}
    for code, label in mapping.items():
        if label in inverse:
            raise InputError(
                f"{where}: column {column!r} must hold numbers, but its value labels give codes "
                f"{_show([inverse[label], code])} the same label {label!r}, so the codes cannot be "
                "recovered; give each code its own label (or none) and save the file again"
            )
        inverse[label] = code
    frame[column] = frame[column].map(lambda v: inverse.get(v, v) if isinstance(v, str) else v)
    name = Path(str(attrs.get("source", where))).name
    notes[:] = [n for n in notes if not (f"column {column!r}" in n and "labels are used instead" in n)]
    shown = ", ".join(f"{code:g} = {label}" if isinstance(code, float) else f"{code} = {label}"
                      for code, label in list(mapping.items())[:2])
    notes.append(
        f"{name}: column {column!r} has a value label for every code ({shown}"
        f"{', ...' if len(mapping) > 2 else ''}); it is analysed as the numbers (the codes)."
    )
    return True


def parse_time(series: pd.Series, column: str, rows: np.ndarray, where: str) -> tuple[pd.Series, pd.Series | None]:
    """(numeric time, dates or None)."""
    if pd.api.types.is_datetime64_any_dtype(series):
        dates = pd.to_datetime(series)
        if dates.dt.tz is not None:
            dates = dates.dt.tz_localize(None)
        return pd.Series(np.nan, index=series.index), dates.astype("datetime64[ns]")
    if pd.api.types.is_bool_dtype(series):
        raise InputError(
            f"{where}: column {column!r} (time) holds true/false values; "
            "point [columns] time at the session number or date column"
        )
    if pd.api.types.is_numeric_dtype(series):
        values = pd.to_numeric(series, errors="coerce").astype(float)
        inf = np.isinf(values.to_numpy())
        if inf.any():
            raise InputError(
                f"{where}: column {column!r} (time) has infinite values in "
                f"{_rows_text(rows[inf])}; write the session number or date"
            )
        return values, None
    text = _as_text(series)
    if text.isna().all():
        return pd.Series(np.nan, index=series.index), None
    objects = series[text.notna()]
    if objects.map(lambda v: isinstance(v, (datetime, date, pd.Timestamp))).all():
        dates = pd.to_datetime(series.where(text.notna()), errors="coerce")
        return pd.Series(np.nan, index=series.index), dates.astype("datetime64[ns]")
    numbers = pd.to_numeric(text, errors="coerce")
    if numbers[text.notna()].notna().all():
        return numbers.astype(float), None
    return pd.Series(np.nan, index=series.index), parse_dates(text, column, rows, where)


def code_column(
    series: pd.Series,
    column: str,
    role: str,
    rows: np.ndarray,
    where: str,
    taken: set[str],
    notes: list[str],
    labelled: bool = False,
) -> tuple[dict[str, pd.Series], dict[str, str]]:
    """Numeric column as is; a categorical text column dummy-coded (see module docstring).

    Returns ({safe name: values}, {safe name: label}).
    """
    is_text = not (
        pd.api.types.is_numeric_dtype(series)
        or pd.api.types.is_bool_dtype(series)
        or pd.api.types.is_datetime64_any_dtype(series)
    )
    if is_text:
        text = _as_text(series)
        numbers = pd.to_numeric(text, errors="coerce")
        non_numeric = text.notna() & numbers.isna()
        if non_numeric.any() and numbers.notna().any() and not labelled:
            values = list(text[non_numeric].astype(str))
            raise InputError(
                f"{where}: column {column!r} ({role}) mixes numbers and text; "
                f"{_rows_text(rows[non_numeric.to_numpy()])} hold {_show(values)}; "
                "use numbers only, or text categories only"
            )
        if non_numeric.any():
            return _dummies(text, column, role, where, taken, notes)
    name = safe_name(column, taken)
    taken.add(name)
    values = to_numeric(series, column, role, rows, where, notes, labelled)
    return {name: values}, {name: column}


def _dummies(
    text: pd.Series, column: str, role: str, where: str, taken: set[str], notes: list[str]
) -> tuple[dict[str, pd.Series], dict[str, str]]:
    levels = text.dropna().value_counts()
    levels = levels.sort_index(key=lambda idx: idx.str.lower())
    names = list(levels.index)
    if len(names) < 2:
        raise InputError(
            f"{where}: column {column!r} ({role}) has the same value {names[0]!r} everywhere; "
            "it cannot explain differences, so remove it"
        )
    if len(names) > MAX_CATEGORIES:
        raise InputError(
            f"{where}: column {column!r} ({role}) has {len(names)} different text values "
            f"(e.g. {_show(names)}); it must hold numbers or at most {MAX_CATEGORIES} categories"
        )
    missing = text.isna()
    out: dict[str, pd.Series] = {}
    labels: dict[str, str] = {}
    lowered = [n.lower() for n in names]
    if len(names) == 2:
        if lowered[0] in _TRUE_LEVELS and lowered[1] in _FALSE_LEVELS:
            one, zero = names[0], names[1]
        elif lowered[1] in _TRUE_LEVELS and lowered[0] in _FALSE_LEVELS:
            one, zero = names[1], names[0]
        else:
            zero, one = names[0], names[1]
        yes_no = one.lower() in _TRUE_LEVELS
        name = safe_name(column if yes_no else f"{column}_{one}", taken)
        taken.add(name)
        out[name] = (text == one).astype(float).mask(missing)
        labels[name] = column if yes_no else f"{column} = {one}"
        notes.append(
            f"{where}: {role} {column!r} is text with two levels; coded {name} = 1 for {one!r} and 0 for {zero!r}."
        )
        return out, labels
    reference = levels.sort_values(ascending=False, kind="stable").index[0]
    for level in names:
        if level == reference:
            continue
        name = safe_name(f"{column}_{level}", taken)
        taken.add(name)
        out[name] = (text == level).astype(float).mask(missing)
        labels[name] = f"{column} = {level}"
    notes.append(
        f"{where}: {role} {column!r} is categorical with {len(names)} levels; dummy-coded "
        f"({', '.join(out)}) against the most frequent level {reference!r}."
    )
    return out, labels


# ---------------------------------------------------------------------------- sessions
# The checks below are shared by the two adapters of validation: validate_sessions (pandas)
# and theralens.data.scan (DuckDB SQL). Each takes the summary it needs (a count, the
# offending rows), so the decision and its message exist once.

#: Seconds in a week: dates become weeks since each patient's first assessment.
WEEK_SECONDS = 7 * 86400.0


def column_roles(config: StudyConfig) -> list[tuple[str, str, str]]:
    """(column, role, config key) of every column the configuration uses, in checking order."""
    cols = config.columns
    roles: list[tuple[str, str, str]] = [
        (cols.therapist, "therapist id", "therapist"),
        (cols.patient, "patient id", "patient"),
        (cols.time, "time", "time"),
        (cols.outcome, "outcome", "outcome"),
    ]
    roles += [(p, "process", "process") for p in cols.process]
    roles += [(c, "covariate", "covariates") for c in cols.covariates]
    if cols.service:
        roles.append((cols.service, "service id", "service"))
    return roles


def check_columns_present(available: list[str], config: StudyConfig, where: str) -> None:
    """Every configured column is in the table (else the closest name)."""
    for column, role, key in column_roles(config):
        if column not in available:
            raise InputError(
                f'{where}: no column "{column}" for the {role} ({_suggest(column, available)}); '
                f"rename the column or set [columns] {key} in the config"
            )


def check_not_empty(rows_read: int, where: str) -> None:
    """Some row has a value in the columns used."""
    if rows_read == 0:
        raise InputError(f"{where}: every row is empty in the columns used; export the data again")


def check_filled(filled: dict[str, int], labels: dict[str, str], where: str) -> None:
    """Outcome, processes and covariates each have a value somewhere (``filled``: name -> values)."""
    for name, count in filled.items():
        if count == 0:
            raise InputError(
                f"{where}: column {labels[name]!r} has no values (every cell is empty); "
                "check that the config names the right column"
            )


def check_covariates_vary(levels: dict[str, int], labels: dict[str, str], where: str) -> None:
    """A covariate takes two values or more (``levels``: name -> distinct values)."""
    for name, count in levels.items():
        if count < 2:
            raise InputError(
                f"{where}: covariate column {labels[name]!r} has the same value in every row; "
                "it cannot adjust for anything, remove it from [columns] covariates"
            )


def check_time_filled(n_values: int, where: str, time_col: str) -> None:
    """The time column has values (``n_values``: numbers, or dates)."""
    if n_values == 0:
        raise InputError(
            f"{where}: column {time_col!r} (time) has no values; fill in the session number or date of every assessment"
        )


def exclusion_reasons(config: StudyConfig) -> dict[str, str]:
    """Reasons of the rows validation drops, in the order it drops them."""
    cols = config.columns
    out = {
        "therapist": f"no therapist id (column {cols.therapist!r})",
        "patient": f"no patient id (column {cols.patient!r})",
    }
    if cols.service:
        out["service"] = f"no service id (column {cols.service!r})"
    out["time"] = f"no time (column {cols.time!r})"
    out["nothing"] = "neither an outcome nor a process value"
    return out


def check_rows_left(n_rows: int, where: str) -> None:
    """Rows are left after the exclusions."""
    if n_rows == 0:
        raise InputError(f"{where}: no row has ids, a time and a value; check the columns")


def dates_note(where: str) -> str:
    """The note saying how dates became times."""
    return f"{where}: time is given as dates; used as weeks since each patient's first assessment."


def check_therapist_count(n_therapists: int, where: str, therapist_col: str) -> None:
    """At least three therapists."""
    if n_therapists < 3:
        raise InputError(
            f"{where}: only {n_therapists} therapist(s) in column {therapist_col!r}; "
            "therapist-level effects need at least 3 therapists (better 30 or more)"
        )


def check_outcome_varies(n_distinct: int, where: str, outcome_col: str) -> None:
    """The outcome takes two values or more."""
    if n_distinct < 2:
        raise InputError(
            f"{where}: the outcome column {outcome_col!r} has the same value in every row; "
            "check that the config names the right column"
        )


def check_repeated_outcome(n_patients_repeated: int, where: str, config: StudyConfig) -> None:
    """Some patient has two outcome assessments or more."""
    if n_patients_repeated > 0:
        return
    if config.design.level == "session":
        fix = (
            "the session-level (lagged) design needs at least two outcome assessments per "
            "patient: check that the column holds the repeated outcome, or add the "
            "repeated assessments"
        )
    else:
        fix = "a change needs a baseline and a later outcome assessment for each patient"
    raise InputError(
        f"{where}: every patient has at most one outcome assessment in column {config.columns.outcome!r}; {fix}"
    )


def value_names(config: StudyConfig) -> tuple[dict[str, str], list[str]]:
    """({formula-safe name: user's column} for outcome and processes, process names)."""
    taken = set(RESERVED_NAMES)
    labels: dict[str, str] = {"outcome": config.columns.outcome}
    processes: list[str] = []
    for p in config.columns.process:
        name = safe_name(p, taken)
        taken.add(name)
        labels[name] = p
        processes.append(name)
    return labels, processes


def validate_sessions(
    df: pd.DataFrame, config: StudyConfig | None = None, *, source: str = "sessions data"
) -> ValidatedData:
    """Check the sessions table and return it in canonical form (module docstring).

    ``source`` names the data in messages (the file path). Raises InputError for every
    problem the user must fix; drops and counts rows that cannot be used.
    """
    config = config or StudyConfig()
    cols = config.columns
    where = str(source)
    notes: list[str] = list(df.attrs.get("notes", []))
    applied = set(df.attrs.get("labels_applied", []))
    first_row = int(df.attrs.get("first_data_row", 2))
    available = [str(c) for c in df.columns]

    check_columns_present(available, config, where)
    rows = np.arange(len(df)) + first_row
    used = [c for c, _, _ in column_roles(config)]
    frame = df.loc[:, used].copy()
    frame.index = pd.RangeIndex(len(frame))
    for column in dict.fromkeys([cols.outcome, *cols.process]):
        if column in applied and _codes_back(frame, column, df.attrs, where, notes):
            applied.discard(column)

    # blank lines (all used cells empty) are not data
    blank = np.ones(len(frame), dtype=bool)
    for c in used:
        col = frame[c]
        numeric = pd.api.types.is_numeric_dtype(col) or pd.api.types.is_datetime64_any_dtype(col)
        blank &= col.isna().to_numpy() if numeric else _as_text(col).isna().to_numpy()
    rows_read = int((~blank).sum())
    frame, rows = frame.loc[~blank].reset_index(drop=True), rows[~blank]
    check_not_empty(len(frame), where)

    columns: dict[str, Any] = {"row": rows}  # the canonical columns, made into one frame below
    columns["therapist"] = normalize_ids(frame[cols.therapist]).to_numpy()
    columns["patient"] = normalize_ids(frame[cols.patient]).to_numpy()
    if cols.service:
        columns["service"] = normalize_ids(frame[cols.service]).to_numpy()

    time, dates = parse_time(frame[cols.time], cols.time, rows, where)
    columns["time"] = time.to_numpy()
    if dates is not None:
        columns["date"] = dates.to_numpy()
    time_kind = "date" if dates is not None else "number"

    columns["outcome"] = to_numeric(
        frame[cols.outcome], cols.outcome, "outcome", rows, where, notes, cols.outcome in applied
    ).to_numpy()
    labels, processes = value_names(config)
    taken = set(RESERVED_NAMES) | set(processes)
    for name in processes:
        p = labels[name]
        columns[name] = to_numeric(frame[p], p, "process", rows, where, notes, p in applied).to_numpy()
    covariates: list[str] = []
    for c in cols.covariates:
        coded, lab = code_column(frame[c], c, "covariate", rows, where, taken, notes, c in applied)
        for name, values in coded.items():
            columns[name] = values.to_numpy()
            covariates.append(name)
        labels.update(lab)

    out = pd.DataFrame(columns)

    check_filled({name: int(out[name].notna().sum()) for name in ["outcome", *processes, *covariates]}, labels, where)
    check_covariates_vary({name: int(out[name].nunique(dropna=True)) for name in covariates}, labels, where)
    if dates is None:
        check_time_filled(int(out["time"].notna().sum()), where, cols.time)

    exclusions: list[Exclusion] = []

    def drop(mask: np.ndarray, reason: str) -> None:
        nonlocal out
        if not mask.any():
            return
        # patients by code (-1: no id), not as Python sets of the (Arrow) id strings
        codes = pd.factorize(out["patient"])[0]
        has_id = codes >= 0
        touched = len(np.unique(codes[mask & has_id]))  # patients with a dropped row
        rows_left = np.bincount(codes[has_id & ~mask], minlength=codes.max() + 1)
        removed = int((rows_left[np.unique(codes[mask & has_id])] == 0).sum())  # ... and no row left
        examples = tuple(int(r) for r in out.loc[mask, "row"].to_numpy()[:5])
        out = out.loc[~mask].reset_index(drop=True)
        exclusions.append(Exclusion(reason, int(mask.sum()), int(touched), removed, examples))

    reasons = exclusion_reasons(config)
    drop(out["therapist"].isna().to_numpy(), reasons["therapist"])
    drop(out["patient"].isna().to_numpy(), reasons["patient"])
    if cols.service:
        drop(out["service"].isna().to_numpy(), reasons["service"])
    no_time = out["time"].isna() if dates is None else out["date"].isna()
    drop(no_time.to_numpy(), reasons["time"])
    nothing = out[["outcome", *processes]].isna().all(axis=1).to_numpy()
    drop(nothing, reasons["nothing"])
    check_rows_left(len(out), where)

    check_one_therapist(out, where, cols.patient)
    if cols.service:
        check_one_service(out, where, cols.therapist, cols.service)
    if dates is not None:
        first = out.groupby("patient")["date"].transform("min")
        out["time"] = (out["date"] - first).dt.total_seconds() / WEEK_SECONDS
        notes.append(dates_note(where))
    check_duplicates(out, where, cols.time, dates is not None)

    check_therapist_count(int(out["therapist"].nunique()), where, cols.therapist)
    check_outcome_varies(int(out["outcome"].nunique(dropna=True)), where, cols.outcome)
    for name in processes:
        check_within_variance(out, name, labels[name], where)

    n_outcome = out.groupby("patient")["outcome"].count()
    check_repeated_outcome(int((n_outcome >= 2).sum()), where, config)

    out = out.sort_values(["therapist", "patient", "time"], kind="stable").reset_index(drop=True)
    counts = {
        "rows_read": rows_read,
        "rows_empty": int(blank.sum()),
        "rows_excluded": int(sum(e.rows for e in exclusions)),
        "rows_used": len(out),
        "therapists": int(out["therapist"].nunique()),
        "patients": int(out["patient"].nunique()),
        "outcome_assessments": int(out["outcome"].notna().sum()),
        "patients_with_one_outcome": int((n_outcome < 2).sum()),
    }
    for name in processes:
        counts[f"{name}_ratings"] = int(out[name].notna().sum())
    return ValidatedData(
        sessions=out,
        processes=tuple(processes),
        covariates=tuple(covariates),
        labels=labels,
        exclusions=exclusions,
        counts=counts,
        notes=notes,
        time_kind=time_kind,
        source=where,
        config=config,
    )


def check_one_therapist(out: pd.DataFrame, where: str, patient_col: str) -> None:
    pcode, patients = pd.factorize(out["patient"].to_numpy())
    tcode, _ = pd.factorize(out["therapist"].to_numpy())
    pairs = np.unique(pcode.astype(np.int64) * (int(tcode.max()) + 1) + tcode)
    per = np.bincount(pairs // (int(tcode.max()) + 1), minlength=len(patients))
    moved = np.flatnonzero(per > 1)
    if len(moved) == 0:
        return
    pid = patients[moved[0]]
    sub = out[out["patient"] == pid]
    parts = []
    for tid, grp in sub.groupby("therapist", sort=False):
        parts.append(f"{tid} ({_rows_text(grp['row'].to_numpy(), 2)})")
    others = f" ({len(moved) - 1} more patients too)" if len(moved) > 1 else ""
    raise InputError(
        f"{where}: patient {pid} appears under therapists {' and '.join(parts)}{others}; "
        "each patient must have one therapist: fix the rows, or if patient ids restart for each "
        f"therapist make column {patient_col!r} unique (e.g. therapist id + patient id)"
    )


def check_one_service(out: pd.DataFrame, where: str, therapist_col: str, service_col: str) -> None:
    """Therapists are nested in services: a therapist under two services is an error naming the
    therapist, the services and rows of each (``out``: columns row, therapist, service)."""
    per = out.groupby("therapist", sort=True)["service"].nunique()
    moved = per.index[per > 1]
    if len(moved) == 0:
        return
    tid = moved[0]
    sub = out[out["therapist"] == tid]
    parts = [f"{sid} ({_rows_text(grp['row'].to_numpy(), 2)})" for sid, grp in sub.groupby("service", sort=True)]
    others = f" ({len(moved) - 1} more therapists too)" if len(moved) > 1 else ""
    raise InputError(
        f"{where}: therapist {tid} appears under services {' and '.join(parts)}{others}; therapists must be "
        f"nested in services (one service each): fix the rows, or if therapist ids restart for each service "
        f"make column {therapist_col!r} unique (e.g. service id + therapist id), or leave [columns] service "
        f"({service_col!r}) out"
    )


def check_duplicates(out: pd.DataFrame, where: str, time_col: str, dates: bool) -> None:
    key = ["patient", "date"] if dates else ["patient", "time"]
    dup = out.duplicated(key, keep=False)
    if not dup.any():
        return
    first = out.loc[dup].iloc[0]
    same = out.loc[dup & (out["patient"] == first["patient"]) & (out[key[1]] == first[key[1]])]
    when = first["date"].date().isoformat() if dates else f"{first['time']:g}"
    n_pairs = out.loc[dup].drop_duplicates(key).shape[0]
    more = f" ({n_pairs - 1} more duplicated assessments)" if n_pairs > 1 else ""
    raise InputError(
        f"{where}: patient {first['patient']} has {len(same)} rows for {time_col} {when} "
        f"({_rows_text(same['row'].to_numpy())}){more}; keep one row per patient and assessment"
    )


def check_within_variance(out: pd.DataFrame, name: str, label: str, where: str) -> None:
    x = out[name].to_numpy(float)
    ok = ~np.isnan(x)
    x = x[ok]
    if len(x) == 0 or x.min() == x.max():
        raise InputError(
            f"{where}: process column {label!r} has the same value in every row; "
            "a process without variance cannot predict the outcome; "
            "remove it from [columns] process"
        )
    codes, therapists = pd.factorize(out["therapist"].to_numpy()[ok])
    n = len(therapists)
    lo = np.full(n, np.inf)
    hi = np.full(n, -np.inf)
    np.minimum.at(lo, codes, x)
    np.maximum.at(hi, codes, x)
    if float((hi - lo).max()) <= 1e-12 * max(float(np.abs(x).max()), 1.0):
        raise InputError(
            f"{where}: process column {label!r} does not vary within therapists (each therapist "
            "has one value); it is a therapist characteristic: put it in the therapist table "
            "as a moderator"
        )


# -------------------------------------------------------------------------- therapists


def validate_therapists(
    tdf: pd.DataFrame,
    sessions: ValidatedData | pd.DataFrame,
    config: StudyConfig | None = None,
    *,
    source: str = "therapist data",
) -> pd.DataFrame:
    """Check the therapist table and return the moderators W_j of the therapists in the data.

    Returns one row per therapist of ``sessions`` (sorted by id): column ``therapist`` and
    one numeric column per moderator (categorical text dummy-coded, see module docstring).
    The moderators are the columns of ``[therapist_moderators] columns``; when none are
    configured, every column of the table other than the therapist id (a user who passes a
    therapist table means its columns), checked and coded alike. The table itself (ids,
    duplicates, therapists not in the data) is checked either way. A therapist in the data
    but not in the table gets missing moderators (not an error: the aims leave them out of
    the moderator models and count them). Recorded in ``attrs``: ``moderators`` ({user
    column: [coded columns]}), ``labels`` ({coded column: description}),
    ``moderators_from`` ("config" or "table"), ``missing_therapists`` (ids not in the
    table), ``notes``, ``source``.
    """
    config = config or StudyConfig()
    where = str(source)
    id_col = config.columns.therapist
    notes: list[str] = list(tdf.attrs.get("notes", []))
    applied = set(tdf.attrs.get("labels_applied", []))
    first_row = int(tdf.attrs.get("first_data_row", 2))
    available = [str(c) for c in tdf.columns]
    data = sessions.sessions if isinstance(sessions, ValidatedData) else sessions
    data_ids = sorted(set(normalize_ids(data["therapist"]).dropna()))

    if id_col not in tdf.columns:
        raise InputError(
            f'{where}: no therapist id column "{id_col}" ({_suggest(id_col, available)}); '
            "the therapist table must use the same id column name as the sessions table "
            "([columns] therapist)"
        )
    wanted = list(config.therapist_moderators.columns)
    from_table = not wanted
    if from_table:
        training = {config.training.date, config.training.target}  # read by theralens training, not moderators
        wanted = [c for c in available if c != id_col and c not in training]
    for column in wanted:
        if column not in tdf.columns:
            raise InputError(
                f'{where}: no moderator column "{column}" ({_suggest(column, available)}); '
                "rename the column or fix [therapist_moderators] columns in the config"
            )
    rows = np.arange(len(tdf)) + first_row
    frame = tdf.loc[:, [id_col, *wanted]].copy()
    frame.index = pd.RangeIndex(len(frame))
    ids = normalize_ids(frame[id_col])
    blank = np.ones(len(tdf), dtype=bool)
    for c in tdf.columns:
        blank &= _as_text(tdf[c]).isna().to_numpy()
    frame, rows, ids = frame.loc[~blank], rows[~blank], ids[~blank]
    if ids.isna().any():
        raise InputError(
            f"{where}: {_rows_text(rows[ids.isna().to_numpy()])} have no therapist id in column "
            f"{id_col!r}; fill in the id or delete the row"
        )
    dup = ids.duplicated(keep=False).to_numpy()
    if dup.any():
        tid = ids[dup].iloc[0]
        same = rows[(ids == tid).to_numpy()]
        raise InputError(
            f"{where}: therapist {tid} is listed {len(same)} times ({_rows_text(same)}); keep one row per therapist"
        )
    unknown = sorted(set(ids) - set(data_ids))
    if unknown:
        sample = ", ".join(unknown[:3])
        if len(unknown) > 3:
            sample += f" and {len(unknown) - 3} more"
        example = f" (the data use ids like {data_ids[0]})" if data_ids else ""
        raise InputError(
            f"{where}: therapist(s) {sample} are not in the sessions data{example}; "
            "write ids the same way in both files, or remove therapists without patients"
        )

    taken = set(RESERVED_NAMES) | {str(c) for c in data.columns}
    moderators: dict[str, list[str]] = {}
    labels: dict[str, str] = {}
    coded_frame = pd.DataFrame({"therapist": ids.to_numpy()})
    frame = frame.reset_index(drop=True)
    for column in wanted:
        try:
            coded, lab = code_column(frame[column], column, "moderator", rows, where, taken, notes, column in applied)
            for name, values in coded.items():
                values = values.reset_index(drop=True)
                if values.isna().all():
                    remove = "delete the column" if from_table else "remove it from [therapist_moderators] columns"
                    raise InputError(f"{where}: moderator column {column!r} has no values; fill it in or {remove}")
                if values.nunique(dropna=True) < 2:
                    raise InputError(
                        f"{where}: moderator column {column!r} has the same value for every "
                        "therapist; it cannot explain differences between therapists, remove it"
                    )
                coded_frame[name] = values.to_numpy()
        except InputError as exc:
            if not from_table:
                raise
            raise InputError(
                f"{exc} (no [therapist_moderators] columns are configured, so every column of the therapist "
                "table is a moderator: delete this column from the table or list the moderators in the config)"
            ) from None
        moderators[column] = list(coded)
        labels.update(lab)
        n_missing = int(frame[column].isna().sum())
        if n_missing:
            notes.append(
                f"{where}: moderator {column!r} is missing for {n_missing} therapist(s); they are "
                "left out of the models with this moderator."
            )

    missing = sorted(set(data_ids) - set(ids))
    result = pd.DataFrame({"therapist": data_ids}).merge(coded_frame, on="therapist", how="left")
    if missing:
        notes.append(
            f"{where}: {len(missing)} therapist(s) of the sessions data are not in the therapist "
            f"table ({', '.join(missing[:5])}{', ...' if len(missing) > 5 else ''}); their "
            "moderators are missing."
        )
    result.attrs.update(
        moderators=moderators,
        moderators_from="table" if from_table else "config",
        labels=labels,
        missing_therapists=missing,
        notes=notes,
        source=where,
    )
    return result
