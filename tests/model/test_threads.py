"""Fits run with one BLAS thread whatever the library defaults (theralens.model.threads)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from threadpoolctl import threadpool_limits

import theralens.model.fit as fit_module
from theralens.model import threads


def _data() -> pd.DataFrame:
    rng = np.random.default_rng(3)
    g = np.repeat(np.arange(20), 15)
    x = rng.normal(size=g.size)
    y = 1.0 + 0.5 * x + rng.normal(size=20)[g] + rng.normal(size=g.size)
    return pd.DataFrame({"y": y, "x": x, "g": g})


def test_fit_runs_with_one_blas_thread_and_restores(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[list[int]] = []
    original = fit_module.moment_start

    def spy(*args: object, **kwargs: object) -> object:
        seen.append(threads.blas_threads())
        return original(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(fit_module, "moment_start", spy)
    with threadpool_limits(2, user_api="blas"):
        before = threads.blas_threads()
        fit = fit_module.fit_mixed("y ~ x + (1 | g)", _data())
        assert threads.blas_threads() == before
        df = fit.df  # the Satterthwaite df run with one thread too, and restore
        assert threads.blas_threads() == before
    assert seen and all(n == 1 for n in seen[0])
    assert np.all(np.isfinite(df.to_numpy()))


def test_results_do_not_depend_on_the_thread_count() -> None:
    data = _data()
    with threadpool_limits(1, user_api="blas"):
        a = fit_module.fit_mixed("y ~ x + (1 + x | g)", data)
    with threadpool_limits(2, user_api="blas"):
        b = fit_module.fit_mixed("y ~ x + (1 + x | g)", data)
    assert a.reml_criterion == b.reml_criterion
    np.testing.assert_array_equal(a.fixed_effects.to_numpy(), b.fixed_effects.to_numpy())
