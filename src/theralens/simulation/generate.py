"""Simulate studies of patients nested in therapists with known truth.

The generative model (one call of :func:`simulate`; every number is a field of
:class:`SimulationParameters`, shown here with the ``coyne2022`` values). The processes, the
therapist moderators and the patient covariates are not fixed: ``processes`` names any number
of processes (each per-process field takes a value per name, :data:`GENERIC_PROCESS` for names
the preset lacks), ``moderators`` and ``covariates`` map names to a :class:`Variable` (binary or
continuous) with effects in ``moderator_main``/``moderator_effects`` and ``covariate_effects``;
the coyne2022 values below are the defaults, and give the same data for the same seed as before
they were configurable.

**Therapists** j = 1..J (42). Moderators W_j, drawn independently of each other and of
everything else: ``cbt`` ~ Bernoulli(0.4); ``orientation`` = "CBT" when ``cbt`` = 1,
otherwise one of "psychodynamic", "integrative", "humanistic"; ``self_rated_alliance_skill``
and ``self_rated_expectancy_skill`` ~ Normal(5.0, 0.8) on a 1-7 scale (clipped, 2
decimals). Each moderator enters the model centred at its population mean c_W (0.4 and
5.0): ``truth["moderator_centers"]``.

**Caseloads**: n_j = 1 + Multinomial(N - J, p) with p ~ Dirichlet(``caseload_shape`` = 1.5),
so the total is exactly N (212) and caseloads are very uneven (negative-binomial-like,
1 to 15 or more patients); ``caseload_shape=None`` gives equal caseloads.

**Treatment length and schedule**: patient i attends S_i = min(16, 3 + G) weekly sessions,
G ~ Geometric (the number of sessions attended before dropping out, hazard 0.06 per
session; missing completely at random). The process (``alliance`` on 1-7, ``expectancy``
on 1-5) is rated every session; the outcome every second session (sessions 1, 3, ..., 15,
about every two weeks over up to 16 weeks). A process rating is missing with probability
``process_missing_rate``; in the patient design an outcome assessment after baseline is
missing with probability ``outcome_missing_rate``.

**Process ratings**: X_sij = m + a_j + d_ij + trend * (s - 1) + e_sij, with therapist
levels a_j ~ N(0, sd_therapist^2), patient deviations d_ij ~ N(0, sd_patient^2) (the two
processes correlate ``process_corr`` at both levels), session noise e_sij, clipped to the
scale and rounded to 2 decimals. Processes are exogenous: they do not depend on outcomes.

**Outcome**: TOP-like z-scores, higher = more impaired, improvement = decrease. Baseline
Y_0 ~ N(1.0, 0.6^2), independent of every random effect. Therapist random effects
(u0j, u1j for each process) are multivariate normal with SDs ``therapist_intercept_sd``,
``slope_sd`` and one correlation ``random_corr`` between every pair.

``design="patient"`` (default; models.md patient-level equations). With the observed
patient score X_ij (mean of the patient's ratings, all sessions) and caseload means
Xbar_j (over the analysed patients, each weighing once; Xbar the mean of therapist means),
exactly as :func:`theralens.data.decompose.patient_level` computes them with the default
config, the final outcome (at the patient's last outcome assessment) is

    Y_final = g00 + g * Y_0 + sum_W g02_W (W_j - c_W) + u0j
              + sum_p [ b1jp (X_ijp - Xbar_jp)
                        + (g01_p + sum_W g03_Wp (W_j - c_W)) (Xbar_jp - Xbar_p) ] + e_ij
    b1jp    = g10_p + sum_W g11_Wp (W_j - c_W) + g12_p (Xbar_jp - Xbar_p) + u1jp

Intermediate outcomes lie on the line from baseline to final plus noise (SD 0.2). The
patient-level model (residualized change: final ~ baseline, therapist random intercept and
random slopes on the within components) recovers ``truth["effects"]`` (g10 as
``within_therapist``, g01 as ``between_therapist``), ``truth["slope_sd"]`` (SD of u1j; with
no moderator in the model the SD of the therapist slopes is
``truth["slope_sd_marginal"]`` = sqrt(sd^2 + sum_W g11^2 Var W), population variances),
``truth["moderators"]`` (g11 for target ``within_slope``, g03 for ``between_association``,
also when each moderator is fitted alone: moderators are independent) and
``truth["within_x_between"]`` (g12). These are the parameters of the *observed*
(manifest) decomposition, so they are exact for that estimator; the latent-variable
parameters differ by the unreliability of the means.

``decomposition="latent"`` (patient design) generates the same outcome from the latent
decomposition instead (models.md "Latent decomposition"): the between part is the therapist's
process level a_j (the latent caseload mean, not Xbar_j - Xbar) and the within part X_ij -
kappa - a_j (kappa a constant: the sample mean of X_ij - a_j), so that ``truth`` holds the
parameters of the latent model (:mod:`theralens.latent.ml` estimates them) and the manifest
between-type estimates are attenuated by the reliability of Xbar_j.

``design="session"`` (models.md session-level design). Outcomes are generated in time
order: for consecutive outcome assessments t -> t+1 of a patient,

    Y_t+1 = a0 + a * Y_t + c * session_t + sum_W g02_W (W_j - c_W) + u0j + v0i
            + sum_p [ b1jp (X_tijp - Xbar_ijp) + h_p (Xbar_ijp - Xbar_jp)
                      + (k_p + sum_W g03_Wp (W_j - c_W)) (Xbar_jp - Xbar_p) ] + e
    b1jp  = w_p + sum_W g11_Wp (W_j - c_W) + g12_p (Xbar_jp - Xbar_p) + u1jp

with X_tij the rating at the session of assessment t, Xbar_ij its mean over the patient's
predictor assessments (all but the last), Xbar_j over patients, v0i ~ N(0,
``patient_intercept_sd``^2), exactly as :func:`theralens.data.decompose.session_level`
computes them. The lagged mixed model (Y_t+1 ~ Y_t + session + components, therapist random
intercept and slopes on the within-patient components, patient random intercept) is then
correctly specified (the baseline is independent of the random effects, so the lagged
outcome raises no initial-conditions bias) and recovers ``truth["effects"]`` (components
``within_patient``, ``between_patient``, ``between_therapist``), ``truth["lag"]``,
``truth["time"]``, ``truth["slope_sd"]`` and ``truth["moderators"]``. In this design
process ratings at outcome assessments are never missing and no outcome assessment is
skipped, so that the pairs the analysis forms are the pairs generated.

One generative model cannot give exact truth for both designs (each analysis conditions
on different summaries), hence the ``design`` switch. ``truth["therapists"]`` holds each
therapist's realised effects (u0j, u1j and total within slope b1j per process).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from theralens.data.config import ColumnsConfig, DesignConfig, ModeratorsConfig, StudyConfig
from theralens.errors import InputError, closest

__all__ = [
    "PER_PROCESS",
    "PRESETS",
    "LatentSimulation",
    "SimulatedStudy",
    "SimulationParameters",
    "Variable",
    "list_presets",
    "resolve_parameters",
    "simulate",
    "simulate_latent",
]

#: The processes and therapist moderators of the coyne2022 preset (the defaults; any others
#: can be simulated: ``processes`` and ``moderators`` of :class:`SimulationParameters`).
PROCESSES = ("alliance", "expectancy")
MODERATORS = ("cbt", "self_rated_alliance_skill", "self_rated_expectancy_skill")
TARGETS = ("within_slope", "between_association")


@dataclass(frozen=True)
class Variable:
    """A simulated characteristic (therapist moderator or patient covariate).

    ``kind`` "binary": 1 with probability ``mean``, else 0 (variance mean (1 - mean));
    "continuous": Normal(``mean``, ``sd``^2) clipped to [``low``, ``high``] and rounded to
    ``decimals`` (None: not rounded); variance sd^2 (before clipping). It enters the outcome
    model centred at ``mean``.
    """

    kind: str = "continuous"
    mean: float = 0.0
    sd: float = 1.0
    low: float = -math.inf
    high: float = math.inf
    decimals: int | None = None

    @property
    def variance(self) -> float:
        return self.mean * (1.0 - self.mean) if self.kind == "binary" else self.sd**2

    def draw(self, rng: np.random.Generator, n: int) -> np.ndarray:
        if self.kind == "binary":
            return (rng.random(n) < self.mean).astype(int)
        x = np.clip(rng.normal(self.mean, self.sd, n), self.low, self.high)
        return x if self.decimals is None else np.round(x, self.decimals)


SKILL = Variable("continuous", 5.0, 0.8, 1.0, 7.0, 2)
#: The ``patient_covariates=True`` covariate: age in years, centred at 40.
AGE = Variable("continuous", 40.0, 12.0, 18.0, 80.0, 0)
#: Default of a per-process field for a process the preset does not name.
GENERIC_PROCESS = {
    "process_mean": 4.0, "process_range": (1.0, 7.0), "process_sd_therapist": 0.3, "process_sd_patient": 0.6,
    "process_sd_session": 0.35, "process_trend": 0.0, "within": 0.0, "between": 0.0, "within_x_between": 0.0,
    "slope_sd": 0.0, "session_within_patient": 0.0, "session_between_patient": 0.0,
    "session_between_therapist": 0.0, "session_within_x_between": 0.0, "session_slope_sd": 0.0,
}
#: The fields of :class:`SimulationParameters` that hold one value per process.
PER_PROCESS = tuple(GENERIC_PROCESS)
#: Dict fields an override replaces instead of merging into.
REPLACED = ("moderators", "covariates")


def _pp(alliance: float, expectancy: float) -> dict[str, float]:
    return {"alliance": alliance, "expectancy": expectancy}


def _f(factory: Any) -> Any:
    return field(default_factory=factory)


@dataclass(frozen=True)
class SimulationParameters:
    """Every number of the generative model (module docstring); dict fields are per process.

    Design: n_therapists, n_patients, caseload_shape (Dirichlet concentration, None =
    equal caseloads), max_sessions, min_sessions, dropout_hazard (per session),
    outcome_every (sessions between outcome assessments), process_missing_rate,
    outcome_missing_rate (patient design), design ("patient" or "session").
    Processes: ``processes`` (names, any number), process_mean, process_range,
    process_sd_therapist, process_sd_patient, process_sd_session, process_trend (per
    session), process_corr (one correlation, or a matrix in ``processes`` order). A process
    missing from a per-process field takes :data:`GENERIC_PROCESS`.
    Therapists: ``moderators`` (name -> :class:`Variable`, binary or continuous; drawn binary
    ones first, then the orientation label of a ``cbt`` moderator, then continuous ones, each
    in order), other_orientations.
    Outcome, both designs: baseline_mean, baseline_sd, therapist_intercept_sd,
    random_corr (one correlation between every pair of therapist random effects, or a
    matrix in the order intercept, slopes of ``processes``), moderator_main (g02 per
    moderator), ``covariates`` (patient covariates: name -> :class:`Variable`) with
    ``covariate_effects`` (per unit, centred at the variable's mean), patient_covariates
    (True adds :data:`AGE` as ``age``) and age_effect (its effect, per year).
    Patient design: intercept (g00), baseline_coef (g), within (g10), between (g01),
    within_x_between (g12), slope_sd (SD u1j), residual_sd, moderator_effects
    ({(moderator, process, target): value}, target "within_slope" (g11) or
    "between_association" (g03)).
    Session design: session_intercept (a0), lag_coef (a), time_coef (c, per session),
    session_within_patient (w), session_between_patient (h), session_between_therapist
    (k), session_within_x_between (g12), session_slope_sd, patient_intercept_sd,
    session_residual_sd, session_moderator_effects.
    """

    n_therapists: int = 42
    n_patients: int = 212
    caseload_shape: float | None = 1.5
    max_sessions: int = 16
    min_sessions: int = 3
    dropout_hazard: float = 0.06
    outcome_every: int = 2
    process_missing_rate: float = 0.03
    outcome_missing_rate: float = 0.05
    design: str = "patient"
    decomposition: str = "manifest"

    processes: tuple[str, ...] = PROCESSES
    moderators: dict[str, Variable] = _f(lambda: {"cbt": Variable("binary", 0.4),
                                                  "self_rated_alliance_skill": SKILL,
                                                  "self_rated_expectancy_skill": SKILL})
    other_orientations: tuple[str, ...] = ("psychodynamic", "integrative", "humanistic")

    process_mean: dict[str, float] = _f(lambda: _pp(5.5, 3.7))
    process_range: dict[str, tuple[float, float]] = _f(lambda: {"alliance": (1.0, 7.0), "expectancy": (1.0, 5.0)})
    process_sd_therapist: dict[str, float] = _f(lambda: _pp(0.30, 0.25))
    process_sd_patient: dict[str, float] = _f(lambda: _pp(0.65, 0.55))
    process_sd_session: dict[str, float] = _f(lambda: _pp(0.35, 0.35))
    process_trend: dict[str, float] = _f(lambda: _pp(0.02, 0.01))
    process_corr: float | tuple[tuple[float, ...], ...] = 0.4

    baseline_mean: float = 1.0
    baseline_sd: float = 0.6
    therapist_intercept_sd: float = 0.10
    random_corr: float | tuple[tuple[float, ...], ...] = 0.2
    moderator_main: dict[str, float] = _f(lambda: dict.fromkeys(MODERATORS, 0.0))
    covariates: dict[str, Variable] = _f(dict)
    covariate_effects: dict[str, float] = _f(dict)
    patient_covariates: bool = False
    age_effect: float = 0.0

    intercept: float = 0.05
    baseline_coef: float = 0.6
    within: dict[str, float] = _f(lambda: _pp(-0.10, -0.15))
    between: dict[str, float] = _f(lambda: _pp(-0.45, 0.0))
    within_x_between: dict[str, float] = _f(lambda: _pp(0.0, 0.0))
    slope_sd: dict[str, float] = _f(lambda: _pp(0.12, 0.08))
    residual_sd: float = 0.45
    moderator_effects: dict[tuple[str, str, str], float] = _f(
        lambda: {
            ("self_rated_alliance_skill", "alliance", "within_slope"): 0.08,
            ("cbt", "alliance", "between_association"): 0.35,
        }
    )

    session_intercept: float = 0.15
    lag_coef: float = 0.75
    time_coef: float = 0.0
    session_within_patient: dict[str, float] = _f(lambda: _pp(-0.04, -0.06))
    session_between_patient: dict[str, float] = _f(lambda: _pp(-0.03, -0.05))
    session_between_therapist: dict[str, float] = _f(lambda: _pp(-0.12, 0.0))
    session_within_x_between: dict[str, float] = _f(lambda: _pp(0.0, 0.0))
    session_slope_sd: dict[str, float] = _f(lambda: _pp(0.04, 0.03))
    patient_intercept_sd: float = 0.08
    session_residual_sd: float = 0.30
    session_moderator_effects: dict[tuple[str, str, str], float] = _f(
        lambda: {
            ("self_rated_alliance_skill", "alliance", "within_slope"): 0.03,
            ("cbt", "alliance", "between_association"): 0.10,
        }
    )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary (tuple keys become "moderator:process:target")."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if isinstance(v, dict):
                v = {(":".join(k) if isinstance(k, tuple) else k): _plain(x) for k, x in v.items()}
            out[f.name] = _plain(v)
        return out


def _plain(v: Any) -> Any:
    if isinstance(v, Variable):
        return {k: (None if isinstance(x, float) and not math.isfinite(x) else x)
                for k, x in dataclasses.asdict(v).items()}
    if isinstance(v, tuple):
        return [_plain(x) for x in v]
    return v


PRESETS: dict[str, tuple[str, dict[str, Any]]] = {
    "coyne2022": (
        "Mirrors Coyne et al. (2022): 42 therapists, 212 patients, very uneven caseloads, "
        "up to 16 weekly sessions, outcome every second session, dropout; humble therapists "
        "(lower self-rated alliance skill) have a stronger within alliance slope and CBT "
        "weakens the between-therapist alliance association.",
        {},
    ),
    "large": (
        "300 therapists x 10 patients (equal caseloads), otherwise as coyne2022: large "
        "enough to check that estimates recover the truth.",
        {"n_therapists": 300, "n_patients": 3000, "caseload_shape": None},
    ),
}


@dataclass
class SimulatedStudy:
    """A simulated study.

    Fields: ``sessions`` (long table: therapist, patient, session, outcome, the processes
    (alliance, expectancy), the covariates [age]); ``therapists`` (therapist, orientation
    when a ``cbt`` moderator is simulated, the moderators (cbt, self_rated_alliance_skill,
    self_rated_expectancy_skill)); ``truth`` (see module
    docstring); ``parameters`` (:class:`SimulationParameters`); ``preset``; ``seed``.
    """

    sessions: pd.DataFrame
    therapists: pd.DataFrame
    truth: dict[str, Any]
    parameters: SimulationParameters
    preset: str
    seed: int | None

    def config(self, moderators: tuple[str, ...] | None = None) -> StudyConfig:
        """A :class:`StudyConfig` matching these data (design level as simulated); moderators
        by default self_rated_alliance_skill and cbt where simulated, else every moderator."""
        p = self.parameters
        if moderators is None:
            moderators = tuple(m for m in ("self_rated_alliance_skill", "cbt") if m in p.moderators) or tuple(
                p.moderators)
        return StudyConfig(
            columns=ColumnsConfig(process=tuple(p.processes), covariates=tuple(p.covariates)),
            therapist_moderators=ModeratorsConfig(columns=tuple(moderators)),
            design=DesignConfig(level=self.parameters.design),
        )


def list_presets() -> dict[str, str]:
    """Preset names and what each simulates."""
    return {name: description for name, (description, _) in PRESETS.items()}


def _closest(name: str, options: list[str]) -> str:
    match = closest(name, options)
    return f' (did you mean "{match}"?)' if match else ""


def resolve_parameters(preset: str = "coyne2022", **overrides: Any) -> SimulationParameters:
    """The parameters :func:`simulate` uses for ``preset`` with ``overrides``, checked:
    dict fields merged, per-process fields completed for every process
    (:data:`GENERIC_PROCESS`) and restricted to ``processes``, ``patient_covariates`` turned
    into the ``age`` covariate."""
    return _parameters(preset, overrides)


def _parameters(preset: str, overrides: Mapping[str, Any]) -> SimulationParameters:
    if preset not in PRESETS:
        raise InputError(
            f"unknown simulation preset {preset!r}{_closest(preset, list(PRESETS))}; available: {', '.join(PRESETS)}"
        )
    base = SimulationParameters()
    merged: dict[str, Any] = {}
    names = [f.name for f in dataclasses.fields(SimulationParameters)]
    for key, value in {**PRESETS[preset][1], **overrides}.items():
        if key not in names:
            raise InputError(f"unknown simulation parameter {key!r}{_closest(key, names)}")
        current = merged.get(key, getattr(base, key))
        if isinstance(current, dict) and isinstance(value, Mapping) and key not in REPLACED:
            value = {**current, **value}
        merged[key] = value
    procs = tuple(merged.get("processes", base.processes))
    mods = merged.get("moderators", base.moderators)
    for name in ("moderator_effects", "session_moderator_effects", "moderator_main"):
        given = overrides.get(name, {})
        effects = dict(merged.get(name, getattr(base, name)))
        # effects of the defaults on moderators or processes not simulated are dropped; given ones are checked
        merged[name] = {k: v for k, v in effects.items() if k in given or (
            (k in mods) if name == "moderator_main" else (k[0] in mods and k[1] in procs))}
    if not procs or len(set(procs)) != len(procs) or not all(isinstance(q, str) and q for q in procs):
        raise InputError(f"processes must be distinct names, at least one; got {procs!r}")
    merged["processes"] = procs
    for name in PER_PROCESS:
        given = dict(merged.get(name, getattr(base, name)))
        merged[name] = {q: given.get(q, GENERIC_PROCESS[name]) for q in procs}
    if merged.get("patient_covariates", base.patient_covariates):
        covs = dict(merged.get("covariates", base.covariates))
        merged["covariates"] = {"age": covs.pop("age", AGE), **covs}
        effects = dict(merged.get("covariate_effects", base.covariate_effects))
        effects.setdefault("age", float(merged.get("age_effect", base.age_effect)))
        merged["covariate_effects"] = effects
    params = dataclasses.replace(base, **merged)
    _check(params)
    return params


def _check(p: SimulationParameters) -> None:
    if p.design not in ("patient", "session"):
        raise InputError(f'design must be "patient" or "session"; got {p.design!r}')
    if p.decomposition not in ("manifest", "latent"):
        raise InputError(f'decomposition must be "manifest" or "latent"; got {p.decomposition!r}')
    if p.decomposition == "latent" and p.design != "patient":
        raise InputError('decomposition = "latent" is simulated for the patient design only')
    if p.n_therapists < 1 or p.n_patients < p.n_therapists:
        raise InputError(
            f"need n_patients >= n_therapists >= 1 (every therapist has a patient); got "
            f"{p.n_patients} patients and {p.n_therapists} therapists"
        )
    if not 1 <= p.min_sessions <= p.max_sessions:
        raise InputError("need 1 <= min_sessions <= max_sessions")
    for name in ("dropout_hazard", "process_missing_rate", "outcome_missing_rate"):
        if not 0.0 <= getattr(p, name) < 1.0:
            raise InputError(f"{name} must be in [0, 1); got {getattr(p, name)}")
    for kind, table in (("moderator", p.moderators), ("covariate", p.covariates)):
        for name, v in table.items():
            if not isinstance(v, Variable) or v.kind not in ("binary", "continuous"):
                raise InputError(f"{kind} {name!r}: give a Variable('binary', p) or Variable('continuous', mean, sd)")
            if v.kind == "binary" and not 0.0 <= v.mean <= 1.0:
                raise InputError(f"{kind} {name!r}: a binary variable's mean is its probability, in [0, 1]")
            if v.kind == "continuous" and not v.sd >= 0.0:
                raise InputError(f"{kind} {name!r}: sd must be >= 0")
    clash = set(p.moderators) & set(p.covariates) | (set(p.processes) & (set(p.moderators) | set(p.covariates)))
    reserved = {"therapist", "patient", "session", "outcome", "orientation"}
    clash |= reserved & (set(p.processes) | set(p.moderators) | set(p.covariates))
    if clash:
        raise InputError(f"names used twice or reserved: {', '.join(sorted(clash))}")
    for name in list(p.moderator_main) + [k[0] for k in p.moderator_effects] + [
            k[0] for k in p.session_moderator_effects]:
        if name not in p.moderators:
            raise InputError(f"moderator {name!r} has an effect but is not simulated; moderators: "
                             f"{', '.join(p.moderators) or 'none'}")
    for name in p.covariate_effects:
        if name not in p.covariates:
            raise InputError(f"covariate {name!r} has an effect but is not simulated")
    if p.outcome_every < 1:
        raise InputError("outcome_every must be >= 1")
    if p.caseload_shape is not None and p.caseload_shape <= 0:
        raise InputError("caseload_shape must be > 0 (or None for equal caseloads)")
    for key in list(p.moderator_effects) + list(p.session_moderator_effects):
        if not (isinstance(key, tuple) and len(key) == 3):
            raise InputError(f"moderator effect keys are (moderator, process, target); got {key!r}")
        mod, proc, target = key
        if mod not in p.moderators or proc not in p.processes or target not in TARGETS:
            raise InputError(
                f"moderator effect {key!r}: moderator in {tuple(p.moderators)}, process in {p.processes}, "
                f"target in {TARGETS}"
            )
    _correlation(p.random_corr, 1 + len(p.processes), "random_corr")
    _correlation(p.process_corr, len(p.processes), "process_corr")


def _correlation(corr: float | tuple[tuple[float, ...], ...], d: int, name: str) -> np.ndarray:
    """The d x d correlation matrix of ``corr`` (one value for every pair, or the matrix), checked."""
    if isinstance(corr, int | float):
        c = np.full((d, d), float(corr)) + (1 - float(corr)) * np.eye(d)
    else:
        c = np.asarray(corr, dtype=float)
        if c.shape != (d, d) or not np.allclose(c, c.T) or not np.allclose(np.diag(c), 1.0):
            raise InputError(f"{name}: give one correlation or a symmetric {d} x {d} matrix with ones on the diagonal")
    if np.linalg.eigvalsh(c).min() <= 0:
        raise InputError(f"{name} = {corr} does not give a valid (positive definite) correlation")
    return c


def _mvn(rng: np.random.Generator, n: int, sds: np.ndarray, corr: float | tuple[tuple[float, ...], ...]
         ) -> np.ndarray:
    d = len(sds)
    c = _correlation(corr, d, "correlation")
    z = rng.standard_normal((n, d))
    return (z @ np.linalg.cholesky(c).T) * np.asarray(sds, dtype=float)[None, :]


def _caseloads(rng: np.random.Generator, p: SimulationParameters) -> np.ndarray:
    J, N = p.n_therapists, p.n_patients
    if p.caseload_shape is None:
        n = np.full(J, N // J)
        n[: N % J] += 1
        return n
    w = rng.dirichlet(np.full(J, float(p.caseload_shape)))
    return 1 + rng.multinomial(N - J, w)


def _group_mean(values: np.ndarray, groups: np.ndarray, n_groups: int, mask: np.ndarray) -> np.ndarray:
    """Mean of values[mask] per group (NaN where a group has none)."""
    s = np.bincount(groups[mask], weights=values[mask], minlength=n_groups)
    c = np.bincount(groups[mask], minlength=n_groups)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(c > 0, s / np.maximum(c, 1), np.nan)


def simulate(preset: str = "coyne2022", *, seed: int | None = None, **overrides: Any) -> SimulatedStudy:
    """Simulate one study from ``preset`` with parameters replaced by ``overrides``.

    Dict-valued parameters are merged (``within={"alliance": -0.2}`` changes alliance only).
    The same ``seed`` gives the same data. See the module docstring for the model and for
    which parameters each design's analysis recovers.
    """
    p = _parameters(preset, overrides)
    rng = np.random.default_rng(seed)
    J, N = p.n_therapists, p.n_patients
    S = p.max_sessions

    # therapists and moderators: binary ones, the orientation label of "cbt", continuous ones
    W: dict[str, np.ndarray] = {}
    orientation = None
    for name, v in p.moderators.items():
        if v.kind == "binary":
            W[name] = v.draw(rng, J)
    if "cbt" in W and p.other_orientations:
        others = np.asarray(p.other_orientations, dtype=object)
        orientation = np.where(W["cbt"] == 1, "CBT", others[rng.integers(0, len(others), J)])
    for name, v in p.moderators.items():
        if v.kind == "continuous":
            W[name] = v.draw(rng, J)
    centers = {m: float(v.mean) for m, v in p.moderators.items()}
    Wc = {m: W[m].astype(float) - centers[m] for m in p.moderators}

    # patients, caseloads, sessions
    n_j = _caseloads(rng, p)
    tj = np.repeat(np.arange(J), n_j)
    extra = rng.geometric(p.dropout_hazard, N) - 1 if p.dropout_hazard > 0 else np.full(N, S)
    n_sessions = np.minimum(S, p.min_sessions + extra)
    sess = np.arange(1, S + 1)
    attended = sess[None, :] <= n_sessions[:, None]
    is_occ = ((sess - 1) % p.outcome_every == 0)[None, :] & attended

    # process ratings (N x S per process)
    procs = p.processes
    a_j = _mvn(rng, J, np.array([p.process_sd_therapist[q] for q in procs]), p.process_corr)
    d_i = _mvn(rng, N, np.array([p.process_sd_patient[q] for q in procs]), p.process_corr)
    X: dict[str, np.ndarray] = {}
    for k, q in enumerate(procs):
        lo, hi = p.process_range[q]
        raw = (
            p.process_mean[q]
            + a_j[tj, k][:, None]
            + d_i[:, k][:, None]
            + p.process_trend[q] * (sess - 1)[None, :]
            + rng.normal(0.0, p.process_sd_session[q], (N, S))
        )
        x = np.round(np.clip(raw, lo, hi), 2)
        missing = rng.random((N, S)) < p.process_missing_rate
        if p.design == "session":
            missing &= ~is_occ
        X[q] = np.where(attended & ~missing, x, np.nan)

    covs = {c: v.draw(rng, N) for c, v in p.covariates.items()}
    # the covariates' part of the outcome, each centred at its mean (None: no covariate)
    cov_part = (sum(p.covariate_effects.get(c, 0.0) * (x - p.covariates[c].mean) for c, x in covs.items())
                if covs else None)

    # therapist random effects: intercept and one slope per process
    if p.design == "patient":
        sds = np.array([p.therapist_intercept_sd] + [p.slope_sd[q] for q in procs])
    else:
        sds = np.array([p.therapist_intercept_sd] + [p.session_slope_sd[q] for q in procs])
    u = _mvn(rng, J, sds, p.random_corr)
    main = np.broadcast_to(sum(p.moderator_main.get(m, 0.0) * Wc[m] for m in p.moderators), (J,))[tj]
    y0 = rng.normal(p.baseline_mean, p.baseline_sd, N)

    if p.design == "patient":
        Y, truth_extra, slopes = _patient_outcomes(rng, p, X, is_occ, tj, J, Wc, u, main, y0, cov_part, a_j)
    else:
        Y, truth_extra, slopes = _session_outcomes(rng, p, X, is_occ, tj, J, Wc, u, main, y0, cov_part)

    # long tables
    width_t, width_p = len(str(J)), len(str(N))
    t_ids = np.array([f"T{j + 1:0{max(2, width_t)}d}" for j in range(J)])
    p_ids = np.array([f"P{i + 1:0{max(3, width_p)}d}" for i in range(N)])
    ii, ss = np.nonzero(attended)
    sessions = pd.DataFrame(
        {
            "therapist": t_ids[tj[ii]],
            "patient": p_ids[ii],
            "session": sess[ss],
            "outcome": Y[ii, ss],
            **{q: X[q][ii, ss] for q in procs},
        }
    )
    for c, x in covs.items():
        sessions[c] = x[ii]
    therapists = pd.DataFrame({"therapist": t_ids})
    if orientation is not None:
        therapists["orientation"] = orientation.astype(str)
    for m in p.moderators:
        therapists[m] = W[m]
    eff = pd.DataFrame({"therapist": t_ids, "n_patients": n_j, "intercept_effect": u[:, 0]})
    for k, q in enumerate(procs):
        eff[f"{q}_random_slope"] = u[:, k + 1]
        eff[f"{q}_slope"] = slopes[q]
    truth = {
        "design": p.design,
        "preset": preset,
        "seed": seed,
        "moderator_centers": centers,
        "therapist_intercept_sd": p.therapist_intercept_sd,
        "random_corr": p.random_corr,
        "moderator_main": {m: p.moderator_main.get(m, 0.0) for m in p.moderators},
        "processes": list(procs),
        "covariate_effects": {c: p.covariate_effects.get(c, 0.0) for c in p.covariates},
        **truth_extra,
        "therapists": eff,
        "parameters": p.to_dict(),
    }
    return SimulatedStudy(sessions, therapists, truth, p, preset, seed)


def _moderation(
    effects: Mapping[tuple[str, str, str], float], Wc: dict[str, np.ndarray], q: str, target: str
) -> np.ndarray | float:
    return sum(effects.get((m, q, target), 0.0) * Wc[m] for m in Wc)


def _therapist_coefficients(
    within: float, within_x_between: float, between: float, effects: Mapping[tuple[str, str, str], float],
    Wc: Mapping[str, np.ndarray], process: str, between_j: np.ndarray, u_slope: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Each therapist's within slope b1j = w + sum_W g11 (W_j - c_W) + g12 between_j + u1j and
    between association k + sum_W g03 (W_j - c_W) (module docstring, both designs)."""
    b1 = within + _moderation(effects, Wc, process, "within_slope") + within_x_between * between_j + u_slope
    assoc = between + _moderation(effects, Wc, process, "between_association")
    return b1, np.broadcast_to(assoc, between_j.shape)


def _moderator_truth(
    p: SimulationParameters, effects: Mapping[tuple[str, str, str], float],
) -> list[dict[str, Any]]:
    return [
        {"moderator": m, "process": q, "target": t, "estimate": float(effects.get((m, q, t), 0.0))}
        for m in p.moderators
        for q in p.processes
        for t in TARGETS
    ]


def _marginal_sd(
    p: SimulationParameters, sd: Mapping[str, float], effects: Mapping[tuple[str, str, str], float]
) -> dict[str, float]:
    return {
        q: float(np.sqrt(sd[q] ** 2 + sum(effects.get((m, q, "within_slope"), 0.0) ** 2 * v.variance
                                          for m, v in p.moderators.items())))
        for q in p.processes
    }


def _patient_outcomes(rng, p, X, is_occ, tj, J, Wc, u, main, y0, cov_part, a_j):
    N, S = is_occ.shape
    # outcome assessments after baseline may be missed
    observed = is_occ.copy()
    later = is_occ.copy()
    later[:, 0] = False
    observed &= ~(later & (rng.random((N, S)) < p.outcome_missing_rate))
    n_obs = observed.sum(axis=1)
    last = S - 1 - np.argmax(observed[:, ::-1], axis=1)
    counts = {q: (~np.isnan(X[q])).sum(axis=1) for q in p.processes}
    xs = {q: np.where(counts[q] > 0, np.nansum(X[q], axis=1) / np.maximum(counts[q], 1), np.nan) for q in p.processes}
    analysed = n_obs >= 2
    for q in p.processes:
        analysed &= ~np.isnan(xs[q])

    y_final = p.intercept + p.baseline_coef * y0 + main + u[tj, 0]
    slopes = {}
    for k, q in enumerate(p.processes):
        if p.decomposition == "latent":
            # latent truth: the therapist's level a_j is the latent caseload mean and the patient's
            # deviation from it (about a constant kappa, here its sample value) the latent within part
            between_j = a_j[:, k]
            kappa = float(np.nanmean(np.where(analysed, xs[q] - a_j[tj, k], np.nan)))
            within = xs[q] - kappa - a_j[tj, k]
        else:
            xbar_j = _group_mean(xs[q], tj, J, analysed)
            grand = float(np.nanmean(xbar_j))
            between_j = xbar_j - grand
            within = xs[q] - xbar_j[tj]
        b1, g01 = _therapist_coefficients(p.within[q], p.within_x_between[q], p.between[q], p.moderator_effects, Wc,
                                          q, between_j, u[:, k + 1])
        contrib = b1[tj] * within + g01[tj] * between_j[tj]
        y_final = y_final + np.where(analysed, contrib, 0.0)
        slopes[q] = b1
    if cov_part is not None:
        y_final = y_final + cov_part
    y_final = y_final + rng.normal(0.0, p.residual_sd, N)

    sess = np.arange(S)
    frac = sess[None, :] / np.maximum(last, 1)[:, None]
    Y = y0[:, None] + (y_final - y0)[:, None] * frac + rng.normal(0.0, 0.2, (N, S))
    Y[:, 0] = y0
    Y[np.arange(N), last] = np.where(n_obs >= 2, y_final, y0)
    Y = np.where(observed, Y, np.nan)

    effects = []
    for q in p.processes:
        effects.append({"process": q, "component": "within_therapist", "estimate": p.within[q]})
        effects.append({"process": q, "component": "between_therapist", "estimate": p.between[q]})
    extra = {
        "level": "patient",
        "decomposition": p.decomposition,
        "response": "final outcome, adjusted for baseline (residualized change)",
        "effects": effects,
        "fixed": {
            "(Intercept)": p.intercept,
            "baseline": p.baseline_coef,
            **{f"{q}_within": p.within[q] for q in p.processes},
            **{f"{q}_between": p.between[q] for q in p.processes},
        },
        "slope_sd": dict(p.slope_sd),
        "slope_sd_marginal": _marginal_sd(p, p.slope_sd, p.moderator_effects),
        "residual_sd": p.residual_sd,
        "within_x_between": dict(p.within_x_between),
        "moderators": _moderator_truth(p, p.moderator_effects),
        "age_effect": p.covariate_effects.get("age") if "age" in p.covariates else None,
        "n_analysed_patients": int(analysed.sum()),
    }
    return Y, extra, slopes


def _session_outcomes(rng, p, X, is_occ, tj, J, Wc, u, main, y0, cov_part):
    N, S = is_occ.shape
    occ_idx = [np.nonzero(row)[0] for row in is_occ]
    K = np.array([len(o) for o in occ_idx])
    Kmax = int(K.max())
    occ = np.full((N, Kmax), -1)
    for i, o in enumerate(occ_idx):
        occ[i, : len(o)] = o
    pred = np.arange(Kmax)[None, :] < (K - 1)[:, None]  # predictor occasions: all but last
    analysed = K >= 2
    v0 = rng.normal(0.0, p.patient_intercept_sd, N)
    base = p.session_intercept + main + u[tj, 0] + v0
    if cov_part is not None:
        base = base + cov_part

    comp = {}
    slopes = {}
    for k, q in enumerate(p.processes):
        xo = np.where(occ >= 0, X[q][np.arange(N)[:, None], np.maximum(occ, 0)], np.nan)
        with np.errstate(invalid="ignore"):
            xbar_i = np.nansum(np.where(pred, xo, 0.0), axis=1) / np.maximum(pred.sum(axis=1), 1)
        xbar_i = np.where(analysed, xbar_i, np.nan)
        xbar_j = _group_mean(np.nan_to_num(xbar_i), tj, J, analysed)
        grand = float(np.nanmean(xbar_j))
        btw_t = xbar_j - grand
        b1, kt = _therapist_coefficients(p.session_within_patient[q], p.session_within_x_between[q],
                                         p.session_between_therapist[q], p.session_moderator_effects, Wc, q, btw_t,
                                         u[:, k + 1])
        comp[q] = (xo, xbar_i, xbar_j, btw_t, b1, kt)
        slopes[q] = b1

    y_occ = np.full((N, Kmax), np.nan)
    y_occ[:, 0] = y0
    sess_number = occ + 1
    for t in range(Kmax - 1):
        active = t + 1 < K
        mean = base + p.lag_coef * y_occ[:, t] + p.time_coef * sess_number[:, t]
        for q in p.processes:
            xo, xbar_i, xbar_j, btw_t, b1, kt = comp[q]
            mean = (
                mean
                + b1[tj] * (xo[:, t] - xbar_i)
                + p.session_between_patient[q] * (xbar_i - xbar_j[tj])
                + kt[tj] * btw_t[tj]
            )
        new = mean + rng.normal(0.0, p.session_residual_sd, N)
        y_occ[:, t + 1] = np.where(active, new, np.nan)

    Y = np.full((N, S), np.nan)
    rows, ks = np.nonzero(occ >= 0)
    Y[rows, occ[rows, ks]] = y_occ[rows, ks]

    effects = []
    for q in p.processes:
        effects += [
            {"process": q, "component": "within_patient", "estimate": p.session_within_patient[q]},
            {"process": q, "component": "between_patient", "estimate": p.session_between_patient[q]},
            {
                "process": q,
                "component": "between_therapist",
                "estimate": p.session_between_therapist[q],
            },
        ]
    extra = {
        "level": "session",
        "response": "outcome at the next assessment, adjusted for the current outcome",
        "effects": effects,
        "lag": p.lag_coef,
        "time": p.time_coef,
        "fixed": {
            "(Intercept)": p.session_intercept,
            "outcome": p.lag_coef,
            "time": p.time_coef,
            **{f"{q}_within_patient": p.session_within_patient[q] for q in p.processes},
            **{f"{q}_between_patient": p.session_between_patient[q] for q in p.processes},
            **{f"{q}_between_therapist": p.session_between_therapist[q] for q in p.processes},
        },
        "slope_sd": dict(p.session_slope_sd),
        "slope_sd_marginal": _marginal_sd(p, p.session_slope_sd, p.session_moderator_effects),
        "patient_intercept_sd": p.patient_intercept_sd,
        "residual_sd": p.session_residual_sd,
        "within_x_between": dict(p.session_within_x_between),
        "moderators": _moderator_truth(p, p.session_moderator_effects),
        "age_effect": p.covariate_effects.get("age") if "age" in p.covariates else None,
        "n_analysed_patients": int(analysed.sum()),
    }
    return Y, extra, slopes


@dataclass
class LatentSimulation:
    """A study simulated from the latent decomposition (:func:`simulate_latent`).

    Fields: ``sessions`` (long table: therapist, patient, session, outcome, one column per
    process), ``therapists`` (therapist and the moderator ``skill``), ``truth`` (``effects``:
    process -> {within_therapist, between_therapist, contextual}; ``moderators``: process ->
    {within_slope (g11), between_association (g03)}; ``slope_sd``, ``icc``, ``reliability``
    lambda = n rho / (1 + (n - 1) rho), and ``manifest_expected``: the large-sample values of
    the manifest estimates, lambda b_between + (1 - lambda) g10 and lambda g03 + (1 - lambda)
    g11, Luedtke et al. 2008), ``seed``.
    """

    sessions: pd.DataFrame
    therapists: pd.DataFrame
    truth: dict[str, Any]
    seed: int | None

    def config(self, moderators: bool = True) -> StudyConfig:
        """A :class:`StudyConfig` for these data (patient design, both decompositions)."""
        procs = tuple(self.truth["processes"])
        return StudyConfig(
            columns=ColumnsConfig(process=procs),
            therapist_moderators=ModeratorsConfig(columns=("skill",) if moderators else ()),
            design=DesignConfig(level="patient", decomposition="both"),
        )


def simulate_latent(
    therapists: int = 150,
    patients_per_therapist: int = 5,
    *,
    icc: float = 0.2,
    processes: int = 1,
    within: float = 0.3,
    between: float = 0.6,
    slope_sd: float = 0.15,
    moderator_within: float = 0.1,
    moderator_between: float = 0.2,
    moderator_main: float = 0.1,
    intercept_sd: float = 0.3,
    residual_sd: float = 0.7,
    baseline_effect: float = 0.5,
    sessions: int = 4,
    seed: int | None = None,
) -> LatentSimulation:
    """Simulate the latent model of models.md ("Latent decomposition") with exact truth.

    Patient scores x_ij = 4 + mu_j + w_ij (per process, independent processes), mu_j ~ N(0,
    icc), w_ij ~ N(0, 1 - icc); moderator W_j ~ N(0, 1) ("skill"); outcome at the final session

        y_ij = 1 + baseline_effect * y0_ij + moderator_main * W_j + u0j + e_ij
               + sum_p [ (between + moderator_between W_j) mu_jp + b_jp w_ijp ],
        b_jp = within + moderator_within W_j + u1jp,   u1jp ~ N(0, slope_sd^2)

    with baseline y0 ~ N(0, 1) at the first session. The process is rated at every one of the
    ``sessions`` sessions, with session noise that averages exactly to x_ij, so the patient
    score the analysis computes is x_ij itself.
    """
    if not 0.0 < icc < 1.0:
        raise InputError(f"icc must be between 0 and 1; got {icc}")
    if therapists < 3 or patients_per_therapist < 2 or sessions < 2:
        raise InputError("simulate_latent needs at least 3 therapists, 2 patients each and 2 sessions")
    rng = np.random.default_rng(seed)
    J, n, P, S = therapists, patients_per_therapist, processes, sessions
    names = ["alliance", "expectancy"][:P] if P <= 2 else [f"process{k + 1}" for k in range(P)]
    W = rng.normal(0.0, 1.0, J)
    mu = rng.normal(0.0, math.sqrt(icc), (J, P))
    u0 = rng.normal(0.0, intercept_sd, J)
    u1 = rng.normal(0.0, slope_sd, (J, P))
    tj = np.repeat(np.arange(J), n)
    N = J * n
    w = rng.normal(0.0, math.sqrt(1.0 - icc), (N, P))
    x = 4.0 + mu[tj] + w
    y0 = rng.normal(0.0, 1.0, N)
    b = within + moderator_within * W[:, None] + u1
    c = between + moderator_between * W[:, None]
    y = (1.0 + baseline_effect * y0 + moderator_main * W[tj] + u0[tj] + rng.normal(0.0, residual_sd, N)
         + np.sum(c[tj] * mu[tj] + b[tj] * w, axis=1))
    noise = rng.normal(0.0, 0.5, (N, P, S))
    noise -= noise.mean(axis=2, keepdims=True)
    t_ids = np.array([f"T{j + 1:04d}" for j in range(J)])
    p_ids = np.array([f"P{i + 1:06d}" for i in range(N)])
    sess = np.tile(np.arange(1, S + 1), N)
    ii = np.repeat(np.arange(N), S)
    outcome = np.full(N * S, np.nan)
    outcome[sess == 1] = y0
    outcome[sess == S] = y
    table = pd.DataFrame({"therapist": t_ids[tj[ii]], "patient": p_ids[ii], "session": sess, "outcome": outcome})
    for k, name in enumerate(names):
        table[name] = x[ii, k] + noise[:, k, :].reshape(-1)
    lam = n * icc / (1.0 + (n - 1) * icc)
    truth = {
        "processes": names,
        "effects": {q: {"within_therapist": within, "between_therapist": between, "contextual": between - within}
                    for q in names},
        "moderators": {q: {"within_slope": moderator_within, "between_association": moderator_between}
                       for q in names},
        "slope_sd": {q: slope_sd for q in names},
        "icc": icc,
        "reliability": lam,
        "manifest_expected": {
            "between_therapist": lam * between + (1 - lam) * within,
            "between_association": lam * moderator_between + (1 - lam) * moderator_within,
        },
    }
    return LatentSimulation(table, pd.DataFrame({"therapist": t_ids, "skill": np.round(W, 6)}), truth, seed)
