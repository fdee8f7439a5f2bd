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

from dataclasses import asdict, dataclass

from halp_trt.errors import HalpError

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


def floor_copy(pruner):
    """The smallest model ``pruner`` allows (every prunable group at its minimum width) and its
    table layer sum. ``pruner`` is used up."""
    widths = pruner.min_widths()
    masks = {g.root: pruner.uniform_mask(g, widths[g.id]) for g in pruner.prunable}
    pruner.set_masks(masks)
    layers_ms = pruner.predict_ms()
    return pruner.finalize().eval(), layers_ms


def slimmed_copy(pruner, width_factor: float):
    """The second calibration point: every prunable group of ``pruner``'s model cut to
    ``width_factor`` of its width (whole neuron groups). Returns the finalized model and its
    table layer sum. ``pruner`` (a HALPPruner, usually on a copy) is used up."""

    masks = {}
    for g in pruner.prunable:
        step = pruner.group_sizes[g.id]
        k = min(g.size, max(step, int(g.size * width_factor / step) * step))
        if k >= g.size > step:  # coarse steps: at least one step narrower, or no second point
            k = g.size - step
        masks[g.root] = pruner.uniform_mask(g, k)
    pruner.set_masks(masks)
    layers_ms = pruner.predict_ms()
    return pruner.finalize().eval(), layers_ms
