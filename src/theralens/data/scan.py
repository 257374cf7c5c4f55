"""Data larger than memory: the sessions as a DuckDB relation, checked and decomposed in SQL.

The second adapter of validation and decomposition (the first is pandas:
:func:`theralens.data.validate.validate_sessions`, :func:`theralens.data.decompose.patient_level`).
The input (a CSV or Parquet file, a folder of them, or a glob such as ``visits/*.parquet``)
is scanned by DuckDB under a memory limit (``SET memory_limit``), spilling to a temporary
folder in the system temp directory (never next to the input files; removed on
:meth:`ScannedSessions.close`). No pandas frame of the sessions is built: what leaves DuckDB
is one row per patient (the patient aggregates, :func:`patient_aggregates`) or, on the
error path only, the offending rows.

Checks. Every check of ``validate_sessions`` runs as SQL; the decision and the message are
the shared functions of validate.py, called on what SQL found: a count, or the offending
rows (their values and row numbers, a *witness*), so every message is the same text as on
the pandas path. Row numbers mean the same: a Parquet file counts cases from 1
(``file_row_number`` + 1), a CSV file counts its header as row 1 (DuckDB skips blank lines in
a CSV, so after a blank line in the middle of a file a row number is one lower than the
line). With several files a row message names the file that holds the rows.

Decomposition. :func:`patient_aggregates` computes the per-patient aggregates of
:func:`theralens.data.decompose.patient_table` with GROUP BY (baseline and final outcome by
time, process means over all or the first k ratings, counts, covariates at the first
assessment, the OLS slope of outcome on time); :func:`lagged_pairs` pairs consecutive
outcome assessments with ``LEAD`` over each patient by time (session design), and
:func:`lagged_table` computes the session design's rows and three components in DuckDB,
where they stay (table ``lagged``; the SessionTable's ``table`` has its columns and no rows,
``relation`` names it): only per-patient numbers (outcome assessments, patient means for
the reliability) and per-exclusion-step counts leave DuckDB, and
:func:`theralens.data.decompose.session_summary` (shared with the pandas path) computes the
reliability, warnings and counts. :func:`decompose_scan` returns the design's table; the
study reduces it to the engine's :class:`~theralens.model.stats.SufficientStats` by GROUP BY (SUM(a*b),
:mod:`theralens.study.sql_stats`) and fits its models from those (:mod:`theralens.study.rows`).

Which implementation is the one. The checks are one: validate.py decides and words every
message, on what pandas or SQL found. The decomposition and the statistics are the two data
adapters layout.md names (pandas and numpy for rows in memory, SQL for rows that stay in
DuckDB): the definitions (models.md's components, engine.md's C_p = W_p'W_p) are computed
by each adapter on its own rows, because a pandas computation cannot run on data larger than
memory and SQL is slower than numpy on the small frames of power simulations; the
tests (tests/data/test_scan.py) hold the two equal. Everything computed from per-patient or
per-therapist numbers (reliability, warnings, counts, exclusion records, the residual and
sample summaries) has one implementation shared by both.

Engine choice. :func:`choose_engine` picks DuckDB when asked, or (``auto``) when the input is
larger than the memory budget (:func:`default_memory_limit`, a quarter of the RAM) or is a
folder or glob; Excel, SPSS and Stata files are always read whole by pandas.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from theralens.data.config import StudyConfig
from theralens.data.decompose import (
    PatientTable,
    SessionTable,
    few_outcomes_exclusion,
    patient_table,
    session_summary,
)
from theralens.data.read import (
    TEXT_EXTENSIONS,
    check_file,
    check_shape,
    check_text_head,
    encoding_note,
    parquet_error,
    sniff_delimiter,
    text_table_error,
)
from theralens.data.validate import (
    MISSING_TOKENS,
    RESERVED_NAMES,
    WEEK_SECONDS,
    Exclusion,
    ValidatedData,
    check_columns_present,
    check_covariates_vary,
    check_duplicates,
    check_filled,
    check_not_empty,
    check_one_service,
    check_one_therapist,
    check_outcome_varies,
    check_repeated_outcome,
    check_rows_left,
    check_therapist_count,
    check_time_filled,
    check_within_variance,
    code_column,
    column_roles,
    dates_note,
    exclusion_reasons,
    parse_dates,
    parse_time,
    safe_name,
    to_numeric,
    value_names,
)
from theralens.errors import InputError

__all__ = [
    "ENGINES",
    "PARQUET_EXTENSIONS",
    "ScannedSessions",
    "choose_engine",
    "decompose_scan",
    "default_memory_limit",
    "input_bytes",
    "lagged_pairs",
    "parse_memory",
    "patient_aggregates",
    "quote_identifier",
    "scan_files",
    "scan_sessions",
    "scannable",
]

PARQUET_EXTENSIONS = (".parquet", ".pq")
#: Share of the machine's memory DuckDB may use when no ``--memory-limit`` is given.
DEFAULT_MEMORY_SHARE = 0.25
_GLOB = re.compile(r"[*?\[]")
_UNITS = {"b": 1, "kb": 1e3, "mb": 1e6, "gb": 1e9, "tb": 1e12, "kib": 2**10, "mib": 2**20, "gib": 2**30,
          "tib": 2**40}


# ----------------------------------------------------------------------------- inputs and memory


def parse_memory(text: str | int | float) -> int:
    """Bytes of a memory size such as ``8GB``, ``500MB`` or ``2GiB`` (a number is bytes)."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        return int(text)
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", str(text))
    unit = (m.group(2).lower() or "b") if m else ""
    if not m or unit not in _UNITS:
        raise InputError(f"--memory-limit {text!r} is not a memory size; write it like 8GB, 500MB or 2GiB")
    return int(float(m.group(1)) * _UNITS[unit])


def default_memory_limit() -> int:
    """A quarter of the machine's physical memory, in bytes."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # pragma: no cover - not POSIX
        total = 8 * 10**9
    return int(total * DEFAULT_MEMORY_SHARE)


def _files(path: str | Path) -> list[Path]:
    """The data files of a path: itself, the CSV/Parquet files of a folder (recursively), or a glob's matches."""
    text = str(path)
    p = Path(text)
    if not p.exists() and _GLOB.search(text):
        return [Path(f) for f in sorted(glob.glob(text, recursive=True)) if Path(f).is_file()]
    if p.is_dir():
        wanted = PARQUET_EXTENSIONS + TEXT_EXTENSIONS
        return sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in wanted)
    return [p]


def scannable(path: str | Path) -> bool:
    """True when DuckDB can scan the input: CSV/TSV/TXT or Parquet files, a folder or glob of them."""
    files = _files(path)
    if not files:
        return Path(str(path)).is_dir() or bool(_GLOB.search(str(path)))
    return all(f.suffix.lower() in PARQUET_EXTENSIONS + TEXT_EXTENSIONS for f in files)


def input_bytes(path: str | Path) -> int:
    """Size of the input's data in memory, roughly: for a Parquet file its rows x columns x 8 bytes
    (from its footer; its size on disk is compressed), for a text file its size on disk (0 for
    files that do not exist)."""
    total = 0
    for f in _files(path):
        if not f.is_file():
            continue
        size = f.stat().st_size
        if f.suffix.lower() in PARQUET_EXTENSIONS:
            try:
                import pyarrow.parquet as pq

                meta = pq.ParquetFile(f).metadata
                size = max(size, 8 * meta.num_rows * meta.num_columns)
            except Exception:  # a damaged file: the scan reports it
                pass
        total += size
    return int(total)


# ----------------------------------------------------------------------------- SQL text


def quote_identifier(name: str) -> str:
    """``name`` as a quoted SQL identifier (double quotes doubled): how every query here names a column."""
    return '"' + str(name).replace('"', '""') + '"'


_q = quote_identifier


def _lit(value: str) -> str:
    return "'" + str(value).replace("'", "''") + "'"


_NUMERIC_TYPES = ("TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT", "UTINYINT", "USMALLINT", "UINTEGER",
                  "UBIGINT", "UHUGEINT", "FLOAT", "DOUBLE", "REAL", "DECIMAL")
_TOKENS = ", ".join(_lit(t) for t in sorted(MISSING_TOKENS))
_WS = _lit(" \t\r\n")


def _kind(duck_type: str) -> str:
    t = duck_type.upper()
    if t.startswith(_NUMERIC_TYPES):
        return "num"
    if t == "BOOLEAN":
        return "bool"
    if t.startswith(("DATE", "TIMESTAMP")):
        return "date"
    return "text"


@dataclass
class _Column:
    """One user column: its DuckDB kind and SQL expressions for the values pandas would see."""

    name: str
    kind: str  # num | bool | date | text
    raw: str  # SQL of the column in the raw relation

    @property
    def txt(self) -> str:
        """Text view: trimmed, common missing-value tokens as NULL (validate._as_text)."""
        t = f"trim(CAST({self.raw} AS VARCHAR), {_WS})"
        return f"(CASE WHEN lower({t}) IN ({_TOKENS}) THEN NULL ELSE {t} END)"

    @property
    def num(self) -> str:
        """Numbers: NaN as NULL (pandas reads NaN as missing); text cast where it is a number."""
        base = f"TRY_CAST({self.txt} AS DOUBLE)" if self.kind == "text" else f"CAST({self.raw} AS DOUBLE)"
        return f"(CASE WHEN isnan({base}) THEN NULL ELSE {base} END)"

    @property
    def missing(self) -> str:
        """SQL true where pandas would see a missing cell."""
        value = {"text": self.txt, "date": self.raw}.get(self.kind, self.num)
        return f"({value} IS NULL)"


# ----------------------------------------------------------------------------- the scan


@dataclass
class ScannedSessions:
    """Validated sessions held by DuckDB (table ``sessions``), with what validation found.

    Fields: ``con`` (the DuckDB connection); ``data`` (:class:`ValidatedData` with the
    processes, covariates, labels, exclusions, counts, notes and time kind; its ``sessions``
    frame has the canonical columns and no rows: the rows stay in DuckDB); ``files`` (the
    data files scanned); ``memory_limit`` (bytes); ``temp_dir`` (DuckDB's database and spill
    folder, removed by :meth:`close`). Table ``sessions`` has the canonical columns of
    validation: ``file``, ``row``, ``therapist``, ``patient``, ``time``, (``date``),
    ``outcome``, processes and covariates under their formula-safe names.
    """

    con: Any
    data: ValidatedData
    files: list[Path]
    memory_limit: int
    temp_dir: Path
    therapists: list[str] = field(default_factory=list)

    def close(self) -> None:
        """Close the connection and remove the temporary folder."""
        try:
            self.con.close()
        finally:
            shutil.rmtree(self.temp_dir, ignore_errors=True)

    def __enter__(self) -> ScannedSessions:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def therapist_frame(self) -> pd.DataFrame:
        """One row per therapist with the canonical column names (what
        :func:`theralens.data.validate.validate_therapists` needs of the sessions)."""
        frame = pd.DataFrame({c: pd.Series(dtype=float) for c in self.data.sessions.columns})
        return pd.concat([frame, pd.DataFrame({"therapist": self.therapists})], ignore_index=True)


def _connect(memory_limit: int, temp_root: str | Path | None) -> tuple[Any, Path]:
    import duckdb

    temp_dir = Path(tempfile.mkdtemp(prefix="theralens-duckdb-", dir=temp_root))
    con = duckdb.connect(str(temp_dir / "scan.duckdb"))
    con.execute(f"SET memory_limit = '{int(memory_limit)}B'")
    con.execute(f"SET temp_directory = {_lit(str(temp_dir / 'spill'))}")
    con.execute("SET preserve_insertion_order = true")
    return con, temp_dir


def scan_files(
    path: str | Path,
    config: StudyConfig | None = None,
    *,
    memory_limit: int | str | None = None,
    temp_root: str | Path | None = None,
    source: str | None = None,
) -> ScannedSessions:
    """Scan and validate a sessions input (CSV or Parquet file, folder or glob) with DuckDB.

    Raises the same one-line :class:`~theralens.errors.InputError` as
    ``read_table`` + ``validate_sessions`` for the same data. ``memory_limit``: bytes or a
    size like ``"8GB"`` (default: :func:`default_memory_limit`); ``temp_root``: where the
    temporary folder goes (default: the system temp directory).
    """
    config = config or StudyConfig()
    where = str(source if source is not None else path)
    files = _files(path)
    if not files:
        check_file(Path(str(path)))  # the folder or glob message of read_table
        raise InputError(f"sessions {path} matches no CSV or Parquet file; check the path or the pattern")
    kinds = set()
    for f in files:
        ext, head = check_file(f)
        if ext in TEXT_EXTENSIONS:
            check_text_head(head, f"sessions file {f}")
            kinds.add("text")
        elif ext in PARQUET_EXTENSIONS:
            kinds.add("parquet")
        else:
            raise InputError(f"sessions file {f} is not CSV or Parquet, which DuckDB scans; convert it, or use "
                             "--engine pandas")
    if len(kinds) > 1:
        raise InputError(f"sessions {path} mixes CSV and Parquet files; convert them to one format")
    limit = parse_memory(memory_limit) if memory_limit is not None else default_memory_limit()
    con, temp_dir = _connect(limit, temp_root)
    try:
        scanned = _scan(con, files, kinds.pop(), config, where, len(files) > 1)
    except BaseException:
        con.close()
        shutil.rmtree(temp_dir, ignore_errors=True)
        raise
    return ScannedSessions(con=con, data=scanned[0], files=files, memory_limit=limit, temp_dir=temp_dir,
                           therapists=scanned[1])


scan_sessions = scan_files


def _raw_relation(con: Any, files: list[Path], kind: str, where: str, notes: list[str]) -> int:
    """Create view ``raw``: the user's columns plus ``__file`` and ``__row`` (the row number the user
    sees); returns the number of blank lines inside CSV files (rows to pandas, skipped by DuckDB)."""
    import duckdb

    names = "[" + ", ".join(_lit(str(f)) for f in files) + "]"
    label = f"sessions file {files[0]}" if len(files) == 1 else f"sessions {where}"
    if kind == "parquet":
        try:
            con.execute(f"CREATE VIEW raw AS SELECT * EXCLUDE (filename, file_row_number), filename AS __file, "
                        f"file_row_number + 1 AS __row FROM read_parquet({names}, filename = true, "
                        "file_row_number = true, union_by_name = true)")
            n_cols = len(con.execute("DESCRIBE raw").fetchall()) - 2
            n_rows = con.execute("SELECT count(*) FROM raw").fetchone()[0]
        except duckdb.Error as exc:
            raise parquet_error(label, exc) from exc
        check_shape(n_cols, n_rows, label)
        return 0
    with files[0].open("rb") as fh:
        head = fh.read(65536).decode("utf-8", errors="replace")
    sep = sniff_delimiter(head, files[0].suffix.lower())
    read = ("CREATE TABLE raw0 AS SELECT * EXCLUDE (filename), filename AS __file FROM "
            f"read_csv({names}, delim = {_lit(sep)}, header = true, all_varchar = true, filename = true, "
            "union_by_name = true ENCODING)")
    try:
        con.execute(read.replace(" ENCODING", ""))
    except duckdb.Error as exc:
        legacy = len(files) == 1 and "not utf-8" in str(exc).lower()
        if not (legacy and _read_legacy(con, read, names, files[0], notes)):
            for f in files:
                err = text_table_error(f, f"sessions file {f}", sep)
                if err is not None:
                    raise err from exc
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise InputError(f"{label} cannot be read as a table by DuckDB ({first}); export it again as UTF-8 CSV, "
                             "or use --engine pandas") from exc
    n_cols = len(con.execute("DESCRIBE raw0").fetchall()) - 1
    n_rows = con.execute("SELECT count(*) FROM raw0").fetchone()[0]
    check_shape(n_cols, n_rows, label)
    # pandas counts a blank line in the middle of a file as an (empty) row, DuckDB skips it: record k
    # of a file is on line k + 2 + (blank lines before it); blank i (0-based) lies after c_i = line - 2 - i records
    per_file = dict(con.execute("SELECT __file, count(*) FROM raw0 GROUP BY __file").fetchall())
    blanks = []
    for f in files:
        lines = _blank_lines(f)
        c = lines - 2 - np.arange(len(lines))
        c = c[c < per_file.get(str(f), 0)]  # blank lines after the last record are not rows
        blanks += [(str(f), int(ci), i + 1) for i, ci in enumerate(c)]
    index = "SELECT *, rowid, rowid - min(rowid) OVER (PARTITION BY __file) AS __k FROM raw0"
    if not blanks:
        con.execute(f"CREATE VIEW raw AS SELECT * EXCLUDE (__k, rowid), __k + 2 AS __row FROM ({index})")
        return 0
    frame = pd.DataFrame(blanks, columns=["__bfile", "__bc", "__bn"]).groupby(["__bfile", "__bc"], as_index=False).max()
    con.register("blanks_df", frame)
    con.execute("CREATE TABLE blanks AS SELECT * FROM blanks_df")
    con.unregister("blanks_df")
    con.execute(f"""CREATE VIEW raw AS SELECT r.* EXCLUDE (__k, rowid), r.__k + 2 + coalesce(b.__bn, 0) AS __row
        FROM ({index}) r ASOF LEFT JOIN blanks b ON r.__file = b.__bfile AND r.__k >= b.__bc""")
    return len(blanks)


def _read_legacy(con: Any, read: str, names: str, path: Path, notes: list[str]) -> bool:
    """Read a text file that is not UTF-8 as :func:`theralens.data.read.read_table` decodes it
    (Windows-1252, else latin-1): transcoded to UTF-8 in chunks into the scan's temporary folder,
    rows unchanged. True if it worked."""
    import codecs

    import duckdb

    temp = Path(con.execute("SELECT current_setting('temp_directory')").fetchone()[0]).parent
    target = temp / f"utf8-{path.name}"
    for encoding in ("cp1252", "latin-1"):
        try:
            with path.open("rb") as src, target.open("w", encoding="utf-8", newline="") as dst:
                decoder = codecs.getincrementaldecoder(encoding)()
                while block := src.read(1 << 24):
                    dst.write(decoder.decode(block))
                dst.write(decoder.decode(b"", final=True))
        except UnicodeDecodeError:
            continue
        sql = read.replace(names, "[" + _lit(str(target)) + "]").replace(" ENCODING", "")
        try:
            con.execute(sql.replace("filename AS __file", f"{_lit(str(path))} AS __file"))
        except duckdb.Error:
            return False
        notes.append(encoding_note(path.name, encoding))
        return True
    return False


def _blank_lines(path: Path, chunk: int = 1 << 26) -> np.ndarray:
    """Line numbers (from 1) of the empty lines of a text file (LF or CRLF), by a byte scan in chunks."""
    found: list[int] = []
    base, carry, first = 0, b"", True
    with path.open("rb") as fh:
        while True:
            block = fh.read(chunk)
            data = carry + block
            if block:
                cut = data.rfind(b"\n")
                if cut < 0:
                    carry = data
                    continue
                work, carry = data[: cut + 1], data[cut + 1:]
            else:
                work, carry = data, b""
            text = work if first else b"\n" + work  # the newline that ended the previous chunk
            shift = 0 if first else 1
            starts = []
            for pattern in (b"\n\n", b"\n\r\n"):
                p = text.find(pattern)
                while p >= 0:
                    starts.append(p)
                    p = text.find(pattern, p + 1)
            count, at = 0, 0
            for p in sorted(starts):  # newlines up to and including p, counted incrementally
                count += text.count(b"\n", at, p + 1)
                at = p + 1
                found.append(base + count - shift + 1)
            base += work.count(b"\n")
            first = False
            if not block:
                break
    return np.asarray(found, dtype=np.int64)


def _scan(con: Any, files: list[Path], kind: str, config: StudyConfig, where: str, many: bool
          ) -> tuple[ValidatedData, list[str]]:
    """Every check of validate_sessions, in its order, as SQL (module docstring)."""
    cols = config.columns
    notes: list[str] = []
    blank_lines = _raw_relation(con, files, kind, where, notes)
    described = [(r[0], r[1]) for r in con.execute("DESCRIBE raw").fetchall() if r[0] not in ("__file", "__row",
                                                                                              "rowid")]
    by_name = {str(n).strip(): (n, t) for n, t in described}
    check_columns_present(list(by_name), config, where)

    def column(name: str) -> _Column:
        raw, t = by_name[name]
        return _Column(name, _kind(t), _q(raw))

    used = list(dict.fromkeys(c for c, _, _ in column_roles(config)))
    ucols = {c: column(c) for c in used}
    if kind == "text":  # pandas reads a CSV column whose every value is a number as numbers
        sel = ", ".join(f"count({u.txt}) = count(TRY_CAST({u.txt} AS DOUBLE)) AND count({u.txt}) > 0"
                        for u in ucols.values())
        flags = con.execute(f"SELECT {sel} FROM raw").fetchone()
        for u, numeric in zip(ucols.values(), flags, strict=True):
            if numeric:
                u.kind = "num"
                u.raw = f"TRY_CAST({u.txt} AS DOUBLE)"
    blank = " AND ".join(u.missing for u in ucols.values())
    con.execute(f"CREATE VIEW v AS SELECT * FROM raw WHERE NOT ({blank})")
    n_total = con.execute("SELECT count(*) FROM raw").fetchone()[0]
    rows_read = con.execute("SELECT count(*) FROM v").fetchone()[0]
    check_not_empty(rows_read, where)

    def witness(cond: str, exprs: dict[str, str]) -> tuple[str, pd.DataFrame]:
        """(where, rows): the rows meeting ``cond`` in the first file that has any, by row."""
        first = con.execute(f"SELECT __file FROM v WHERE {cond} ORDER BY __file, __row LIMIT 1").fetchone()
        if first is None:
            return where, pd.DataFrame(columns=["row", *exprs])
        sel = ", ".join(f"{e} AS {_q(k)}" for k, e in exprs.items())
        df = con.execute(f"SELECT __row AS row, {sel} FROM v WHERE ({cond}) AND __file = ? ORDER BY __row",
                         [first[0]]).df()
        return (first[0] if many else where), df

    # the value checks of every column in one pass: infinite numbers, text that is not a number
    def value_check(u: _Column) -> str:
        if u.kind == "num":
            return f"isinf({u.num})"
        cast = f"TRY_CAST({u.txt} AS DOUBLE)"
        return f"({u.txt} IS NOT NULL AND {cast} IS NULL) OR isinf({cast})"

    checks = [value_check(u) for u in ucols.values() if u.kind in ("num", "text")]
    found = dict(zip(checks, con.execute("SELECT " + ", ".join(f"count(*) FILTER (WHERE {c}) > 0" for c in checks)
                                         + " FROM v").fetchone(), strict=True)) if checks else {}

    def any_rows(cond: str) -> bool:
        if cond in found:
            return bool(found[cond])
        return con.execute(f"SELECT EXISTS (SELECT 1 FROM v WHERE {cond})").fetchone()[0]

    # ids (validate.normalize_ids)
    def id_expr(u: _Column) -> str:
        if u.kind in ("num", "bool"):
            v = u.num
            return (f"(CASE WHEN {v} - floor({v}) <= 1e-8 THEN CAST(CAST(trunc({v}) AS HUGEINT) AS VARCHAR) "
                    f"ELSE CAST({v} AS VARCHAR) END)")
        if u.kind == "date":
            return f"CAST({u.raw} AS VARCHAR)"
        return f"regexp_replace({u.txt}, '^(-?\\d+)\\.0+$', '\\1')"

    # time (validate.parse_time)
    tu = ucols[cols.time]
    time_sql, date_sql, join = "CAST(NULL AS DOUBLE)", None, ""
    if tu.kind == "bool":
        parse_time(pd.Series([True]), cols.time, np.array([0]), where)
    elif tu.kind == "num":
        if any_rows(f"isinf({tu.num})"):
            w, df = witness(f"isinf({tu.num})", {"x": tu.num})
            parse_time(df["x"].astype(float), cols.time, df["row"].to_numpy(), w)
        time_sql = tu.num
    elif tu.kind == "date":
        date_sql = f"CAST({tu.raw} AS TIMESTAMP)"
    else:
        values = [r[0] for r in con.execute(f"SELECT DISTINCT {tu.txt} FROM v WHERE {tu.txt} IS NOT NULL "
                                            "ORDER BY 1").fetchall()]
        if values:
            text = pd.Series(values, dtype=object)
            try:
                parsed = parse_dates(text, cols.time, np.zeros(len(values), dtype=int), where)
            except InputError as exc:
                w, df = witness(f"{tu.txt} IS NOT NULL AND TRY_CAST({tu.txt} AS DATE) IS NULL", {"x": tu.txt})
                parse_dates(df["x"].astype(object), cols.time, df["row"].to_numpy(), w)
                raise exc
            mapping = pd.DataFrame({"txt": values, "date": parsed.to_numpy()})
            con.register("time_map_df", mapping)
            con.execute("CREATE TABLE time_map AS SELECT txt AS __tm_txt, CAST(date AS TIMESTAMP) AS __tm_date "
                        "FROM time_map_df")
            con.unregister("time_map_df")
            date_sql = "__tm_date"
            join = f" LEFT JOIN time_map ON __tm_txt = {tu.txt}"

    # outcome and processes (validate.to_numeric)
    def numbers(u: _Column, role: str) -> str:
        if u.kind == "date":
            to_numeric(pd.Series([], dtype="datetime64[ns]"), u.name, role, np.array([], dtype=int), where, notes)
        if u.kind in ("num", "bool"):
            if u.kind == "num" and any_rows(f"isinf({u.num})"):
                w, df = witness(f"isinf({u.num})", {"x": u.num})
                to_numeric(df["x"].astype(float), u.name, role, df["row"].to_numpy(), w, notes)
            return u.num
        cast = f"TRY_CAST({u.txt} AS DOUBLE)"
        cond = value_check(u)
        if any_rows(cond):
            w, df = witness(cond, {"x": u.txt})
            n_notes = len(notes)
            to_numeric(df["x"].astype(object), u.name, role, df["row"].to_numpy(), w, notes)
            if len(notes) > n_notes:  # decimal comma: the whole column is read with it
                notes[n_notes:] = [n.replace(f"{w}:", f"{where}:", 1) for n in notes[n_notes:]]
                return f"TRY_CAST(replace({u.txt}, ',', '.') AS DOUBLE)"
        return f"(CASE WHEN isnan({cast}) THEN NULL ELSE {cast} END)"

    exprs: dict[str, str] = {
        "file": "__file",
        "row": "__row",
        "therapist": id_expr(ucols[cols.therapist]),
        "patient": id_expr(ucols[cols.patient]),
        **({"service": id_expr(ucols[cols.service])} if cols.service else {}),
        "time": time_sql,
    }
    if date_sql is not None:
        exprs["date"] = date_sql
    exprs["outcome"] = numbers(ucols[cols.outcome], "outcome")
    labels, processes = value_names(config)
    for name in processes:
        exprs[name] = numbers(ucols[labels[name]], "process")
    taken = set(RESERVED_NAMES) | set(processes)
    covariates: list[str] = []
    for c in cols.covariates:
        for name, sql in _covariate(con, ucols[c], where, taken, notes, labels, numbers, witness).items():
            exprs[name] = sql
            covariates.append(name)

    select = ", ".join(f"{e} AS {_q(k)}" for k, e in exprs.items())
    # one materialized table: the canonical columns and the exclusion step of every row (0: kept)
    reasons = exclusion_reasons(config)
    has_value = " OR ".join(f"{_q(n)} IS NOT NULL" for n in ["outcome", *processes])
    when = "date" if date_sql else "time"
    keys = list(reasons)  # therapist, patient, (service), time, nothing: step k + 1
    tests = {"therapist": "therapist IS NULL", "patient": "patient IS NULL", "service": "service IS NULL",
             "time": f"{when} IS NULL", "nothing": f"NOT ({has_value})"}
    case = " ".join(f"WHEN {tests[k]} THEN {i + 1}" for i, k in enumerate(keys))
    con.execute(f"""CREATE TABLE c0 AS SELECT *, CASE {case} ELSE 0 END AS __drop
        FROM (SELECT {select} FROM v{join})""")
    values = ["outcome", *processes, *covariates]
    counts_row = con.execute("SELECT " + ", ".join(f"count({_q(n)})" for n in values)
                             + "".join(f", CASE WHEN min({_q(n)}) < max({_q(n)}) THEN 2 ELSE count({_q(n)}) > 0 END"
                                       for n in covariates)
                             + ", count(time), count(" + ("date" if date_sql else "time") + ") FROM c0").fetchone()
    check_filled(dict(zip(values, counts_row[: len(values)], strict=True)), labels, where)
    check_covariates_vary(dict(zip(covariates, counts_row[len(values): len(values) + len(covariates)],
                                   strict=True)), labels, where)
    if date_sql is None:
        check_time_filled(int(counts_row[-2]), where, cols.time)

    # exclusions, in validate_sessions' order
    steps = con.execute("""SELECT __drop, count(*), count(DISTINCT patient) FROM c0 WHERE __drop > 0
        GROUP BY __drop""").fetchall()
    removed = dict(con.execute("""SELECT m, count(*) FROM (SELECT max(CASE WHEN __drop = 0 THEN 99 ELSE __drop END)
        AS m FROM c0 WHERE patient IS NOT NULL GROUP BY patient) GROUP BY m""").fetchall())
    exclusions: list[Exclusion] = []
    by_step = {s: (r, p) for s, r, p in steps}
    for step, key in enumerate(keys, start=1):
        if step not in by_step:
            continue
        examples = tuple(int(r[0]) for r in con.execute(
            f"SELECT row FROM c0 WHERE __drop = {step} ORDER BY file, row LIMIT 5").fetchall())
        rows, touched = by_step[step]
        exclusions.append(Exclusion(reasons[key], int(rows), int(touched), int(removed.get(step, 0)), examples))
    con.execute("CREATE VIEW kept AS SELECT * EXCLUDE (__drop) FROM c0 WHERE __drop = 0")
    n_used = con.execute("SELECT count(*) FROM kept").fetchone()[0]
    check_rows_left(n_used, where)

    # the per-patient checks in one GROUP BY: a second therapist, outcome assessments
    per = con.execute("""SELECT count(*), count(*) FILTER (WHERE moved), count(*) FILTER (WHERE n_out >= 2),
        count(*) FILTER (WHERE n_out < 2), count(DISTINCT therapist), sum(n_out)
        FROM (SELECT min(therapist) < max(therapist) AS moved, min(therapist) AS therapist, count(outcome) AS n_out
              FROM kept GROUP BY patient)""").fetchone()
    n_patients, n_moved, n_repeated, n_single, n_therapists, n_outcomes = (int(x or 0) for x in per)
    if n_moved:
        moved = "SELECT patient FROM kept GROUP BY patient HAVING min(therapist) < max(therapist)"
        df = con.execute(f"SELECT row, therapist, patient FROM kept WHERE patient IN ({moved}) "
                         "ORDER BY file, row").df()
        check_one_therapist(df, where, cols.patient)
    if cols.service:
        moved = "SELECT therapist FROM kept GROUP BY therapist HAVING min(service) < max(service)"
        if con.execute(f"SELECT EXISTS ({moved})").fetchone()[0]:
            df = con.execute(f"SELECT row, therapist, service FROM kept WHERE therapist IN ({moved}) "
                             "ORDER BY file, row").df()
            check_one_service(df, where, cols.therapist, cols.service)
    if date_sql is not None:
        con.execute(f"""CREATE TABLE sessions AS SELECT * REPLACE (epoch(date - min(date) OVER (PARTITION BY patient))
            / {WEEK_SECONDS!r} AS time) FROM kept""")
        notes.append(dates_note(where))
    else:
        con.execute("CREATE VIEW sessions AS SELECT * FROM kept")
    key = "date" if date_sql else "time"
    dup = f"SELECT patient, {key} FROM sessions GROUP BY patient, {key} HAVING count(*) > 1"
    if con.execute(f"SELECT EXISTS ({dup})").fetchone()[0]:
        df = con.execute(f"SELECT row, patient, time{', date' if date_sql else ''} FROM sessions "
                         f"WHERE (patient, {key}) IN ({dup}) ORDER BY file, row").df()
        check_duplicates(df, where, cols.time, date_sql is not None)

    check_therapist_count(n_therapists, where, cols.therapist)
    low, high = con.execute("SELECT min(outcome), max(outcome) FROM sessions").fetchone()
    check_outcome_varies(0 if low is None else (2 if low < high else 1), where, cols.outcome)
    # within-therapist variance: each therapist's lowest and highest rating stand for its ratings
    ranges = con.execute("SELECT therapist" + "".join(f", min({_q(p)}), max({_q(p)})" for p in processes)
                         + " FROM sessions GROUP BY therapist ORDER BY therapist").fetchall()
    for k, name in enumerate(processes):
        pairs = [(r[0], v) for r in ranges if r[1 + 2 * k] is not None for v in (r[1 + 2 * k], r[2 + 2 * k])]
        check_within_variance(pd.DataFrame(pairs, columns=["therapist", name]), name, labels[name], where)
    check_repeated_outcome(n_repeated, where, config)

    ratings = con.execute("SELECT " + ", ".join(f"count({_q(p)})" for p in processes) + " FROM sessions").fetchone()
    counts = {
        "rows_read": int(rows_read),
        "rows_empty": int(n_total - rows_read + blank_lines),
        "rows_excluded": int(sum(e.rows for e in exclusions)),
        "rows_used": int(n_used),
        "therapists": n_therapists,
        "patients": n_patients,
        "outcome_assessments": n_outcomes,
        "patients_with_one_outcome": n_single,
    }
    for name, n in zip(processes, ratings, strict=True):
        counts[f"{name}_ratings"] = int(n)
    canonical = [c for c in exprs if c != "file"]
    therapists = [r[0] for r in con.execute("SELECT DISTINCT therapist FROM sessions ORDER BY 1").fetchall()]
    data = ValidatedData(
        sessions=pd.DataFrame({c: pd.Series(dtype=object if c in ("therapist", "patient") else float)
                               for c in canonical}),
        processes=tuple(processes),
        covariates=tuple(covariates),
        labels=labels,
        exclusions=exclusions,
        counts=counts,
        notes=notes,
        time_kind="date" if date_sql else "number",
        source=where,
        config=config,
    )
    return data, therapists


def _covariate(con: Any, u: _Column, where: str, taken: set[str], notes: list[str], labels: dict[str, str],
               numbers: Any, witness: Any) -> dict[str, str]:
    """SQL of a covariate's coded columns (validate.code_column: numbers, or dummies of text categories)."""
    if u.kind == "text":
        cast = f"TRY_CAST({u.txt} AS DOUBLE)"
        n_text, n_num = con.execute(f"SELECT count({u.txt}) FILTER (WHERE {cast} IS NULL), count({cast}) "
                                    "FROM v").fetchone()
        if n_text and n_num:  # mixes numbers and text: the text rows and one number
            w, df = witness(f"{u.txt} IS NOT NULL AND {cast} IS NULL", {"x": u.txt})
            one = con.execute(f"SELECT {u.txt} FROM v WHERE {cast} IS NOT NULL LIMIT 1").fetchone()[0]
            series = pd.Series([*df["x"], one], dtype=object)
            code_column(series, u.name, "covariate", np.r_[df["row"].to_numpy(), 0], w, taken, notes)
        if n_text:  # categories: the levels, each repeated by the rank of its count (same order and ties)
            levels = con.execute(f"SELECT {u.txt} AS level, dense_rank() OVER (ORDER BY count(*)) AS r FROM v "
                                 f"WHERE {u.txt} IS NOT NULL GROUP BY 1").df()
            series = pd.Series(np.repeat(levels["level"].to_numpy(dtype=object), levels["r"].to_numpy()),
                               dtype=object)
            coded, lab = code_column(series, u.name, "covariate", np.arange(len(series)), where, taken, notes)
            labels.update(lab)
            out = {}
            for name, values in coded.items():
                level = series[values.to_numpy() == 1.0].iloc[0]
                out[name] = f"(CASE WHEN {u.txt} IS NULL THEN NULL WHEN {u.txt} = {_lit(level)} THEN 1.0 ELSE 0.0 END)"
            return out
    name = safe_name(u.name, taken)
    taken.add(name)
    labels[name] = u.name
    return {name: numbers(u, "covariate")}


# ----------------------------------------------------------------------------- decomposition


def patient_aggregates(scan: ScannedSessions) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Per-patient aggregates of :func:`theralens.data.decompose.patient_table` by GROUP BY.

    Returns (columns sorted by patient id, rows per patient): baseline and final outcome
    (first and last by time), their times, outcome assessments, the OLS slope of outcome on
    time (regr_slope: S_ty / S_tt), covariates at their first observed assessment, and per
    process the mean over all ratings or the first k (``[design] process_sessions``; ranked
    with ``row_number`` over the patient's ratings by time) and the number averaged.
    """
    data = scan.data
    k = data.config.design.process_sessions
    q = _q
    ranks = "".join(f", row_number() OVER (PARTITION BY patient, {q(p)} IS NULL ORDER BY time) AS {q(p + '__rank')}"
                    for p in data.processes) if k else ""
    parts = [
        "any_value(therapist) AS therapist",
        "count(outcome) AS n_outcome",
        "min(time) FILTER (WHERE outcome IS NOT NULL) AS time_baseline",
        "max(time) FILTER (WHERE outcome IS NOT NULL) AS time_final",
        "arg_min(outcome, time) FILTER (WHERE outcome IS NOT NULL) AS baseline",
        "arg_max(outcome, time) FILTER (WHERE outcome IS NOT NULL) AS final",
        "CASE WHEN regr_sxx(outcome, time) > 0 THEN regr_slope(outcome, time) END AS slope",
    ]
    parts += [f"arg_min({q(c)}, time) FILTER (WHERE {q(c)} IS NOT NULL) AS {q(c)}" for c in data.covariates]
    for p in data.processes:
        cond = f"{q(p)} IS NOT NULL" + (f" AND {q(p + '__rank')} <= {int(k)}" if k else "")
        parts += [f"avg({q(p)}) FILTER (WHERE {cond}) AS {q(p)}",
                  f"count({q(p)}) FILTER (WHERE {cond}) AS {q(p + '_n')}"]
    sql = (f"SELECT patient, count(*) AS __rows, {', '.join(parts)} FROM (SELECT *{ranks} FROM sessions) "
           "GROUP BY patient ORDER BY patient")
    df = scan.con.execute(sql).df()
    cols: dict[str, np.ndarray] = {
        "therapist": df["therapist"].to_numpy(dtype=object),
        "patient": df["patient"].to_numpy(dtype=object),
        "n_outcome": df["n_outcome"].to_numpy(dtype=np.int64),
    }
    for name in ("time_baseline", "time_final", "baseline", "final"):
        cols[name] = df[name].to_numpy(dtype=float)
    cols["change"] = cols["final"] - cols["baseline"]
    cols["slope"] = df["slope"].to_numpy(dtype=float)
    for c in data.covariates:
        cols[c] = df[c].to_numpy(dtype=float)
    for p in data.processes:
        cols[p] = df[p].to_numpy(dtype=float)
        cols[f"{p}_n"] = df[f"{p}_n"].to_numpy(dtype=np.int64)
    return cols, df["__rows"].to_numpy(dtype=np.int64)


def lagged_pairs(scan: ScannedSessions) -> str:
    """Create table ``pairs``: consecutive outcome assessments t -> t+1 of each patient (LEAD over
    the patient's outcome assessments by time), with the process values and row of t. Returns its name."""
    data = scan.data
    q = _q
    procs = "".join(f", {q(p)}" for p in data.processes)
    scan.con.execute(f"""CREATE OR REPLACE TABLE pairs AS SELECT * FROM (
        SELECT therapist, patient, file, row, time, LEAD(time) OVER w AS time_next, outcome,
               LEAD(outcome) OVER w AS outcome_next{procs}
        FROM sessions WHERE outcome IS NOT NULL WINDOW w AS (PARTITION BY patient ORDER BY time))
        WHERE time_next IS NOT NULL""")
    return "pairs"


def decompose_scan(scan: ScannedSessions, config: StudyConfig | None = None) -> PatientTable | SessionTable:
    """The analysis table of the configured design from the scanned sessions: the patient
    aggregates (or lagged pairs) by SQL, then the shared decomposition of decompose.py."""
    config = config or scan.data.config
    if config.design.level == "patient":
        cols, rows = patient_aggregates(scan)
        return patient_table(cols, rows, scan.data, config)
    return _session_scan(scan, config)


def _session_scan(scan: ScannedSessions, config: StudyConfig) -> SessionTable:
    """The session design in DuckDB: the rows and components by :func:`lagged_table` (they stay in
    table ``lagged``); what leaves DuckDB is per patient (outcome assessments, rows, patient
    means: the reliability) or per exclusion step. Exclusions follow :func:`session_table`'s
    order: patients with fewer than two outcome assessments, then the pairs without each
    process rating at t, then the patients without each covariate, each step counting the pairs
    it drops from those still kept (a pair is dropped at the first value it lacks)."""
    data, con, q = scan.data, scan.con, _q
    relation = lagged_table(scan, config)
    # only the patients left out here leave DuckDB (a frame of every patient's id is gigabytes at 12.5 million)
    per = con.execute("""SELECT patient, count(*) AS n_rows, count(outcome) AS n_occ FROM sessions
        GROUP BY patient HAVING count(outcome) < 2 ORDER BY patient""").df()
    exclusions = list(data.exclusions)
    few_outcomes_exclusion(exclusions, per["n_occ"].to_numpy(), per["patient"].to_numpy(dtype=object),
                           per["n_rows"].to_numpy())
    steps = [(p, f"no {data.labels.get(p, p)} rating at the assessment that predicts the next outcome", False)
             for p in data.processes]
    steps += [(c, f"covariate {data.labels.get(c, c)} missing", True) for c in data.covariates]
    if steps:
        first = "CASE " + " ".join(f"WHEN {q(name)} IS NULL THEN {k}" for k, (name, _, _) in enumerate(steps)) + \
            f" ELSE {len(steps)} END"
        con.execute(f"""CREATE OR REPLACE TEMP TABLE pair_steps AS SELECT patient, row, time, {first} AS step
            FROM (SELECT pr.*{''.join(f', pc.{q(c)}' for c in data.covariates)} FROM pairs pr
            JOIN patient_covariates pc USING (patient))""").fetchall()
        dropped = dict((int(k), (int(n), int(m))) for k, n, m in con.execute(
            "SELECT step, count(*), count(DISTINCT patient) FROM pair_steps GROUP BY step").fetchall())
        removed = dict((int(k), int(n)) for k, n in con.execute(
            "SELECT last, count(*) FROM (SELECT max(step) AS last FROM pair_steps GROUP BY patient) GROUP BY last"
        ).fetchall())
        for k, (_, reason, by_patient) in enumerate(steps):
            if k not in dropped:
                continue
            if by_patient:
                examples = tuple(str(r[0]) for r in con.execute(
                    f"SELECT DISTINCT patient FROM pair_steps WHERE step = {k} ORDER BY patient LIMIT 5").fetchall())
            else:
                examples = tuple(int(r[0]) for r in con.execute(
                    f"SELECT row FROM pair_steps WHERE step = {k} ORDER BY patient, time LIMIT 5").fetchall())
            exclusions.append(Exclusion(reason=reason, rows=dropped[k][0], patients=dropped[k][1],
                                        patients_removed=removed.get(k, 0), examples=examples))
    means = con.execute("SELECT * EXCLUDE (patient) FROM patient_means ORDER BY patient").df()
    patient_means = pd.DataFrame({"therapist": means["therapist"].to_numpy(dtype=object),
                                  **{p: means[p + "__pm"].to_numpy(dtype=float) for p in data.processes}})
    n_per = con.execute("SELECT n_patients FROM caseload_means ORDER BY therapist").df()["n_patients"].to_numpy()
    assessments = con.execute("SELECT count(*) FROM sessions WHERE patient IN (SELECT patient FROM patient_means)"
                              ).fetchone()[0]
    columns = con.execute(f"SELECT * FROM {relation} LIMIT 0").df()
    return session_summary(columns, patient_means, means["n_lags"].to_numpy(), n_per, int(assessments),
                           exclusions, data, config, relation=relation)


ENGINES = ("auto", "pandas", "duckdb")


def choose_engine(path: str | Path, engine: str = "auto", memory_limit: int | str | None = None) -> tuple[str, str]:
    """(engine, note): ``duckdb`` when asked, or with ``auto`` when the input files are larger
    than the memory budget (``memory_limit``, default :func:`default_memory_limit`) and DuckDB can
    scan them (CSV, Parquet, a folder or glob of them); else ``pandas``. The note says which and why."""
    if engine not in ENGINES:
        raise InputError(f"--engine {engine!r} is not known; use one of " + ", ".join(f'"{e}"' for e in ENGINES))
    budget = parse_memory(memory_limit) if memory_limit is not None else default_memory_limit()
    size = input_bytes(path)
    many = len(_files(path)) > 1 or Path(str(path)).is_dir() or bool(_GLOB.search(str(path)))
    if engine == "auto":
        engine = "duckdb" if scannable(path) and (size > budget or many) else "pandas"
        why = (f"input {size / 1e9:.2f} GB {'>' if size > budget else '<='} memory budget {budget / 1e9:.2f} GB"
               + (", several files" if many else ""))
    else:
        why = "chosen with --engine"
        if engine == "duckdb" and not scannable(path):
            return "pandas", (f"Engine: pandas (DuckDB scans CSV and Parquet only; {Path(str(path)).name} "
                              "was read whole).")
    if engine == "duckdb":
        return engine, (f"Engine: DuckDB SQL ({why}): the sessions were checked and decomposed in SQL under a "
                        f"memory limit of {budget / 1e9:.2f} GB; only one row per patient (patient design) or per "
                        "lagged pair (session design) left DuckDB.")
    return engine, f"Engine: pandas ({why}): the sessions were read whole into memory."


# ----------------------------------------------------------------------------- Parquet copy


def export_parquet(con: Any, relation: str, folder: str | Path, rows_per_file: int = 1_000_000) -> Path:
    """Write ``relation`` as a Parquet data set in one pass: a folder ``__part=k`` for every
    ``rows_per_file`` rows in the relation's order (a patient may be split across two parts; the
    statistics merge it). Returns the folder."""
    out = Path(folder)
    try:
        if out.exists():
            shutil.rmtree(out)
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot write the analysis rows' Parquet copy to {out.parent} ({exc.strerror}); give "
                         "--scratch a folder you can write that every worker can read") from None
    con.execute(f"""COPY (SELECT *, (row_number() OVER () - 1) // {int(rows_per_file)} AS __part FROM {relation})
        TO {_lit(str(out))} (FORMAT parquet, PARTITION_BY (__part))""").fetchall()
    return out


def lagged_table(scan: ScannedSessions, config: StudyConfig | None = None) -> str:
    """Create table ``lagged``: the session design's analysis rows in DuckDB, the columns of
    :attr:`theralens.data.decompose.SessionTable.table` (models.md, session-level design), for
    :func:`sufficient_stats`. Returns its name.

    Pairs (``LEAD`` over each patient's outcome assessments by time) whose assessment t lacks a
    process rating or whose patient lacks a covariate are left out; then, over the kept pairs,
    Xbar_ij is the patient's mean, Xbar_j the caseload mean (over patients, or weighted by their
    pairs with ``caseload_weighting = "session"``), Xbar the mean of the therapist means, and the
    components are X - Xbar_ij, Xbar_ij - Xbar_j and Xbar_j - Xbar. The table is a relation
    without an order (sorting 10 million rows took seconds that no consumer needs): whoever
    needs rows in order sorts them.
    """
    config = config or scan.data.config
    data, con, q = scan.data, scan.con, _q
    lagged_pairs(scan)
    firsts = "".join(f", arg_min({q(c)}, time) FILTER (WHERE {q(c)} IS NOT NULL) AS {q(c)}" for c in data.covariates)
    con.execute(f"CREATE OR REPLACE TABLE patient_covariates AS SELECT patient{firsts} FROM sessions GROUP BY patient")
    covs = "".join(f", pc.{q(c)}" for c in data.covariates)
    keep = " AND ".join(f"{q(n)} IS NOT NULL" for n in (*data.processes, *data.covariates))
    con.execute(f"""CREATE OR REPLACE TEMP VIEW kept_pairs AS SELECT * FROM (SELECT pr.*{covs} FROM pairs pr
        JOIN patient_covariates pc USING (patient)) WHERE {keep}""")
    means = "".join(f", avg({q(p)}) AS {q(p + '__pm')}" for p in data.processes)
    con.execute(f"""CREATE OR REPLACE TEMP TABLE patient_means AS SELECT patient, min(therapist) AS therapist,
        count(*) AS n_lags{means} FROM kept_pairs GROUP BY patient""")
    weight = "n_lags" if config.design.caseload_weighting == "session" else "1"
    caseload = "".join(f", sum({q(p + '__pm')} * {weight}) / sum({weight}) AS {q(p + '__cm')}" for p in data.processes)
    con.execute(f"""CREATE OR REPLACE TEMP TABLE caseload_means AS SELECT therapist, count(*) AS n_patients{caseload}
        FROM patient_means GROUP BY therapist""")
    grand = ", ".join(f"avg({q(p + '__cm')}) AS {q(p + '__gm')}" for p in data.processes)
    cols = ["kp.therapist", "kp.patient", "kp.row", "kp.time", "kp.time_next", "kp.time_next - kp.time AS gap",
            "kp.outcome", "kp.outcome_next", *(f"kp.{q(c)}" for c in data.covariates)]
    for p in data.processes:
        x, pm, cm, gm = f"kp.{q(p)}", f"pm.{q(p + '__pm')}", f"cm.{q(p + '__cm')}", f"gm.{q(p + '__gm')}"
        cols += [x, f"{x} - {pm} AS {q(p + '_within_patient')}", f"{pm} - {cm} AS {q(p + '_between_patient')}",
                 f"{cm} - {gm} AS {q(p + '_between_therapist')}", f"{pm} AS {q(p + '_patient_mean')}",
                 f"{cm} AS {q(p + '_caseload_mean')}"]
    cols += ["pm.n_lags", "cm.n_patients"]
    con.execute(f"""CREATE OR REPLACE TABLE lagged AS SELECT {', '.join(cols)} FROM kept_pairs kp
        JOIN patient_means pm USING (patient) JOIN caseload_means cm ON cm.therapist = kp.therapist
        CROSS JOIN (SELECT {grand} FROM caseload_means) gm""")
    return "lagged"
