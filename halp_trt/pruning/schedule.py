"""The progressive pruning schedule (HALP): pruning approaches the final latency over ``m``
steps. The exponential schedule takes equal *ratios* per step, so early steps (when the network
is wide and redundant) remove more milliseconds than late ones:

    exp:    target_t = exp(α·ln final + (1−α)·ln initial), α = t/m
    linear: target_t = (1−α)·initial + α·final
"""
from __future__ import annotations

import math

from halp_trt.errors import HalpError

SCHEDULES = ("exp", "linear")


def schedule_targets_ms(initial_ms: float, final_ms: float, steps: int,
                        kind: str = "exp") -> list[float]:
    """Targets for pruning steps t = 1..steps, ending exactly at ``final_ms``."""
    if kind not in SCHEDULES:
        raise HalpError(f"unknown schedule {kind!r}; choose one of {', '.join(SCHEDULES)}")
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise HalpError(f"the number of pruning steps must be a positive integer, got {steps!r}")
    if not (initial_ms > 0 and final_ms > 0 and math.isfinite(initial_ms)
            and math.isfinite(final_ms)):
        raise HalpError(f"schedule endpoints must be positive latencies, got {initial_ms!r} ms "
                        f"and {final_ms!r} ms")
    out = [scheduled_value(initial_ms, final_ms, t, steps, kind) for t in range(1, steps + 1)]
    out[-1] = float(final_ms)  # exact endpoint, no exp/log round-off
    return out


def scheduled_value(initial: float, final: float, t: int, steps: int, kind: str = "exp") -> float:
    """The schedule's value after step ``t`` of ``steps`` (t beyond ``steps`` stays at final)."""
    a = min(1.0, t / steps)
    if kind == "exp":
        return math.exp(a * math.log(final) + (1 - a) * math.log(initial))
    return (1 - a) * initial + a * final
