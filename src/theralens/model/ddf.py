"""The choice of denominator degrees of freedom for the fixed-effect t-tests (``ddf=``).

- ``"satterthwaite"`` (default): lmerTest's Satterthwaite df (Kuznetsova et al. 2017, JSS
  82(13)); :mod:`theralens.model.satterthwaite`.
- ``"kenward-roger"``: Kenward & Roger (1997), Biometrics 53:983-997, as pbkrtest (Halekoh &
  Hojsgaard 2014, JSS 59(9)) and lmerTest's ``summary(m, ddf = "Kenward-Roger")``: adjusted
  covariance of the fixed effects and its df; :mod:`theralens.model.kenward_roger`. REML fits only.
- ``"residual"``: n - rank(X), the residual df of the fixed-effects regression.
- ``"asymptotic"``: normal reference distribution (df = infinity), as lme4 without lmerTest.

This module holds the names alone (no numerics), so that the study configuration can check
its ``[inference] ddf`` with the same function as :func:`~theralens.model.fit.fit_mixed`.
"""

from __future__ import annotations

from theralens.errors import InputError, closest

__all__ = ["DDF_METHODS", "check_ddf", "ddf_label", "ddf_method_line", "ddf_reference"]

DDF_METHODS = ("satterthwaite", "kenward-roger", "residual", "asymptotic")

_LABELS = {
    "satterthwaite": "Satterthwaite",
    "kenward-roger": "Kenward-Roger",
    "residual": "residual (n - rank X)",
    "asymptotic": "asymptotic (normal, df = infinity)",
}
_REFERENCES = {
    "satterthwaite": "Satterthwaite (Kuznetsova et al., 2017)",
    "kenward-roger": "Kenward-Roger (Kenward & Roger, 1997)",
    "residual": "residual, n - rank(X)",
    "asymptotic": "asymptotic (normal reference distribution)",
}
#: lmerTest's wording of the summary header ("t-tests use Satterthwaite's method")
_METHOD_LINES = {
    "satterthwaite": "t-tests use Satterthwaite's method",
    "kenward-roger": "t-tests use Kenward-Roger's method",
    "residual": "t-tests use the residual degrees of freedom (n - rank X)",
    "asymptotic": "tests use the normal distribution (asymptotic, df = Inf)",
}


def check_ddf(value: object, where: str = "ddf") -> str:
    """The method ``value`` names (case and ``_``/space for ``-`` do not matter, so lmerTest's
    ``"Kenward-Roger"`` works), or InputError naming ``where``, the closest option and all four."""
    if isinstance(value, str):
        key = value.strip().lower().replace("_", "-").replace(" ", "-")
        if key in DDF_METHODS:
            return key
    options = ", ".join(f'"{m}"' for m in DDF_METHODS)
    guess = closest(str(value).strip().lower().replace("_", "-"), DDF_METHODS) if isinstance(value, str) else None
    hint = f' (did you mean "{guess}"?)' if guess else ""
    raise InputError(f"{where} = {value!r} is not a degrees-of-freedom method{hint}; use one of {options}")


def ddf_label(method: str) -> str:
    """Short name for a table column or caption, e.g. ``Kenward-Roger``."""
    return _LABELS[check_ddf(method)]


def ddf_reference(method: str) -> str:
    """The name with its citation, for a methods paragraph, e.g. ``Kenward-Roger (Kenward & Roger, 1997)``."""
    return _REFERENCES[check_ddf(method)]


def ddf_method_line(method: str) -> str:
    """lmerTest's summary wording, e.g. ``t-tests use Kenward-Roger's method``."""
    return _METHOD_LINES[check_ddf(method)]
