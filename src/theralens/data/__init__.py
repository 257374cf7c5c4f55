"""Data in: read a table, check it, decompose each process (models.md).

``read_table`` (read.py) -> ``validate_sessions`` / ``validate_therapists`` (validate.py)
-> ``patient_level`` / ``session_level`` (decompose.py); the options come from a
``StudyConfig`` (config.py).
"""

from theralens.data.config import StudyConfig, config_from_dict, load_config
from theralens.data.decompose import PatientTable, SessionTable, patient_level, session_level
from theralens.data.read import read_table
from theralens.data.validate import (
    Exclusion,
    ValidatedData,
    validate_sessions,
    validate_therapists,
)

__all__ = [
    "Exclusion",
    "PatientTable",
    "SessionTable",
    "StudyConfig",
    "ValidatedData",
    "config_from_dict",
    "load_config",
    "patient_level",
    "read_table",
    "session_level",
    "validate_sessions",
    "validate_therapists",
]
