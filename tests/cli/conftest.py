"""Fixtures for the command-line tests."""

from __future__ import annotations

import pandas as pd
import pytest
from results_schema import check_documents_under

from theralens.datasets import demo_paths


@pytest.fixture(scope="session")
def demo_frames() -> tuple[pd.DataFrame, pd.DataFrame]:
    """The demo (sessions, therapists) tables as read from the shipped CSV files."""
    s, t = demo_paths()
    return (pd.read_csv(s, dtype={"therapist": str, "patient": str}), pd.read_csv(t, dtype={"therapist": str}))


@pytest.fixture(scope="session", autouse=True)
def every_results_json_matches_the_schema(tmp_path_factory: pytest.TempPathFactory):
    """After the CLI tests: every results.json they wrote validates against the shipped schema."""
    yield
    check_documents_under(tmp_path_factory.getbasetemp())
