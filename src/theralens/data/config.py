"""The study configuration: which columns hold what, and which design to fit.

A configuration is a TOML file; every key has a default, so an empty file (or no file)
is a valid configuration for data laid out like the demo data::

    [columns]
    therapist = "therapist"
    patient = "patient"
    time = "session"                 # order of assessments: a number or a date
    outcome = "outcome"
    process = ["alliance", "expectancy"]
    covariates = []                  # patient covariates (value at the first assessment)
    higher_outcome_is = "worse"      # or "better": decides what "benefit" means everywhere
    service = ""                     # optional: the service/clinic column (a fourth level)

    [therapist_moderators]
    columns = []                     # columns of the therapist table (models.md, W_j);
                                     # empty: every column of the table but the therapist id
    joint = false                    # true: all moderators in one model (aim 3)

    [design]
    level = "patient"                # "patient" (the published design) or "session" (lagged)
    change = "residualized"          # or "slope", "post_minus_pre" (patient level only)
    process_sessions = 0             # 0: mean over all ratings; k: over the first k ratings
    caseload_weighting = "patient"   # therapist means over patients, or "session"
    decomposition = "manifest"       # or "latent" (latent caseload means, multilevel SEM), "both"

    [inference]
    ddf = "satterthwaite"            # df of the fixed-effect t-tests: "satterthwaite" (lmerTest's
                                     # default), "kenward-roger" (pbkrtest; small samples),
                                     # "residual" (n - rank X) or "asymptotic" (normal)
    latent_bias_correction = "none"  # or "jackknife": the latent ML estimates of the patient
                                     # design bias-corrected by the delete-one-therapist
                                     # jackknife, with jackknife SEs (docs/latent.md)

    [report]
    min_caseload = 5                 # below this, a profile says it is too uncertain
    show_patient_ids = false
    profiles = []                    # therapist ids with a profile page (default: all, up to 500)
    profiles_service = ""            # or every therapist of this service ([columns] service)

    [training]                       # theralens stability / training (docs/stability_training.md)
    start = ""                       # sessions column with each patient's treatment start (a date or
                                     # number, first value per patient); empty: first [columns] time
    date = "trained_on"              # therapist-table column: the date of the therapist's training
                                     # (empty: an untrained, comparison therapist)
    target = "trained_process"       # therapist-table column: the process(es) trained, by their
                                     # [columns] process names, several separated by ";"

The choices follow models.md ("Decomposition of a process", "Patient-level design").
Every problem (unknown key, wrong type, TOML syntax error) raises
:class:`~theralens.errors.InputError` naming the file, the key and the fix.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

try:  # Python >= 3.11
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

from theralens.errors import InputError, closest

__all__ = [
    "CHANGE_METHODS",
    "ColumnsConfig",
    "DesignConfig",
    "InferenceConfig",
    "ModeratorsConfig",
    "ReportConfig",
    "StudyConfig",
    "TrainingConfig",
    "config_from_dict",
    "load_config",
]

LEVELS = ("patient", "session")
CHANGE_METHODS = ("residualized", "slope", "post_minus_pre")
WEIGHTINGS = ("patient", "session")
DECOMPOSITIONS = ("manifest", "latent", "both")
LATENT_BIAS_CORRECTIONS = ("none", "jackknife")
DIRECTIONS = ("worse", "better")


@dataclass(frozen=True)
class ColumnsConfig:
    """Names of the columns in the sessions table (section ``[columns]``).

    Fields: ``therapist``, ``patient``, ``time`` (assessment order: number or date),
    ``outcome``, ``process`` (one or more process columns, modelled jointly),
    ``covariates`` (patient covariates), ``higher_outcome_is`` (``"worse"`` or
    ``"better"``: what "benefit" means in every table and profile), ``service`` (optional:
    the column of the service or clinic each therapist works in; every model then has a
    service random intercept, sessions in patients in therapists in services; empty: none).
    """

    therapist: str = "therapist"
    patient: str = "patient"
    time: str = "session"
    outcome: str = "outcome"
    process: tuple[str, ...] = ("alliance", "expectancy")
    covariates: tuple[str, ...] = ()
    higher_outcome_is: str = "worse"
    service: str = ""


@dataclass(frozen=True)
class ModeratorsConfig:
    """Therapist characteristics W_j (section ``[therapist_moderators]``).

    ``columns``: columns of the therapist table; ``joint``: all moderators in one model
    instead of one at a time (models.md, aim 3).
    """

    columns: tuple[str, ...] = ()
    joint: bool = False


@dataclass(frozen=True)
class DesignConfig:
    """The analysis design (section ``[design]``).

    ``level``: ``"patient"`` (published design) or ``"session"`` (lagged);
    ``change``: ``"residualized"``, ``"slope"`` or ``"post_minus_pre"``;
    ``process_sessions``: 0 = process score is the mean of all ratings, k = of the first k;
    ``caseload_weighting``: ``"patient"`` (each patient weighs once) or ``"session"``;
    ``decomposition``: ``"manifest"`` (observed caseload means, as lmerTest), ``"latent"``
    (latent caseload means: the multilevel SEM of Coyne et al. 2022; theralens.latent) or
    ``"both"`` (every between-type effect under both, side by side).
    """

    level: str = "patient"
    change: str = "residualized"
    process_sessions: int = 0
    caseload_weighting: str = "patient"
    decomposition: str = "manifest"


@dataclass(frozen=True)
class InferenceConfig:
    """Tests of the fixed effects (section ``[inference]``): ``ddf``, the degrees-of-freedom
    method of every model the study fits (:mod:`theralens.model.ddf`: ``"satterthwaite"``,
    ``"kenward-roger"``, ``"residual"``, ``"asymptotic"``); ``latent_bias_correction``:
    ``"none"`` (the latent ML estimates with Wald intervals, as Mplus and lavaan) or
    ``"jackknife"`` (bias-corrected by the delete-one-therapist jackknife, with its SEs and t
    intervals: :meth:`theralens.latent.ml.LatentFit.jackknife`; patient design)."""

    ddf: str = "satterthwaite"
    latent_bias_correction: str = "none"


@dataclass(frozen=True)
class ReportConfig:
    """Report options (section ``[report]``): ``min_caseload``, ``show_patient_ids``, and which
    therapists get a profile page (and are drawn by name in the slope figures): ``profiles`` (a
    list of therapist ids) and/or ``profiles_service`` (every therapist of that service); with
    neither, every therapist up to 500, none above (results.json and the tables hold everyone)."""

    min_caseload: int = 5
    show_patient_ids: bool = False
    profiles: tuple[str, ...] = ()
    profiles_service: str = ""


@dataclass(frozen=True)
class TrainingConfig:
    """Columns of the training loop (section ``[training]``; docs/stability_training.md).

    ``start``: column of the sessions table with each patient's treatment start (a date or a
    number; the first value per patient), empty for the first ``[columns] time`` of each
    patient; ``date``: column of the therapist table with the training date (empty for an
    untrained therapist); ``target``: column of the therapist table naming the process(es)
    trained (``[columns] process`` names, several separated by ``;``).
    """

    start: str = ""
    date: str = "trained_on"
    target: str = "trained_process"


@dataclass(frozen=True)
class StudyConfig:
    """A complete, checked study configuration.

    Fields: ``columns`` (:class:`ColumnsConfig`), ``therapist_moderators``
    (:class:`ModeratorsConfig`), ``design`` (:class:`DesignConfig`), ``inference``
    (:class:`InferenceConfig`), ``report``
    (:class:`ReportConfig`), ``training`` (:class:`TrainingConfig`) and ``source`` (the file it came from, or ``None``).
    """

    columns: ColumnsConfig = field(default_factory=ColumnsConfig)
    therapist_moderators: ModeratorsConfig = field(default_factory=ModeratorsConfig)
    design: DesignConfig = field(default_factory=DesignConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)
    report: ReportConfig = field(default_factory=ReportConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    source: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain, JSON-ready dictionary (tuples become lists), without ``source``."""
        out = asdict(self)
        out.pop("source", None)
        for section in out.values():
            for key, value in section.items():
                if isinstance(value, tuple):
                    section[key] = list(value)
        return out


_SECTIONS: dict[str, type] = {
    "columns": ColumnsConfig,
    "therapist_moderators": ModeratorsConfig,
    "design": DesignConfig,
    "inference": InferenceConfig,
    "report": ReportConfig,
    "training": TrainingConfig,
}

_CHOICES: dict[tuple[str, str], tuple[str, ...]] = {
    ("columns", "higher_outcome_is"): DIRECTIONS,
    ("design", "level"): LEVELS,
    ("design", "change"): CHANGE_METHODS,
    ("design", "caseload_weighting"): WEIGHTINGS,
    ("design", "decomposition"): DECOMPOSITIONS,
    ("inference", "latent_bias_correction"): LATENT_BIAS_CORRECTIONS,
}

_LIST_KEYS = {
    ("columns", "process"),
    ("columns", "covariates"),
    ("therapist_moderators", "columns"),
    ("report", "profiles"),
}
_BOOL_KEYS = {("therapist_moderators", "joint"), ("report", "show_patient_ids")}
_INT_KEYS = {("design", "process_sessions"): 0, ("report", "min_caseload"): 1}
#: Text keys that may be empty (meaning: not given).
_EMPTY_OK = {("training", "start"), ("columns", "service"), ("report", "profiles_service")}


def _closest(name: str, options: list[str] | tuple[str, ...]) -> str:
    """' (did you mean "x"?)' for the closest option, or a list of the valid ones."""
    match = closest(name, options)
    if match:
        return f' (did you mean "{match}"?)'
    return " (valid: " + ", ".join(f'"{o}"' for o in options) + ")"


def _where(source: str | None) -> str:
    return f"config {source}" if source else "config"


def _check_value(section: str, key: str, value: Any, source: str | None) -> Any:
    where = f"{_where(source)}: [{section}] {key}"
    if (section, key) == ("inference", "ddf"):  # the model's own check of its ddf names
        from theralens.model.ddf import check_ddf

        return check_ddf(value, where)
    if (section, key) in _LIST_KEYS:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise InputError(f'{where} must be a list of column names, e.g. {key} = ["a", "b"]; got {value!r}')
        if len(set(value)) != len(value):
            dup = sorted({v for v in value if value.count(v) > 1})
            raise InputError(f"{where} lists {', '.join(dup)} twice; name each column once")
        if key == "process" and not value:
            raise InputError(f'{where} is empty; name at least one process column, e.g. ["alliance"]')
        return tuple(value)
    if (section, key) in _BOOL_KEYS:
        if not isinstance(value, bool):
            raise InputError(f"{where} must be true or false (no quotes); got {value!r}")
        return value
    if (section, key) in _INT_KEYS:
        lowest = _INT_KEYS[(section, key)]
        if isinstance(value, bool) or not isinstance(value, int) or value < lowest:
            raise InputError(f"{where} must be a whole number >= {lowest}; got {value!r}")
        return value
    choices = _CHOICES.get((section, key))
    if (section, key) in _EMPTY_OK and value == "":
        return value
    if not isinstance(value, str) or not value:
        allowed = " or ".join(f'"{c}"' for c in choices) if choices else "a column name in quotes"
        raise InputError(f"{where} must be {allowed}; got {value!r}")
    if choices and value not in choices:
        allowed = ", ".join(f'"{c}"' for c in choices)
        raise InputError(f'{where} = "{value}" is not allowed; use one of {allowed}')
    return value


def config_from_dict(data: dict[str, Any], source: str | None = None) -> StudyConfig:
    """Build a checked :class:`StudyConfig` from a nested dictionary (parsed TOML).

    Missing sections and keys take their defaults; unknown ones raise InputError with
    the closest valid name.
    """
    if not isinstance(data, dict):
        raise InputError(f"{_where(source)}: expected sections like [columns]; got {data!r}")
    sections: dict[str, Any] = {}
    for section, values in data.items():
        if section not in _SECTIONS:
            raise InputError(f"{_where(source)}: unknown section [{section}]{_closest(section, list(_SECTIONS))}")
        if not isinstance(values, dict):
            raise InputError(
                f"{_where(source)}: {section} must be a section written [{section}] followed by key = value lines"
            )
        cls = _SECTIONS[section]
        valid = list(cls.__dataclass_fields__)
        kwargs = {}
        for key, value in values.items():
            if key not in valid:
                raise InputError(f"{_where(source)}: unknown key {key!r} in [{section}]{_closest(key, valid)}")
            kwargs[key] = _check_value(section, key, value, source)
        sections[section] = cls(**kwargs)
    config = StudyConfig(**sections, source=source)
    _check_consistency(config)
    return config


def _check_consistency(config: StudyConfig) -> None:
    """Each column plays one role; a process is not also the outcome or an id; the latent bias
    correction is asked for only where it applies."""
    cols = config.columns
    roles: dict[str, str] = {}
    named = [
        ("therapist", cols.therapist),
        ("patient", cols.patient),
        ("time", cols.time),
        ("outcome", cols.outcome),
    ]
    named += [("process", p) for p in cols.process]
    named += [("covariates", c) for c in cols.covariates]
    if cols.service:
        named.append(("service", cols.service))
    for role, name in named:
        if name in roles:
            raise InputError(
                f'{_where(config.source)}: column "{name}" is given both as [columns] '
                f"{roles[name]} and as {role}; each column can play one role only"
            )
        roles[name] = role
    inf, design = config.inference, config.design
    if inf.latent_bias_correction != "none" and design.level == "session" and design.decomposition != "manifest":
        asked = inf.latent_bias_correction
        raise InputError(f'{_where(config.source)}: [inference] latent_bias_correction = "{asked}" '
                         "applies to the patient design's ML latent model, and the session design's latent model is "
                         'Bayesian; remove the key, or use [design] level = "patient"')


_TOML_POS = re.compile(r"\(at line (\d+), column (\d+)\)")


def load_config(path: str | Path | None = None) -> StudyConfig:
    """Read a TOML configuration file; ``None`` gives the defaults.

    Raises InputError for a missing or unreadable file, a TOML syntax error (with line and
    column), an unknown section or key (with the closest valid name), or a wrong value.
    """
    if path is None:
        return StudyConfig()
    p = Path(path)
    if not p.exists():
        raise InputError(f"config file {p} does not exist; check the path")
    if p.is_dir():
        raise InputError(f"config {p} is a folder, not a file; give the path of a .toml file")
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise InputError(f"config {p} cannot be read ({exc.strerror}); check its permissions") from exc
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InputError(f"config {p} is not UTF-8 text (byte {exc.start}); save it as UTF-8 plain text") from exc
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        msg = str(exc)
        pos = _TOML_POS.search(msg)
        what = _TOML_POS.sub("", msg).strip().rstrip(".")
        where = f"line {pos.group(1)}, column {pos.group(2)}" if pos else "somewhere in the file"
        raise InputError(
            f"config {p}: TOML syntax error at {where}: {what}; "
            'write settings as key = "value" under a [section] header'
        ) from exc
    return config_from_dict(data, source=str(p))
