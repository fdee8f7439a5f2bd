"""Latency contribution of each channel group's options (HALP's latency contribution, extended to
both sides): for every prunable group g and width k it may keep, a cost in ms such that the
model's predicted latency is ≈ constant + Σ_g cost_g(k_g). ``one_sided`` is the paper's rule;
``two_sided`` (default) also counts what a group's width saves in the layers it feeds
(``option_costs`` says how each works).

Input widths come from the groups' "in" members, so a layer fed by a concat of several groups
(DenseNet) sees all of them, and a Linear after a flatten counts channels, not features."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Mapping, Protocol, Sequence, runtime_checkable

import numpy as np

from halp_trt.errors import HalpError

if TYPE_CHECKING:  # at run time only duck-typed: keep this module free of torch
    from halp_trt.graph.groups import ChannelGroup
    from halp_trt.graph.layers import LayerSpec

RULES = ("one_sided", "two_sided")


@runtime_checkable
class LatencyModel(Protocol):
    """What the pruner needs from a latency table."""

    identity: dict

    def layer_ms(self, spec: LayerSpec, c_in: int, c_out: int) -> float: ...

    def step_size(self, spec: LayerSpec) -> tuple[int, int]: ...


class WidthMap:
    """Per-layer (c_in, c_out) from per-group kept channel counts."""

    def __init__(self, layers: Sequence[LayerSpec], groups: Sequence[ChannelGroup] | None = None):
        self.layers = list(layers)
        self.sizes = {g.id: g.size for g in groups} if groups is not None else {}
        # layer name -> [(group id, input channels of the layer per channel of the group)]
        self.in_terms: dict[str, list[tuple[int, float]]] = {}
        feeds: dict[str, list[tuple[int, int, int]]] = {}  # module -> [(group, idxs, size)]
        # layer name -> its output channels per group channel, in folded groups
        self.out_share: dict[str, float] = {}
        for g in groups or ():
            for m in g.members:
                if m.side == "out" and g.root_channels is not None and g.size:
                    self.out_share[m.module_name] = len(m.idxs) / g.size
            for m in g.members:
                if m.side == "in" and g.size:
                    feeds.setdefault(m.module_name, []).append((g.id, len(m.idxs), g.size))
        for spec in self.layers:
            if spec.depthwise:
                continue
            if groups is not None:
                self.in_terms[spec.name] = [(gid, n / size / spec.signature.in_scale)
                                            for gid, n, size in feeds.get(spec.name, ())]
            elif spec.in_group is not None:
                self.in_terms[spec.name] = [(spec.in_group, 1.0)]

    def full(self, gid: int) -> int | None:
        return self.sizes.get(gid)

    def widths_of(self, spec: LayerSpec, widths: Mapping[int, int]) -> tuple[int, int]:
        """(c_in, c_out) of ``spec`` at ``widths``, each at least 1."""
        c_out = spec.out_channels
        if spec.out_group is not None and spec.out_group in widths:
            size = self._size(spec.out_group, spec.out_channels)
            kept = int(widths[spec.out_group])
            # a layer that makes only part of its group (one side of a concat the group spans)
            # keeps its share of what the group keeps; one making several channels per group
            # channel (a ghost module's tied pair) loses that many per group channel
            per = self.out_share.get(spec.name)
            if per is not None:
                c_out = spec.out_channels - round((size - kept) * per)
            else:
                c_out = spec.out_channels - (size - kept) if size <= spec.out_channels else \
                    round(spec.out_channels * kept / size)
        c_out = max(1, int(c_out))
        if spec.depthwise:
            return c_out, c_out
        c_in = float(spec.in_channels)
        for gid, ratio in self.in_terms.get(spec.name, ()):
            if gid in widths:
                c_in -= (self._size(gid, spec.in_channels) - int(widths[gid])) * ratio
        return max(1, int(round(c_in))), c_out

    def _size(self, gid: int, fallback: int) -> int:
        return self.sizes.get(gid, fallback)


def predict_model_ms(layers: Sequence[LayerSpec], widths: Mapping[int, int], model: LatencyModel,
                     groups: Sequence[ChannelGroup] | None = None) -> float:
    """The table's prediction for the whole model: Σ_l T_l(input width, output width).

    ``widths`` maps group id -> kept channels (missing groups are at full width). Pass ``groups``
    so that layers fed by several groups (concat) get the right input width."""
    wm = WidthMap(layers, groups)
    return math.fsum(float(model.layer_ms(s, *wm.widths_of(s, widths))) for s in layers)


def neuron_group_size(group: ChannelGroup, layers: Sequence[LayerSpec], model: LatencyModel,
                      override: int | Mapping[str, int] | None = None) -> int:
    """Channels bundled into one knapsack item: the largest latency step among the layers whose
    width the group sets — producers' output steps and consumers' input steps — so every kept
    width is a step end for all of them (ONNX Runtime on AVX2 is much slower at input widths
    that are not multiples of 8). A head group's item is a whole number of heads: the
    attention signature's step over heads (its other layers, Swin-V2's position-bias MLP,
    are too small to set it). ``override`` is an int for every group or a dict keyed by
    group root module name."""
    if isinstance(override, Mapping):
        override = override.get(group.root)
    if override is not None:
        if int(override) < 1:
            raise HalpError(f"neuron group size for {group.root} must be >= 1, got {override}")
        return int(override)
    if getattr(group, "heads_of", None):  # heads: the attention's own step, in heads
        return max([1] + [int(model.step_size(s)[1]) for s in layers
                          if s.out_group == group.id and s.signature.is_attention])
    consumers = set(group.modules("in"))
    steps = [int(model.step_size(s)[1]) for s in layers if s.out_group == group.id]
    steps += [int(model.step_size(s)[0]) for s in layers
              if s.name in consumers and s.out_group != group.id]
    return max([1] + [s for s in steps if s >= 1])


@dataclass
class OptionCosts:
    """costs_ms[g][j]: cost of option j of group g (≥ 0); predicted ≈ constant_ms + Σ costs."""

    costs_ms: dict[int, np.ndarray]
    constant_ms: float


def option_costs(rule: str, layers: Sequence[LayerSpec], groups: Sequence[ChannelGroup],
                 widths: Mapping[int, int], model: LatencyModel,
                 options: Mapping[int, Sequence[int]]) -> OptionCosts:
    """Costs of every option (kept count) in ``options`` (group id -> counts) at current
    ``widths`` (group id -> kept count; groups without options stay at their current width).

    * ``one_sided`` (the paper's): group g costs Σ over the layers it feeds *out of* of
      T(current input width, k) (a depthwise layer: T(k, k)). The consumers' input width is
      ignored, so shrinking a group whose consumer is expensive looks less useful than it is.
    * ``two_sided``: linearised around the current widths (a0, b0) of every layer, a group's
      change counts on its producers (T(a0, k) − T(a0, b0)) *and* on its consumers
      (T(a(k), b0) − T(a0, b0)). Two groups shrinking at once interact, which this ignores: the
      caller checks the true prediction (``predict_model_ms``) after solving."""
    if rule not in RULES:
        raise HalpError(f"unknown latency contribution rule {rule!r}; choose one of "
                        f"{', '.join(RULES)}")
    wm = WidthMap(layers, groups)
    opts = {g: np.asarray(c, dtype=np.int64) for g, c in options.items()}
    cur = {s.name: wm.widths_of(s, widths) for s in layers}
    T = model.layer_ms

    if rule == "one_sided":
        costs = {g: np.zeros(len(c)) for g, c in opts.items()}
        constant = 0.0
        for s in layers:
            a0, b0 = cur[s.name]
            g = s.out_group
            if g in opts:
                costs[g] += [T(s, int(k), int(k)) if s.depthwise else T(s, a0, int(k))
                             for k in opts[g]]
            else:
                constant += T(s, a0, b0)
        return OptionCosts(costs, constant)

    delta = {g: np.zeros(len(c)) for g, c in opts.items()}
    base = 0.0
    for s in layers:
        a0, b0 = cur[s.name]
        t0 = T(s, a0, b0)
        base += t0
        g = s.out_group
        if g in opts:
            delta[g] += [(T(s, int(k), int(k)) if s.depthwise else T(s, a0, int(k))) - t0
                         for k in opts[g]]
        if s.depthwise:
            continue
        for h, ratio in wm.in_terms.get(s.name, ()):
            if h in opts:
                k0 = int(widths.get(h, wm.full(h) or 0))
                # a layer reading the group in part keeps one input channel (the segments rule)
                delta[h] += [T(s, max(1, int(round(a0 + (int(k) - k0) * ratio))), b0) - t0
                             for k in opts[h]]
    costs, constant = {}, base
    for g, d in delta.items():
        lo = float(d.min())
        costs[g] = d - lo  # knapsack costs must be ≥ 0; the shift moves into the constant
        constant += lo
    return OptionCosts(costs, constant)
