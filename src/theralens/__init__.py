"""theralens: which therapist benefits from which therapy process.

Flow: ``data`` (read, validate, decompose) -> ``model`` (nested mixed-model engine)
-> ``study`` (the aims of Coyne et al. 2022) -> ``profiles`` -> ``report``; ``power`` plans
the next study. The command-line interface lives in ``cli``.

Main entry points: :func:`fit_mixed`, :func:`fit_stats` (from :class:`SufficientStats`) and
:func:`lrt` (the engine), :func:`analyze` (the
study on DataFrames), :func:`stability` and :func:`training` (the training loop),
:func:`simulate` (studies with known truth) and :func:`power`.
They are imported on first use, so that ``import theralens`` (and every CLI command that
stops at a bad input) does not pay for SciPy, pandas and formulaic up front.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from theralens.errors import InputError, ModelSpecError

__version__ = "0.1.0"

_LAZY = {
    "LRTResult": "theralens.model.lrt",
    "MixedResult": "theralens.model.fit",
    "fit_mixed": "theralens.model.fit",
    "fit_stats": "theralens.model.fit",
    "SufficientStats": "theralens.model.stats",
    "lrt": "theralens.model.lrt",
    "analyze": "theralens.study.analysis",
    "analyze_files": "theralens.study.analysis",
    "StudyResult": "theralens.study.result",
    "simulate": "theralens.simulation.generate",
    "power": "theralens.planning",
    "stability": "theralens.study.stability",
    "training": "theralens.study.training",
}

__all__ = [
    "InputError",
    "LRTResult",
    "MixedResult",
    "ModelSpecError",
    "StudyResult",
    "SufficientStats",
    "__version__",
    "analyze",
    "analyze_files",
    "fit_mixed",
    "fit_stats",
    "lrt",
    "power",
    "simulate",
    "stability",
    "training",
]

if TYPE_CHECKING:  # pragma: no cover
    from theralens.model.fit import MixedResult, fit_mixed, fit_stats
    from theralens.model.lrt import LRTResult, lrt
    from theralens.model.stats import SufficientStats
    from theralens.planning import power
    from theralens.simulation.generate import simulate
    from theralens.study.analysis import analyze, analyze_files
    from theralens.study.result import StudyResult
    from theralens.study.stability import stability
    from theralens.study.training import training


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'theralens' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
