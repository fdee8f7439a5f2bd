"""Masking channels before they are removed: masked channels stay exactly zero in weights,
BN statistics, gradients and optimizer state (momentum, Adam moments, weight decay)."""
from __future__ import annotations

from collections import defaultdict
from typing import Mapping, Sequence

import torch
import torch.nn as nn

from halp_trt.errors import HalpError
from halp_trt.graph.custom import channel_tensors, surgery_for
from halp_trt.graph.groups import ChannelGroup
from halp_trt.graph.conv_kinds import is_depthwise

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


# A grouped conv's input channel c is column c % (in/groups) of the filters of conv group
# c // (in/groups) only: not one dim of the weight, so it is masked densely.
GROUPED_IN = "grouped_in"


def _zero_targets(mod: nn.Module, side: str) -> list[tuple[torch.Tensor, int | str]]:
    """(tensor, dim) pairs holding a channel of ``mod`` on ``side`` (dim ``GROUPED_IN``: the
    input side of a grouped conv)."""
    if surgery_for(mod) is not None:
        return channel_tensors(mod, side)
    if isinstance(mod, _CONV):
        depthwise = is_depthwise(mod.groups, mod.in_channels, mod.out_channels)
        out_dim = 1 if mod.transposed else 0
        if side == "out" or depthwise:
            return [(mod.weight, out_dim)] + ([(mod.bias, 0)] if mod.bias is not None else [])
        if mod.groups > 1:
            if mod.transposed:
                raise HalpError(f"cannot mask the input channels of grouped transposed "
                                f"convolution {mod}")
            return [(mod.weight, GROUPED_IN)]
        return [(mod.weight, 1 - out_dim)]
    if side == "out" and isinstance(getattr(mod, "in_proj_weight", None), torch.Tensor):
        # an attention's packed q/k/v projection (nn.MultiheadAttention, HeadAttention): the
        # rows of a head group (halp_trt.graph.attention)
        bias = mod.in_proj_bias
        return [(mod.in_proj_weight, 0)] + ([(bias, 0)] if bias is not None else [])
    if isinstance(mod, nn.Linear):
        if side == "out":
            return [(mod.weight, 0)] + ([(mod.bias, 0)] if mod.bias is not None else [])
        return [(mod.weight, 1)]
    out = []
    if isinstance(mod, _BN):
        for t in (mod.weight, mod.bias, mod.running_mean, mod.running_var):
            if t is not None:
                out.append((t, 0))
        return out
    if isinstance(mod, nn.PReLU) and mod.num_parameters == 1:
        return []
    for t in (getattr(mod, "weight", None), getattr(mod, "bias", None)):
        if isinstance(t, torch.Tensor):
            out.append((t, 0))
    return out


class ChannelMasker:
    """Keeps masked channels at exactly zero: in weights, statistics, gradients and optimizer
    state."""

    def __init__(self, model: nn.Module, groups: Sequence[ChannelGroup]):
        self.model = model
        self.groups = {g.id: g for g in groups}
        self._modules = dict(model.named_modules())
        self._zero: dict[int, tuple[torch.Tensor, list[tuple[int, torch.Tensor]]]] = {}
        self._hooks: dict[int, object] = {}
        self._optimizers: list[torch.optim.Optimizer] = []

    def set_masks(self, keep: Mapping[int, torch.Tensor]) -> None:
        """``keep[group id]``: bool tensor over the group's channels, True = kept."""
        per_tensor: dict[int, tuple[torch.Tensor, dict[int, list[int]]]] = {}
        for gid, k in keep.items():
            k = k.tolist()
            for m in self.groups[gid].members:
                pos = [i for i, r in zip(m.idxs, m.root_idxs) if not k[r]]
                if not pos:
                    continue
                for t, dim in _zero_targets(self._modules[m.module_name], m.side):
                    per_tensor.setdefault(id(t), (t, defaultdict(list)))[1][dim].extend(pos)
        self._zero = {key: (t, [self._entry(t, dim, p) for dim, p in dims.items()])
                      for key, (t, dims) in per_tensor.items()}
        for key, (t, _) in self._zero.items():
            if isinstance(t, nn.Parameter) and t.requires_grad and key not in self._hooks:
                self._hooks[key] = t.register_hook(lambda g, key=key: self._mask_grad(key, g))
        self.apply()

    def _entry(self, t: torch.Tensor, dim, positions) -> tuple:
        """(dim, index tensor), or (GROUPED_IN, dense bool tensor: True = zero)."""
        idx = sorted(set(positions))
        if dim != GROUPED_IN:
            return dim, torch.as_tensor(idx, dtype=torch.long, device=t.device)
        conv = next(m for m in self._modules.values() if getattr(m, "weight", None) is t)
        in_pg, out_pg = conv.in_channels // conv.groups, conv.out_channels // conv.groups
        zero = torch.zeros(t.shape, dtype=torch.bool, device=t.device)
        for c in idx:
            g = c // in_pg
            zero[g * out_pg:(g + 1) * out_pg, c % in_pg] = True
        return GROUPED_IN, zero

    @staticmethod
    def _fill(t: torch.Tensor, dim, idx) -> None:
        if dim == GROUPED_IN:
            t.masked_fill_(idx.to(t.device), 0)
        else:
            t.index_fill_(dim, idx.to(t.device), 0)

    def _mask_grad(self, key: int, grad: torch.Tensor) -> torch.Tensor:
        entry = self._zero.get(key)
        if entry is None:
            return grad
        grad = grad.clone()
        for dim, idx in entry[1]:
            self._fill(grad, dim, idx)
        return grad

    def attach_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        self._optimizers.append(optimizer)
        self.apply()

    @torch.no_grad()
    def apply(self) -> None:
        for t, entries in self._zero.values():
            for dim, idx in entries:
                self._fill(t, dim, idx)
                for opt in self._optimizers:
                    for v in opt.state.get(t, {}).values():
                        if isinstance(v, torch.Tensor) and v.shape == t.shape:
                            self._fill(v, dim, idx)

    def remove_hooks(self) -> None:
        for h in self._hooks.values():
            h.remove()
        self._hooks.clear()
        self._zero.clear()
        self._optimizers.clear()
