"""The analysis table of a simulated study, built by the study pipeline itself.

For the session-level (lagged) design, and for a patient-level analysis with options other
than the defaults :mod:`theralens.planning.table` reproduces (a fitted study's
``[design]`` options: process_sessions, caseload weighting, change score), a replicate takes
the road :func:`theralens.analyze` takes: :func:`theralens.data.validate.validate_sessions`,
then :func:`theralens.data.decompose.session_level` (or ``patient_level``) with the study's
config, then :func:`theralens.study.aims.design_terms`. There is one decomposition
(models.md "Decomposition of a process"); this module only calls it. Moderators are joined
and centred as :func:`theralens.study.aims.aim3` does: at their mean over the therapists of
the therapist table with a value.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from theralens.data.config import StudyConfig
from theralens.data.decompose import patient_level, session_level
from theralens.data.validate import validate_sessions
from theralens.errors import InputError
from theralens.planning.table import MIN_THERAPISTS
from theralens.study.aims import DesignTerms, design_terms

__all__ = ["AnalysisTable", "analysis_table"]


@dataclass
class AnalysisTable:
    """``frame``: the pipeline's analysis table (therapist and patient ids as text), what
    :func:`theralens.analyze` fits; ``terms``: its :class:`~theralens.study.aims.DesignTerms`."""

    frame: pd.DataFrame
    terms: DesignTerms

    def with_moderator(self, therapists: pd.DataFrame, moderator: str) -> tuple[pd.DataFrame, str]:
        """The frame with ``moderator`` centred at its mean over ``therapists`` (column
        ``<moderator>_c``; rows of therapists without a value dropped), and that column's name."""
        have = therapists.loc[therapists[moderator].notna(), ["therapist", moderator]]
        values = pd.Series(have[moderator].to_numpy(dtype=float), index=have["therapist"].astype(str))
        column = f"{moderator}_c"
        frame = self.frame[self.frame["therapist"].isin(values.index)].copy()
        frame[column] = frame["therapist"].map(values).to_numpy(dtype=float) - float(values.mean())
        if frame["therapist"].nunique() < MIN_THERAPISTS:
            raise InputError(f"moderator {moderator}: fewer than {MIN_THERAPISTS} therapists have a value")
        return frame, column


def analysis_table(sessions: pd.DataFrame, config: StudyConfig) -> AnalysisTable:
    """Validate and decompose simulated ``sessions`` as :func:`theralens.analyze` does with
    ``config`` (its design level and options); raises :class:`InputError` where it would."""
    data = validate_sessions(sessions, config, source="simulated sessions")
    table = patient_level(data, config) if config.design.level == "patient" else session_level(data, config)
    if table.counts.get("therapists", 0) < MIN_THERAPISTS:
        raise InputError(f"only {table.counts.get('therapists', 0)} therapist(s) left for the analysis; "
                         f"at least {MIN_THERAPISTS} are needed")
    frame = table.table.copy()
    frame["therapist"] = frame["therapist"].astype(str)
    frame["patient"] = frame["patient"].astype(str)
    terms = design_terms(table)
    for p in terms.processes:
        if float(np.abs(frame[terms.within[p]].to_numpy(dtype=float)).max()) == 0.0:
            raise InputError(f"process {p!r} has no within-component variation in the simulated data")
    return AnalysisTable(frame=frame, terms=terms)
