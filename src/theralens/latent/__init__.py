"""The latent decomposition (models.md "Latent decomposition"): the therapist's caseload mean
of a process (and, in the session design, the patient's mean) is a latent variable, not the
observed average, so between-therapist effects are not biased toward zero by its
unreliability (Luedtke et al. 2008).

- :mod:`theralens.latent.ml`: full-information ML of the patient design (quadrature over the
  therapist slopes).
- :mod:`theralens.latent.bayes`: Bayesian estimation of both designs with NumPyro
  (:func:`fit_bayes`, :class:`BayesFit`); the optional extra ``pip install 'theralens[bayes]'``.

``fit_bayes`` and ``BayesFit`` are imported lazily, so ``import theralens.latent`` needs none
of the optional packages.
"""

from __future__ import annotations

from typing import Any

__all__ = ["BayesFit", "fit_bayes"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from theralens.latent import bayes

        return getattr(bayes, name)
    raise AttributeError(f"module 'theralens.latent' has no attribute {name!r}")
