"""Attention heads as knapsack items: torchvision ViT (nn.MultiheadAttention) and Swin / Swin-V2
(window attention through F.linear) each go table → prune heads + MLP → removal → ONNX, with
masked ≡ pruned and ONNX ≡ PyTorch; the per-layer attention graph computes attention and costs
more with more heads."""
import copy
import time

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn as nn
from onnx import numpy_helper

import fakes
import tiny_models
from halp_trt.graph.attention import (HeadAttention, HeadPrunedWindowAttention,
                                      HeadPrunedWindowAttentionV2, find_attention,
                                      is_timm_attention)
from halp_trt.graph.groups import check_unique_coverage, find_channel_groups
from halp_trt.graph.layers import Signature, list_layers
from halp_trt.latency.build import BuildConfig, build_table
from halp_trt.latency.layer_onnx import layer_onnx
from halp_trt.latency.inspection import format_report
from halp_trt.latency.table import LatencyTable
from halp_trt.pruning.config import HALPConfig
from halp_trt.pruning.heads import remove_heads
from halp_trt.pruning.pruner import HALPPruner
from halp_trt.runtime.export import export_onnx
from halp_trt.runtime.protocol import Protocol

FAST = BuildConfig(protocol=Protocol(rounds=2), sweep_window=16, max_points_per_axis=4,
                   progress=False)

MODELS = {"vit": tiny_models.vit_heads, "swin": tiny_models.swin_tiny,
          "swin_v2": tiny_models.swin_v2_tiny, "timm_vit": tiny_models.timm_vit_heads}


def _heads(model):
    return {s.name: s.num_heads for s in find_attention(model, torch.randn(1, 3, 32, 32))}


@pytest.mark.parametrize("name", list(MODELS))
def test_heads_and_mlp_prune_through_table_removal_and_onnx(name, tmp_path):
    torch.manual_seed(0)
    model = MODELS[name]().eval()
    original = copy.deepcopy(model)
    x = torch.randn(2, 3, 32, 32)
    path = str(tmp_path / "table.json")
    # real ORT sessions on a deterministic staircase clock: decisions repeat run to run
    build_table(model, (1, 3, 32, 32), fakes.StaircaseTimedBackend(), path, name, FAST)
    table = LatencyTable.load(path)
    attn_sigs = [s for s in table.signatures.values() if s.signature.is_attention]
    heads_before = _heads(model)
    assert sum(len(s.layers) for s in attn_sigs) == len(heads_before) >= 2
    for s in attn_sigs:  # the head axis: every count measured, cost growing with heads
        curve = [s.ms(s.c_in_max, h) for h in range(1, s.c_out_max + 1)]
        assert all(b > a for a, b in zip(curve, curve[1:])), (s.key, curve)
    assert "ms by head count" in format_report(table)

    pruner = HALPPruner(model, x[:1], table, HALPConfig(target=0.5, steps=1, interval=1,
                                                        importance="magnitude"))
    head_groups = [g for g in pruner.prunable if g.heads_of]
    assert {g.heads_of for g in head_groups} == set(heads_before)
    assert any(not g.heads_of for g in pruner.prunable)  # the MLP hidden widths
    record = pruner.prune_step()
    assert record.predicted_ms <= record.target_ms
    with torch.no_grad():
        masked = model(x)
    pruned = pruner.finalize().eval()
    with torch.no_grad():
        out, before = pruned(x), original(x)
    scale = masked.abs().max()
    assert ((out - masked).abs().max() / scale).item() <= 1e-5
    assert ((out - before).abs().max() / scale).item() > 1e-3  # pruning changed something

    heads_after = _heads(pruned)
    assert all(1 <= heads_after[n] <= heads_before[n] for n in heads_before)
    assert sum(heads_after.values()) < sum(heads_before.values())
    for g in head_groups:
        assert heads_after[g.heads_of] == record.kept[g.root] == int(pruner.keep[g.id].sum())
    mods = dict(pruned.named_modules())
    assert all(isinstance(mods[n], (HeadAttention, HeadPrunedWindowAttention,
                                    HeadPrunedWindowAttentionV2)) or is_timm_attention(mods[n])
               for n in heads_before if heads_after[n] < heads_before[n])
    # the table prices the pruned model at its real head counts
    preds = table.layer_predictions(pruner.layers, pruned)
    assert abs(sum(preds.values()) - record.predicted_ms) <= 1e-9 * record.predicted_ms + 1e-9

    sess = ort.InferenceSession(export_onnx(pruned, x[:1]), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"input": x[:1].numpy()})[0]
    np.testing.assert_allclose(got, out[:1].numpy(), rtol=1e-4, atol=1e-5 * scale.item())


@pytest.mark.parametrize("name", list(MODELS))
def test_full_head_forward_equals_torchvision_and_head_groups_are_unique(name):
    """The replacement modules compute what torchvision does when no head is removed (shifted
    windows and padding included: the first Swin stage shifts 2×2 windows)."""
    torch.manual_seed(1)
    model = MODELS[name]().eval()
    x = torch.randn(2, 3, 32, 32)
    groups, _ = find_channel_groups(model, x[:1])
    check_unique_coverage(groups)
    with torch.no_grad():
        want = model(x)
        for g in groups:
            if g.heads_of:
                remove_heads(model, g, [])  # nothing to drop: module unchanged
        for n, m in list(model.named_modules()):
            if isinstance(m, nn.MultiheadAttention):
                new = HeadAttention(m.embed_dim, m.num_heads, m.head_dim,
                                    batch_first=m.batch_first)
                new.load_state_dict(m.state_dict())
                parent, _, child = n.rpartition(".")
                setattr(model.get_submodule(parent), child, new.eval())
            elif hasattr(m, "relative_position_bias_table") or hasattr(m, "cpb_mlp"):
                m.head_dim = m.qkv.in_features // m.num_heads
                m.__class__ = (HeadPrunedWindowAttentionV2 if hasattr(m, "cpb_mlp")
                               else HeadPrunedWindowAttention)
        got = model(x)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_head_attention_is_multihead_attention_sequence_first_with_masks():
    torch.manual_seed(2)
    mha = nn.MultiheadAttention(24, 3).eval()
    mine = HeadAttention(24, 3, 8).eval()
    mine.load_state_dict(mha.state_dict())
    q, kv = torch.randn(5, 2, 24), torch.randn(7, 2, 24)
    mask = torch.rand(5, 7) > 0.7
    pad = torch.zeros(2, 7, dtype=torch.bool)
    pad[1, -2:] = True
    want, want_w = mha(q, kv, kv, key_padding_mask=pad, attn_mask=mask)
    got, got_w = mine(q, kv, kv, key_padding_mask=pad, attn_mask=mask)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got_w, want_w, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("op", ["mha", "wattn", "wattn2"])
def test_attention_graph_computes_attention(op):
    sig = Signature(op, tokens=6, head_dim=4, windows=2 if op != "mha" else 1)
    embed, heads = 10, 3
    model = onnx.load_from_string(layer_onnx(sig, embed, heads, batch=1))
    w = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    x = np.random.default_rng(0).standard_normal((sig.windows, 6, embed)).astype(np.float32)
    got = ort.InferenceSession(model.SerializeToString(),
                               providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    qkv = (x @ w["Wqkv"] + w["Bqkv"]).reshape(sig.windows, 6, 3, heads, 4).transpose(2, 0, 3, 1, 4)
    q, k, v = qkv
    if op == "wattn2":
        q = q / np.linalg.norm(q, axis=-1, keepdims=True)
        k = k / np.linalg.norm(k, axis=-1, keepdims=True)
        logits = q @ k.transpose(0, 1, 3, 2) * w["logit_scale"]
    else:
        logits = (q * 4 ** -0.5) @ k.transpose(0, 1, 3, 2)
    if op != "mha":
        logits = logits + w["rel_bias"]
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    want = (p @ v).transpose(0, 2, 1, 3).reshape(sig.windows, 6, heads * 4) @ w["Wo"] + w["Bo"]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_attention_graph_latency_grows_with_heads():
    """Real ONNX Runtime timing, ViT-Ti-like (197 tokens, heads of 64): 12 heads do 12x the
    attention work of one, so even a busy machine's minimum of 15 runs separates them."""
    sig = Signature("mha", tokens=197, head_dim=64)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    x = np.random.default_rng(0).standard_normal((1, 197, 192)).astype(np.float32)
    best = {}
    for heads in (1, 12):
        sess = ort.InferenceSession(layer_onnx(sig, 192, heads), opts,
                                    providers=["CPUExecutionProvider"])
        sess.run(None, {"x": x})
        runs = []
        for _ in range(15):
            t0 = time.perf_counter()
            sess.run(None, {"x": x})
            runs.append(time.perf_counter() - t0)
        best[heads] = min(runs)
    assert best[12] > 3 * best[1], best


def test_list_layers_times_each_attention_once_at_its_token_count():
    model = tiny_models.swin_tiny().eval()
    x = torch.randn(1, 3, 32, 32)
    groups, _ = find_channel_groups(model, x)
    specs = {s.name: s for s in list_layers(model, x, groups)}
    first, last = specs["features.1.0.attn"], specs["features.3.1.attn"]
    # stage 1: 8x8 tokens in 2x2 windows of 4x4; stage 2: 4x4 tokens, one window
    assert (first.signature.key, first.in_channels, first.out_channels) == (
        "wattn_d16_t16_w4", 32, 2)
    assert (last.signature.key, last.in_channels, last.out_channels) == ("wattn_d16_t16", 64, 4)
    by_id = {g.id: g for g in groups}
    assert by_id[first.out_group].heads_of == "features.1.0.attn"
    # the projections run through F.linear: timed inside the attention, not as Linears
    assert not any(n.endswith((".qkv", ".proj")) for n in specs)
    assert Signature.from_json(first.signature.to_json()) == first.signature


def test_timm_attention_takes_the_place_of_its_held_projection_group():
    """timm calls qkv and proj as modules: torch-pruning groups them and holds the group at
    the reshape into heads. The head group replaces it, and the layer list times each
    attention once (projections inside it) at its token count, class token included."""
    model = tiny_models.timm_vit_heads().eval()
    x = torch.randn(1, 3, 32, 32)
    groups, _ = find_channel_groups(model, x)
    check_unique_coverage(groups)
    heads = {g.heads_of: g for g in groups if g.heads_of}
    assert sorted(heads) == ["blocks.0.attn", "blocks.1.attn"]
    assert all(g.size == 4 and g.held is None for g in heads.values())
    assert not any(g.root.endswith(".qkv") for g in groups if not g.heads_of)
    specs = {s.name: s for s in list_layers(model, x, groups)}
    assert not any(n.startswith("blocks.") and n.endswith((".qkv", ".proj")) for n in specs)
    attn = specs["blocks.0.attn"]
    assert (attn.signature.op, attn.signature.tokens, attn.signature.head_dim,
            attn.in_channels, attn.out_channels) == ("mha", 17, 8, 32, 4)
    assert attn.out_group == heads["blocks.0.attn"].id
    assert [g.id for g in groups] == list(range(len(groups)))


def test_timm_attention_with_a_norm_across_heads_keeps_its_heads():
    """``scale_norm`` normalises all heads' outputs together: removing a head changes the
    other heads' values, so that attention is not a head site."""
    from timm.layers.attention import Attention

    attn = Attention(32, num_heads=4, scale_norm=True, norm_layer=nn.LayerNorm)
    assert not is_timm_attention(attn)
    assert find_attention(nn.Sequential(attn), torch.randn(1, 8, 32)) == []
    plain = Attention(32, num_heads=4)
    assert [s.kind for s in find_attention(nn.Sequential(plain), torch.randn(1, 8, 32))] == [
        "timm"]
