"""theralens: which therapist benefits from which therapy process.

Flow: ``data`` (read, validate, decompose) -> ``model`` (nested mixed-model engine)
-> ``study`` (the aims of Coyne et al. 2022) -> ``profiles`` -> ``report``; ``power`` plans
the next study. The command-line interface lives in ``cli``.

Main entry points: :func:`fit_mixed` and :func:`lrt` (the engine), :func:`analyze` (the
study on DataFrames), :func:`simulate` (studies with known truth) and :func:`power`.
"""

from __future__ import annotations

from typing import Any

from theralens.errors import InputError, ModelSpecError
from theralens.model import LRTResult, MixedResult, fit_mixed, lrt
from theralens.study.analysis import analyze, analyze_files
from theralens.study.result import StudyResult
from theralens.study.simulate import simulate

__version__ = "0.1.0"
__all__ = [
    "InputError",
    "LRTResult",
    "MixedResult",
    "ModelSpecError",
    "StudyResult",
    "__version__",
    "analyze",
    "analyze_files",
    "fit_mixed",
    "lrt",
    "power",
    "simulate",
]


def __getattr__(name: str) -> Any:
    if name == "power":  # imported on use: it brings in the process pool and Dask
        from theralens.power import power

        return power
    raise AttributeError(f"module 'theralens' has no attribute {name!r}")
