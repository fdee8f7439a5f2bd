"""HALP pruning: targets and schedule, importance, latency contributions, the knapsack, masks
and channel surgery, the pruner for any training loop, its result, and the closed loop on
measured latency (``feedback``).

    from halp_trt.pruning import HALPConfig, HALPPruner
"""
from halp_trt.pruning.config import HALPConfig
from halp_trt.pruning.pruner import HALPPruner
from halp_trt.pruning.result import PruningResult, apply_result

__all__ = ["HALPConfig", "HALPPruner", "PruningResult", "apply_result"]
