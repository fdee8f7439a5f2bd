"""HALP pruning: targets and schedule, importance, latency contributions, the knapsack, masks
and channel surgery, the pruner for any training loop, its result, and the closed loop on
measured latency (``feedback``).

    from halp_trt.pruning.pruner import HALPPruner
    from halp_trt.pruning.config import HALPConfig

(also exported by ``halp_trt`` itself). This ``__init__`` imports nothing, so the modules
below it may be loaded one by one (``result`` needs no torch to read a result).
"""
