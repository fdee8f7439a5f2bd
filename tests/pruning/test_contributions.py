import math

import numpy as np
import pytest
import torch
import torch.nn as nn

from fakes import StaircaseLatencyModel
from halp_trt.pruning.contributions import (LatencyModel, WidthMap,
                                    neuron_group_size, option_costs, predict_model_ms)
from halp_trt.errors import HalpError
from halp_trt.graph.groups import find_channel_groups
from halp_trt.graph.layers import list_layers


class Chain(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 24, 3, stride=2, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(24)
        self.dw = nn.Conv2d(24, 24, 3, padding=1, groups=24, bias=False)
        self.bn3 = nn.BatchNorm2d(24)
        self.conv3 = nn.Conv2d(24, 32, 1, bias=False)
        self.bn4 = nn.BatchNorm2d(32)
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        x = torch.relu(self.bn3(self.dw(x)))
        x = torch.relu(self.bn4(self.conv3(x)))
        return self.fc(x.mean((2, 3)))


class ConcatFlatten(nn.Module):
    """conv_c reads a concat of two groups; fc reads conv_c's channels flattened (16 each)."""

    def __init__(self):
        super().__init__()
        self.conv_a = nn.Conv2d(3, 8, 3, padding=1)
        self.conv_b = nn.Conv2d(3, 12, 3, padding=1)
        self.conv_c = nn.Conv2d(20, 8, 3, stride=2, padding=1)
        self.fc = nn.Linear(8 * 16, 10)

    def forward(self, x):
        y = torch.cat([torch.relu(self.conv_a(x)), torch.relu(self.conv_b(x))], 1)
        return self.fc(torch.flatten(torch.relu(self.conv_c(y)), 1))


class Bumpy:
    """A non-linear, non-separable latency model (c_in·c_out plus per-axis steps of different
    sizes per op) so that hand sums are not trivially right."""

    identity = {"backend": "test-bumpy"}

    def layer_ms(self, spec, c_in, c_out):
        return 0.001 * c_in * c_out + 0.1 * math.ceil(c_out / 4) + 0.05 * math.ceil(c_in / 2) + (
            0.3 if spec.depthwise else 0.0)

    def step_size(self, spec):
        return (2, 6) if spec.name == "conv2" else (2, 4)


def _setup(cls, hw=8):
    torch.manual_seed(0)
    model = cls().eval()
    x = torch.randn(1, 3, hw, hw)
    groups, _ = find_channel_groups(model, x)
    layers = list_layers(model, x, groups)
    by_out = {m.module_name: g.id for g in groups for m in g.members if m.side == "out"}
    return model, groups, layers, by_out


def test_predict_model_ms_is_sum_over_layers_at_given_widths():
    _, groups, layers, gid = _setup(Chain)
    t = Bumpy()
    spec = {s.name: s for s in layers}
    widths = {gid["conv1"]: 9, gid["conv2"]: 13, gid["conv3"]: 20}
    want = (t.layer_ms(spec["conv1"], 3, 9) + t.layer_ms(spec["conv2"], 9, 13)
            + t.layer_ms(spec["dw"], 13, 13) + t.layer_ms(spec["conv3"], 13, 20)
            + t.layer_ms(spec["fc"], 20, 10))
    assert predict_model_ms(layers, widths, t, groups) == pytest.approx(want, rel=1e-12)
    full = sum(t.layer_ms(s, s.in_channels, s.out_channels) for s in layers)
    assert predict_model_ms(layers, {}, t, groups) == pytest.approx(full, rel=1e-12)


def test_concat_consumer_sees_every_input_group_and_flatten_counts_channels():
    _, groups, layers, gid = _setup(ConcatFlatten)
    wm = WidthMap(layers, groups)
    spec = {s.name: s for s in layers}
    widths = {gid["conv_a"]: 5, gid["conv_b"]: 7, gid["conv_c"]: 3}
    assert wm.widths_of(spec["conv_c"], widths) == (12, 3)
    assert spec["fc"].signature.in_scale == 16
    assert wm.widths_of(spec["fc"], widths) == (3, 10)
    assert wm.widths_of(spec["conv_a"], widths) == (3, 5)


def test_one_sided_costs_by_hand():
    _, groups, layers, gid = _setup(Chain)
    t = Bumpy()
    spec = {s.name: s for s in layers}
    widths = {gid["conv1"]: 12, gid["conv2"]: 24, gid["conv3"]: 32}
    options = {gid["conv2"]: [6, 12, 18, 24], gid["conv3"]: [16, 32]}
    oc = option_costs("one_sided", layers, groups, widths, t, options)
    want2 = [t.layer_ms(spec["conv2"], 12, k) + t.layer_ms(spec["dw"], k, k)
             for k in [6, 12, 18, 24]]
    want3 = [t.layer_ms(spec["conv3"], 24, k) for k in [16, 32]]
    np.testing.assert_allclose(oc.costs_ms[gid["conv2"]], want2, rtol=1e-12)
    np.testing.assert_allclose(oc.costs_ms[gid["conv3"]], want3, rtol=1e-12)
    # conv1's group has no options: its layer is part of the constant, as is the classifier
    want_const = t.layer_ms(spec["conv1"], 3, 12) + t.layer_ms(spec["fc"], 32, 10)
    assert oc.constant_ms == pytest.approx(want_const, rel=1e-12)


@pytest.mark.parametrize("cls", [Chain, ConcatFlatten])
def test_two_sided_is_exact_when_one_group_changes(cls):
    _, groups, layers, _ = _setup(cls)
    t = Bumpy()
    rng = np.random.default_rng(0)
    widths = {g.id: int(rng.integers(g.size // 2, g.size + 1)) for g in groups}
    options = {g.id: sorted(set(range(1, widths[g.id] + 1, 3)) | {widths[g.id]}) for g in groups}
    oc = option_costs("two_sided", layers, groups, widths, t, options)
    current = {g.id: options[g.id].index(widths[g.id]) for g in groups}
    for g in groups:
        c = oc.costs_ms[g.id]
        assert np.all(c >= 0) and c.min() == 0.0
        for j, k in enumerate(options[g.id]):
            est = oc.constant_ms + c[j] + sum(oc.costs_ms[h.id][current[h.id]]
                                              for h in groups if h.id != g.id)
            truth = predict_model_ms(layers, {**widths, g.id: k}, t, groups)
            assert est == pytest.approx(truth, rel=1e-9, abs=1e-12)


def test_two_sided_counts_consumer_savings_one_sided_does_not():
    _, groups, layers, gid = _setup(Chain)
    t = StaircaseLatencyModel(step=4)
    widths = {g.id: g.size for g in groups}
    g1 = gid["conv1"]
    opts = {g1: [4, 16]}
    one = option_costs("one_sided", layers, groups, widths, t, opts).costs_ms[g1]
    two = option_costs("two_sided", layers, groups, widths, t, opts).costs_ms[g1]
    spec = {s.name: s for s in layers}
    saved_consumer = t.layer_ms(spec["conv2"], 16, 24) - t.layer_ms(spec["conv2"], 4, 24)
    assert saved_consumer > 0
    assert two[1] - two[0] == pytest.approx(one[1] - one[0] + saved_consumer, rel=1e-12)


def test_neuron_group_size_from_table_and_override():
    _, groups, layers, gid = _setup(Chain)
    t = Bumpy()
    g2 = next(g for g in groups if g.id == gid["conv2"])
    g3 = next(g for g in groups if g.id == gid["conv3"])
    # conv2 steps by 6, dw (same group) by 4: one item must cross a step of each producer
    assert neuron_group_size(g2, layers, t) == 6
    assert neuron_group_size(g3, layers, t) == 4
    assert neuron_group_size(g3, layers, t, override=2) == 2
    assert neuron_group_size(g3, layers, t, override={g3.root: 5}) == 5
    assert neuron_group_size(g2, layers, t, override={g3.root: 5}) == 6
    with pytest.raises(HalpError):
        neuron_group_size(g3, layers, t, override=0)


def test_staircase_model_is_flat_within_a_step():
    _, groups, layers, _ = _setup(Chain)
    t = StaircaseLatencyModel(step=8)
    assert isinstance(t, LatencyModel)
    s = next(s for s in layers if s.name == "conv3")
    vals = [t.layer_ms(s, 24, c) for c in range(1, 33)]
    for lo in range(0, 32, 8):
        assert len(set(vals[lo:lo + 8])) == 1
    assert all(b > a for a, b in zip(vals[7::8], vals[15::8]))
    assert t.step_size(s) == (8, 8)


def test_unknown_rule():
    _, groups, layers, _ = _setup(Chain)
    with pytest.raises(HalpError, match="one_sided"):
        option_costs("three_sided", layers, groups, {}, Bumpy(), {})


def test_timm_ghostnet_sizes_its_floor_with_every_width_positive():
    """timm's ghostnet_050 raised "(8, -11) is outside the table's range": a conv making part
    of a wider group was given the whole group's cut."""
    timm = pytest.importorskip("timm")
    from halp_trt.pruning.config import HALPConfig
    from halp_trt.pruning.pruner import HALPPruner

    model, x = timm.create_model("ghostnet_050", num_classes=10).eval(), torch.randn(1, 3, 32, 32)
    pruner = HALPPruner(model, x, StaircaseLatencyModel(step=4),
                        HALPConfig(target=0.6, importance="magnitude", verify_surgery=False))
    wm = WidthMap(pruner.layers, pruner.groups)
    floor = pruner.min_widths()
    assert all(min(wm.widths_of(s, floor)) >= 1 for s in pruner.layers)
    assert 0 < pruner.min_ms < pruner.full_ms
