"""Parse lme4 model formulas: a fixed part for ``formulaic`` and random-effect terms.

Follows lme4's ``findbars``/``expandDoubleVerts`` (Bates et al. 2015, JSS 67(1), sec. 2.1):
``(1 + x | g)`` correlated terms, ``(x || g)`` uncorrelated terms, ``(1 | a/b)`` expanded to
``(1 | a) + (1 | b:a)`` and ``(1 | a:b)`` an interaction grouping factor.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from theralens.errors import ModelSpecError

_IDENT = re.compile(r"[A-Za-z_.][A-Za-z0-9_.]*")


@dataclass(frozen=True)
class RandomTermSpec:
    """One random-effects term ``(lhs | group)`` after expansion of ``||`` and ``/``.

    ``lhs`` is a formulaic right-hand side (``"1 + x"``, ``"0 + x"``); ``factors`` are the data
    columns whose combination defines the grouping factor and ``group`` its lme4 name.
    """

    lhs: str
    group: str
    factors: tuple[str, ...]


@dataclass(frozen=True)
class ParsedFormula:
    """A formula split into response, fixed part and random terms."""

    response: str
    fixed: str
    random: tuple[RandomTermSpec, ...]
    text: str

    def variables(self) -> list[str]:
        """Identifiers used anywhere in the formula, in order of first appearance."""
        seen: dict[str, None] = {}
        for token in _IDENT.findall(self.text):
            seen.setdefault(token, None)
        return list(seen)


def _split_top_level_parens(rhs: str) -> tuple[str, list[str]]:
    """Pull ``( ... | ... )`` groups out of a right-hand side; return the rest and the groups."""
    rest: list[str] = []
    bars: list[str] = []
    i = 0
    while i < len(rhs):
        ch = rhs[i]
        if ch == "(":
            depth, j = 1, i + 1
            while j < len(rhs) and depth:
                depth += {"(": 1, ")": -1}.get(rhs[j], 0)
                j += 1
            if depth:
                raise ModelSpecError(f"formula has an unclosed '(' near '{rhs[i:i + 30]}'")
            inner = rhs[i + 1 : j - 1]
            if "|" in inner and _bar_at_depth0(inner):
                bars.append(inner)
            else:
                rest.append(rhs[i:j])
            i = j
        else:
            rest.append(ch)
            i += 1
    return "".join(rest), bars


def _bar_at_depth0(text: str) -> bool:
    depth = 0
    for ch in text:
        depth += {"(": 1, ")": -1}.get(ch, 0)
        if ch == "|" and depth == 0:
            return True
    return False


def _clean_fixed(rest: str) -> str:
    """Remove the ``+`` left behind where random terms were cut out."""
    tokens = [t.strip() for t in re.split(r"(?<![*/:^])\+", rest)]
    tokens = [t for t in tokens if t]
    return " + ".join(tokens) if tokens else "1"


def _expand_group(group: str) -> list[tuple[str, tuple[str, ...]]]:
    """``a/b/c`` -> [(a), (b:a), (c:b:a)] as lme4 names them; ``a:b`` stays one factor."""
    group = group.strip()
    if "/" in group:
        parts = [p.strip() for p in group.split("/")]
        out = []
        for depth in range(1, len(parts) + 1):
            sub = parts[:depth]
            factors: list[str] = []
            for p in sub:
                factors.extend(x.strip() for x in p.split(":"))
            factors.reverse()  # lme4 names the group b:a and labels its levels "b:a"
            out.append((":".join(factors), tuple(factors)))
        return out
    factors = tuple(x.strip() for x in group.split(":"))
    return [(":".join(factors), factors)]


def _has_intercept(lhs: str) -> bool:
    terms = [t.strip() for t in lhs.replace("-", "+-").split("+") if t.strip()]
    return not ("0" in terms or "-1" in terms)


def parse_formula(formula: str) -> ParsedFormula:
    """Split an lme4 formula into response, fixed part and random-effect terms.

    Raises :class:`ModelSpecError` for a formula without ``~`` or without random terms.
    """
    if not isinstance(formula, str) or "~" not in formula:
        raise ModelSpecError(
            f"formula {formula!r} has no '~': write it as 'outcome ~ predictors + (1 | group)'"
        )
    lhs, rhs = formula.split("~", 1)
    response = lhs.strip()
    if not response:
        raise ModelSpecError(f"formula {formula!r} has no response left of '~'")
    rest, bars = _split_top_level_parens(rhs)
    if not bars:
        raise ModelSpecError(
            f"formula {formula!r} has no random-effects term such as '(1 | therapist)'; "
            "theralens fits mixed models only"
        )
    terms: list[RandomTermSpec] = []
    for bar in bars:
        double = "||" in bar
        left, right = bar.split("||", 1) if double else bar.split("|", 1)
        left = left.strip() or "1"
        groups = _expand_group(right)
        if double:
            pieces = [t.strip() for t in left.split("+") if t.strip() and t.strip() not in ("0", "1", "-1")]
            lhs_list = (["1"] if _has_intercept(left) else []) + [f"0 + {p}" for p in pieces]
        else:
            lhs_list = [left]
        for name, factors in groups:
            for piece in lhs_list:
                terms.append(RandomTermSpec(lhs=piece, group=name, factors=factors))
    return ParsedFormula(response=response, fixed=_clean_fixed(rest), random=tuple(terms), text=formula)
