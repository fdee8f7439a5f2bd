"""ChannelMasker (halp_trt.pruning.masker): masked channels are exactly zero, nothing else is
touched, and gradients stay masked only while the mask is set."""
import torch
import torch.nn as nn

from halp_trt.graph.groups import find_channel_groups
from halp_trt.pruning.masker import ChannelMasker
from tiny_models import TinyResNet, resnext_like


def _keep(size, drop):
    k = torch.ones(size, dtype=torch.bool)
    k[drop] = False
    return k


def test_masking_zeroes_the_masked_channels_and_leaves_every_other_entry_alone():
    """Masking must only zero: a kept weight or statistic that changed would alter the model
    beyond the channels being removed."""
    torch.manual_seed(0)
    model = TinyResNet(width=8)
    x = torch.randn(1, 3, 8, 8)
    groups, _ = find_channel_groups(model, x)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ChannelMasker(model, groups).set_masks({g.id: _keep(g.size, [1, g.size - 1]) for g in groups})
    after = model.state_dict()
    changed = 0
    for k, v in after.items():
        diff = v != before[k]
        assert bool((v[diff] == 0).all()), f"{k}: a masked entry is not zero"
        changed += int(diff.sum())
    assert changed > 0
    stem = next(g for g in groups if "stem" in g.modules("out"))
    for i in (1, stem.size - 1):  # the stem's rows and its BN's statistics of masked channels
        assert not model.stem.weight[i].any() and model.bn.running_var[i] == 0
    assert model.stem.weight[0].equal(before["stem.weight"][0])


def test_a_grouped_convs_input_channel_is_one_column_of_its_conv_groups_filters():
    """Input channel c of a grouped conv lives in column c % (in/groups) of conv group
    c // (in/groups)'s filters only; zeroing more would cut channels that are kept."""
    torch.manual_seed(0)
    model = resnext_like(c=8, widths=(8, 16))
    groups, _ = find_channel_groups(model, torch.randn(1, 3, 8, 8))
    g = next(g for g in groups if g.root == "block1.conv1")  # feeds block1.conv2 (8 in, 4 groups)
    conv = model.block1.conv2
    ChannelMasker(model, groups).set_masks({g.id: _keep(g.size, [3])})
    expected = torch.zeros_like(conv.weight, dtype=torch.bool)
    expected[2:4, 1] = True  # channel 3: conv group 1 (output filters 2-3), local column 1
    assert torch.equal(conv.weight == 0, expected)


def test_gradients_are_masked_until_the_mask_is_lifted_or_removed():
    """While masked, training cannot revive a channel: its gradients are zeroed even when its
    weights are not (restored here, so only the hooks can zero them); with the mask lifted (all
    kept) or the masker's hooks removed, gradients flow there again."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 3),
                          nn.Flatten(), nn.Linear(64, 10))
    x = torch.randn(2, 3, 8, 8)
    groups, _ = find_channel_groups(model, x[:1])
    g = next(g for g in groups if g.root == "0")
    original = {k: v.clone() for k, v in model.state_dict().items()}
    masker = ChannelMasker(model, groups)

    def grads_of_channel_2():
        model.load_state_dict(original)
        model.zero_grad()
        model(x).square().sum().backward()
        return [float(p.grad[2].abs().sum()) for p in (model[0].weight, model[1].weight)]

    masker.set_masks({g.id: _keep(g.size, [2])})
    assert grads_of_channel_2() == [0.0, 0.0]
    masker.set_masks({g.id: torch.ones(g.size, dtype=torch.bool)})
    assert all(v > 0 for v in grads_of_channel_2())
    masker.set_masks({g.id: _keep(g.size, [2])})
    masker.remove_hooks()
    assert all(v > 0 for v in grads_of_channel_2())


def test_a_shared_prelu_slope_is_not_a_channel():
    """PReLU(1) has one slope for all channels: zeroing it would change every kept channel.
    A per-channel PReLU's slopes are masked like any channel parameter."""
    for n_slopes in (1, 8):
        model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.PReLU(n_slopes), nn.Conv2d(8, 4, 3),
                              nn.Flatten(), nn.Linear(64, 10))
        groups, _ = find_channel_groups(model, torch.randn(1, 3, 8, 8))
        g = next(g for g in groups if g.root == "0")
        ChannelMasker(model, groups).set_masks({g.id: _keep(g.size, [5])})
        slopes = model[1].weight
        assert bool((slopes != 0).all()) if n_slopes == 1 else (slopes[5] == 0 and slopes[4] != 0)

