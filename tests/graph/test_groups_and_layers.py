"""The model as pruning sees it: coupled channel groups and prunable layers."""
import pytest
import torch
import torch.nn as nn

from halp_trt.errors import HalpError
from halp_trt.graph.groups import (check_unique_coverage, find_channel_groups, output_layers,
                                   run_example)
from halp_trt.graph.conv_kinds import is_depthwise
from halp_trt.graph.layers import Signature, list_layers
from tiny_models import GrayNet, TinyResNet

X = torch.randn(1, 3, 16, 16)


def test_residual_and_depthwise_couplings_share_one_group():
    model = TinyResNet(width=16)
    groups, _ = find_channel_groups(model, X)
    check_unique_coverage(groups)
    by_module = {}
    for g in groups:
        for m in g.members:
            by_module.setdefault((m.module_name, m.side), set()).add(g.id)
    # the stem and the residual block's second conv feed one add: one group
    stem_group = next(g for g in groups if "stem" in g.modules("out"))
    assert "block.conv2" in stem_group.modules("out")
    # the depthwise conv's input and output are the same channels: one group with its producer
    dw = next(n for n, m in model.named_modules()
              if isinstance(m, nn.Conv2d) and is_depthwise(m.groups, m.in_channels,
                                                           m.out_channels))
    assert len(by_module[(dw, "out")]) == 1
    assert "fc" not in {g.root for g in groups}, "the classifier's outputs are never pruned"
    assert output_layers(model, X) == {"fc"}


def test_layers_in_forward_order_with_signatures_and_groups():
    model = TinyResNet(width=16)
    groups, _ = find_channel_groups(model, X)
    specs = list_layers(model, X, groups)
    names = [s.name for s in specs]
    assert names[0] == "stem" and names[-1] == "fc"
    stem = specs[0]
    assert stem.in_group is None and stem.out_group is not None, "the image is not prunable"
    assert stem.signature.input_hw == (16, 16) and stem.signature.op == "conv"
    fc = specs[-1]
    assert fc.out_group is None and fc.signature.op == "linear"
    dws = [s for s in specs if s.depthwise]
    assert dws and all(s.in_group == s.out_group for s in dws)
    sig = stem.signature
    assert Signature.from_json(sig.to_json()) == sig and sig.key.startswith("conv_k3x3")


def test_depthwise_test():
    assert is_depthwise(8, 8, 8) and not is_depthwise(1, 1, 1)
    assert not is_depthwise(4, 8, 8) and not is_depthwise(8, 8, 16)


def test_a_model_that_cannot_run_on_the_input_is_one_clear_error():
    with pytest.raises(HalpError, match=r"cannot run on an input of shape \(1, 3, 16, 16\)"):
        run_example(GrayNet(), X)
    with pytest.raises(HalpError, match="cannot exclude"):
        find_channel_groups(TinyResNet(), X, exclude=["no.such.module"])


def test_a_group_whose_indices_torch_pruning_multiplies_without_end_is_held_not_run_out_of_memory():
    pytest.importorskip("timm")
    from pattern_models import timm_levit_one_token

    model = timm_levit_one_token().eval()
    groups, _ = find_channel_groups(model, torch.randn(1, 3, 16, 16))
    runaway = [g for g in groups if g.held and "without end" in g.held]
    assert {g.root for g in runaway} == {f"blocks.{i}.attn.qkv.linear" for i in range(2)}
    assert any(g.held is None and g.root.endswith("mlp.ln1.linear") for g in groups)


@pytest.mark.parametrize("from_start", [False, True], ids=["last_pairs", "first_pairs"])
def test_a_ghost_modules_tied_halves_fold_into_pairs_and_prune_exactly(from_start):
    """cat([x, depthwise(x)]) ties concat channel k to channel 8 + k; torch-pruning maps the
    primary conv only through the depthwise copy. The group is folded to 8 pairs: removing
    a pair removes the conv's channel, its copy and both concat positions, and the pruned
    model computes what the masked one did wherever the cut falls."""
    from pattern_models import GhostSE

    from halp_trt.pruning.contributions import WidthMap
    from halp_trt.pruning.surgery import check_masked_equals_pruned, masked_then_pruned

    torch.manual_seed(0)
    model = GhostSE().eval()
    x = torch.randn(2, 3, 16, 16)
    groups, graph = find_channel_groups(model, x[:1])
    check_unique_coverage(groups)
    ghost = next(g for g in groups if g.root == "expand")
    assert ghost.size == 8 and ghost.root_channels == {k: [k, 8 + k] for k in range(8)}
    members = {(m.module_name, m.side): m.root_idxs for m in ghost.members}
    assert members[("primary", "out")] == members[("cheap", "out")] == list(range(8))
    assert members[("head", "in")] == list(range(8)) * 2

    keep = torch.ones(8, dtype=torch.bool)
    keep[slice(0, 3) if from_start else slice(5, 8)] = False
    drop = torch.nonzero(~keep).flatten().tolist()
    masked, pruned = masked_then_pruned(model, graph, groups, {ghost.id: keep},
                                        {ghost.id: drop}, x)
    check_masked_equals_pruned(masked, pruned, rel_tolerance=1e-6)
    assert (model.primary.out_channels, model.cheap.out_channels, model.expand.out_channels,
            model.head.in_channels) == (5, 5, 10, 10)
    # the width model counts two concat channels per pair
    specs = {s.name: s for s in list_layers(GhostSE().eval(), x[:1], groups)}
    widths = WidthMap(list(specs.values()), groups)
    assert widths.widths_of(specs["expand"], {ghost.id: 5})[1] == 10
    assert widths.widths_of(specs["primary"], {ghost.id: 5})[1] == 5
    assert widths.widths_of(specs["head"], {ghost.id: 5})[0] == 10
