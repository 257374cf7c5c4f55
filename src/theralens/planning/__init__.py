"""Plan the next study: simulation-based power for therapist slope variances and moderators.

    result = theralens.power(therapists=[42, 80, 120], patients_per_therapist=[5, 10], nsim=500)
    result = theralens.power("OUT/results.json", therapists=[60, 120])          # from a fitted study
    result = theralens.power(search="moderator:0.8", therapists=[20, 400], patients_per_therapist=[5])
    print(result.summary()); result.write("power-out")

Flow: ``pilot`` (the truth of an analysed study) and ``settings`` (effect sizes and design
cells) -> ``replicate`` (simulate, build the analysis table: the patient-level ``table`` from
arrays, or the pipeline's own ``analysis_table`` for the session design, the study's
``designs``, fit them with the engine, test with ``satterthwaite`` df or any other ``ddf``) ->
``execution`` (this process, a local process pool, or Dask) -> ``result`` (power with its
Wilson interval, failures) -> ``plot``; ``search`` finds the sample size reaching a target
power; ``cli`` is ``theralens power``.
"""

from theralens.planning.estimate import power
from theralens.planning.result import PowerResult

__all__ = ["PowerResult", "power"]
