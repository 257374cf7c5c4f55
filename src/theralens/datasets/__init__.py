"""Example data shipped with theralens (simulated; see README.md in this folder).

``load_demo()`` returns the ``coyne2022`` simulation with seed 2022: a sessions table
(therapist, patient, session, outcome, alliance, expectancy, start_date) and a therapist table
(therapist, orientation, cbt, self_rated_alliance_skill, self_rated_expectancy_skill);
``load_demo_training()`` the training table (therapist, trained_on, trained_process) of the
training loop (:func:`theralens.simulation.training.demo_schedule`).
These are simulated data, not the data of Coyne et al. (2022), which are not public.
Regenerate the files with ``python -m theralens.datasets``.
"""

from __future__ import annotations

from importlib import resources

import pandas as pd

__all__ = ["DEMO_PRESET", "DEMO_SEED", "DEMO_TRAINING", "demo_from_simulator", "demo_paths", "load_demo",
           "load_demo_training"]

DEMO_PRESET = "coyne2022"
DEMO_SEED = 2022
SESSIONS_FILE = "coyne2022_sessions.csv"
THERAPISTS_FILE = "coyne2022_therapists.csv"
TRAINING_FILE = "coyne2022_training.csv"
#: The [training] settings of the demo files (its start column; date and target are the defaults).
DEMO_TRAINING = {"start": "start_date", "date": "trained_on", "target": "trained_process"}
_ID_TYPES = {"therapist": str, "patient": str}


def load_demo() -> tuple[pd.DataFrame, pd.DataFrame]:
    """(sessions, therapists) of the shipped demo study; ids are read as text."""
    files = resources.files(__name__)
    with resources.as_file(files / SESSIONS_FILE) as path:
        sessions = pd.read_csv(path, dtype=_ID_TYPES)
    with resources.as_file(files / THERAPISTS_FILE) as path:
        therapists = pd.read_csv(path, dtype={"therapist": str})
    return sessions, therapists


def load_demo_training() -> pd.DataFrame:
    """The shipped training table of the demo therapists (therapist, trained_on, trained_process;
    empty for untrained therapists), read as text."""
    with resources.as_file(resources.files(__name__) / TRAINING_FILE) as path:
        return pd.read_csv(path, dtype=str, keep_default_na=False)


def demo_paths() -> tuple[str, str]:
    """File paths of the shipped (sessions, therapists) CSV files."""
    files = resources.files(__name__)
    return str(files / SESSIONS_FILE), str(files / THERAPISTS_FILE)


def demo_from_simulator(with_training: bool = False) -> tuple[pd.DataFrame, ...]:
    """The demo tables as the simulator makes them (outcome rounded to 4 decimals; treatment
    starts from :func:`theralens.simulation.training.demo_schedule`): (sessions, therapists), and
    the training table third when ``with_training``."""
    from theralens.simulation.generate import simulate
    from theralens.simulation.training import demo_schedule

    study = simulate(DEMO_PRESET, seed=DEMO_SEED)
    sessions = study.sessions.copy()
    sessions["outcome"] = sessions["outcome"].round(4)
    therapists = study.therapists.copy()
    sessions, schedule = demo_schedule(sessions, therapists, seed=DEMO_SEED)
    return (sessions, therapists, schedule) if with_training else (sessions, therapists)
