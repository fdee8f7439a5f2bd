"""Physical channel removal (halp_trt.pruning.surgery): which groups it can be trusted with, and
that the pruned model computes what the masked one did."""
import pytest
import torch
import torch.nn as nn

from fakes import StaircaseLatencyModel, randomise_bn
from halp_trt.errors import HalpError
from halp_trt.graph.groups import find_channel_groups
from halp_trt.pruning.surgery import (check_masked_equals_pruned, conv_group_slices,
                                      masked_then_pruned, remove_channels, unprunable_reason)
from tiny_models import resnext_like


def _resnext():
    torch.manual_seed(0)
    model = resnext_like(c=8, widths=(8, 16)).eval()
    randomise_bn(model)
    x = torch.randn(2, 3, 8, 8)
    groups, graph = find_channel_groups(model, x[:1])
    return model, x, groups, graph


def test_grouped_conv_groups_are_sliced_evenly_by_conv_group():
    """A group feeding a grouped conv is split into one equal slice per conv group, covering
    every channel once: pruning keeps the same count per slice so the group count stays."""
    model, _, groups, _ = _resnext()
    modules = dict(model.named_modules())
    g = next(g for g in groups if g.root == "block1.conv1")
    slices = conv_group_slices(g, modules)
    assert len(slices) == modules["block1.conv2"].groups
    assert len({len(s) for s in slices}) == 1
    assert sorted(c for s in slices for c in s) == list(range(g.size))
    assert unprunable_reason(g, modules) is None
    trunk = next(g for g in groups if g.root == "block2.conv3")  # touches no grouped conv
    assert conv_group_slices(trunk, modules) is None


def test_grouped_conv_keeping_different_local_channels_per_group_equals_the_masked_model():
    """torch-pruning 1.6.1 cuts a grouped conv's inputs wrongly when conv groups keep different
    local channels; the rebuilt conv must still compute what the masked model did."""
    model, x, groups, graph = _resnext()
    g = next(g for g in groups if g.root == "block1.conv1")  # 8 channels, 4 conv groups of 2
    drop = [0, 3, 4, 7]  # local channel 0 in conv groups 0 and 2, local 1 in groups 1 and 3
    keep = torch.ones(g.size, dtype=torch.bool)
    keep[drop] = False
    masked, pruned = masked_then_pruned(model, graph, groups, {g.id: keep}, {g.id: drop}, x)
    assert check_masked_equals_pruned(masked, pruned, rel_tolerance=1e-5) <= 1e-5
    conv = model.block1.conv2
    assert (conv.groups, conv.in_channels, conv.out_channels) == (4, 4, 8)
    assert model.block1.conv1.out_channels == 4


def test_a_norm_across_channels_makes_its_group_unprunable():
    """GroupNorm statistics span channels: zeroed channels would still count, so masked and
    pruned models would differ; the group keeps its width, with the module named."""
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.GroupNorm(2, 8), nn.ReLU(), nn.Conv2d(8, 4, 3),
                          nn.Flatten(), nn.Linear(4 * 4 * 4, 10))
    groups, _ = find_channel_groups(model, torch.randn(1, 3, 8, 8))
    modules = dict(model.named_modules())
    reasons = {g.root: unprunable_reason(g, modules) for g in groups}
    assert reasons["0"] == "1 (GroupNorm) normalises across channels"
    assert reasons["3"] is None


def test_removing_every_channel_of_a_group_is_refused():
    """A group with no channel left would break the model: one clear error naming it."""
    model, _, groups, graph = _resnext()
    g = next(g for g in groups if g.root == "block2.conv3")
    with pytest.raises(HalpError, match="cannot remove all 8 channels of group block2.conv3"):
        remove_channels(model, graph, groups, {g.id: list(range(g.size))})


def test_masked_vs_pruned_check_names_the_problem():
    from halp_trt.pruning.surgery import check_masked_equals_pruned

    a = torch.randn(2, 10)
    assert check_masked_equals_pruned(a, a + 1e-7) < 1e-4
    with pytest.raises(HalpError, match="differs from the masked one"):
        check_masked_equals_pruned(a, a + 1.0)
    with pytest.raises(HalpError):
        check_masked_equals_pruned(a, a * float("nan"))


def test_a_layer_left_with_no_channels_is_one_error_naming_it_and_its_group():
    """Every group keeps a channel, so an emptied layer means a pattern mapped wrong (as seen
    once on a timm GhostNet: ONNX export failed on a [0, 12, 1, 1] weight); the check after
    removal names the layer and the group that cut it instead."""
    from halp_trt.pruning.surgery import check_no_empty_layers

    model, _, groups, _ = _resnext()
    check_no_empty_layers(model, groups, {})  # an intact model passes
    g = next(g for g in groups if g.root == "block2.conv3")
    conv = model.block2.conv3
    conv.weight = nn.Parameter(conv.weight.detach()[:0])  # what a wrong mapping would leave
    with pytest.raises(HalpError, match=r"left block2.conv3 \(Conv2d, weight \(0, .*group\(s\) "
                                        r"of block2.conv3.*--exclude block2.conv3"):
        check_no_empty_layers(model, groups, {g.id: [0]})


class _GainConv(nn.Conv2d):
    """A conv with a per-output-channel gain beside its weight (timm's ScaledStdConv2d): removal
    narrows the weight, not the gain, so the pruned model fails."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.gain = nn.Parameter(torch.ones(self.out_channels, 1, 1, 1))

    def forward(self, x):
        return self._conv_forward(x, self.weight * self.gain, self.bias)


def test_trial_surgery_cuts_a_group_of_two_neuron_groups_too():
    from halp_trt.pruning.config import HALPConfig
    from halp_trt.pruning.pruner import HALPPruner

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = _GainConv(3, 8, 3, padding=1)
            self.b = nn.Conv2d(8, 8, 3, padding=1)
            self.fc = nn.Linear(8, 10)

        def forward(self, x):
            return self.fc(torch.relu(self.b(torch.relu(self.a(x)))).mean((2, 3)))

    # neuron groups of 4: each group has two; the second in the trial's order was once asked to
    # lose two (all of it), skipped, and the knapsack's cut of one broke the pruned model
    pruner = HALPPruner(Net(), torch.randn(1, 3, 8, 8), StaircaseLatencyModel(step=4),
                        HALPConfig(target=0.9))
    assert [g.root for g in pruner.prunable] == ["b"]
    assert "channel surgery breaks the model" in pruner.fixed["a"]
