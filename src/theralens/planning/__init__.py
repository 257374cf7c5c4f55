"""Plan the next study: simulation-based power for therapist slope variances and moderators.

    result = theralens.power(therapists=[42, 80, 120], patients_per_therapist=[5, 10], nsim=500)
    print(result.summary()); result.write("power-out")

Flow: ``settings`` (effect sizes and design cells) -> ``replicate`` (simulate, build the
patient-level ``table``, the study's ``designs``, ``fit`` them with the engine, test, with
``satterthwaite`` df) -> ``execution`` (this process, a local process pool, or Dask) ->
``result`` (power with Monte Carlo SE, failures) -> ``plot``; ``cli`` is ``theralens power``.
"""

from theralens.planning.estimate import power
from theralens.planning.result import PowerResult

__all__ = ["PowerResult", "power"]
