"""How results show themselves in a notebook or a terminal: a few readable lines and tables.

Every result (a model fit, a study, a power simulation) has a short ``repr`` (what it is,
its size and its state, no arrays) and an ``_repr_html_`` that Jupyter shows: the same lines
and its main tables, every value HTML-escaped. :class:`Summary` is the printed summary of a
result: ``str()`` is its text, ``.tables`` its tables as DataFrames (for further work),
``as_html()`` the notebook view. Shared by every layer, like :mod:`theralens.errors`.
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["Summary", "html_view", "interval_columns", "table_html"]

#: Rows of a table shown in a notebook view before it is cut (the full table is in ``.tables``).
MAX_ROWS = 30


def interval_columns(level: float) -> tuple[str, str]:
    """The names of an interval's bounds as lme4's ``confint`` gives them: ``2.5 %`` and
    ``97.5 %`` at level 0.95, ``5 %`` and ``95 %`` at 0.90."""
    low, high = (f"{np.format_float_positional(100 * a, precision=10, trim='-')} %"
                 for a in ((1 - level) / 2, (1 + level) / 2))
    return low, high


def _cell(v: Any) -> str:
    """A cell: 4 significant digits for floats, '' for missing values, text otherwise."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def table_html(df: pd.DataFrame, *, index: bool = True, max_rows: int = MAX_ROWS) -> str:
    """``df`` as an HTML table, every header and cell escaped; cut after ``max_rows`` rows."""
    shown = df.iloc[:max_rows]
    parts = ['<table class="theralens-table">', "<thead><tr>"]
    if index:
        parts.append("<th></th>")
    parts += [f"<th>{html.escape(str(c))}</th>" for c in shown.columns]
    parts.append("</tr></thead><tbody>")
    for key, row in zip(shown.index, shown.itertuples(index=False)):
        parts.append("<tr>")
        if index:
            parts.append(f"<th>{html.escape(_cell(key))}</th>")
        parts += [f"<td>{html.escape(_cell(v))}</td>" for v in row]
        parts.append("</tr>")
    parts.append("</tbody></table>")
    if len(df) > max_rows:
        parts.append(f"<p><small>{len(df) - max_rows} more rows not shown</small></p>")
    return "".join(parts)


def html_view(title: str, lines: Sequence[str], tables: Mapping[str, pd.DataFrame] | None = None,
              *, index: Mapping[str, bool] | None = None) -> str:
    """A result for Jupyter: a bold title, one paragraph per line, then each table under its name."""
    parts = ['<div class="theralens">', f"<p><strong>{html.escape(title)}</strong></p>"]
    parts += [f"<p>{html.escape(line)}</p>" for line in lines if line]
    for name, df in (tables or {}).items():
        parts.append(f"<p><em>{html.escape(name.replace('_', ' '))}</em></p>")
        parts.append(table_html(df, index=(index or {}).get(name, True)))
    parts.append("</div>")
    return "".join(parts)


class Summary:
    """The summary of a result: its text (``str()``, ``as_text()``), its tables (``.tables``:
    name -> DataFrame) and a notebook view (``as_html()``, shown by Jupyter).

    ``print(fit.summary())`` prints the text; ``"singular" in fit.summary()`` searches it.
    """

    def __init__(self, title: str, text: str, tables: Mapping[str, pd.DataFrame],
                 lines: Sequence[str] = (), index: Mapping[str, bool] | None = None) -> None:
        self.title = title
        self.tables: dict[str, pd.DataFrame] = dict(tables)
        self.lines = list(lines)
        self._text = text
        self._index = dict(index or {})

    def as_text(self) -> str:
        """The plain-text summary."""
        return self._text

    def as_html(self) -> str:
        """The summary as escaped HTML: title, the lines, then every table."""
        return html_view(self.title, self.lines, self.tables, index=self._index)

    def _repr_html_(self) -> str:
        return self.as_html()

    def __str__(self) -> str:
        return self._text

    def __repr__(self) -> str:
        return self._text

    def __contains__(self, text: str) -> bool:
        return text in self._text
