"""Window attention (Swin, MaxViT): torch-pruning 1.6.1 on PyTorch 2 took the attention
reshapes for channel flattens (stride = channels / heads) and expanded the index lists 32-fold
on every lap of a residual cycle, without end: swin_t, swin_v2_t and maxvit_t were killed at
24 GB while their channel groups were collected. Now the reshapes' saved shapes are read, the
MLPs' hidden widths and Swin's attention heads (halp_trt.graph.attention) are prunable groups,
MaxViT's qkv projection split into heads keeps its width, and masked ≡ pruned."""
import pytest
import torch
import torch.nn as nn
import torchvision
from torchvision.models.swin_transformer import PatchMergingV2, SwinTransformerBlockV2

from halp_trt.graph.groups import check_unique_coverage, find_channel_groups
from halp_trt.models import create_model
from halp_trt.pruning.surgery import (check_masked_equals_pruned, masked_then_pruned,
                                      unprunable_reason)


@pytest.fixture(autouse=True)
def index_lists_stay_small(monkeypatch):
    """A regression must fail here, not take the machine's memory: a flatten mapping that would
    make more index entries than any layer of these models has channels stops the test."""
    from torch_pruning.dependency import index_mapping

    original = index_mapping._FlattenIndexMapping.__call__

    def bounded(self, idxs):
        if not self.reverse and len(idxs) * self._stride > 200_000:
            raise AssertionError(f"index list explodes: {len(idxs)} x {self._stride}")
        return original(self, idxs)

    monkeypatch.setattr(index_mapping._FlattenIndexMapping, "__call__", bounded)


def _remove_and_compare(model, x, groups, graph, prune):
    """Mask 25% of each group in ``prune``, remove the same channels, and check that the pruned
    model computes what the masked one did. Returns the channels dropped per group id."""
    keep, drop = {}, {}
    for g in prune:
        d = list(range(1, g.size, 4))  # every 4th channel, from the second
        k = torch.ones(g.size, dtype=torch.bool)
        k[d] = False
        keep[g.id], drop[g.id] = k, d
    masked, pruned = masked_then_pruned(model, graph, groups, keep, drop, x)
    check_masked_equals_pruned(masked, pruned, rel_tolerance=1e-5)
    return drop


def _mlp_groups(model, groups):
    """{block: group} for every transformer block whose MLP hidden width is a group of its own
    (fc1's output channels and fc2's input channels, nothing else)."""
    out = {}
    for name, m in model.named_modules():
        if name.endswith(".mlp"):
            fc1, fc2 = f"{name}.0", f"{name}.3"
            g = next((g for g in groups if fc1 in g.modules("out")), None)
            if g is not None and set(g.modules()) == {fc1, fc2}:
                out[name] = g
    return out


@pytest.mark.parametrize("v2", [False, True], ids=["swin", "swin_v2"])
def test_small_swin_prunes_its_mlps_and_masked_equals_pruned(v2):
    torch.manual_seed(0)
    extra = dict(block=SwinTransformerBlockV2, downsample_layer=PatchMergingV2) if v2 else {}
    model = torchvision.models.SwinTransformer(
        patch_size=[4, 4], embed_dim=32, depths=[2, 2], num_heads=[2, 4], window_size=[4, 4],
        num_classes=10, **extra).eval()
    with torch.no_grad():  # non-trivial LayerNorms and a non-zero head, so errors show
        for m in model.modules():
            if isinstance(m, nn.LayerNorm):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
        model.head.weight.normal_(0, 0.1)
    x = torch.randn(2, 3, 32, 32)
    groups, graph = find_channel_groups(model, x[:1])
    check_unique_coverage(groups)
    modules = dict(model.named_modules())
    mlps = _mlp_groups(model, groups)
    assert len(mlps) == 4 and all(unprunable_reason(g, modules) is None for g in mlps.values())
    heads = [g for g in groups if g.heads_of]
    assert [g.size for g in heads] == [2, 2, 4, 4]
    assert all(unprunable_reason(g, modules) is None for g in heads)
    # the residual stream is tied to LayerNorms (or to attention the graph cannot follow)
    for g in groups:
        if g not in mlps.values() and g not in heads:
            assert unprunable_reason(g, modules) is not None, g.root

    drop = _remove_and_compare(model, x, groups, graph, [*mlps.values(), *heads])
    for name, g in mlps.items():
        assert modules[f"{name}.0"].out_features == g.size - len(drop[g.id])
    modules = dict(model.named_modules())
    for g in heads:  # every 4th head from the second: one of 2 or 4
        assert modules[g.heads_of].num_heads == g.size - 1


def test_torchvision_swin_t_groups_are_found_at_64px():
    model = create_model("swin_t", 10, 64).eval()
    groups, _ = find_channel_groups(model, torch.randn(1, 3, 64, 64))
    modules = dict(model.named_modules())
    mlps = _mlp_groups(model, groups)
    assert len(mlps) == 12 and all(unprunable_reason(g, modules) is None for g in mlps.values())


def test_patch_merge_after_a_deep_stage_is_traced_and_prunes_exactly():
    """Swin-S's third stage has 18 blocks: torch-pruning's walk back from the patch merge's
    concat to a layer of known width gave up on the residual chain and its index mapping summed
    ``None`` (TypeError). The concat's sizes recorded while tracing make the graph exact."""
    torch.manual_seed(0)
    model = torchvision.models.SwinTransformer(
        patch_size=[4, 4], embed_dim=32, depths=[1, 18, 1], num_heads=[2, 4, 8],
        window_size=[4, 4], num_classes=10).eval()
    x = torch.randn(2, 3, 64, 64)
    groups, graph = find_channel_groups(model, x[:1])
    check_unique_coverage(groups)
    mlps = _mlp_groups(model, groups)
    assert len(mlps) == 20
    _remove_and_compare(model, x, groups, graph, list(mlps.values()))


def test_small_maxvit_keeps_qkv_widths_and_prunes_the_rest():
    """MaxViT's qkv projection is reshaped into heads; torch-pruning maps that reshape one to
    one and would couple to_qkv's 3·C outputs with merge's C inputs. Those groups are held; the
    MBConv, squeeze-excitation and MLP widths are pruned, masked ≡ pruned."""
    torch.manual_seed(0)
    model = torchvision.models.MaxVit(
        input_size=(32, 32), stem_channels=16, partition_size=2, block_channels=[32, 64],
        block_layers=[1, 1], head_dim=8, stochastic_depth_prob=0.0, num_classes=10).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.BatchNorm2d, nn.LayerNorm)):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
    x = torch.randn(2, 3, 32, 32)
    groups, graph = find_channel_groups(model, x[:1])
    check_unique_coverage(groups)
    modules = dict(model.named_modules())
    qkv = [g for g in groups if g.root.endswith("to_qkv")]
    assert len(qkv) == 4
    assert all("reshape" in unprunable_reason(g, modules) for g in qkv)
    prunable = [g for g in groups if unprunable_reason(g, modules) is None and g.size > 1]
    mlp = [g for g in prunable if g.root.endswith("mlp_layer.1")]
    assert len(mlp) == 4
    assert any("conv_b" in g.root for g in prunable) and any("fc1" in g.root for g in prunable)
    drop = _remove_and_compare(model, x, groups, graph, prunable)
    for g in mlp:
        assert modules[g.root].out_features == g.size - len(drop[g.id])
