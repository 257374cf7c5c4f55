"""Example data shipped with theralens (simulated; see README.md in this folder).

``load_demo()`` returns the ``coyne2022`` simulation with seed 2022: a sessions table
(therapist, patient, session, outcome, alliance, expectancy) and a therapist table
(therapist, orientation, cbt, self_rated_alliance_skill, self_rated_expectancy_skill).
These are simulated data, not the data of Coyne et al. (2022), which are not public.
Regenerate the files with ``python -m theralens.datasets``.
"""

from __future__ import annotations

from importlib import resources

import pandas as pd

__all__ = ["DEMO_PRESET", "DEMO_SEED", "demo_from_simulator", "demo_paths", "load_demo"]

DEMO_PRESET = "coyne2022"
DEMO_SEED = 2022
SESSIONS_FILE = "coyne2022_sessions.csv"
THERAPISTS_FILE = "coyne2022_therapists.csv"
_ID_TYPES = {"therapist": str, "patient": str}


def load_demo() -> tuple[pd.DataFrame, pd.DataFrame]:
    """(sessions, therapists) of the shipped demo study; ids are read as text."""
    files = resources.files(__name__)
    with resources.as_file(files / SESSIONS_FILE) as path:
        sessions = pd.read_csv(path, dtype=_ID_TYPES)
    with resources.as_file(files / THERAPISTS_FILE) as path:
        therapists = pd.read_csv(path, dtype={"therapist": str})
    return sessions, therapists


def demo_paths() -> tuple[str, str]:
    """File paths of the shipped (sessions, therapists) CSV files."""
    files = resources.files(__name__)
    return str(files / SESSIONS_FILE), str(files / THERAPISTS_FILE)


def demo_from_simulator() -> tuple[pd.DataFrame, pd.DataFrame]:
    """The demo tables as the simulator makes them (outcome rounded to 4 decimals)."""
    from theralens.simulation.generate import simulate

    study = simulate(DEMO_PRESET, seed=DEMO_SEED)
    sessions = study.sessions.copy()
    sessions["outcome"] = sessions["outcome"].round(4)
    return sessions, study.therapists.copy()
