"""Physical channel removal (torch-pruning's dependency graph does the surgery) and which
coupled groups it can be trusted with."""
from __future__ import annotations

from typing import Mapping, Sequence

import torch.nn as nn

from halp_trt.errors import HalpError
from halp_trt.graph.groups import ChannelGroup, quiet_torch_pruning
from halp_trt.graph.layers import is_depthwise

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
# Normalisations whose statistics span channels: zeroed channels still count in the statistics,
# so a masked model would not equal the physically pruned one.
_CROSS_CHANNEL = (nn.GroupNorm, nn.LayerNorm)


def unprunable_reason(group: ChannelGroup, modules: Mapping[str, nn.Module]) -> str | None:
    """Why a group must keep its width, or None. Grouped (not depthwise) convs need whole conv
    groups removed, which torch-pruning's channel surgery does not do correctly."""
    for m in group.members:
        mod = modules[m.module_name]
        if isinstance(mod, _CONV) and mod.groups > 1 and not is_depthwise(
                mod.groups, mod.in_channels, mod.out_channels):
            return f"{m.module_name} is a grouped convolution (groups={mod.groups})"
        if isinstance(mod, _CROSS_CHANNEL):
            return f"{m.module_name} ({type(mod).__name__}) normalises across channels"
    return None


def remove_channels(model: nn.Module, graph, groups: Sequence[ChannelGroup],
                    drop: Mapping[int, Sequence[int]]) -> nn.Module:
    """Physically remove ``drop[group id]`` (root channel indices) with torch-pruning."""
    modules = dict(model.named_modules())
    by_id = {g.id: g for g in groups}
    with quiet_torch_pruning():
        for gid, idxs in drop.items():
            idxs = sorted(int(i) for i in idxs)
            if not idxs:
                continue
            g = by_id[gid]
            if len(idxs) >= g.size:
                raise HalpError(f"cannot remove all {g.size} channels of group {g.root}")
            root = modules[g.root]
            fn = graph.get_pruner_of_module(root).prune_out_channels
            tp_group = graph.get_pruning_group(root, fn, idxs)
            tp_group.prune()
    return model
