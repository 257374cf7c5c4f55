"""The nested mixed-model engine: formula -> design -> criterion -> optimize -> fit -> tests."""

from theralens.model.fit import MixedResult, fit_mixed
from theralens.model.lrt import LRTResult, lrt

__all__ = ["LRTResult", "MixedResult", "fit_mixed", "lrt"]
