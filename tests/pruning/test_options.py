"""The widths a group may be cut to and the order its channels go in."""
from types import SimpleNamespace

import pytest
import torch

from halp_trt.graph.groups import ChannelGroup
from halp_trt.pruning.options import ChannelOptions


def _options(min_groups_kept=1, max_prune_ratio=1.0, group_size=4, size=10):
    g = ChannelGroup(id=0, root="conv", size=size)
    cfg = SimpleNamespace(group_size=group_size, min_groups_kept=min_groups_kept,
                          max_prune_ratio=max_prune_ratio)
    return g, ChannelOptions([g], [], None, {}, cfg)


def test_counts_are_whole_neuron_groups_above_the_configured_minimum():
    g, opts = _options()
    assert opts.counts(g, 10).tolist() == [4, 8, 10]  # the 2 leftover go only with everything
    assert opts.counts(g, 8).tolist() == [4, 8]
    g, opts = _options(min_groups_kept=2)
    assert opts.counts(g, 10).tolist() == [8, 10]
    g, opts = _options(max_prune_ratio=0.5)  # at least 5 of 10 kept
    assert opts.counts(g, 10).tolist() == [8, 10]


def test_order_is_most_important_first_and_round_robin_over_conv_groups():
    g, opts = _options(size=6, group_size=2)
    scores = torch.tensor([0.1, 0.9, 0.5, 0.5, 0.0, 0.7])
    keep = torch.ones(6, dtype=torch.bool)
    assert opts.order(g, keep, scores).tolist() == [1, 5, 2, 3, 0, 4]  # ties: lower index first
    keep[1] = False
    assert opts.order(g, keep, scores).tolist() == [5, 2, 3, 0, 4]
    opts.slices[g.id] = [[0, 1, 2], [3, 4, 5]]  # split by a grouped conv
    order = opts.order(g, torch.ones(6, dtype=torch.bool), scores).tolist()
    assert order == [1, 5, 2, 3, 0, 4]  # best of each slice, then the second best of each
    assert all(len({i // 3 for i in order[k:k + 2]}) == 2 for k in (0, 2, 4))


def test_uniform_masks_and_the_mask_check_respect_conv_groups():
    g, opts = _options(size=6, group_size=2)
    assert opts.uniform_mask(g, 4).tolist() == [True] * 4 + [False] * 2
    assert opts.check_mask(g, torch.zeros(6, dtype=torch.bool)) is not None  # nothing kept
    assert opts.check_mask(g, torch.ones(5, dtype=torch.bool)) is not None  # wrong length
    opts.slices[g.id] = [[0, 1, 2], [3, 4, 5]]
    mask = opts.uniform_mask(g, 4)
    assert mask.tolist() == [True, True, False, True, True, False]
    assert opts.check_mask(g, mask) is None
    uneven = torch.tensor([True, True, True, True, False, False])
    assert "same number" in opts.check_mask(g, uneven)


def test_knapsack_items_value_each_count_by_the_importance_it_keeps():
    g, opts = _options(size=6, group_size=2)
    scores = torch.tensor([1.0, 4.0, 2.0, 3.0, 0.0, 5.0])
    orders, items = opts.knapsack_items([g], {0: torch.ones(6, dtype=torch.bool)},
                                                [scores])
    assert orders[0].tolist() == [5, 1, 3, 2, 0, 4]
    (group, item_counts, values), = items
    assert group is g and item_counts.tolist() == [2, 4, 6]
    # 5+4, +3+2, +1+0, each with a tie-break of a millionth of the mean importance per channel
    assert values == pytest.approx([9.0, 14.0, 15.0], rel=1e-5)
    assert values[0] > 9.0


def test_each_producer_of_a_concat_keeps_a_channel_however_little_it_matters():
    """One group spans a concat of two branches (a squeeze-excite gates it all); when one
    branch's channels are the least important, cutting the group must still leave that branch
    a channel — a conv with no output channels cannot exist (timm's CSPNeXt: ONNX export failed
    on a [0, 1, 1, 1] weight)."""
    import numpy as np
    import onnxruntime as ort

    from fakes import prune_one_step
    from halp_trt.pruning.options import member_segments
    from halp_trt.runtime.export import export_onnx
    from pattern_models import ConcatUnderOneGate

    torch.manual_seed(0)
    model = ConcatUnderOneGate().eval()
    with torch.no_grad():  # the short branch matters least to a magnitude importance
        model.short.weight.mul_(1e-3)
        model.short.bias.zero_()
    x = torch.randn(2, 3, 32, 32)
    pruner, record = prune_one_step(model, x[:1], target=0.4)
    gate = next(g for g in pruner.prunable if g.root == "fc")
    assert member_segments(gate) == [list(range(8)), list(range(8, 16))]
    assert record.kept["fc"] < 16
    kept = pruner.keep[gate.id]
    assert kept[:8].sum() >= 1 and kept[8:].sum() >= 1
    with torch.no_grad():
        masked = model(x)
    pruned = pruner.finalize().eval()
    assert pruned.short.out_channels >= 1 and pruned.main.out_channels >= 1
    with torch.no_grad():
        torch.testing.assert_close(pruned(x), masked, rtol=1e-4, atol=1e-5)
    session = ort.InferenceSession(export_onnx(pruned, x[:1]), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x[:1].numpy()})[0]
    np.testing.assert_allclose(got, masked[:1].numpy(), rtol=1e-4, atol=1e-5)


def test_segments_first_puts_each_segments_best_channel_in_every_prefix():
    g = ChannelGroup(id=0, root="gate", size=6)
    g.members = [SimpleNamespace(module_name="a", side="out", idxs=[0, 1, 2], root_idxs=[0, 1, 2]),
                 SimpleNamespace(module_name="b", side="out", idxs=[0, 1, 2], root_idxs=[3, 4, 5]),
                 SimpleNamespace(module_name="gate", side="out", idxs=list(range(6)),
                                 root_idxs=list(range(6)))]
    cfg = SimpleNamespace(group_size=2, min_groups_kept=1, max_prune_ratio=1.0)
    modules = {"a": torch.nn.Conv2d(4, 3, 1), "b": torch.nn.Conv2d(4, 3, 1),
               "gate": torch.nn.Conv2d(6, 6, 1)}
    opts = ChannelOptions([g], [], None, modules, cfg)
    scores = torch.tensor([0.01, 0.03, 0.02, 0.9, 0.8, 0.7])  # a's channels all least important
    order = opts.order(g, torch.ones(6, dtype=torch.bool), scores).tolist()
    assert order[:2] == [3, 1] and sorted(order) == list(range(6))  # b's best, then a's best
    assert opts.min_count(g, 6) == 2
    assert opts.uniform_mask(g, 2).nonzero().flatten().tolist() == [0, 3]
