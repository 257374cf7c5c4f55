"""The nested mixed-model engine: formula -> design -> sufficient statistics -> criterion ->
optimize -> fit -> tests."""

from theralens.model.fit import MixedResult, fit_mixed, fit_stats
from theralens.model.lrt import LRTResult, lrt
from theralens.model.stats import SufficientStats

__all__ = ["LRTResult", "MixedResult", "SufficientStats", "fit_mixed", "fit_stats", "lrt"]
