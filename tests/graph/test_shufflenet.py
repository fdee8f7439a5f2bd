"""Channel shuffles: torch-pruning 1.6.1 cannot follow them (on torchvision's ShuffleNetV2 it
divides by zero in ``update_reshape_index_mapping``), so the traced graph is cut at every shuffle.
The channels that reach a shuffle or come out of one keep their width; everything else is pruned
as usual, and the pruned model computes what the masked one did."""
import pytest
import torch
import torch.nn as nn

from fakes import randomise_bn
from halp_trt.graph.groups import check_unique_coverage, find_channel_groups
from halp_trt.graph.layers import list_layers
from halp_trt.models import create_model
from halp_trt.pruning.surgery import (check_masked_equals_pruned, masked_then_pruned,
                                      unprunable_reason)


def _prune_quarter_of_every_group(model, x):
    """Find the groups, mask 25% of every prunable one, remove the same channels; returns the
    groups, the masked and the pruned outputs on ``x``."""
    groups, graph = find_channel_groups(model, x[:1])
    check_unique_coverage(groups)
    modules = dict(model.named_modules())
    keep, drop = {}, {}
    for g in groups:
        if unprunable_reason(g, modules) is None and g.size > 1:
            d = list(range(1, g.size, 4))  # every 4th channel, from the second
            k = torch.ones(g.size, dtype=torch.bool)
            k[d] = False
            keep[g.id], drop[g.id] = k, d
    masked, pruned = masked_then_pruned(model, graph, groups, keep, drop, x)
    return groups, keep, masked, pruned


def test_torchvision_shufflenet_is_pruned_inside_its_branches():
    torch.manual_seed(0)
    model = create_model("shufflenet_v2_x0_5", 10, 64).eval()
    randomise_bn(model)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        full = model(x)
    groups, graph = find_channel_groups(model, x[:1])
    with torch.no_grad():
        assert torch.equal(model(x), full), "tracing must not change the model"
    assert graph.halp_cut_nodes, "every shuffle ends the traced graph"
    modules = dict(model.named_modules())
    assert groups and all(unprunable_reason(g, modules) is None for g in groups)
    out_of = {m.module_name: g for g in groups for m in g.members if m.side == "out"}
    in_of = {m.module_name: g for g in groups for m in g.members if m.side == "in"}
    blocks = [n for n, m in model.named_modules() if type(m).__name__ == "InvertedResidual"]
    assert len(blocks) == 16
    for b in blocks:
        # branch2: 1x1 conv -> BN -> ReLU -> depthwise -> BN -> 1x1 conv: its inner width is
        # one group of its own
        inner = out_of[f"{b}.branch2.0"]
        assert inner is out_of[f"{b}.branch2.3"] is in_of[f"{b}.branch2.5"]
        assert set(inner.modules()) == {f"{b}.branch2.{i}" for i in (0, 1, 3, 4, 5)}
        # the channels of a block's output are shuffled: they keep their width
        assert f"{b}.branch2.5" not in out_of and f"{b}.branch1.2" not in out_of
    # a block's input is the previous block's shuffled output: fixed width too ...
    for b in blocks[1:]:
        assert f"{b}.branch2.0" not in in_of and f"{b}.branch1.0" not in out_of
    # ... except the first block's, which is the stem's output (no shuffle before it)
    assert {"stage2.0.branch1.0", "stage2.0.branch2.0"} <= set(out_of["conv1.0"].modules())
    assert set(out_of["conv5.0"].modules()) == {"conv5.0", "conv5.1", "fc"}
    assert len(groups) == 16 + 2
    # the latency table sees the held widths as fixed
    specs = {s.name: s for s in list_layers(model, x[:1], groups)}
    assert specs["stage3.0.branch2.5"].out_group is None
    assert specs["stage3.1.branch2.0"].in_group is None
    assert specs["stage3.1.branch2.0"].out_group == out_of["stage3.1.branch2.0"].id

    n_params = sum(p.numel() for p in model.parameters())
    groups, keep, masked, pruned = _prune_quarter_of_every_group(model, x)
    check_masked_equals_pruned(masked, pruned, rel_tolerance=1e-5)
    assert sum(p.numel() for p in model.parameters()) < n_params
    modules = dict(model.named_modules())
    for g in groups:
        root = modules[g.root]
        assert root.out_channels == int(keep[g.id].sum()), g.root


class _Shuffled(nn.Module):
    """conv -> shuffle -> depthwise -> conv -> classifier, with one of three shuffles."""

    def __init__(self, how: str):
        super().__init__()
        self.how = how
        self.conv = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8),
                                  nn.ReLU())
        self.dw = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False),
                                nn.BatchNorm2d(8))
        self.pw = nn.Sequential(nn.Conv2d(8, 16, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.fc = nn.Linear(16, 10)
        self.shuffle = nn.ChannelShuffle(2)

    def forward(self, x):
        x = self.conv(x)
        n, c, h, w = x.shape
        if self.how == "module":
            x = self.shuffle(x)
        elif self.how == "permute":
            x = x.reshape(n, 2, c // 2, h, w).permute(0, 2, 1, 3, 4).reshape(n, c, h, w)
        else:
            x = x.unflatten(1, (2, c // 2)).transpose(2, 1).contiguous().flatten(1, 2)
        x = self.pw(self.dw(x))
        return self.fc(x.mean((2, 3)))


@pytest.mark.parametrize("how", ["module", "permute", "unflatten"])
def test_every_spelling_of_a_channel_shuffle_holds_the_widths_around_it(how):
    torch.manual_seed(0)
    model = _Shuffled(how).eval()
    randomise_bn(model)
    x = torch.randn(2, 3, 8, 8)
    groups, _, masked, pruned = _prune_quarter_of_every_group(model, x)
    # the stem's channels are shuffled and the depthwise conv takes the shuffled tensor: both
    # keep their width; the last conv's output is free
    assert [sorted(g.modules()) for g in groups] == [["fc", "pw.0", "pw.1"]]
    check_masked_equals_pruned(masked, pruned, rel_tolerance=1e-5)
    assert model.pw[0].out_channels == 12 and model.conv[0].out_channels == 8
