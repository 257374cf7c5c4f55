"""Fixtures of the report tests: each study analysed once per test session and written
(results.json + report) to a temporary folder."""

from __future__ import annotations

import pytest
from results_schema import check_documents_under
from studies import Written, demo_study, hostile_study, loop_study


@pytest.fixture(scope="session")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Written:
    """The demo study (patient-level design), as ``theralens demo`` runs it."""
    return demo_study(tmp_path_factory.mktemp("demo"))


@pytest.fixture(scope="session")
def loop(tmp_path_factory: pytest.TempPathFactory) -> Written:
    """The demo study with the stability and training sections (issue #14), as ``theralens demo``."""
    return loop_study(tmp_path_factory.mktemp("loop"))


@pytest.fixture(scope="session")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> Written:
    """The demo study with hostile therapist ids, process and moderator names."""
    return hostile_study(tmp_path_factory.mktemp("hostile"))


@pytest.fixture(scope="session", autouse=True)
def every_results_json_matches_the_schema(tmp_path_factory: pytest.TempPathFactory):
    """After the report tests: every results.json they wrote validates against the shipped schema."""
    yield
    check_documents_under(tmp_path_factory.getbasetemp())
