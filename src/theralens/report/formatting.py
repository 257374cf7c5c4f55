"""How numbers and data values appear in the HTML report.

- Every value that comes from the data (therapist ids, process and moderator names, labels,
  free text) goes through :func:`esc` (``html.escape`` with quotes).
- Numbers: 3 significant digits (:func:`fmt`), degrees of freedom with 1 decimal,
  p-values APA style with 3 decimals and no leading zero (:func:`fmt_p`).
- A number taken from ``results.json`` is wrapped by :func:`num` in a span carrying
  ``data-key`` (its path in ``results.json``, parts joined with ".") and ``data-value`` (the
  full-precision value, as JSON writes it), so tests can compare the page with the file.
"""

from __future__ import annotations

import html
import json
import math
from typing import Any

__all__ = ["DASH", "esc", "fmt", "fmt_ci", "fmt_df", "fmt_p", "is_missing", "key", "num"]

#: Shown for a missing value.
DASH = "\u2013"


def esc(value: Any) -> str:
    """HTML-escaped text of ``value`` (quotes too, so it is safe in attributes)."""
    return html.escape("" if value is None else str(value), quote=True)


def is_missing(v: Any) -> bool:
    """True for None and non-finite numbers."""
    if v is None:
        return True
    try:
        return not math.isfinite(float(v))
    except (TypeError, ValueError):
        return False


def fmt(v: Any, digits: int = 3) -> str:
    """``v`` with ``digits`` significant digits, without exponent for 1e-4 <= |v| < 1e6."""
    if is_missing(v):
        return DASH
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return str(v)
    f = float(v)
    if f == 0:
        return "0"
    a = abs(f)
    if a < 1e-4 or a >= 1e6:
        return f"{f:.{digits - 1}e}"
    decimals = max(0, digits - 1 - int(math.floor(math.log10(a))))
    text = f"{f:.{decimals}f}"
    if float(text) != 0 and len(text.lstrip("-").replace(".", "").lstrip("0")) > digits and decimals > 0:
        # rounding moved to the next power of ten (e.g. 0.09996 -> 0.1000): drop a digit
        text = f"{f:.{decimals - 1}f}"
    return text


def fmt_df(v: Any) -> str:
    """Degrees of freedom: one decimal (integers as they are)."""
    if is_missing(v):
        return DASH
    f = float(v)
    return str(int(f)) if f.is_integer() else f"{f:.1f}"


def fmt_p(p: Any) -> str:
    """APA p-value: ``< .001`` or three decimals without the leading zero."""
    if is_missing(p):
        return DASH
    f = float(p)
    if f < 0.001:
        return "< .001"
    text = f"{f:.3f}"
    return text[1:] if text.startswith("0") else text


def fmt_ci(lo: Any, hi: Any) -> str:
    """``[lo, hi]`` with :func:`fmt`."""
    return f"[{fmt(lo)}, {fmt(hi)}]"


def key(*parts: Any) -> str:
    """A ``data-key``: the parts of a ``results.json`` path joined with "."."""
    return ".".join(str(p) for p in parts)


def _json_value(v: Any) -> str:
    if is_missing(v) and not isinstance(v, str):
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return json.dumps(v)
    return str(v)


def num(v: Any, data_key: str | None = None, kind: str = "num", text: str | None = None) -> str:
    """A number as HTML; with ``data_key`` it carries ``data-key`` and ``data-value``.

    ``kind``: ``"num"`` (3 significant digits), ``"p"``, ``"df"``, ``"int"``, ``"pct"`` (a
    percentage, no decimals) or ``"prob"`` (a probability shown as a percentage); ``text``
    overrides the shown text.
    """
    if text is None:
        if kind == "p":
            text = fmt_p(v)
        elif kind == "df":
            text = fmt_df(v)
        elif kind == "int":
            text = DASH if is_missing(v) else str(int(round(float(v))))
        elif kind == "pct":
            text = DASH if is_missing(v) else f"{float(v):.0f}%"
        elif kind == "prob":
            text = DASH if is_missing(v) else f"{100 * float(v):.0f}%"
        else:
            text = fmt(v)
    if data_key is None:
        return f'<span class="num">{esc(text)}</span>'
    return (f'<span class="num" data-key="{esc(data_key)}" data-value="{esc(_json_value(v))}">'
            f"{esc(text)}</span>")
