"""How a user-defined layer is cut: ``register_surgery(LayerType, ...)``.

torch-pruning's dependency graph knows torch's own layers. A layer of your own (a conv called
through ``F.conv2d``, a per-channel scale) is told here which of its tensors hold which
channels; halp-trt then couples it with its neighbours, masks it while pruning and cuts it
physically, as it does torch's layers (its own output channels keep their width: groups are
rooted at torch's convs and linears, the layers the latency table times):

    halp_trt.register_surgery(MyConv, out={"weight": 0, "bias": 0}, in_={"weight": 1},
                              widths=("out_channels", "in_channels"))
    halp_trt.register_surgery(ChannelScale, out={"gamma": 0}, elementwise=True,
                              widths=("channels",))
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

import torch
import torch.nn as nn

from halp_trt.errors import HalpError


@dataclass(frozen=True)
class ChannelSurgery:
    """Where a layer type holds its channels: ``out`` / ``in_`` map a parameter or buffer name
    to the dim of its output / input channels; ``elementwise`` layers pass channel i through as
    channel i (one set of tensors, ``out``); ``widths`` names the attributes that record the
    output and input widths (one name for elementwise layers)."""

    out: Mapping[str, int]
    in_: Mapping[str, int] = field(default_factory=dict)
    elementwise: bool = False
    widths: Sequence[str] = ()

    def tensors(self, side: str) -> Mapping[str, int]:
        return self.out if side == "out" or self.elementwise else self.in_


_SURGERIES: dict[type, ChannelSurgery] = {}


def register_surgery(layer_type: type, out: Mapping[str, int],
                     in_: Mapping[str, int] | None = None, *, elementwise: bool = False,
                     widths: Sequence[str] = ()) -> ChannelSurgery:
    """Teach halp-trt how to cut ``layer_type`` (see the module docstring); returns the spec."""
    if not (isinstance(layer_type, type) and issubclass(layer_type, nn.Module)):
        raise HalpError(f"register_surgery needs an nn.Module subclass, got {layer_type!r}")
    if not out:
        raise HalpError(f"register_surgery({layer_type.__name__}): name at least one tensor "
                        "holding its output channels, e.g. out={'weight': 0}")
    if elementwise and in_:
        raise HalpError(f"register_surgery({layer_type.__name__}): an elementwise layer has one "
                        "set of channel tensors; give them as out= only")
    if not elementwise and not in_:
        raise HalpError(f"register_surgery({layer_type.__name__}): name the tensors holding its "
                        "input channels (in_={'weight': 1}) or say elementwise=True")
    spec = ChannelSurgery(dict(out), dict(in_ or {}), elementwise, tuple(widths))
    _SURGERIES[layer_type] = spec
    return spec


def unregister_surgery(layer_type: type) -> None:
    _SURGERIES.pop(layer_type, None)


def surgery_for(module: nn.Module) -> ChannelSurgery | None:
    return next((s for t, s in _SURGERIES.items() if isinstance(module, t)), None)


def channel_tensors(module: nn.Module, side: str) -> list[tuple[torch.Tensor, int]]:
    """(tensor, dim) pairs holding ``module``'s channels on ``side`` (a registered type)."""
    spec = surgery_for(module)
    pairs = []
    for name, dim in spec.tensors(side).items():
        t = getattr(module, name, None)
        if t is None:
            continue
        if not isinstance(t, torch.Tensor):
            raise HalpError(f"{type(module).__name__}.{name} is not a tensor; fix the "
                            "register_surgery call for this layer type")
        pairs.append((t, dim))
    return pairs


def channel_width(module: nn.Module, side: str) -> int | None:
    """``module``'s width on ``side`` (a registered type), read off its channel tensors."""
    tensors = channel_tensors(module, side)
    return int(tensors[0][0].shape[tensors[0][1]]) if tensors else None


def _cut(module: nn.Module, side: str, idxs: Sequence[int]) -> nn.Module:
    spec = surgery_for(module)
    gone = set(int(i) for i in idxs)
    keep = [i for i in range(channel_width(module, side) or 0) if i not in gone]
    index = torch.as_tensor(keep, dtype=torch.long)
    for name, dim in spec.tensors(side).items():
        t = getattr(module, name, None)
        if t is None:
            continue
        cut = t.detach().index_select(dim, index.to(t.device)).contiguous()
        if isinstance(t, nn.Parameter):
            setattr(module, name, nn.Parameter(cut, requires_grad=t.requires_grad))
        else:
            module.register_buffer(name, cut)
    names = spec.widths[:1] if spec.elementwise or side == "out" else spec.widths[1:2]
    for attr in names:
        setattr(module, attr, len(keep))
    return module


def torch_pruning_pruners() -> dict:
    """torch-pruning pruners for every registered type (``customized_pruners``)."""
    if not _SURGERIES:
        return {}
    from torch_pruning.pruner.function import BasePruningFunc

    pruners = {}
    for layer_type, spec in _SURGERIES.items():
        class _Registered(BasePruningFunc):
            TARGET_MODULES = layer_type

            def prune_out_channels(self, layer, idxs):
                return _cut(layer, "out", idxs)

            def prune_in_channels(self, layer, idxs):
                return _cut(layer, "in", idxs)

            def get_out_channels(self, layer):
                return channel_width(layer, "out") or 0

            def get_in_channels(self, layer):
                return channel_width(layer, "in") or 0

        if spec.elementwise:  # one function for both sides couples them (torch-pruning's rule)
            _Registered.prune_in_channels = _Registered.prune_out_channels
        pruners[layer_type] = _Registered()
    return pruners
