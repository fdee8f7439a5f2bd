"""The whole models a latency calibration measures besides the original: a uniformly slimmed
copy and the smallest model the table allows. A sizing pruner (a HALPPruner on a copy of the
original at full width, built once per run) chooses their widths; each is cut from its own
copy of the original, so one sizing pruner serves both."""
from __future__ import annotations

from halp_trt.pruning.result import apply_result


def floor_copy(pruner, model, example):
    """The smallest model ``pruner`` allows (every prunable group at its minimum width), cut
    from ``model`` (a copy of the pruner's model at full width, consumed), and its table layer
    sum. The pruner is left at those masks and can size further copies."""
    widths = pruner.min_widths()
    return _cut_copy(pruner, {g.root: pruner.uniform_mask(g, widths[g.id])
                              for g in pruner.prunable}, model, example)


def slimmed_copy(pruner, model, example, width_factor: float):
    """The second calibration point: every prunable group cut to ``width_factor`` of its width
    (whole neuron groups), from ``model`` as in ``floor_copy``; and its table layer sum."""
    masks = {}
    for g in pruner.prunable:
        step = pruner.group_sizes[g.id]
        k = min(g.size, max(step, int(g.size * width_factor / step) * step))
        if k >= g.size > step:  # coarse steps: at least one step narrower, or no second point
            k = g.size - step
        masks[g.root] = pruner.uniform_mask(g, k)
    return _cut_copy(pruner, masks, model, example)


def _cut_copy(pruner, masks, model, example):
    pruner.set_masks(masks)
    return apply_result(model, example, pruner.result()).eval(), pruner.predict_ms()
