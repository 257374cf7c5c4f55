"""Settings: NAME=VALUE parsing, shorthands, ICCs, design cells."""

from __future__ import annotations

import math

import pytest

from theralens.errors import InputError
from theralens.planning.settings import design_cells, parse_numbers, parse_settings, resolve_overrides

MOD = ("self_rated_alliance_skill", "alliance", "within_slope")


def test_parse_and_resolve() -> None:
    s = parse_settings(["within.alliance=-0.2", "slope_sd.expectancy=0", "caseload_shape=none", "sessions=12",
                        "dropout=0.1", "moderator_effect=0.1", "moderator_effects.cbt.alliance.between_association=0",
                        "process_icc.alliance=0.2", "residual_sd=0.5", "therapist_icc=0.05"])
    o = resolve_overrides("coyne2022", s, MOD)
    assert o["within"] == {"alliance": -0.2} and o["slope_sd"] == {"expectancy": 0.0}
    assert o["caseload_shape"] is None and o["max_sessions"] == 12 and o["dropout_hazard"] == 0.1
    assert o["moderator_effects"] == {MOD: 0.1, ("cbt", "alliance", "between_association"): 0.0}
    assert o["therapist_intercept_sd"] == pytest.approx(0.5 * math.sqrt(0.05 / 0.95))
    assert o["process_sd_therapist"]["alliance"] == pytest.approx(0.65 * 0.5)


@pytest.mark.parametrize("item", ["x", "=1", "within.alliance=", "sessions=2.5", "within=1", "foo=1",
                                  "moderator_effects.cbt.alliance=1", "therapist_icc=1", "n_patients=10",
                                  "within.alliance=inf"])
def test_bad_settings(item: str) -> None:
    with pytest.raises(InputError):
        resolve_overrides("coyne2022", parse_settings([item]), MOD)


def test_design_cells() -> None:
    cells = design_cells("coyne2022", [42, 80], [5, 2.5], {})
    assert [(c.n_therapists, c.n_patients) for c in cells] == [(42, 210), (42, 105), (80, 400), (80, 200)]
    (own,) = design_cells("coyne2022", None, None, {})
    assert (own.n_therapists, own.n_patients) == (42, 212)
    assert parse_numbers("42, 80", "therapists", True) == [42, 80]
    with pytest.raises(InputError):
        parse_numbers("4.5", "therapists", True)
    with pytest.raises(InputError):
        design_cells("coyne2022", [10, 10], [5], {})
