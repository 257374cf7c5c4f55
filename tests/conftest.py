"""Test-suite settings.

Hypothesis: the default profile ``ci`` derandomizes (each property test draws the same
examples on every run, from a hash of the test), so the suite's verdict does not depend on
the run; ``HYPOTHESIS_PROFILE=explore`` draws new examples every run to look for new
counterexamples (what it finds is added as a fixed test, as
tests/model/test_fit_properties.py::test_relabelled_bimodal_example_known_local_optimum).
"""

from __future__ import annotations

import os

from hypothesis import settings

settings.register_profile("ci", derandomize=True, print_blob=True)
settings.register_profile("explore", derandomize=False, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
