"""Read a sessions or therapist table from the formats clinics and researchers export.

Supported: ``.csv``, ``.tsv``, ``.txt`` (delimiter detected: comma, semicolon, tab or
bar; UTF-8, falling back to Windows-1252), ``.parquet``, ``.xlsx``/``.xlsm`` (openpyxl),
``.xls`` (only if the optional ``xlrd`` package is installed), ``.sav``/``.zsav`` (SPSS,
pyreadstat) and ``.dta`` (Stata, pyreadstat). openpyxl and pyreadstat are optional: the
extras ``theralens[excel]`` and ``theralens[spss]`` (or ``theralens[all]``) install them, and
a file that needs a missing one raises an InputError naming the extra.

SPSS and Stata value labels. Numbers stay numbers: a labelled variable keeps its numeric
codes (a 1-7 alliance item labelled "1 = not at all" is still the number 1), except a
*categorical* variable, whose labels replace the codes so that, used as a therapist
moderator, it is dummy-coded by name rather than treated as a quantity. A variable is
categorical when SPSS marks its measurement level "nominal" or, where no level is
recorded (Stata, or SPSS "unknown"), when every observed code has a label. What was done
is recorded in ``df.attrs``:

- ``attrs["value_labels"]``: {column: {code: label}} for every labelled column,
- ``attrs["labels_applied"]``: columns whose codes were replaced by labels,
- ``attrs["nominal"]``: those of them the file itself marks "nominal" (the others were
  judged categorical because every code is labelled; validation turns an outcome or
  process among them back into its numeric codes),
- ``attrs["notes"]``: one sentence per decision, for the report,
- ``attrs["source"]``, ``attrs["format"]``, and ``attrs["first_data_row"]``: the row
  number the user sees for the first data row (2 in a text file or a sheet, after the
  header; 1 in SPSS, Stata and Parquet files, which count cases).

Every failure (missing file, folder, empty or garbled file, unknown extension, several
sheets and none chosen) raises :class:`~theralens.errors.InputError` naming the file.
The input file is only ever opened for reading.
"""

from __future__ import annotations

import csv
import difflib
import io
from pathlib import Path
from typing import Any

import pandas as pd

from theralens.errors import InputError

__all__ = [
    "SUPPORTED_EXTENSIONS",
    "TEXT_EXTENSIONS",
    "check_file",
    "check_shape",
    "check_text_head",
    "encoding_note",
    "parquet_error",
    "read_table",
    "sniff_delimiter",
    "text_table_error",
]

TEXT_EXTENSIONS = (".csv", ".tsv", ".txt")
EXCEL_EXTENSIONS = (".xlsx", ".xlsm", ".xls")
SUPPORTED_EXTENSIONS = (
    TEXT_EXTENSIONS
    + (".parquet", ".pq")
    + EXCEL_EXTENSIONS
    + (
        ".sav",
        ".zsav",
        ".dta",
    )
)

_MAGIC = {
    b"PK\x03\x04": "an Excel workbook or another zip archive (rename it to .xlsx if it is one)",
    b"PAR1": "a Parquet file (rename it to .parquet)",
    b"$FL2": "an SPSS data file (rename it to .sav)",
    b"$FL3": "an SPSS data file (rename it to .zsav)",
    b"\xd0\xcf\x11\xe0": "an old Excel (.xls) or other Office file",
    b"%PDF": "a PDF document",
}


def _name(what: str, path: Path) -> str:
    return f"{what} file {path}"


def read_table(path: str | Path, *, sheet: str | int | None = None, what: str = "sessions") -> pd.DataFrame:
    """Read one table into a DataFrame, chosen by the file's extension.

    ``sheet`` picks the worksheet of an Excel workbook (name or 0-based position); it is
    required when the workbook has more than one sheet. ``what`` ("sessions",
    "therapists") only words the error messages. See the module docstring for value
    labels and the ``attrs`` recorded.
    """
    p = Path(path)
    label = _name(what, p)
    ext, head = check_file(p, what)
    if ext in TEXT_EXTENSIONS:
        df = _read_text(p, label, ext, head)
        fmt, first_row = "text", 2
    elif ext in (".parquet", ".pq"):
        df = _read_parquet(p, label)
        fmt, first_row = "parquet", 1
    elif ext in EXCEL_EXTENSIONS:
        df = _read_excel(p, label, ext, sheet, what)
        fmt, first_row = "excel", 2
    else:
        df = _read_stat(p, label, ext)
        fmt, first_row = ("spss" if ext != ".dta" else "stata"), 1

    check_shape(df.shape[1], len(df), label)
    df.columns = [str(c).strip() for c in df.columns]
    _check_header(df, label)
    df.attrs.setdefault("value_labels", {})
    df.attrs.setdefault("labels_applied", [])
    df.attrs.setdefault("nominal", [])
    df.attrs.setdefault("notes", [])
    df.attrs.update(source=str(p), format=fmt, first_data_row=first_row)
    return df


def check_file(p: Path, what: str = "sessions") -> tuple[str, bytes]:
    """(lower-case extension, first 8 bytes) of a data file that exists, is a file with a
    supported extension, can be opened and is not empty; else InputError naming it."""
    label = _name(what, p)
    if not p.exists():
        raise InputError(f"{label} does not exist; check the path and the spelling")
    if p.is_dir():
        raise InputError(f"{label} is a folder, not a file; give the path of the data file itself")
    ext = p.suffix.lower()
    if ext not in SUPPORTED_EXTENSIONS:
        raise InputError(
            f"{label} has an unknown extension {ext or '(none)'!r}; "
            "save it as .csv, .tsv, .xlsx, .parquet, .sav or .dta"
        )
    try:
        size = p.stat().st_size
        with p.open("rb") as fh:
            head = fh.read(65536)
    except OSError as exc:
        raise InputError(f"{label} cannot be read ({exc.strerror}); check its permissions") from exc
    if size == 0:
        raise InputError(f"{label} is empty (0 bytes); export the data again")
    return ext, head


def check_shape(n_columns: int, n_rows: int, label: str) -> None:
    """A table has columns and data rows."""
    if n_columns == 0:
        raise InputError(f"{label} has no columns; export the data again with a header row")
    if n_rows == 0:
        raise InputError(f"{label} has a header but no data rows; export the data again")


def check_text_head(head: bytes, label: str) -> None:
    """The start of a text table is text (not another format, not binary data)."""
    for magic, kind in _MAGIC.items():
        if head.startswith(magic):
            raise InputError(f"{label} is not a text table: it looks like {kind}")
    if b"\x00" in head[:65536]:
        raise InputError(
            f"{label} is not a text table (it contains binary data); export it again as CSV (comma-separated values)"
        )


def text_table_error(p: Path, label: str, sep: str) -> InputError | None:
    """The parse error of a text table as :func:`read_table` words it (found by reading the file
    in chunks, so no table is held), or None when pandas reads it without error."""
    try:
        for _ in pd.read_csv(p, sep=sep, skipinitialspace=True, skip_blank_lines=False, chunksize=200_000,
                             encoding_errors="replace"):
            pass
    except pd.errors.EmptyDataError:
        return InputError(f"{label} holds no table; export the data again")
    except (pd.errors.ParserError, csv.Error) as exc:
        return _parse_error(exc, label, sep)
    return None


def _parse_error(exc: Exception, label: str, sep: str) -> InputError:
    msg = str(exc).replace("Error tokenizing data. C error: ", "").rstrip(".\n")
    return InputError(
        f"{label} cannot be read as a table ({msg}); check that every line has the same "
        f"number of {_sep_name(sep)}-separated fields"
    )


def encoding_note(name: str, encoding: str) -> str:
    """The note that a text file was not UTF-8 and how it was decoded."""
    return f"{name} was read as {encoding} text (it is not UTF-8)."


def parquet_error(label: str, exc: Exception) -> InputError:
    """A damaged Parquet file, as :func:`read_table` words it."""
    return InputError(f"{label} is not a readable Parquet file ({type(exc).__name__}); export it again")


def _check_header(df: pd.DataFrame, label: str) -> None:
    cols = list(df.columns)
    seen: set[str] = set()
    for c in cols:
        if c in seen:
            raise InputError(f"{label} has two columns named {c!r}; rename one of them")
        seen.add(c)


def _decode(raw: bytes, label: str) -> tuple[str, str]:
    for encoding in ("utf-8-sig", "cp1252"):
        try:
            return raw.decode(encoding), encoding
        except UnicodeDecodeError:
            continue
    return raw.decode("latin-1"), "latin-1"


def sniff_delimiter(text: str, ext: str) -> str:
    """The delimiter of a text table: tab for .tsv, else the commonest of , ; tab | in the first line."""
    if ext == ".tsv":
        return "\t"
    first = next((line for line in text.splitlines() if line.strip()), "")
    counts = {d: first.count(d) for d in (",", ";", "\t", "|")}
    best = max(counts, key=lambda d: counts[d])
    return best if counts[best] > 0 else ","


def _read_text(p: Path, label: str, ext: str, head: bytes) -> pd.DataFrame:
    check_text_head(head, label)
    raw = p.read_bytes()
    text, encoding = _decode(raw, label)
    if not text.strip():
        raise InputError(f"{label} holds only blank lines; export the data again")
    sep = sniff_delimiter(text, ext)
    try:
        df = pd.read_csv(io.StringIO(text), sep=sep, skipinitialspace=True, skip_blank_lines=False)
    except pd.errors.EmptyDataError as exc:
        raise InputError(f"{label} holds no table; export the data again") from exc
    except (pd.errors.ParserError, csv.Error) as exc:
        raise _parse_error(exc, label, sep) from exc
    df = df.loc[:, [not (str(c).startswith("Unnamed:") and df[c].isna().all()) for c in df.columns]]
    df = _drop_trailing_blank(df)
    if encoding != "utf-8-sig":
        df.attrs["notes"] = [encoding_note(p.name, encoding)]
    return df


def _sep_name(sep: str) -> str:
    return {",": "comma", ";": "semicolon", "\t": "tab", "|": "bar"}.get(sep, repr(sep))


def _read_parquet(p: Path, label: str) -> pd.DataFrame:
    try:
        return pd.read_parquet(p, engine="pyarrow")
    except Exception as exc:  # pyarrow raises several types for a damaged file
        raise parquet_error(label, exc) from exc


def _read_excel(p: Path, label: str, ext: str, sheet: str | int | None, what: str) -> pd.DataFrame:
    engine = "openpyxl"
    if ext == ".xls":
        try:
            import xlrd  # noqa: F401
        except ImportError as exc:
            raise InputError(
                f"{label} is an old-style .xls workbook; save it as .xlsx or .csv in Excel "
                "(or install the xlrd package: pip install xlrd)"
            ) from exc
        engine = "xlrd"
    else:
        try:
            import openpyxl  # noqa: F401
        except ImportError as exc:
            raise InputError(
                f"{label} is an Excel workbook, which needs the optional openpyxl package; "
                "install it with: pip install 'theralens[excel]' (or save the sheet as .csv)"
            ) from exc
    try:
        book = pd.ExcelFile(p, engine=engine)
    except Exception as exc:  # zipfile.BadZipFile, KeyError, InvalidFileException, ...
        raise InputError(
            f"{label} is not a readable Excel workbook ({type(exc).__name__}); "
            "open it in Excel and save it again as .xlsx"
        ) from exc
    with book:
        names = [str(s) for s in book.sheet_names]
        if sheet is None:
            if len(names) > 1:
                listed = ", ".join(f'"{s}"' for s in names)
                option = "--therapists-sheet" if what == "therapists" else "--sheet"
                lowered = {n.lower(): n for n in names}
                close = difflib.get_close_matches(what.lower(), list(lowered), n=1, cutoff=0.5)
                guess = lowered[close[0]] if close else names[0]
                raise InputError(
                    f"{label} has {len(names)} sheets ({listed}); say which one holds the "
                    f'{what} data: sheet="{guess}" (command line: {option} "{guess}")'
                )
            chosen: str | int = 0
        elif isinstance(sheet, int) and not isinstance(sheet, bool):
            if not 0 <= sheet < len(names):
                raise InputError(
                    f"{label} has no sheet number {sheet} (it has {len(names)}, counted from 0: "
                    + ", ".join(f'"{s}"' for s in names)
                    + ")"
                )
            chosen = sheet
        else:
            if str(sheet) not in names:
                match = difflib.get_close_matches(str(sheet), names, n=1, cutoff=0.4)
                hint = (
                    f'did you mean "{match[0]}"?' if match else "its sheets are " + ", ".join(f'"{s}"' for s in names)
                )
                raise InputError(f'{label} has no sheet "{sheet}"; {hint}')
            chosen = str(sheet)
        try:
            df = pd.read_excel(book, sheet_name=chosen)
        except Exception as exc:
            raise InputError(
                f"{label}: sheet {chosen!r} cannot be read ({type(exc).__name__}); save the workbook again as .xlsx"
            ) from exc
    df = df.loc[:, [not (str(c).startswith("Unnamed:") and df[c].isna().all()) for c in df.columns]]
    return _drop_trailing_blank(df)


def _drop_trailing_blank(df: pd.DataFrame) -> pd.DataFrame:
    """Drop empty rows at the end only, so that row k is still the file's row k + 2."""
    filled = df.notna().any(axis=1).to_numpy()
    last = int(filled.nonzero()[0].max()) + 1 if filled.any() else 0
    return df.iloc[:last].reset_index(drop=True)


def _read_stat(p: Path, label: str, ext: str) -> pd.DataFrame:
    kind = "Stata" if ext == ".dta" else "SPSS"
    try:
        import pyreadstat
    except ImportError as exc:
        raise InputError(
            f"{label} is a file of {kind} data, which needs the optional pyreadstat package; "
            "install it with: pip install 'theralens[spss]' (or export the data as .csv)"
        ) from exc

    reader = pyreadstat.read_dta if ext == ".dta" else pyreadstat.read_sav
    try:
        df, meta = reader(str(p))  # numeric codes; labels are in meta
    except Exception as exc:  # pyreadstat.ReadstatError and friends
        raise InputError(
            f"{label} is not a readable {kind} file ({str(exc).strip() or type(exc).__name__}); "
            f"save it again from {kind}"
        ) from exc
    df = df.reset_index(drop=True)
    labels: dict[str, dict[Any, str]] = {
        col: dict(vl) for col, vl in (meta.variable_value_labels or {}).items() if col in df
    }
    measures: dict[str, str] = dict(getattr(meta, "variable_measure", None) or {})
    applied: list[str] = []
    nominal: list[str] = []
    notes: list[str] = []
    for col, mapping in labels.items():
        observed = pd.Series(df[col]).dropna().unique()
        measure = measures.get(col, "unknown") if kind == "SPSS" else "unknown"
        all_labelled = len(observed) > 0 and all(v in mapping for v in observed)
        categorical = measure == "nominal" or (measure == "unknown" and all_labelled)
        if categorical:
            df[col] = df[col].map(lambda v, m=mapping: m.get(v, v) if pd.notna(v) else v)
            applied.append(col)
            if measure == "nominal":
                nominal.append(col)
            notes.append(
                f"{p.name}: column {col!r} has {kind} value labels and is categorical "
                f"({'nominal' if measure == 'nominal' else 'every code labelled'}): "
                "its labels are used instead of the codes."
            )
        else:
            notes.append(
                f"{p.name}: column {col!r} has {kind} value labels but is "
                f"{measure if measure != 'unknown' else 'only partly labelled'}: "
                "its numeric codes are used."
            )
    df.attrs["value_labels"] = labels
    df.attrs["labels_applied"] = applied
    df.attrs["nominal"] = nominal
    df.attrs["notes"] = notes
    return df
