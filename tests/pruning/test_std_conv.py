"""timm's weight-standardized convs are frozen into plain ones at removal: the same outputs,
and their channels prune on both sides (before, every group touching one was held)."""
import pytest
import torch

from fakes import prune_one_step
from halp_trt.pruning.std_conv import (FrozenStdConv2d, freeze_weight_standardization,
                                       is_weight_standardized)

timm_layers = pytest.importorskip("timm.layers")


@pytest.mark.parametrize("cls,kw", [
    ("StdConv2d", dict(padding=1)),
    ("StdConv2dSame", dict(stride=2, padding="same")),
    ("ScaledStdConv2d", dict(stride=2, padding=1)),
    ("ScaledStdConv2dSame", dict(stride=2, padding="same"))])
def test_a_frozen_conv_computes_what_the_standardized_one_did(cls, kw):
    torch.manual_seed(0)
    conv = getattr(timm_layers, cls)(6, 8, 3, **kw)
    if hasattr(conv, "gain"):
        conv.gain.data.uniform_(0.5, 2.0)  # a gain that is not the identity
    model = torch.nn.Sequential(conv)
    x = torch.randn(2, 6, 15, 15)  # odd: "same" padding at stride 2 is uneven
    with torch.no_grad():
        before = model(x)
    assert is_weight_standardized(conv)
    assert freeze_weight_standardization(model) == ["0"]
    assert type(conv) is FrozenStdConv2d and "gain" not in dict(conv.named_parameters())
    with torch.no_grad():
        after = model(x)
    assert after.shape == before.shape
    assert (after - before).abs().max() <= 1e-5 * before.abs().max()


def test_weight_standardized_groups_prune_instead_of_being_held():
    from pattern_models import timm_std_conv

    torch.manual_seed(0)
    model = timm_std_conv().eval()
    pruner, record = prune_one_step(model, torch.randn(1, 3, 16, 16))
    assert not pruner.fixed, pruner.fixed
    narrower = {g.root for g in pruner.prunable if record.kept[g.root] < g.size}
    assert "conv1" in narrower and len(narrower) >= 2  # the block's inner width and the stream
