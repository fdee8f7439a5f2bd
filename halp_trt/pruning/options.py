"""Which widths a channel group may be pruned to, and which of its channels go first.

A group is cut in whole neuron groups (sized to the latency table's step, so every option sits
on a step of the layer's latency curve) from its least important end. A group that feeds or
leaves a grouped conv is split by conv group and cut evenly: each neuron group spans all conv
groups, and channels go in rounds, so every conv group keeps the same count. Where a group's
channels come from several layers (the producers of a concat) or reach a layer only in part (a
slice), each of those layers keeps at least its most important channel: a layer left with none
cannot exist (seen on timm's CSPNeXt: a concat of two branches gated by one squeeze-excite)."""
from __future__ import annotations

import math
from typing import Mapping

import numpy as np
import torch
import torch.nn as nn

from halp_trt.graph.groups import ChannelGroup
from halp_trt.pruning.contributions import neuron_group_size
from halp_trt.pruning.surgery import conv_group_slices, unprunable_reason

# Share of the mean channel importance each kept channel adds to its option's value.
TIE_SHARE = 1e-6


def split_prunable(groups: list[ChannelGroup], modules: Mapping[str, nn.Module]
                   ) -> tuple[list[ChannelGroup], dict[str, str]]:
    """The groups that may be pruned, and the others' roots with why each keeps its width."""
    prunable, fixed = [], {}
    for g in groups:
        why = unprunable_reason(g, modules)
        if why is None and g.size > 1:
            prunable.append(g)
        else:
            fixed[g.root] = why or "a single channel"
    return prunable, fixed


def member_segments(g: ChannelGroup) -> list[list[int]]:
    """The group channels each member layer covers where that is not the whole group (a
    concat's producers, a slice's readers): each needs one kept channel."""
    segments = []
    for m in g.members:
        idx = sorted(set(int(i) for i in m.root_idxs))
        if 0 < len(idx) < g.size and idx not in segments:
            segments.append(idx)
    return segments


class ChannelOptions:
    def __init__(self, prunable: list[ChannelGroup], layers, latency_model,
                 modules: Mapping[str, nn.Module], config):
        self.config = config
        self.group_sizes = {g.id: neuron_group_size(g, layers, latency_model, config.group_size)
                            for g in prunable}
        self.slices: dict[int, list[list[int]]] = {}  # group id -> channels of each conv group
        self.segments: dict[int, list[list[int]]] = {}  # group id -> member_segments
        for g in prunable:
            sl = conv_group_slices(g, modules)
            if sl is not None:
                self.slices[g.id] = sl
                n = len(sl)
                self.group_sizes[g.id] = n * max(1, math.ceil(self.group_sizes[g.id] / n))
            elif segments := member_segments(g):
                self.segments[g.id] = segments

    def min_count(self, g: ChannelGroup, n_cur: int) -> int:
        by_groups = self.config.min_groups_kept * self.group_sizes[g.id]
        by_ratio = math.ceil(g.size * (1.0 - self.config.max_prune_ratio) - 1e-9)
        if g.id in self.slices:  # whole rounds over the conv groups
            n = len(self.slices[g.id])
            by_ratio = n * math.ceil(by_ratio / n)
        by_segments = len(self.segments.get(g.id, ()))  # one channel each
        return max(1, min(n_cur, max(by_groups, by_ratio, by_segments)))

    def counts(self, g: ChannelGroup, n_cur: int) -> np.ndarray:
        """The channel counts ``g`` may keep from ``n_cur``, ascending: prefixes in whole
        neuron groups from the most important end; the remainder (n_cur mod step, the least
        important channels) is only ever kept with everything."""
        step = self.group_sizes[g.id]
        lo = self.min_count(g, n_cur)
        return np.asarray([c for c in list(range(step, n_cur, step)) + [n_cur] if c >= lo],
                          dtype=np.int64)

    def order(self, g: ChannelGroup, keep: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        """``g``'s kept channels, most important first (stable: ties keep the lower index
        first). For a group split by conv groups, round-robin over the conv groups — the r-th
        best of each, then the (r+1)-th — so every prefix of whole rounds keeps the same number
        in each conv group and is the most important such selection."""
        def ranked(idx: torch.Tensor) -> torch.Tensor:
            return idx[torch.sort(-scores[idx], stable=True).indices]

        if g.id not in self.slices:
            return self._segments_first(g, ranked(torch.nonzero(keep).flatten()))
        per = [ranked(torch.as_tensor([i for i in s if keep[i]], dtype=torch.long))
               for s in self.slices[g.id]]
        return torch.stack(per, dim=1).flatten()  # row r: the r-th best of every slice

    def _segments_first(self, g: ChannelGroup, order: torch.Tensor) -> torch.Tensor:
        """``order`` with each segment's first channel in it moved to the front (in ``order``'s
        own order), so every prefix as long as the segments keeps one of each."""
        segments = self.segments.get(g.id)
        if not segments:
            return order
        position = {int(c): i for i, c in enumerate(order)}
        firsts = {min((position[c] for c in seg if c in position), default=None)
                  for seg in segments} - {None}
        front = [int(order[i]) for i in sorted(firsts)]
        rest = [int(c) for i, c in enumerate(order) if i not in firsts]
        return torch.as_tensor(front + rest, dtype=torch.long)

    def knapsack_items(self, prunable: list[ChannelGroup], keep: Mapping[int, torch.Tensor],
                       scores: list[torch.Tensor]) -> tuple[dict, list]:
        """For one pruning step: each group's kept channels in importance order (group id ->
        indices) and the knapsack's items (group, counts, value of each count). A count's value
        is the summed importance of the channels it keeps."""
        # Ties in importance go to the wider option: each kept channel is worth a millionth of
        # the mean channel importance on top. Without it, a group whose importance is all zero
        # (a zero-initialised classifier, as torchvision's ViT has, gives every Taylor score 0)
        # falls to its minimum width whatever the budget.
        total = float(sum(float(s.sum()) for s in scores))
        channels = sum(g.size for g in prunable)
        tiebreak = (total if total > 0 else 1.0) * TIE_SHARE / max(channels, 1)
        orders, items = {}, []
        for g, s in zip(prunable, scores):
            orders[g.id] = order = self.order(g, keep[g.id], s)
            counts = self.counts(g, len(order))
            cum = torch.cumsum(s[order], 0).numpy()
            items.append((g, counts, cum[counts - 1] + tiebreak * counts))
        return orders, items

    def uniform_mask(self, g: ChannelGroup, k: int) -> torch.Tensor:
        """A mask keeping ``k`` channels of ``g`` by index order (the first ones; for a group
        split by conv groups, the first k/n of each), for calibration copies."""
        keep = torch.zeros(g.size, dtype=torch.bool)
        if g.id not in self.slices:
            keep[self._segments_first(g, torch.arange(g.size))[:k]] = True
            return keep
        n = len(self.slices[g.id])
        for s in self.slices[g.id]:
            keep[s[:max(1, k // n)]] = True
        return keep

    def check_mask(self, g: ChannelGroup, keep: torch.Tensor) -> str | None:
        """What is wrong with ``keep`` as a mask of ``g`` (None: nothing)."""
        if keep.numel() != g.size or not bool(keep.any()):
            return f"mask for {g.root} must have {g.size} entries, at least one True"
        if g.id in self.slices and len({int(keep[s].sum()) for s in self.slices[g.id]}) != 1:
            return (f"mask for {g.root} must keep the same number of channels in each of the "
                    f"{len(self.slices[g.id])} groups of its grouped conv")
        return None
