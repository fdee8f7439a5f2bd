"""Physical channel removal (torch-pruning's dependency graph does the surgery) and which
coupled groups it can be trusted with."""
from __future__ import annotations

import copy
from typing import Callable, Mapping, Sequence

import torch
import torch.nn as nn

from halp_trt.errors import HalpError
from halp_trt.graph.custom import channel_width, surgery_for
from halp_trt.graph.groups import ChannelGroup, find_channel_groups, quiet_torch_pruning
from halp_trt.graph.conv_kinds import is_depthwise
from halp_trt.pruning.heads import remove_heads
from halp_trt.pruning.masker import ChannelMasker
from halp_trt.pruning.std_conv import freeze_weight_standardization
from halp_trt.runtime.export import output_tensors

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
# Normalisations whose statistics span channels: zeroed channels still count in the statistics,
# so a masked model would not equal the physically pruned one.
_CROSS_CHANNEL = (nn.GroupNorm, nn.LayerNorm)


def _is_grouped(mod: nn.Module) -> bool:
    return isinstance(mod, _CONV) and mod.groups > 1 and not is_depthwise(
        mod.groups, mod.in_channels, mod.out_channels)


def conv_group_slices(group: ChannelGroup, modules: Mapping[str, nn.Module]
                      ) -> list[list[int]] | None:
    """For a group that feeds or leaves a grouped conv: its channels (root indices) split by
    conv group. Pruning keeps the same number in every slice (each conv group narrower by the
    same count; measured choice, see ``unprunable_reason``). None for other groups."""
    slices = None
    for m in group.members:
        mod = modules[m.module_name]
        if not _is_grouped(mod):
            continue
        per = (mod.out_channels if m.side == "out" else mod.in_channels) // mod.groups
        mine: dict[int, list[int]] = {}
        for i, r in zip(m.idxs, m.root_idxs):
            mine.setdefault(i // per, []).append(r)
        new = [sorted(v) for _, v in sorted(mine.items())]
        if slices is None:
            slices = new
        elif sorted(map(tuple, new)) != sorted(map(tuple, slices)):
            return [[-1]]  # two grouped convs slice this group differently
    return slices


def _side_width(mod: nn.Module, side: str) -> int | None:
    if surgery_for(mod) is not None:
        return channel_width(mod, side)
    if isinstance(mod, _CONV):
        return mod.out_channels if side == "out" else mod.in_channels
    if isinstance(mod, nn.Linear):
        return mod.out_features if side == "out" else mod.in_features
    n = getattr(mod, "num_features", None) or getattr(mod, "num_channels", None)
    return int(n) if isinstance(n, int) else None


def unprunable_reason(group: ChannelGroup, modules: Mapping[str, nn.Module]) -> str | None:
    """Why a group must keep its width, or None.

    Grouped (not depthwise) convs are pruned by narrowing every conv group by the same number
    of channels, so the group count (the runtime's parallelism) stays; a group whose channels
    two grouped convs slice differently keeps its width. So does a group that
    ``find_channel_groups`` marks ``held`` (a reshape it cannot map channels across)."""
    for m in group.members:
        width = _side_width(modules[m.module_name], m.side)
        if width is not None and m.idxs and max(m.idxs) >= width:
            # torch-pruning lost the channel mapping (seen through ShuffleNetV2's split +
            # shuffle): its indices point past the module's channels
            return (f"the dependency graph maps it to channel {max(m.idxs)} of "
                    f"{m.module_name}, which has {width}: a channel shuffle or split it cannot "
                    "follow")
    slices = conv_group_slices(group, modules)
    if slices == [[-1]]:
        return "two grouped convolutions split its channels differently"
    if slices is not None and len({len(s) for s in slices}) != 1:
        return "its channels fall unevenly into the conv groups of a grouped convolution"
    for m in group.members:
        mod = modules[m.module_name]
        if isinstance(mod, _CROSS_CHANNEL):
            return f"{m.module_name} ({type(mod).__name__}) normalises across channels"
    return group.held


def masked_pruned_difference(masked, pruned) -> float:
    """Largest difference of the pruned model's output from the masked one's, relative to the
    masked output's scale, over every output tensor (NaN if any is not finite; inf if the
    outputs' shapes differ)."""
    masked_t, pruned_t = output_tensors(masked), output_tensors(pruned)
    if len(masked_t) != len(pruned_t) or any(a.shape != b.shape
                                             for a, b in zip(masked_t, pruned_t)):
        return float("inf")
    worst = 0.0
    for a, b in zip(masked_t, pruned_t):
        if not a.numel():
            continue
        diff = float((b - a).abs().max()) / (float(a.abs().max()) or 1.0)
        if diff != diff:  # NaN
            return diff
        worst = max(worst, diff)
    return worst


def check_masked_equals_pruned(masked, pruned,
                               rel_tolerance: float = 1e-4) -> float:
    """The physically pruned model must compute what the masked one did (same input, eval
    mode); otherwise channel surgery broke the architecture and nothing downstream is valid."""
    rel = masked_pruned_difference(masked, pruned)
    if not rel <= rel_tolerance:
        raise HalpError(f"the physically pruned model differs from the masked one by {rel:.2e} "
                        "(relative): channel removal does not handle this architecture; "
                        "--exclude the affected layers or report the model")
    return rel


def remove_channels(model: nn.Module, graph, groups: Sequence[ChannelGroup],
                    drop: Mapping[int, Sequence[int]]) -> nn.Module:
    """Physically remove ``drop[group id]`` (root channel indices) with torch-pruning; head
    groups' heads (``drop`` by head index) with ``halp_trt.pruning.heads.remove_heads``.

    torch-pruning 1.6.1 cuts a grouped conv's input weights with the first ``in/groups`` kept
    global indices, which is right only when every conv group keeps the same local channels;
    those convs are rebuilt here from their original weights and what each side keeps.
    Weight-standardized convs (timm's StdConv2d family) become plain ones first."""
    # a weight-standardized conv equals its masked self only as a plain conv (std_conv.py)
    freeze_weight_standardization(model)
    modules = dict(model.named_modules())
    by_id = {g.id: g for g in groups}
    grouped = {name: (mod.weight.detach().clone(),
                      None if mod.bias is None else mod.bias.detach().clone())
               for name, mod in modules.items() if _is_grouped(mod)}
    kept = {}  # (module, side) -> kept channel indices, for grouped convs
    for name in grouped:
        mod = modules[name]
        for side, n in (("in", mod.in_channels), ("out", mod.out_channels)):
            dropped = set()
            for g in groups:
                gone = set(int(i) for i in drop.get(g.id, ()))
                for m in g.members:
                    if m.module_name == name and m.side == side:
                        dropped.update(i for i, r in zip(m.idxs, m.root_idxs) if r in gone)
            kept[(name, side)] = [c for c in range(n) if c not in dropped]
    with quiet_torch_pruning():
        for gid, idxs in drop.items():
            idxs = sorted(int(i) for i in idxs)
            g = by_id[gid]
            if not idxs or g.heads_of is not None:  # heads: after the graph's surgery
                continue
            if len(idxs) >= g.size:
                raise HalpError(f"cannot remove all {g.size} channels of group {g.root}")
            root = modules[g.root]
            fn = graph.get_pruner_of_module(root).prune_out_channels
            tp_group = graph.get_pruning_group(root, fn, g.root_layer_channels(idxs))
            tp_group.prune()
    for name, (weight, bias) in grouped.items():
        _rebuild_grouped_conv(modules[name], name, weight, bias, kept[(name, "in")],
                              kept[(name, "out")])
    for gid, idxs in drop.items():
        if by_id[gid].heads_of is not None:
            remove_heads(model, by_id[gid], idxs)
    check_no_empty_layers(model, groups, drop)
    return model


def check_no_empty_layers(model: nn.Module, groups: Sequence[ChannelGroup],
                          drop: Mapping[int, Sequence[int]]) -> None:
    """One HalpError naming the layer if channel removal left a conv or linear layer with no
    channels on a side (every group keeps one, so a layer emptied is a pattern mapped wrong,
    e.g. channels reached through a concat or slice): not a PyTorch or ONNX error later."""
    for name, mod in model.named_modules():
        weight = getattr(mod, "weight", None)
        if not isinstance(mod, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)) or \
                weight is None or weight.numel():
            continue
        cut_by = sorted({g.root for g in groups if drop.get(g.id) and
                         any(m.module_name == name for m in g.members)})
        raise HalpError(f"channel removal left {name} ({type(mod).__name__}, weight "
                        f"{tuple(weight.shape)}) with no channels, through the group(s) of "
                        f"{', '.join(cut_by) or 'none of its own'}: a channel pattern halp-trt "
                        f"mapped wrong around {name}. Keep it out of pruning (--exclude "
                        f"{', '.join(cut_by) or name}) and report the model")


def _rebuild_grouped_conv(conv, name: str, weight, bias, keep_in: list[int],
                          keep_out: list[int]) -> None:
    groups = conv.groups
    in_pg, out_pg = weight.shape[1], weight.shape[0] // groups
    local_in = [[c % in_pg for c in keep_in if c // in_pg == g] for g in range(groups)]
    per_out = [[o for o in keep_out if o // out_pg == g] for g in range(groups)]
    if len({len(x) for x in local_in}) != 1 or len({len(x) for x in per_out}) != 1:
        raise HalpError(f"{name}: a grouped convolution must keep the same number of channels "
                        "in every conv group; this is a bug in halp-trt's grouped pruning")
    rows = [weight[o, local_in[o // out_pg]] for o in keep_out]
    new_w = torch.stack(rows).contiguous()
    conv.weight = nn.Parameter(new_w, requires_grad=conv.weight.requires_grad)
    if bias is not None:
        conv.bias = nn.Parameter(bias[keep_out].clone(), requires_grad=conv.bias.requires_grad)
    conv.in_channels, conv.out_channels = len(keep_in), len(keep_out)


def masked_then_pruned(model: nn.Module, graph, groups: Sequence[ChannelGroup],
                       keep: Mapping[int, torch.Tensor], drop: Mapping[int, Sequence[int]],
                       example_input: torch.Tensor) -> tuple:
    """``model``'s outputs on ``example_input`` with the ``keep`` masks (per group id), then —
    after removing the ``drop`` channels in place — again: the pair that must agree
    (``check_masked_equals_pruned``)."""
    masker = ChannelMasker(model, groups)
    masker.set_masks(keep)
    with torch.no_grad():
        masked = model(example_input)
    masker.remove_hooks()
    remove_channels(model, graph, groups, drop)
    with torch.no_grad():
        pruned = model(example_input)
    return masked, pruned


def groups_that_break_surgery(model: nn.Module, example_input: torch.Tensor,
                              exclude: Sequence[str], candidates: Sequence[ChannelGroup],
                              cut: Callable[[ChannelGroup, int], torch.Tensor | None]
                              ) -> list[tuple[ChannelGroup, str]]:
    """Trial surgery on copies of ``model``: every candidate group loses one or two neuron
    groups (``cut(group, n)`` gives its mask, or None when it cannot lose ``n``; alternating,
    so that constraints *between* groups — equal halves of a channel split, an even concat
    before a shuffle — show), and the pruned copy must run and equal the masked one. The cuts
    are tried at the group's end and again at its start: a concat of a layer and its own
    depthwise copy (GhostNet's ghost module under a squeeze-excite gate) ties channel i to
    channel size/2 + i, which torch-pruning maps one way only, so only a cut in the first half
    shows it. Returns the groups surgery cannot be trusted with (found by bisection), each
    with why."""
    def trial(groups: list[ChannelGroup]) -> str | None:
        return _trial(groups, from_start=False) or _trial(groups, from_start=True)

    def _trial(groups: list[ChannelGroup], from_start: bool) -> str | None:
        if not groups:
            return None
        copy_model = copy.deepcopy(model).eval()
        try:
            trial_groups, graph = find_channel_groups(copy_model, example_input, exclude)
            by_root = {g.root: g for g in trial_groups}
            keep, drop = {}, {}
            for i, g in enumerate(groups):
                mask = cut(g, 1 + i % 2)
                if mask is None:  # a group of two neuron groups still loses one (NF-RegNet's
                    mask = cut(g, 1)  # 40 channels in 20s: skipped, it broke after the knapsack)
                if mask is None:
                    continue
                if from_start:  # the same counts per conv group, from the other end
                    mask = mask.flip(0)
                tg = by_root[g.root]
                keep[tg.id] = mask
                drop[tg.id] = torch.nonzero(~mask).flatten().tolist()
            masked, pruned = masked_then_pruned(copy_model, graph, trial_groups, keep, drop,
                                                example_input)
            diff = masked_pruned_difference(masked, pruned)
            return None if diff <= 1e-4 else f"pruned differs from masked by {diff:.1e}"
        except Exception as exc:  # noqa: BLE001 - any failure means: not safe to prune
            return f"{type(exc).__name__}: {str(exc).splitlines()[0][:120]}"

    held: list[tuple[ChannelGroup, str]] = []

    def bisect(groups: list[ChannelGroup]) -> None:
        why = trial(groups)
        if why is None:
            return
        if len(groups) == 1:
            held.append((groups[0], f"channel surgery breaks the model there ({why})"))
            return
        half = len(groups) // 2
        bisect(groups[:half])
        bisect(groups[half:])
        rest = [g for g in groups if all(g is not h for h, _ in held)]
        if trial(rest) is not None:  # only in combination: hold the rest of this set too
            held.extend((g, "channel surgery breaks the model when it is pruned together with "
                         "its neighbours") for g in rest)

    bisect(list(candidates))
    return held
