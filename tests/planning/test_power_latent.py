"""Power under the latent decomposition (issue #10; theralens.planning.latent)."""

from __future__ import annotations

import numpy as np
import pytest

import theralens as tl
from theralens.planning.replicate import PowerSpec, run_replicate
from theralens.planning.settings import design_cells


def test_latent_power_tests_come_from_the_latent_fit() -> None:
    """At 80 therapists x 6 patients (the latent fit is identified in each of seeds 0-3). At 40 x 6
    the latent ML fit of 3 of seeds 0-3 ends on a ridge (the two between effects trade off, the
    therapist intercept SD near 0; measured on AMD EPYC, 2026-12-02), whose information is not
    positive definite: those replicates count as errors, which the power result reports."""
    spec = PowerSpec(decomposition="latent")
    cell = design_cells("coyne2022", [80], [6], {})[0]
    out = run_replicate(spec, cell, 0)
    kinds = [t.kind for t in spec.tests]
    for i, kind in enumerate(kinds):
        assert out.status[i] == 0, (kind, out.messages)
        assert 0.0 <= out.p[i] <= 1.0
    manifest = run_replicate(PowerSpec(), cell, 0)
    # same seed, other generating model and estimator: the within estimates are close (unbiased in both),
    # the slope-variance tests are the manifest ones in both
    w = kinds.index("within")
    assert abs(out.estimate[w] - manifest.estimate[w]) < 3 * out.se[w]
    assert np.isfinite(out.se[kinds.index("between")])


def test_power_function_takes_the_decomposition(capsys: pytest.CaptureFixture[str]) -> None:
    r = tl.power(therapists=[30], patients_per_therapist=[5], nsim=2, decomposition="latent", workers=1,
                 progress=True)
    assert r.spec.decomposition == "latent"
    assert "latent decomposition: one replicate of the largest cell took" in capsys.readouterr().err
    with pytest.raises(tl.InputError, match="manifest"):
        tl.power(therapists=[30], patients_per_therapist=[5], nsim=2, decomposition="observed", workers=1)
