"""Fixtures of the report tests: each study analysed once per test session and written
(results.json + report) to a temporary folder."""

from __future__ import annotations

import pytest
from studies import Written, demo_study, hostile_study


@pytest.fixture(scope="session")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Written:
    """The demo study (patient-level design), as ``theralens demo`` runs it."""
    return demo_study(tmp_path_factory.mktemp("demo"))


@pytest.fixture(scope="session")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> Written:
    """The demo study with hostile therapist ids, process and moderator names."""
    return hostile_study(tmp_path_factory.mktemp("hostile"))
