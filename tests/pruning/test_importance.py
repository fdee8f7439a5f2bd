import warnings

import pytest
import torch
import torch.nn as nn

from halp_trt.errors import HalpError
from halp_trt.graph.groups import find_channel_groups
from halp_trt.pruning.importance import (ConsumerMagnitudeImportance, ImportanceAccumulator,
                                        MagnitudeImportance, TaylorImportance,
                                        TaylorSharedByConsumerMagnitude, make_importance)


class ConvBN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 6, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(6)
        self.fc = nn.Linear(6, 10)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.fc(x.mean((2, 3)))


class Residual(nn.Module):
    """stem's channels are tied to block's by the add: one group with two BNs."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 5, 3, padding=1, bias=False)
        self.bn0 = nn.BatchNorm2d(5)
        self.conv = nn.Conv2d(5, 5, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(5)
        self.fc = nn.Linear(5, 10)

    def forward(self, x):
        x = torch.relu(self.bn0(self.stem(x)))
        x = torch.relu(x + self.bn(self.conv(x)))
        return self.fc(x.mean((2, 3)))


class Concat(nn.Module):
    """bn_c normalises a concat: conv_b's channel r is bn_c's channel 4 + r."""

    def __init__(self):
        super().__init__()
        self.conv_a = nn.Conv2d(3, 4, 3, padding=1, bias=False)
        self.bn_a = nn.BatchNorm2d(4)
        self.conv_b = nn.Conv2d(3, 4, 3, padding=1, bias=False)
        self.bn_b = nn.BatchNorm2d(4)
        self.bn_c = nn.BatchNorm2d(8)
        self.conv_d = nn.Conv2d(8, 6, 1, bias=False)
        self.fc = nn.Linear(6, 10)

    def forward(self, x):
        a = torch.relu(self.bn_a(self.conv_a(x)))
        y = torch.cat([a, torch.relu(self.bn_b(self.conv_b(x)))], 1)
        y = torch.relu(self.conv_d(torch.relu(self.bn_c(y))))
        return self.fc(y.mean((2, 3)))


class NoBN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 5, 3, padding=1)
        self.fc = nn.Linear(5, 10)

    def forward(self, x):
        x = torch.relu(self.conv2(torch.relu(self.conv1(x))))
        return self.fc(x.mean((2, 3)))


def _randomise_bn(model):
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)


def _backward(model, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(4, 3, 8, 8, generator=g)
    y = torch.randint(0, 10, (4,), generator=g)
    model.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()


def _group_of(groups, module_name):
    return next(g for g in groups if any(m.module_name == module_name and m.side == "out"
                                         for m in g.members))


def _bn_term(bn, idx):
    d = lambda t: t.detach().double()  # noqa: E731  (hand computation in float64)
    return (d(bn.weight) * d(bn.weight.grad) + d(bn.bias) * d(bn.bias.grad))[idx]


def _setup(cls, seed=0):
    torch.manual_seed(seed)
    model = cls()
    _randomise_bn(model)
    groups, _ = find_channel_groups(model, torch.randn(1, 3, 8, 8))
    return model, groups


def test_taylor_matches_hand_computation_and_averages_abs_per_batch():
    model, groups = _setup(ConvBN)
    acc = ImportanceAccumulator(model, groups, "taylor")
    expected = {g.id: torch.zeros(g.size, dtype=torch.float64) for g in groups}
    g1, g2 = _group_of(groups, "conv1"), _group_of(groups, "conv2")
    for seed in (1, 2, 3):
        _backward(model, seed)
        acc.accumulate()
        expected[g1.id] += _bn_term(model.bn1, slice(None)).abs()
        expected[g2.id] += _bn_term(model.bn2, slice(None)).abs()
    scores = acc.scores()
    assert acc.count == 3
    for g, s in zip(groups, scores):
        torch.testing.assert_close(s, expected[g.id] / 3, rtol=1e-12, atol=0)
    acc.reset()
    with pytest.raises(HalpError, match="accumulate"):
        acc.scores()


def test_taylor_sums_coupled_bns_before_abs():
    model, groups = _setup(Residual)
    g = _group_of(groups, "stem")
    assert {m.module_name for m in g.members if m.side == "out"} >= {"bn0", "bn"}
    _backward(model, 5)
    got = TaylorImportance()(model, g)
    want = (_bn_term(model.bn0, slice(None)) + _bn_term(model.bn, slice(None))).abs()
    torch.testing.assert_close(got, want, rtol=1e-12, atol=0)
    # per layer: each BN's term counts by its size, so a channel whose terms cancel keeps both
    per_layer = TaylorImportance(per_layer=True)(model, g)
    torch.testing.assert_close(per_layer, _bn_term(model.bn0, slice(None)).abs() +
                               _bn_term(model.bn, slice(None)).abs(), rtol=1e-12, atol=0)
    assert (per_layer >= got - 1e-15).all() and (per_layer > got).any()


def test_taylor_maps_concat_channels_through_root_indices():
    model, groups = _setup(Concat)
    g = _group_of(groups, "conv_b")
    _backward(model, 7)
    got = TaylorImportance()(model, g)
    want = (_bn_term(model.bn_b, slice(None)) + _bn_term(model.bn_c, slice(4, 8))).abs()
    torch.testing.assert_close(got, want, rtol=1e-12, atol=0)


def test_taylor_without_bn_uses_filters():
    model, groups = _setup(NoBN)
    g = _group_of(groups, "conv1")
    _backward(model, 3)
    w, b = model.conv1.weight.double(), model.conv1.bias.double()
    gw, gb = model.conv1.weight.grad.double(), model.conv1.bias.grad.double()
    want = ((w * gw).sum((1, 2, 3)) + b * gb).detach().abs()
    torch.testing.assert_close(TaylorImportance()(model, g), want, rtol=1e-5, atol=1e-12)


def test_magnitude_is_l2_of_out_filters_over_the_group_mean():
    model, groups = _setup(NoBN)
    g = _group_of(groups, "conv2")
    w, b = model.conv2.weight.detach(), model.conv2.bias.detach()
    norms = ((w ** 2).sum((1, 2, 3)) + b ** 2).sqrt().double()
    want = norms / norms.mean()
    torch.testing.assert_close(MagnitudeImportance()(model, g), want)
    # needs no gradients: scores() works without accumulate()
    acc = ImportanceAccumulator(model, [g], "magnitude")
    torch.testing.assert_close(acc.scores()[0], want)


def test_magnitude_in_is_l2_of_the_weights_reading_each_channel_over_the_group_mean():
    """conv1's channels are read by conv2's input slices: their norms rank them, not conv1's
    own filters (scaled up here so the two rankings disagree)."""
    model, groups = _setup(NoBN)
    g = _group_of(groups, "conv1")
    with torch.no_grad():
        model.conv1.weight.mul_(torch.tensor([100.0, 1.0, 1.0, 1.0]).view(4, 1, 1, 1))
        model.conv2.weight[:, 0].mul_(0.01)
    norms = model.conv2.weight.detach().pow(2).sum((0, 2, 3)).sqrt().double()
    scores = ConsumerMagnitudeImportance()(model, g)
    torch.testing.assert_close(scores, norms / norms.mean())
    assert int(scores.argmin()) == 0 and int(MagnitudeImportance()(model, g).argmax()) == 0
    # the classifier reads conv2's channels (a linear's input columns)
    fc_cols = model.fc.weight.detach().pow(2).sum(0).sqrt().double()
    torch.testing.assert_close(make_importance("magnitude_in")(model, _group_of(groups, "conv2")),
                               fc_cols / fc_cols.mean())


def test_taylor_magnitude_in_keeps_the_groups_taylor_mass_ranked_by_the_readers_norm():
    model, groups = _setup(ConvBN)
    x = torch.randn(4, 3, 8, 8)
    nn.functional.cross_entropy(model(x), torch.tensor([0, 1, 2, 3])).backward()
    for g in groups:
        taylor = TaylorImportance(per_layer=True)(model, g)
        reads = ConsumerMagnitudeImportance()(model, g)
        scores = TaylorSharedByConsumerMagnitude()(model, g)
        torch.testing.assert_close(scores.sum(), taylor.sum())
        assert torch.equal(scores.argsort(), reads.argsort())


def test_user_callable_and_size_check():
    model, groups = _setup(ConvBN)

    def by_index(model, group):
        return torch.arange(group.size, dtype=torch.float32)

    acc = ImportanceAccumulator(model, groups, by_index)
    acc.accumulate()
    acc.accumulate()
    for g, s in zip(groups, acc.scores()):
        assert s.tolist() == list(range(g.size))

    acc = ImportanceAccumulator(model, groups, lambda m, g: torch.ones(g.size + 1))
    with pytest.raises(HalpError, match="scores"):
        acc.accumulate()
    with pytest.raises(HalpError):
        make_importance("fisher")
    with pytest.raises(HalpError):
        make_importance(3)


def test_nan_batch_is_skipped_with_warning():
    model, groups = _setup(ConvBN)
    acc = ImportanceAccumulator(model, groups, "taylor")
    _backward(model, 1)
    acc.accumulate()
    first = [s.clone() for s in acc.scores()]

    _backward(model, 2)
    model.bn1.weight.grad[0] = float("nan")
    model.bn2.bias.grad[1] = float("inf")
    with pytest.warns(RuntimeWarning, match="NaN or infinity"):
        assert acc.accumulate() is False
    assert acc.count == 1 and acc.skipped == 1
    for a, b in zip(first, acc.scores()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)

    # a NaN that Taylor's BN terms do not read still marks the batch as bad
    _backward(model, 4)
    model.conv2.weight.grad[0, 0, 0, 0] = float("nan")
    with pytest.warns(RuntimeWarning):
        assert acc.accumulate() is False
    assert acc.count == 1 and acc.skipped == 2

    _backward(model, 3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert acc.accumulate() is True
    assert acc.count == 2


def test_l1_and_bn_scale_rules_and_a_user_importance_subclass():
    from halp_trt.pruning.importance import IMPORTANCES, BNScaleImportance, Importance

    model, groups = _setup(NoBN)
    g = _group_of(groups, "conv2")
    w, b = model.conv2.weight.detach(), model.conv2.bias.detach()
    l1 = (w.abs().sum((1, 2, 3)) + b.abs()).double()
    torch.testing.assert_close(make_importance("l1")(model, g), l1 / l1.mean())
    # no BN in the group: BN-scale falls back to the L2 rule
    torch.testing.assert_close(BNScaleImportance()(model, g), MagnitudeImportance()(model, g))
    model, groups = _setup(Residual)  # one group, two BNs tied by the add: |γ| summed
    with torch.no_grad():
        model.bn0.weight.copy_(torch.tensor([1.0, -2.0, 3.0, 0.5, 1.0]))
        model.bn.weight.copy_(torch.tensor([1.0, 1.0, -1.0, 0.5, 0.0]))
    g = _group_of(groups, "stem")
    gamma = torch.tensor([2.0, 3.0, 4.0, 1.0, 1.0], dtype=torch.float64)
    torch.testing.assert_close(make_importance("bn_scale")(model, g), gamma / gamma.mean())

    class Reversed(Importance):  # a user's rule: the last channels matter most
        name = "reversed"

        def __call__(self, model, group, modules=None):
            return torch.arange(group.size, dtype=torch.float64)

    rule = Reversed()
    assert make_importance(rule) is rule
    acc = ImportanceAccumulator(model, groups, rule)
    assert acc.scores()[0].tolist() == list(range(groups[0].size))
    from halp_trt.pipeline.config import CHOICES

    assert set(CHOICES["importance"]) == set(IMPORTANCES)  # the CLI offers every named rule
