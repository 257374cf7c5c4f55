"""Run the whole study: validate -> decompose -> fit the aims -> :class:`StudyResult`.

    result = analyze(sessions_df, therapists_df, config)      # Python API on DataFrames
    result = analyze_files("sessions.csv", "therapists.xlsx", "study.toml")
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pandas as pd

from theralens.data.config import StudyConfig, load_config
from theralens.data.decompose import PatientTable, SessionTable, patient_level, session_level
from theralens.data.read import read_table
from theralens.data.scan import (
    ScannedSessions,
    choose_engine,
    decompose_scan,
    export_parquet,
    lagged_table,
    scan_files,
)
from theralens.data.validate import validate_sessions, validate_therapists
from theralens.errors import InputError
from theralens.study.aims import DesignTerms, aim1, aim2, aim3, ancillary, design_terms
from theralens.study.aims import _fit as fit_model
from theralens.study.document import sample_summary
from theralens.study.latent import (
    ANCILLARY_NOTE,
    LatentResults,
    aim2_therapists,
    latent_aims,
    latent_session_aims,
    low_reliability_advice,
    merge_side_by_side,
)
from theralens.study.result import StudyResult
from theralens.study.rows import AnalysisRows, ClusterRows, FrameRows, RelationRows

#: Below this many therapists, the result warns that slope variances and cross-level
#: moderators are estimated with little power (Mathieu et al. 2012; Arend & Schaefer 2019).
SMALL_STUDY_THERAPISTS = 60
MIN_THERAPISTS = 3


def analyze(
    sessions: pd.DataFrame | ScannedSessions,
    therapists: pd.DataFrame | None = None,
    config: StudyConfig | None = None,
    *,
    source: str = "sessions data",
    therapists_source: str = "therapist data",
    cluster: tuple[Any, str] | None = None,
) -> StudyResult:
    """Answer the study's aims for every process at once (models.md).

    ``sessions``: long format, one row per patient per assessment; ``therapists``: optional,
    one row per therapist with the moderator columns named in ``config``, or, when none are
    named, every column other than the therapist id (one at a time unless ``joint``; the
    warnings say which). The table is validated either way. ``cluster``: (dask.distributed
    client, folder the workers can read) to compute the fits' statistics on a cluster
    (scanned sessions only; :class:`~theralens.study.rows.ClusterRows`).
    """
    t0 = time.perf_counter()
    config = config or StudyConfig()
    scanned = sessions if isinstance(sessions, ScannedSessions) else None
    data = scanned.data if scanned is not None else validate_sessions(sessions, config, source=source)
    moderators = None
    if therapists is not None:
        moderators = validate_therapists(therapists, scanned.therapist_frame() if scanned is not None else data,
                                         config, source=therapists_source)
        if moderators.shape[1] <= 1:  # a table of ids only: checked, but nothing to moderate
            moderators = None
    elif config.therapist_moderators.columns:
        raise InputError("moderators are configured ([therapist_moderators] columns) but no therapist table "
                         "was given; pass --therapists FILE or remove the moderators from the config")
    if scanned is not None:
        table = decompose_scan(scanned, config)
    else:
        table = patient_level(data, config) if config.design.level == "patient" else session_level(data, config)
    t_statistics = time.perf_counter()
    if table.counts.get("therapists", 0) < MIN_THERAPISTS:
        raise InputError(f"{source}: only {table.counts.get('therapists', 0)} therapist(s) left for the analysis; "
                         f"at least {MIN_THERAPISTS} are needed to estimate therapist slope variances")
    terms = design_terms(table)
    terms.service = bool(config.columns.service)
    frame = _analysis_rows(table, terms, scanned, config, cluster, None if scanned is not None else data.sessions)
    labels = table.labels
    n_processes = len(terms.processes)
    _check_estimable(frame, terms, source, "the analysis", 1 + len(terms.fixed_main()) + n_processes)
    if moderators is not None:
        mod_labels = moderators.attrs.get("labels", {})
        coded = [c for c in moderators.columns if c != "therapist"]
        for wset in [coded] if config.therapist_moderators.joint else [[c] for c in coded]:
            have = moderators.dropna(subset=wset)["therapist"].astype(str)
            names = ", ".join(repr(mod_labels.get(w, w)) for w in wset)
            _check_estimable(frame.with_moderators(pd.DataFrame({"therapist": sorted(set(have))})), terms,
                             therapists_source,
                             f"the model of moderator {names} (therapists with a value)",
                             1 + len(terms.fixed_main()) + len(wset) * (1 + 2 * n_processes))
    ddf = config.inference.ddf  # the df method of every fit's tests
    main = fit_model("main", terms.formula(), frame, note="aims 1 and 2", ddf=ddf)
    a1 = aim1(main.fit, terms, labels)
    a2 = aim2(main, terms, frame, labels, table.benefit_sign)
    a3 = aim3(terms, frame, moderators, labels, joint=config.therapist_moderators.joint, ddf=ddf)
    anc, anc_model = ancillary(terms, frame, labels, ddf=ddf)
    frame.fitted_all()
    latent = _latent(config, table, moderators, labels)
    if latent is not None:
        a1 = merge_side_by_side(a1, latent.aim1, ["process", "component"])
        if len(a3.table) and len(latent.aim3):
            a3.table = merge_side_by_side(a3.table, latent.aim3, ["process", "moderator", "target"])
        if config.design.decomposition == "latent" and len(latent.therapists):
            a2.therapists = aim2_therapists(latent, terms.within)

    warnings = list(table.warnings)
    n_ther = table.counts.get("therapists", 0)
    if n_ther < SMALL_STUDY_THERAPISTS:
        warnings.append(
            f"Only {n_ther} therapists: therapist slope variances and cross-level moderators are estimated with "
            "low power (Mathieu et al. 2012; Arend & Schaefer 2019); treat non-significant results as inconclusive "
            "and use 'theralens power' to plan a larger study.")
    for spec in [main, *a2.reduced, *a3.models, anc_model]:
        if not spec.fit.converged:
            warnings.append(f"The {spec.role} model did not converge: {'; '.join(spec.fit.optimizer.messages)}")
        if spec.fit.singular:
            warnings.append(f"The {spec.role} model is a boundary (singular) fit: a variance or correlation of the "
                            "therapist random effects is estimated at its limit (see the model table).")
    for _, row in a2.variance.iterrows():
        if row["slope_variance"] <= 1e-10:
            warnings.append(f"The therapist slope variance of {row['process_label']} is estimated at zero: the data "
                            "show no detectable differences between therapists in this slope, and every therapist's "
                            "slope equals the average.")
        elif row["mean_slope_reliability"] == row["mean_slope_reliability"] and row["mean_slope_reliability"] < 0.5:
            warnings.append(f"Therapist slopes of {row['process_label']} have low reliability (mean "
                            f"{row['mean_slope_reliability']:.2f}): individual slopes are shrunk strongly toward "
                            "the average and rankings are very uncertain.")
    if therapists is not None and moderators is None:
        warnings.append(f"The therapist table ({therapists_source}) has no column besides the therapist id "
                        f"{config.columns.therapist!r}, so aim 3 (moderators) was not run.")
    if moderators is not None and moderators.attrs.get("moderators_from") == "table":
        used = ", ".join(repr(c) for c in moderators.attrs.get("moderators", {}))
        how = "together in one model" if config.therapist_moderators.joint else "one at a time"
        warnings.append(f"No moderators are configured ([therapist_moderators] columns), so every column of the "
                        f"therapist table other than the id is a moderator, {how}: {used}; list the ones you mean "
                        "in the config to choose.")
    if moderators is not None:
        missing = moderators.attrs.get("missing_therapists", [])
        if missing:
            warnings.append(f"{len(missing)} therapist(s) are not in the therapist table and are left out of the "
                            "moderator models.")
        if len(a3.table):
            for name, n_missing in a3.table.groupby("moderator_label", sort=False)["therapists_missing"].max().items():
                if n_missing:
                    warnings.append(f"Moderator {name!r} is unknown for {int(n_missing)} therapist(s) (no value, or "
                                    "not in the therapist table): they are left out of its model (column "
                                    "therapists_missing of aim 3).")
    notes = list(data.notes)
    if moderators is not None:
        notes += [n for n in moderators.attrs.get("notes", []) if n not in notes]
    decomposition = config.design.decomposition
    if decomposition == "manifest":
        notes.append("Process components use the observed (manifest) decomposition: caseload means are taken over "
                     "patients (each weighing once) unless configured otherwise; a latent (multilevel SEM) "
                     'decomposition is not used ([design] decomposition = "latent" or "both" adds it).')
        advice = low_reliability_advice(table.reliability_summary.assign(
            process_label=lambda d: d["process"].map(lambda p: labels.get(p, p))))
        if advice:
            warnings.append(advice)
    else:
        used = "latent" if decomposition == "latent" else "manifest and latent, side by side"
        notes.append(f"Decomposition: {used}. The manifest estimates (observed caseload means) reproduce lmerTest; "
                     "the latent ones treat each therapist's caseload mean as a latent variable (multilevel SEM, as "
                     "Coyne et al. 2022) and are not attenuated by its unreliability (Luedtke et al. 2008).")
        notes += latent.notes
        warnings += latent.warnings
        notes.append(ANCILLARY_NOTE)
        if decomposition == "latent" and len(latent.therapists):
            notes.append("Therapist slopes and profiles come from the latent model (each therapist's slope: its "
                         "conditional mean and SD given the data); the slope-variance tests of aim 2 from the "
                         "manifest REML model.")
    sample = sample_summary((scanned.con, "sessions") if scanned is not None else data.sessions,
                            tuple(terms.processes), tuple(table.covariates), data.time_kind)
    result = StudyResult(config=config, data=data, table=table, terms=terms, main=main, aim1=a1, aim2=a2, aim3=a3,
                         ancillary=anc, ancillary_model=anc_model, moderators=moderators, warnings=warnings,
                         notes=notes, seconds=time.perf_counter() - t0, latent=latent,
                         therapist_rows=frame.therapists(), diagnostics=frame.diagnostics(main.fit), sample=sample)
    # phases: checks and decomposition (the statistics pass), then the model fits
    result.timings = {"statistics": t_statistics - t0, "fits": result.seconds - (t_statistics - t0)}
    return result


def _latent(config: StudyConfig, table: PatientTable | SessionTable, moderators: pd.DataFrame | None,
            labels: dict[str, str]) -> LatentResults | None:
    """The aims under the latent decomposition when ``[design] decomposition`` asks for it:
    ML for the patient design, Bayesian (``theralens[bayes]``) for the session design."""
    if config.design.decomposition == "manifest":
        return None
    if isinstance(table, SessionTable) and table.relation is not None:
        raise InputError(f'[design] decomposition = "{config.design.decomposition}" needs the lagged rows in memory '
                         "(the Bayesian latent model), but the DuckDB engine keeps them in DuckDB; use --engine "
                         'pandas, or decomposition = "manifest"')
    if isinstance(table, PatientTable):
        return latent_aims(table, moderators, labels, joint=config.therapist_moderators.joint,
                           bias_correction=config.inference.latent_bias_correction)
    return latent_session_aims(table, moderators, labels)


def _analysis_rows(table: PatientTable | SessionTable, terms: DesignTerms, scanned: ScannedSessions | None,
                   config: StudyConfig, cluster: tuple[Any, str] | None = None,
                   sessions: pd.DataFrame | None = None) -> AnalysisRows:
    """The rows the aims' models are fitted from (:mod:`theralens.study.rows`): the table in memory
    (pandas engine), else a DuckDB relation of the scan: the session design's lagged rows
    (:func:`~theralens.data.scan.lagged_table`) or the patient table (one row per patient).
    With ``[columns] service`` the rows get each therapist's ``service`` (therapists are nested
    in services: validation checked it)."""
    if scanned is None:
        frame = table.table.copy()
        frame["therapist"] = frame["therapist"].astype(str)
        frame["patient"] = frame["patient"].astype(str)
        if terms.service and sessions is not None:
            of = sessions.assign(therapist=sessions["therapist"].astype(str)).groupby("therapist")["service"].first()
            frame["service"] = frame["therapist"].map(of).astype(str)
        return FrameRows(frame, terms.processes, terms.between)
    con = scanned.con
    if isinstance(table, SessionTable):
        relation = table.relation or lagged_table(scanned, config)
    else:
        relation = "patient_rows"
        frame = table.table.copy()
        frame["therapist"] = frame["therapist"].astype(str)
        frame["patient"] = frame["patient"].astype(str)
        con.execute(f"CREATE OR REPLACE TEMP TABLE {relation} AS SELECT * FROM frame")
    if terms.service:
        con.execute(f"""CREATE OR REPLACE TEMP TABLE {relation}_services AS SELECT r.*, s.service FROM {relation} r
            JOIN (SELECT CAST(therapist AS VARCHAR) AS therapist, CAST(min(service) AS VARCHAR) AS service
                  FROM sessions GROUP BY 1) s ON s.therapist = CAST(r.therapist AS VARCHAR)""").fetchall()
        relation = f"{relation}_services"
    if cluster is not None:
        client, folder = cluster
        parquet = export_parquet(scanned.con, relation, Path(folder) / f"theralens-rows-{relation}")
        return ClusterRows(scanned.con, relation, terms.processes, terms.between, str(parquet), client)
    return RelationRows(scanned.con, relation, terms.processes, terms.between)


def _check_estimable(frame: AnalysisRows, terms: DesignTerms, source: str, what: str, n_fixed: int) -> None:
    """Refuse a model whose therapist slope variances cannot be estimated (one line, with the fix).

    Each therapist has an intercept and one slope per process (q = 1 + P random effects), so
    the q x q covariance of these needs more than q therapists (with J <= q therapists its estimate is
    singular by construction); and, as lme4 requires, more rows than random effects in each
    term and than fixed effects.
    """
    n_proc = len(terms.processes)
    q = 1 + n_proc
    n_ther = frame.n_therapists
    if terms.service:
        n_services = int(frame.therapists()["service"].nunique())
        if n_services < 2:
            raise InputError(f"{source}: {what} has {n_services} service(s); a service random intercept needs at "
                             "least two services ([columns] service): add services or leave the service out")
    n = frame.n_rows
    unit = "analysed patients" if terms.level == "patient" else "lagged outcome pairs"
    fewer = "analyse fewer processes at once ([columns] process)"
    if n_ther <= q:
        raise InputError(
            f"{source}: {what} has {n_ther} therapists, too few to estimate therapist slope variances for "
            f"{n_proc} process(es): each therapist has an intercept and {n_proc} slope(s), and their "
            f"{q} x {q} covariance needs at least {q + 1} therapists; add therapists or {fewer}")
    if n <= n_ther * q:
        raise InputError(
            f"{source}: {what} has {n} {unit} for {n_ther} therapists with {q} random effects each ({n_ther * q} in "
            f"all); the model needs more {unit} than random effects (as lme4 does): add patients or {fewer}")
    if terms.patient_intercept:
        n_pat = frame.n_patients
        if n <= n_pat:
            raise InputError(
                f"{source}: every patient in {what} has a single lagged pair (two outcome assessments), so "
                "the patient intercept cannot be told from the residual; the session-level design needs "
                'patients with three or more outcome assessments, or use [design] level = "patient"')
    if n <= n_fixed:
        raise InputError(
            f"{source}: {what} has {n} {unit} but the model has {n_fixed} fixed effects; add patients, "
            f"remove covariates or {fewer}")


def analyze_files(
    sessions: str | Path,
    therapists: str | Path | None = None,
    config: str | Path | StudyConfig | None = None,
    *,
    engine: str = "auto",
    memory_limit: int | str | None = None,
    sheet: str | int | None = None,
    therapists_sheet: str | int | None = None,
    scheduler: Any = None,
    scratch: str | Path | None = None,
) -> StudyResult:
    """:func:`analyze` on files (CSV, Parquet, Excel, SPSS, Stata) and a TOML config.

    ``engine``: ``"pandas"`` (read whole), ``"duckdb"`` (CSV or Parquet file, folder or glob,
    checked and reduced by DuckDB SQL under ``memory_limit``, e.g. ``"8GB"``; see
    :mod:`theralens.data.scan`) or ``"auto"`` (duckdb when the files are larger than the
    memory budget). The result's notes say which engine ran.

    ``scheduler``: the address of a dask.distributed scheduler (or a ``Client``): the sessions
    are checked and decomposed by DuckDB here, and every fit's sufficient statistics are
    computed per partition of a Parquet copy of the analysis rows on the cluster and summed
    here (:class:`~theralens.study.rows.ClusterRows`); the copy goes to ``scratch`` (a folder
    every worker can read; default: the scan's temporary folder, which suits workers on this
    machine).
    """
    cfg = config if isinstance(config, StudyConfig) else load_config(config)
    if scheduler is not None:
        if engine == "pandas":
            raise InputError("--scheduler computes the statistics from Parquet partitions of the DuckDB scan; "
                             "use --engine duckdb (or auto) with it")
        engine = "duckdb"
    used, note = choose_engine(sessions, engine, memory_limit)
    if scheduler is not None and used != "duckdb":
        raise InputError(f"--scheduler needs CSV or Parquet sessions (DuckDB scans them); {sessions} is neither: "
                         "convert it to Parquet")
    t_source = str(therapists) if therapists else ""
    if used == "duckdb":
        with scan_files(sessions, cfg, memory_limit=memory_limit, source=str(sessions)) as scanned:
            scanned.data.notes.append(note)
            t = read_table(therapists, sheet=therapists_sheet, what="therapists") if therapists is not None else None
            if scheduler is None:
                return analyze(scanned, t, cfg, source=str(sessions), therapists_source=t_source)
            client, own = connect_scheduler(scheduler)
            try:
                workers = len(client.scheduler_info().get("workers", {}))
                scanned.data.notes.append(f"Cluster: the fits' sufficient statistics were computed per partition "
                                          f"on a dask.distributed cluster ({workers} worker(s)) and summed here.")
                return analyze(scanned, t, cfg, source=str(sessions), therapists_source=t_source,
                               cluster=(client, scratch if scratch is not None else scanned.temp_dir))
            finally:
                if own:
                    client.close()
    s = read_table(sessions, sheet=sheet, what="sessions")
    s.attrs["notes"] = [*s.attrs.get("notes", []), note]
    t = read_table(therapists, sheet=therapists_sheet, what="therapists") if therapists is not None else None
    return analyze(s, t, cfg, source=str(sessions), therapists_source=t_source)


def connect_scheduler(scheduler: Any) -> tuple[Any, bool]:
    """(client, whether it was opened here) for a dask.distributed scheduler address or ``Client``."""
    from distributed import Client

    if isinstance(scheduler, Client):
        return scheduler, False
    try:
        return Client(scheduler, timeout="10s"), True
    except (OSError, TimeoutError, ValueError) as exc:
        raise InputError(f"cannot reach the dask scheduler at {scheduler!r} ({type(exc).__name__}: {exc}); check "
                         "the address (e.g. tcp://host:8786) and that the scheduler is running") from None
