"""HALPConfig: the options of a HALP pruning run, validated on creation."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

from halp_trt.errors import HalpError
from halp_trt.pruning.contributions import RULES
from halp_trt.pruning.importance import NORMALIZERS, make_importance
from halp_trt.pruning.schedule import SCHEDULES
from halp_trt.pruning.targets import Target, parse_target


@dataclass
class HALPConfig:
    """Options of a HALP run. Validated on creation; bad values raise HalpError."""

    target: str | float | Target  # "0.5" / 0.5 / "50%": fraction of full predicted; "12ms"
    steps: int = 10  # m: number of pruning steps
    interval: int = 100  # r: minibatches (step() calls) between pruning steps
    schedule: str = "exp"  # "exp" | "linear"
    # a name of importance.IMPORTANCES ("taylor" is HALP's), an Importance, or fn(model, group)
    importance: str | Callable = "taylor_per_layer"
    contribution: str = "two_sided"  # "two_sided" | "one_sided" (the paper's)
    # "none": raw scores are the knapsack's values (HALP); "mean": each group's scores over
    # the mean of its kept channels' (Torch-Pruning's default), so groups count by rank
    importance_normalizer: str = "none"
    group_size: int | Mapping[str, int] | None = None  # None: the table's latency step
    min_groups_kept: int = 1  # neuron groups every channel group keeps
    max_prune_ratio: float = 1.0  # at most this fraction of a group's original channels removed
    resolution_ms: float = 1e-3  # knapsack cost grid
    exclude: Sequence[str] = ()  # modules whose output channels must not change
    # trial surgery on a copy before pruning; groups that break it keep their width
    verify_surgery: bool = True

    def __post_init__(self):
        self.target = parse_target(self.target)
        for name in ("steps", "interval", "min_groups_kept"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                hint = (" (a group with no channels cannot be removed physically: that would "
                        "delete a layer, not prune it)" if name == "min_groups_kept" else "")
                raise HalpError(f"{name} must be a positive integer, got {v!r}{hint}")
        if self.schedule not in SCHEDULES:
            raise HalpError(f"schedule must be one of {', '.join(SCHEDULES)}, "
                            f"got {self.schedule!r}")
        if self.contribution not in RULES:
            raise HalpError(f"contribution must be one of {', '.join(RULES)}, "
                            f"got {self.contribution!r}")
        make_importance(self.importance)  # validates
        if self.importance_normalizer not in NORMALIZERS:
            raise HalpError(f"importance_normalizer must be one of {', '.join(NORMALIZERS)}, "
                            f"got {self.importance_normalizer!r}")
        gs = self.group_size
        if gs is not None:
            values = list(gs.values()) if isinstance(gs, Mapping) else [gs]
            if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in values):
                raise HalpError(f"group_size must be a positive integer or a dict of them keyed "
                                f"by group root module, got {gs!r}")
        r = self.max_prune_ratio
        if not (isinstance(r, (int, float)) and 0.0 < float(r) <= 1.0):
            raise HalpError(f"max_prune_ratio must be in (0, 1], got {r!r}")
        if not (isinstance(self.resolution_ms, (int, float)) and math.isfinite(self.resolution_ms)
                and self.resolution_ms > 0):
            raise HalpError(f"resolution_ms must be a positive number, got {self.resolution_ms!r}")
        if isinstance(self.exclude, str):
            self.exclude = (self.exclude,)
        self.exclude = tuple(self.exclude)

    def summary(self) -> dict:
        """JSON-friendly description (a callable importance is recorded by name)."""
        imp, gs = self.importance, self.group_size
        return {"target": str(self.target), "steps": self.steps, "interval": self.interval,
                "schedule": self.schedule,
                "importance": imp if isinstance(imp, str) else getattr(imp, "__name__",
                                                                       type(imp).__name__),
                "contribution": self.contribution,
                "importance_normalizer": self.importance_normalizer,
                "group_size": dict(gs) if isinstance(gs, Mapping) else gs,
                "min_groups_kept": self.min_groups_kept,
                "max_prune_ratio": float(self.max_prune_ratio),
                "resolution_ms": float(self.resolution_ms), "exclude": list(self.exclude)}
