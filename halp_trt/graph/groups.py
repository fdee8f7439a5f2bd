"""Coupled channel groups: channels that must be pruned together.

A residual add ties the output channels of every conv feeding it; a depthwise conv ties its input
and output; a concat maps one producer's channels to a slice of each consumer's input. We do not
walk graphs ourselves: torch-pruning's dependency graph (DepGraph) finds these couplings and later
removes channels physically. This module turns its groups into plain records that the rest of
halp-trt (layers, importance, knapsack, masks) can use and serialize.
"""
from __future__ import annotations

import contextlib
import io
import warnings
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import torch
import torch.nn as nn

from halp_trt.errors import HalpError

# Parameterised modules whose channels a group may touch; anything else (adds, concats) is a
# graph op without weights and needs no mask.
_MASKABLE = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear, nn.BatchNorm1d, nn.BatchNorm2d,
             nn.BatchNorm3d, nn.GroupNorm, nn.LayerNorm, nn.PReLU)


@dataclass
class GroupMember:
    """One module's share of a coupled group."""

    module_name: str
    side: str  # "out": the module's output channels; "in": its input channels
    idxs: list[int]  # channel indices in that module
    root_idxs: list[int]  # the group's channel index for each entry of idxs


@dataclass
class ChannelGroup:
    """A set of channels pruned together, indexed 0..size-1 in the root layer's order."""

    id: int
    root: str  # module whose output channels define the group's indexing
    size: int
    members: list[GroupMember] = field(default_factory=list)

    def modules(self, side: str | None = None) -> list[str]:
        return [m.module_name for m in self.members if side is None or m.side == side]


@contextlib.contextmanager
def quiet_torch_pruning():
    """torch-pruning prints and warns while tracing and pruning; users should see our messages,
    not its chatter."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        yield


def run_example(model: nn.Module, example_input: torch.Tensor,
                fix: str = "--input-shape (prune-and-deploy: --input-size)"):
    """The model's eval-mode output on ``example_input``; a model that cannot run on it is one
    clear error (``fix`` names the option that sets the input)."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return model(example_input)
    except Exception as exc:  # the user's model and input shape disagree
        raise HalpError(f"the model cannot run on an input of shape "
                        f"{tuple(example_input.shape)} ({type(exc).__name__}: "
                        f"{str(exc).splitlines()[0][:200]}); give the N,C,H,W it expects "
                        f"({fix})") from None
    finally:
        model.train(was_training)


def output_layers(model: nn.Module, example_input: torch.Tensor) -> set[str]:
    """Names of Conv/Linear modules whose output *is* a model output (the classifier).

    Their output channels are the task's classes and are never pruned."""
    names = {m: n for n, m in model.named_modules()}
    produced: dict[int, str] = {}

    def hook(module, _inputs, output):
        if isinstance(output, torch.Tensor):
            produced[output.data_ptr()] = names[module]

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(m, (nn.Conv2d, nn.Linear))]
    try:
        out = run_example(model, example_input)
    finally:
        for h in handles:
            h.remove()
    outs = out if isinstance(out, (tuple, list)) else [out]
    return {produced[o.data_ptr()] for o in outs
            if isinstance(o, torch.Tensor) and o.data_ptr() in produced}


def build_dependency_graph(model: nn.Module, example_input: torch.Tensor):
    import torch_pruning as tp

    try:
        was_training = model.training
        model.eval()
        with quiet_torch_pruning():
            graph = tp.DependencyGraph().build_dependency(model, example_inputs=example_input,
                                                          verbose=False)
        model.train(was_training)
    except Exception as exc:  # tracing failures come from the user's architecture
        raise HalpError(f"torch-pruning could not trace this model's channel couplings "
                        f"({type(exc).__name__}: {str(exc).splitlines()[0][:200]}); its "
                        "dependency graph cannot handle this architecture — halp-trt can only "
                        "prune models it can trace, so use another model") from exc
    return graph


def find_channel_groups(model: nn.Module, example_input: torch.Tensor,
                        exclude: Iterable[str] = (), graph=None) -> tuple[list[ChannelGroup], object]:
    """Discover prunable coupled groups.

    ``exclude`` names modules whose output channels must not change (the classifier is always
    excluded). Returns the groups and the torch-pruning graph (needed later for removal).
    """
    import torch_pruning as tp
    from torch_pruning.pruner import function as tp_fn

    name_of = {m: n for n, m in model.named_modules()}
    modules = dict(model.named_modules())
    excluded = set(exclude) | output_layers(model, example_input)
    unknown = [n for n in exclude if n not in modules]
    if unknown:
        raise HalpError(f"cannot exclude {unknown}: no such module in the model "
                        f"(module names look like {list(modules)[1:4]}).")
    if graph is None:
        graph = build_dependency_graph(model, example_input)
    ignored = [modules[n] for n in excluded]

    groups: list[ChannelGroup] = []
    with quiet_torch_pruning():
        tp_groups = list(graph.get_all_groups(ignored_layers=ignored,
                                              root_module_types=(nn.Conv2d, nn.Linear)))
    for tp_group in tp_groups:
        root_dep = tp_group[0].dep
        root_name = name_of.get(root_dep.target.module)
        size = len(tp_group[0].idxs)
        group = ChannelGroup(id=len(groups), root=root_name, size=size)
        for item in tp_group.items:
            dep, idxs = item.dep, item.idxs
            module = dep.target.module
            if not isinstance(module, _MASKABLE) or module not in name_of:
                continue
            depthwise = dep.handler is tp_fn.prune_depthwise_conv_out_channels
            if depthwise or graph.is_out_channel_pruning_fn(dep.handler):
                side = "out"
            elif graph.is_in_channel_pruning_fn(dep.handler):
                side = "in"
            else:
                continue
            group.members.append(GroupMember(name_of[module], side, [int(i) for i in idxs],
                                             [int(i) for i in item.root_idxs]))
        groups.append(group)
    del tp
    return groups, graph


def check_unique_coverage(groups: Sequence[ChannelGroup]) -> None:
    """Each (module, side, channel) must belong to one group; overlapping groups mean the
    dependency graph misread the architecture, and pruning would corrupt the model."""
    seen: dict[tuple[str, str, int], int] = {}
    for g in groups:
        for m in g.members:
            for i in m.idxs:
                key = (m.module_name, m.side, i)
                if key in seen and seen[key] != g.id:
                    raise HalpError(
                        f"channel {i} of {m.module_name} ({m.side}) is claimed by two channel "
                        f"groups ({seen[key]} and {g.id}): torch-pruning's dependency graph cannot "
                        "handle this architecture safely. Exclude the layer or use another model.")
                seen[key] = g.id
