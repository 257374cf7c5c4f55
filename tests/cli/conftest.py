"""Fixtures for the command-line tests."""

from __future__ import annotations

import pandas as pd
import pytest

from theralens.datasets import demo_paths


@pytest.fixture(scope="session")
def demo_frames() -> tuple[pd.DataFrame, pd.DataFrame]:
    """The demo (sessions, therapists) tables as read from the shipped CSV files."""
    s, t = demo_paths()
    return (pd.read_csv(s, dtype={"therapist": str, "patient": str}), pd.read_csv(t, dtype={"therapist": str}))
