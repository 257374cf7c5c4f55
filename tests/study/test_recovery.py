"""A one-replicate version of validation/recovery.py (the full run records its results in
validation/recovery.md): on a large simulated study every estimate is near the truth."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "validation"))
from recovery import one_replicate  # noqa: E402


@pytest.mark.parametrize("design", ["patient", "session"])
def test_one_replicate_recovers_truth(design: str) -> None:
    rows = one_replicate(design, seed=3)
    assert all(r["converged"] for r in rows)
    intervals = [r for r in rows if r["covered"] is not None]
    # with ~10 intervals at 95%, allow at most two misses in a single replicate
    assert sum(not r["covered"] for r in intervals) <= 2
    for r in rows:
        if "slope SD" in r["quantity"]:
            assert r["estimate"] == pytest.approx(r["truth"], rel=0.6)
