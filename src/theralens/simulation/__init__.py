"""Studies with known truth: :func:`simulate` (the generative model of
:mod:`theralens.simulation.generate`) and :func:`simulate_latent`."""

from theralens.simulation.generate import SimulatedStudy, SimulationParameters, list_presets, simulate, simulate_latent

__all__ = ["SimulatedStudy", "SimulationParameters", "list_presets", "simulate", "simulate_latent"]
