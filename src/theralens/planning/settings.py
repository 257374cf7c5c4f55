"""Effect sizes and design settings of a power study, and the design cells it covers.

A power study simulates from a preset of :mod:`theralens.simulation.generate` with some of its
parameters replaced. Settings are written ``NAME=VALUE`` (``theralens power --set``) or
given as a mapping; a NAME is either a :class:`~theralens.simulation.generate.SimulationParameters`
field (``residual_sd=0.5``; per-process fields take ``field.process``:
``within.alliance=-0.2``) or one of these shorthands:

==============================================  =============================================
``within.P``, ``between.P``                     within- (g10) and between-therapist (g01)
                                                effect of process P (alliance, expectancy)
``slope_sd.P``                                  SD of the therapist slopes u1j of P
``moderator_effect``                            effect of the configured moderator on the
                                                configured target (default: g11 of
                                                self_rated_alliance_skill on the alliance
                                                within slope)
``moderator_effects.W.P.TARGET``                any cross-level effect (TARGET within_slope
                                                or between_association)
``therapist_intercept_sd``                      SD of the therapist intercepts u0j
``between_patient.P``                           between-patient effect of P (session design)
``therapist_icc``                               ICC of the adjusted outcome,
                                                Var(u0j) / (Var(u0j) + residual_sd^2)
``process_icc.P``                               ICC of patients' P scores,
                                                sd_therapist^2 / (sd_therapist^2 + sd_patient^2)
``sessions``                                    most sessions per patient (max_sessions)
``dropout``                                     dropout hazard per session (dropout_hazard)
==============================================  =============================================

With the session-level (lagged) design (``design="session"``, ``--design session``) the
shorthands name that design's parameters: ``within.P`` the within-patient effect
(``session_within_patient``), ``between.P`` the between-therapist one
(``session_between_therapist``), ``between_patient.P``, ``slope_sd.P``, ``residual_sd``,
``within_x_between.P`` and ``moderator_effect(s)`` likewise (``session_*``), and
``therapist_icc`` is taken against ``session_residual_sd``.

VALUE is a number, ``none`` (e.g. ``caseload_shape=none``: equal caseloads) or
``true``/``false``. The numbers of therapists and patients are not settings: they are the
design cells (``therapists`` x ``patients_per_therapist``).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from theralens.errors import InputError, closest
from theralens.simulation.generate import PER_PROCESS, PRESETS, TARGETS, SimulationParameters, resolve_parameters

__all__ = ["Cell", "design_cells", "parse_numbers", "parse_settings", "resolve_overrides"]

SHORTHANDS = {
    "sessions": "max_sessions",
    "dropout": "dropout_hazard",
}
#: The session design's parameter behind each shorthand (module docstring).
SESSION_FIELDS = {
    "within": "session_within_patient", "between": "session_between_therapist",
    "between_patient": "session_between_patient", "slope_sd": "session_slope_sd",
    "within_x_between": "session_within_x_between", "residual_sd": "session_residual_sd",
    "moderator_effects": "session_moderator_effects", "intercept": "session_intercept",
}
#: Set by the design cells, never by a setting.
CELL_FIELDS = ("n_therapists", "n_patients")
_FIELDS = {f.name: f for f in dataclasses.fields(SimulationParameters)}
_PER_PROCESS = set(PER_PROCESS)


def _known(processes: tuple[str, ...]) -> list[str]:
    """Every setting name (for "did you mean")."""
    return sorted(set(_FIELDS) - set(CELL_FIELDS)) + sorted(SHORTHANDS) + [
        "moderator_effect", "therapist_icc", *[f"process_icc.{p}" for p in processes],
        *[f"{f}.{p}" for f in sorted(_PER_PROCESS | {"between_patient"}) for p in processes]]


@dataclass(frozen=True)
class Cell:
    """One design cell: ``n_therapists`` therapists and ``n_patients`` patients in all
    (``patients_per_therapist`` on average; caseloads follow the preset's
    ``caseload_shape``, None = equal)."""

    n_therapists: int
    patients_per_therapist: float
    n_patients: int


def _suggest(name: str, processes: tuple[str, ...]) -> str:
    match = closest(name, _known(processes))
    return f' (did you mean "{match}"?)' if match else ""


def _value(text: Any, name: str) -> Any:
    if not isinstance(text, str):
        return text
    t = text.strip().lower()
    if t in ("none", "null"):
        return None
    if t in ("true", "yes"):
        return True
    if t in ("false", "no"):
        return False
    try:
        v = float(t)
    except ValueError:
        raise InputError(f"--set {name}={text}: the value must be a number, none, true or false") from None
    if not math.isfinite(v):
        raise InputError(f"--set {name}={text}: the value must be a finite number")
    return v


def parse_settings(items: Iterable[str] | Mapping[str, Any] | None) -> dict[str, Any]:
    """``["within.alliance=-0.2", ...]`` (or a mapping) -> ``{name: value}``, values parsed."""
    if items is None:
        return {}
    pairs: list[tuple[str, Any]] = []
    if isinstance(items, Mapping):
        pairs = [(str(k), v) for k, v in items.items()]
    else:
        for item in items:
            if not isinstance(item, str) or "=" not in item:
                raise InputError(f"--set {item!r}: write NAME=VALUE, e.g. --set within.alliance=-0.2")
            name, _, value = item.partition("=")
            if not name.strip() or not value.strip():
                raise InputError(f"--set {item!r}: write NAME=VALUE, e.g. --set within.alliance=-0.2")
            pairs.append((name.strip(), value))
    return {name: _value(value, name) for name, value in pairs}


def _number(name: str, value: Any, lo: float | None = None, hi: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InputError(f"--set {name}: needs a number, got {value!r}")
    v = float(value)
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        raise InputError(f"--set {name}={value}: must lie in [{lo}, {hi}]")
    return v


def resolve_overrides(
    preset: str,
    settings: Mapping[str, Any],
    moderator: tuple[str, str, str],
    design: str = "patient",
    base: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Turn parsed settings into keyword overrides of :func:`theralens.simulation.generate.simulate`
    (``base``: overrides the settings apply on top of, e.g. the processes and moderators of a
    fitted study).

    ICCs are converted to SDs with the other parameters as finally set (preset, then the
    remaining settings): ``therapist_intercept_sd = residual_sd sqrt(icc / (1 - icc))`` and
    ``process_sd_therapist = process_sd_patient sqrt(icc / (1 - icc))``.
    """
    if preset not in PRESETS:
        match = closest(preset, list(PRESETS))
        hint = f' (did you mean "{match}"?)' if match else ""
        raise InputError(f"unknown preset {preset!r}{hint}; available: {', '.join(PRESETS)}")
    if design not in ("patient", "session"):
        raise InputError(f'--design {design}: use "patient" or "session"')
    session = design == "session"
    base_params = resolve_parameters(preset, **{k: v for k, v in (base or {}).items() if k not in CELL_FIELDS})
    processes, moderators = base_params.processes, tuple(base_params.moderators)
    out: dict[str, Any] = {}
    deferred: list[tuple[str, Any]] = []
    for name, value in settings.items():
        field, _, rest = name.partition(".")
        field = SHORTHANDS.get(field, field)
        if session:
            field = SESSION_FIELDS.get(field, field)
        if field in CELL_FIELDS:
            raise InputError(f"--set {name}: the numbers of therapists and patients are the design cells; "
                             "use --therapists and --patients-per-therapist")
        if field in ("therapist_icc", "process_icc"):
            deferred.append((name, value))
        elif field == "moderator_effect" and not rest:
            key = "session_moderator_effects" if session else "moderator_effects"
            out.setdefault(key, {})[moderator] = _number(name, value)
        elif field in ("moderator_effects", "session_moderator_effects") and rest:
            parts = tuple(rest.split("."))
            if len(parts) != 3 or parts[0] not in moderators or parts[1] not in processes or parts[2] not in TARGETS:
                raise InputError(f"--set {name}: write moderator_effects.MODERATOR.PROCESS.TARGET with MODERATOR in "
                                 f"{', '.join(moderators)}, PROCESS in {', '.join(processes)}, TARGET in "
                                 f"{', '.join(TARGETS)}")
            out.setdefault(field, {})[parts] = _number(name, value)
        elif field in _PER_PROCESS:
            if rest not in processes:
                raise InputError(f"--set {name}: {field} is set per process: "
                                 + " or ".join(f"{field}.{p}" for p in processes))
            out.setdefault(field, {})[rest] = _number(name, value)
        elif field in _FIELDS and not rest:
            current = getattr(base_params, field)
            if isinstance(current, dict | tuple):
                raise InputError(f"--set {name}: {field} cannot be set from the command line; use the Python API")
            if field == "max_sessions" or isinstance(current, int) and not isinstance(current, bool):
                if value is None or float(value) != int(value):
                    raise InputError(f"--set {name}={value}: needs a whole number")
                value = int(value)
            out[field] = value
        else:
            raise InputError(f"--set {name}: unknown setting{_suggest(name, processes)}; see "
                             "'theralens power --help' or theralens.planning.settings")
    if deferred:
        for name, value in deferred:
            icc = _number(name, value, 0.0, 0.99)
            ratio = math.sqrt(icc / (1.0 - icc))
            if name == "therapist_icc":
                resid = "session_residual_sd" if session else "residual_sd"
                out["therapist_intercept_sd"] = ratio * float(out.get(resid, getattr(base_params, resid)))
            else:
                proc = name.partition(".")[2]
                if proc not in processes:
                    raise InputError(f"--set {name}: write " + " or ".join(f"process_icc.{p}" for p in processes))
                sd_patient = {**base_params.process_sd_patient, **out.get("process_sd_patient", {})}[proc]
                out.setdefault("process_sd_therapist", {})[proc] = ratio * float(sd_patient)
    return out


def parse_numbers(text: str | Iterable[Any], what: str, integer: bool) -> list[Any]:
    """``"42,80"`` -> ``[42, 80]``; each value positive (whole numbers when ``integer``)."""
    items = [s.strip() for s in text.split(",")] if isinstance(text, str) else list(text)
    if not items or any(s == "" for s in items):
        raise InputError(f"--{what}: give comma-separated numbers, e.g. --{what} 42,80")
    out = []
    for s in items:
        try:
            v = float(s)
        except (TypeError, ValueError):
            raise InputError(f"--{what}: {s!r} is not a number; give comma-separated numbers, e.g. 42,80") from None
        if not math.isfinite(v) or v <= 0 or (integer and v != int(v)):
            kind = "whole numbers" if integer else "numbers"
            raise InputError(f"--{what}: {s!r} is not allowed; give positive {kind}")
        out.append(int(v) if integer else (int(v) if v == int(v) else v))
    return out


def design_cells(
    preset: str,
    therapists: Iterable[int] | None,
    patients_per_therapist: Iterable[float] | None,
    overrides: Mapping[str, Any],
) -> list[Cell]:
    """Every (therapists, patients per therapist) pair; ``None`` takes the preset's design
    (coyne2022: 42 therapists, 212 patients)."""
    base = dataclasses.replace(SimulationParameters(), **{
        k: v for k, v in {**PRESETS[preset][1], **overrides}.items() if k in CELL_FIELDS})
    js = parse_numbers(list(therapists), "therapists", True) if therapists is not None else [base.n_therapists]
    ms = (parse_numbers(list(patients_per_therapist), "patients-per-therapist", False)
          if patients_per_therapist is not None else None)
    cells = []
    for J in js:
        if J < 3:
            raise InputError(f"--therapists: {J} therapists cannot give a therapist slope variance; use 3 or more")
        for m in ms if ms is not None else [base.n_patients / base.n_therapists]:
            N = int(round(J * m))
            if m < 1:
                raise InputError(f"--patients-per-therapist: {m} is below 1; every therapist needs a patient")
            cells.append(Cell(n_therapists=int(J), patients_per_therapist=float(m), n_patients=N))
    if len(set(cells)) != len(cells):
        raise InputError("--therapists / --patients-per-therapist: a design cell is listed twice")
    return cells
