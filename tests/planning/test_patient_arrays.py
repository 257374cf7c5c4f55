"""The numpy patient-level table equals the study pipeline's (validate -> patient_level)."""

from __future__ import annotations

import numpy as np
import pytest

from theralens.data.decompose import patient_level
from theralens.data.validate import validate_sessions
from theralens.errors import InputError
from theralens.planning.table import patient_arrays
from theralens.simulation.generate import simulate

CASES = [
    ("coyne2022", 1, {}),
    ("coyne2022", 7, {}),
    ("coyne2022", 11, {"n_therapists": 12, "n_patients": 40, "caseload_shape": None}),
    ("coyne2022", 5, {"n_therapists": 30, "n_patients": 90, "outcome_missing_rate": 0.4, "dropout_hazard": 0.3}),
    ("coyne2022", 3, {"patient_covariates": True}),
]


@pytest.mark.parametrize(("preset", "seed", "overrides"), CASES)
def test_equals_study_pipeline(preset: str, seed: int, overrides: dict) -> None:
    sim = simulate(preset, seed=seed, **overrides)
    cfg = sim.config(moderators=())
    ref = patient_level(validate_sessions(sim.sessions, cfg), cfg).table
    covs = ("age",) if overrides.get("patient_covariates") else ()
    mine = patient_arrays(sim.sessions, covariates=covs).frame()
    assert list(mine["therapist"]) == list(ref["therapist"])
    assert list(mine["patient"]) == list(ref["patient"])
    for col in mine.columns[2:]:
        np.testing.assert_allclose(mine[col].to_numpy(float), ref[col].to_numpy(float), rtol=1e-13, atol=1e-13,
                                   err_msg=col)
    assert set(mine.columns) <= set(ref.columns)
    assert set(ref.columns) - set(mine.columns) == {"slope"}


def test_row_order_does_not_matter() -> None:
    sim = simulate("coyne2022", seed=2, n_therapists=15, n_patients=60)
    a = patient_arrays(sim.sessions).frame()
    b = patient_arrays(sim.sessions.sample(frac=1.0, random_state=0)).frame()
    assert a.equals(b)


def test_refuses_what_the_study_refuses() -> None:
    sim = simulate("coyne2022", seed=2, n_therapists=3, n_patients=3)
    with pytest.raises(InputError, match="single analysed patient"):
        patient_arrays(sim.sessions)
