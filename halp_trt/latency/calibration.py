"""From the table's per-layer sum to the whole model's latency.

The sum of isolated layers is not the model's latency (measured here: 0.74–0.82 of resnet18 at
64x64, 1.04 of resnet50 at 224): the table lacks pooling, adds and per-call overheads, and
isolated layers pay layout conversions that a whole graph pays once. Part of that rest is fixed,
part shrinks with the widths. Measured on resnet18 at 64x64 (ORT CPU): assuming it fixed
(``additive``) or proportional (``ratio``) missed a pruned model's latency by 10–40% depending
on how deep the pruning went.

``affine`` (default) measures two whole models — the original and a uniformly slimmed copy near
the target — interleaved, and fits model = a · layer sum + b through both points. ``additive``
and ``ratio`` need only the original and are kept for comparison.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from halp_trt.errors import ConfigError, HalpError

KINDS = ("affine", "additive", "ratio")


def clamp_slope(slope: float, proportional: float) -> float:
    """Keep a fitted slope of whole-model vs layer-sum latency within a factor 2 of the
    proportional one: on small models two measurements differ by little more than their noise,
    and one noisy point must not make targets absurd."""
    return min(max(slope, 0.5 * proportional), 2.0 * proportional)


@dataclass
class Calibration:
    kind: str
    layers_full_ms: float  # Σ table entries of the original model
    model_full_ms: float  # the original, measured whole
    layers_slim_ms: float | None = None  # the slimmed calibration model (affine only)
    model_slim_ms: float | None = None
    # the smallest model (every group at its minimum width), measured only when a target comes
    # near it: there a line through the original and a uniform slim can be far off (seen on
    # shufflenet_v2_x1_0 at 128: floor predicted 0.63 of the original, measured 0.23)
    layers_floor_ms: float | None = None
    model_floor_ms: float | None = None

    def __post_init__(self):
        if self.kind not in KINDS:
            raise HalpError(f"calibration must be one of {KINDS}, got {self.kind!r}")
        if not (self.layers_full_ms > 0 and self.model_full_ms > 0):
            raise HalpError("calibration needs positive full-model latencies")
        if self.kind == "affine" and (self.layers_slim_ms is None or self.model_slim_ms is None
                                      or self.layers_slim_ms >= self.layers_full_ms):
            raise HalpError("affine calibration needs a slimmed model with a smaller layer sum")

    @property
    def slope_intercept(self) -> tuple[float, float]:
        if self.kind == "additive":
            return 1.0, self.model_full_ms - self.layers_full_ms
        if self.kind == "ratio":
            return self.model_full_ms / self.layers_full_ms, 0.0
        proportional = self.model_full_ms / self.layers_full_ms
        a = ((self.model_full_ms - self.model_slim_ms) /
             (self.layers_full_ms - self.layers_slim_ms))
        a = clamp_slope(a, proportional)
        return a, self.model_full_ms - a * self.layers_full_ms

    @property
    def _floor_segment(self) -> tuple[float, float, float, float] | None:
        """(x0, y0, x1, y1): the measured floor and the lowest point above it, when a floor
        was measured below every other point; predictions under x1 follow this segment."""
        if self.layers_floor_ms is None or self.model_floor_ms is None:
            return None
        x1, y1 = (self.layers_slim_ms, self.model_slim_ms) if self.kind == "affine" else \
            (self.layers_full_ms, self.model_full_ms)
        if not (0 < self.layers_floor_ms < x1 and 0 < self.model_floor_ms < y1):
            return None
        return self.layers_floor_ms, self.model_floor_ms, x1, y1

    def model_ms(self, layers_ms: float) -> float:
        """Predicted whole-model latency for a given per-layer sum."""
        seg = self._floor_segment
        if seg is not None and layers_ms < seg[2]:
            x0, y0, x1, y1 = seg
            return y0 + (layers_ms - x0) * (y1 - y0) / (x1 - x0)
        a, b = self.slope_intercept
        return a * layers_ms + b

    def layers_ms(self, model_ms: float) -> float:
        """The per-layer sum that predicts ``model_ms`` (the knapsack's target)."""
        seg = self._floor_segment
        if seg is not None and model_ms < seg[3]:
            x0, y0, x1, y1 = seg
            return x0 + (model_ms - y0) * (x1 - x0) / (y1 - y0)
        a, b = self.slope_intercept
        return (model_ms - b) / a

    def prior_points(self) -> list[tuple[float, float]]:
        """[(layer-sum ratio, measured ratio)] against the original (one interleaved session)
        that a feedback slope fit may lean on: the slimmed copy, for the affine kind, when it
        is narrower and measured faster than the original and no floor was measured (then the
        calibration itself no longer follows the line through it below the copy)."""
        if self.kind != "affine" or self.layers_floor_ms is not None or \
                not 0 < self.layers_slim_ms < self.layers_full_ms or \
                not 0 < self.model_slim_ms < self.model_full_ms:
            return []
        return [(self.layers_slim_ms / self.layers_full_ms,
                 self.model_slim_ms / self.model_full_ms)]

    def to_json(self) -> dict:
        d = asdict(self)
        d["slope"], d["intercept_ms"] = self.slope_intercept
        return d


# A target whose predicted floor is within this factor of it is tried (and measured), not
# refused: the floor is a two-point prediction, a few percent either way from one run to the
# next (seen: MNASNet and EfficientNet at 64x64 refused in one run, met the target in the next).
NEAR_FLOOR = 1.3
# A target under this many times the predicted floor gets the floor measured.
MEASURE_FLOOR_WITHIN = 2.0


def from_measurements(kind: str, measured: dict) -> tuple[Calibration, str | None]:
    """The calibration of ``kind`` through a run's saved measurements (``layers_full_ms``,
    ``model_full_ms``, ``layers_slim_ms``, ``model_slim_ms``, optionally the floor's), and a
    note when ``affine`` had to fall back to ``ratio``."""
    note = None
    if kind == "affine" and measured["layers_slim_ms"] >= measured["layers_full_ms"]:
        # every group is a single latency step wide: no narrower second point exists
        kind, note = "ratio", ("no group can be slimmed by a whole step: calibrating "
                               "proportionally (ratio) instead of affine")
    return Calibration(kind, measured["layers_full_ms"], measured["model_full_ms"],
                       measured["layers_slim_ms"], measured["model_slim_ms"],
                       measured.get("layers_floor_ms"), measured.get("model_floor_ms")), note


def floor_worth_measuring(calib: Calibration, layers_min_ms: float, goal_ms: float) -> bool:
    """Near the predicted floor a line through the original and a uniform slim can be far off:
    the smallest model is then measured too."""
    return calib.model_floor_ms is None and \
        calib.model_ms(layers_min_ms) * MEASURE_FLOOR_WITHIN >= goal_ms


def layers_target_ms(calib: Calibration, goal_ms: float, layers_min_ms: float | None,
                     target_text: str) -> tuple[float, str | None]:
    """The table layer sum to prune to for a whole-model goal of ``goal_ms``, and a note when
    the goal sits near the table's floor (then pruning goes to the floor and the measurements
    decide). Raises ``ConfigError`` ("target") when the goal is out of reach; ``target_text``
    is the target as the user gave it."""
    original_ms = calib.model_full_ms
    if goal_ms >= original_ms:
        raise ConfigError("target", f"{{field}} {target_text} is not below the original's "
                          f"measured {original_ms:.3f} ms: nothing to prune; give a lower target")
    layers_ms, note = calib.layers_ms(goal_ms), None
    floor_ms = None if layers_min_ms is None else calib.model_ms(layers_min_ms)
    if floor_ms is not None and layers_ms < layers_min_ms:
        if floor_ms > goal_ms * NEAR_FLOOR:
            raise ConfigError(
                "target", f"{{field}} {target_text} ({goal_ms:.3f} ms) is infeasible with this "
                f"table: its smallest model (every prunable group at its minimum width) is "
                f"predicted at {floor_ms:.3f} ms, {floor_ms / original_ms:.3f} of the original's "
                f"{original_ms:.3f} ms measured. Use {{field}} "
                f"{math.ceil(1000 * floor_ms / original_ms) / 1000:.3f} or more.")
        note = (f"the table puts the smallest model at {floor_ms / original_ms:.3f} of the "
                "original, near the target: pruning towards it and measuring")
        layers_ms = layers_min_ms
    if layers_ms <= 0:
        raise ConfigError("target", f"target {goal_ms:.3f} ms is infeasible: the part of the "
                          "model the table does not hold alone takes "
                          f"{goal_ms - layers_ms:.3f} ms (original {original_ms:.3f} ms measured)")
    return layers_ms, note
