"""Attention heads (halp_trt.pruning.heads): removing them computes what masking them did,
at least one head stays, and importance scores head groups over whole heads."""
import copy

import pytest
import torch

import tiny_models
from halp_trt.errors import HalpError
from halp_trt.graph.attention import HeadAttention
from halp_trt.graph.groups import find_channel_groups
from halp_trt.pruning.heads import HeadAwareImportance, head_importance, remove_heads
from halp_trt.pruning.importance import MagnitudeImportance


@pytest.fixture(scope="module")
def traced_vit():
    torch.manual_seed(0)
    model = tiny_models.vit_heads().eval()  # 2 blocks of 4 heads of 16 channels
    x = torch.randn(2, 3, 32, 32)
    groups, _ = find_channel_groups(model, x[:1])
    return model, x, groups


@pytest.fixture
def vit(traced_vit):
    """A fresh copy of the traced ViT (groups name modules, so they hold for the copy)."""
    model, x, groups = traced_vit
    return copy.deepcopy(model), x, groups


def test_removing_heads_computes_what_zeroing_them_did(vit):
    """A head whose q, k, v rows and output columns are zero contributes nothing; removing it
    must give the same outputs, with a smaller attention module in its place."""
    model, x, groups = vit
    g = next(g for g in groups if g.heads_of)
    masked = copy.deepcopy(model)
    attn = masked.get_submodule(g.heads_of)
    with torch.no_grad():
        for h in (1, 3):
            for section in range(3):  # q, k, v blocks of 64 rows
                rows = slice(section * 64 + h * 16, section * 64 + (h + 1) * 16)
                attn.in_proj_weight[rows] = 0
                attn.in_proj_bias[rows] = 0
            attn.out_proj.weight[:, h * 16:(h + 1) * 16] = 0
        want = masked(x)
        remove_heads(model, g, [1, 3])
        got = model(x)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    new = model.get_submodule(g.heads_of)
    assert isinstance(new, HeadAttention) and new.num_heads == 2
    assert tuple(new.in_proj_weight.shape) == (3 * 32, 64)
    assert tuple(new.out_proj.weight.shape) == (64, 32)


def test_at_least_one_head_must_stay(vit):
    """Removing every head (or a head that does not exist) would leave no attention: refused."""
    model, _, groups = vit
    g = next(g for g in groups if g.heads_of)
    for drop in ([0, 1, 2, 3], [4]):
        with pytest.raises(HalpError, match="at least one of its heads must stay"):
            remove_heads(model, g, drop)
    assert model.get_submodule(g.heads_of).num_heads == 4  # refused before any change


def test_built_in_rules_score_head_groups_by_whole_heads_and_user_rules_score_everything(vit):
    """The built-in rules only see a group's conv/linear rows, so head groups get
    head_importance; a user's function is trusted with every group, heads included."""
    model, _, groups = vit
    heads = next(g for g in groups if g.heads_of)
    channels = next(g for g in groups if not g.heads_of)
    imp = HeadAwareImportance("magnitude")
    assert not imp.needs_grad and imp.__name__ == "magnitude"
    assert torch.equal(imp(model, heads), head_importance("magnitude", model, heads))
    assert torch.equal(imp(model, channels), MagnitudeImportance()(model, channels))

    seen = []

    def by_index(model, group):
        seen.append(group.id)
        return torch.arange(group.size)

    user = HeadAwareImportance(by_index)
    assert user.kind is None and user.__name__ == "by_index"
    assert user(model, heads).tolist() == [0.0, 1.0, 2.0, 3.0] and seen == [heads.id]


def test_head_importance_ranks_heads_by_their_weights():
    model = tiny_models.vit_heads().eval()
    x = torch.randn(1, 3, 32, 32)
    groups, _ = find_channel_groups(model, x)
    g = next(g for g in groups if g.heads_of)
    attn = model.get_submodule(g.heads_of)
    with torch.no_grad():  # head 2's q, k, v rows and output columns 3x larger
        inner = attn.embed_dim
        for s in range(3):
            attn.in_proj_weight[s * inner + 32:s * inner + 48] *= 3
        attn.out_proj.weight[:, 32:48] *= 3
    mag = head_importance("magnitude", model, g)
    assert int(mag.argmax()) == 2 and abs(float(mag.mean()) - 1.0) < 1e-9
    model(x).square().sum().backward()
    taylor = head_importance("taylor", model, g)
    assert taylor.shape == (4,) and bool((taylor > 0).all())
