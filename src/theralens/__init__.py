"""theralens: which therapist benefits from which therapy process.

Flow: ``data`` (read, validate, decompose) -> ``model`` (nested mixed-model engine)
-> ``study`` (the aims of Coyne et al. 2022) -> ``profiles`` -> ``report``; ``power`` plans
the next study. The command-line interface lives in ``cli``.
"""

from theralens.errors import InputError, ModelSpecError
from theralens.model import LRTResult, MixedResult, fit_mixed, lrt

__version__ = "0.1.0"
__all__ = ["InputError", "LRTResult", "MixedResult", "ModelSpecError", "__version__", "fit_mixed", "lrt"]
