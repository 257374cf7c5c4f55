"""The HTML page around every report and profile: a self-contained document with a
Content-Security-Policy that forbids every external resource and every script, the shared
stylesheet inlined, and helpers for tables.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache
from importlib import resources

from theralens.report.formatting import esc

__all__ = ["CSP", "page", "stylesheet", "table"]

#: Nothing may be loaded: no scripts, fonts, frames or network requests; inline styles and
#: data: images only.
CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"


@cache
def stylesheet() -> str:
    """The report's CSS (``report/style.css``)."""
    return resources.files("theralens.report").joinpath("style.css").read_text(encoding="utf-8")


def page(title: str, body: str, description: str = "") -> str:
    """A complete HTML document; ``title`` and ``description`` are escaped here, ``body`` is
    markup that must already be escaped."""
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n'
        '<meta charset="utf-8">\n'
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">\n'
        '<meta name="referrer" content="no-referrer">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        '<meta name="generator" content="theralens">\n'
        + (f'<meta name="description" content="{esc(description)}">\n' if description else "")
        + f"<title>{esc(title)}</title>\n"
        f"<style>\n{stylesheet()}</style>\n"
        "</head>\n<body>\n<main>\n"
        f"{body}\n"
        "</main>\n</body>\n</html>\n"
    )


def table(
    header: Sequence[str],
    rows: Sequence[Sequence[str]],
    *,
    caption: str = "",
    title: str = "",
    note: str = "",
    numeric: Sequence[bool] | None = None,
    table_id: str = "",
    span_class: str = "group",
) -> str:
    """An APA-style table. ``header`` and ``rows`` hold markup (escape data values first);
    ``caption`` ("Table 1") and ``title`` are markup too; ``numeric`` right-aligns columns; a
    row with a single cell spans the table (class ``span_class``)."""
    numeric = list(numeric) if numeric is not None else [False] * len(header)
    cls = ["n" if n else "" for n in numeric]

    def cell(tag: str, i: int, content: str) -> str:
        c = f' class="{cls[i]}"' if i < len(cls) and cls[i] else ""
        scope = ' scope="col"' if tag == "th" else ""
        return f"<{tag}{c}{scope}>{content}</{tag}>"

    head = "".join(cell("th", i, h) for i, h in enumerate(header))
    body = []
    for r in rows:
        if len(r) == 1 and len(header) > 1:  # a group row spanning the table
            body.append(f'<tr class="{span_class}"><td colspan="{len(header)}">{r[0]}</td></tr>')
        else:
            body.append("<tr>" + "".join(cell("td", i, v) for i, v in enumerate(r)) + "</tr>")
    cap = ""
    if caption or title:
        cap = f"<caption>{caption}" + (f'<span class="title">{title}</span>' if title else "") + "</caption>"
    ident = f' id="{esc(table_id)}"' if table_id else ""
    out = (f'<div class="table-wrap"><table{ident}>{cap}<thead><tr>{head}</tr></thead>'
           f"<tbody>{''.join(body)}</tbody></table></div>")
    if note:
        out += f'<p class="table-note"><em>Note.</em> {note}</p>'
    return out
