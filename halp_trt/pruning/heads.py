"""Removing attention heads, and their importance.

Head groups (``halp_trt.graph.attention``) are not torch-pruning groups: its dependency graph
has no node for the projections a head lives in. Removal slices them here — the head's q, k, v
rows of the packed input projection, its output-projection columns, and its per-head state
(Swin's relative-position-bias column; Swin-V2's logit scale and the continuous position bias
MLP's output row) — and swaps in the module that computes with fewer heads of the same size.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import torch
import torch.nn as nn
from torchvision.models.swin_transformer import ShiftedWindowAttention, ShiftedWindowAttentionV2

from halp_trt.errors import HalpError
from halp_trt.graph.attention import (HeadAttention, HeadPrunedWindowAttention,
                                      HeadPrunedWindowAttentionV2, is_timm_attention,
                                      head_columns, head_dim_of, qkv_rows)
from halp_trt.graph.groups import ChannelGroup
from halp_trt.pruning.importance import (BNScaleImportance, MagnitudeImportance,
                                         TaylorImportance, make_importance, over_group_mean)


def _param(like: torch.Tensor, value: torch.Tensor) -> nn.Parameter:
    return nn.Parameter(value.detach().clone().contiguous(), requires_grad=like.requires_grad)


@torch.no_grad()
def remove_heads(model: nn.Module, group: ChannelGroup, drop: Sequence[int]) -> None:
    """Remove heads ``drop`` of the attention ``group.heads_of`` from ``model`` in place."""
    modules = dict(model.named_modules())
    attn = modules[group.heads_of]
    n_heads, d = int(attn.num_heads), head_dim_of(attn)
    gone = {int(h) for h in drop}
    keep = [h for h in range(n_heads) if h not in gone]
    if not gone:
        return
    if not keep or max(gone) >= n_heads:
        raise HalpError(f"cannot remove heads {sorted(gone)} of {group.heads_of}, which has "
                        f"{n_heads}: at least one of its heads must stay")
    rows, cols = qkv_rows(n_heads, d, keep), head_columns(d, keep)
    if isinstance(attn, (nn.MultiheadAttention, HeadAttention)):
        w = attn.in_proj_weight
        new = HeadAttention(attn.embed_dim, len(keep), d, bias=attn.in_proj_bias is not None,
                            dropout=attn.dropout, batch_first=attn.batch_first)
        new = new.to(device=w.device, dtype=w.dtype).train(attn.training)
        new.in_proj_weight = _param(w, w[rows])
        out = attn.out_proj
        new.out_proj.weight = _param(out.weight, out.weight[:, cols])
        if attn.in_proj_bias is not None:
            new.in_proj_bias = _param(attn.in_proj_bias, attn.in_proj_bias[rows])
        if out.bias is not None:
            new.out_proj.bias = _param(out.bias, out.bias)
        parent, _, child = group.heads_of.rpartition(".")
        setattr(modules[parent] if parent else model, child, new)
        return
    timm_kind = is_timm_attention(attn)
    if not isinstance(attn, ShiftedWindowAttention) and not timm_kind:
        raise HalpError(f"{group.heads_of} ({type(attn).__name__}) is not an attention whose "
                        "heads halp-trt can remove")
    qkv, proj = attn.qkv, attn.proj
    qkv.weight = _param(qkv.weight, qkv.weight[rows])
    if qkv.bias is not None:
        qkv.bias = _param(qkv.bias, qkv.bias[rows])
    qkv.out_features = len(rows)
    proj.weight = _param(proj.weight, proj.weight[:, cols])
    proj.in_features = len(cols)
    if timm_kind:  # computes from these three
        attn.num_heads, attn.head_dim, attn.attn_dim = len(keep), d, len(keep) * d
        return
    if isinstance(attn, ShiftedWindowAttentionV2):
        attn.logit_scale = _param(attn.logit_scale, attn.logit_scale[keep])
        last = attn.cpb_mlp[-1]
        last.weight = _param(last.weight, last.weight[keep])
        if last.bias is not None:
            last.bias = _param(last.bias, last.bias[keep])
        last.out_features = len(keep)
        attn.__class__ = HeadPrunedWindowAttentionV2
    else:
        table = attn.relative_position_bias_table
        attn.relative_position_bias_table = _param(table, table[:, keep])
        attn.__class__ = HeadPrunedWindowAttention
    attn.num_heads, attn.head_dim = len(keep), d


def _head_tensors(mod: nn.Module, side: str) -> list[tuple[torch.Tensor, int]]:
    """(parameter, channel dim) pairs of a head group member."""
    if side == "out" and isinstance(getattr(mod, "in_proj_weight", None), torch.Tensor):
        return [(mod.in_proj_weight, 0)] + ([(mod.in_proj_bias, 0)]
                                            if mod.in_proj_bias is not None else [])
    if side == "out":
        return [(mod.weight, 0)] + ([(mod.bias, 0)] if mod.bias is not None else [])
    return [(mod.weight, 1)]


def head_importance(kind: str, model: nn.Module, group: ChannelGroup,
                    modules: Mapping[str, nn.Module] | None = None) -> torch.Tensor:
    """Per-head importance over all of a head's parameters (q, k, v rows and output columns).

    ``taylor``: |Σ w·∂L/∂w| over the head (the first-order loss change of removing it);
    ``magnitude``: the head's L2 norm divided by the mean over heads (comparable across groups,
    as for channels)."""
    modules = modules if modules is not None else dict(model.named_modules())
    score = torch.zeros(group.size, dtype=torch.float64)
    for m in group.members:
        root = torch.as_tensor(m.root_idxs, dtype=torch.long)
        for p, dim in _head_tensors(modules[m.module_name], m.side):
            idx = torch.as_tensor(m.idxs, dtype=torch.long, device=p.device)
            w = p.detach().index_select(dim, idx).movedim(dim, 0).reshape(len(m.idxs), -1)
            if kind == "taylor":
                if p.grad is None:
                    continue
                g = p.grad.index_select(dim, idx).movedim(dim, 0).reshape(len(m.idxs), -1)
                contrib = (w.double() * g.double()).sum(dim=1)
            else:
                contrib = (w.double() ** 2).sum(dim=1)
            score.index_add_(0, root, contrib.cpu())
    if kind == "taylor":
        return score.abs()
    return over_group_mean(score.sqrt())


class HeadAwareImportance:
    """The configured importance (``halp_trt.pruning.importance``), with head groups scored
    over whole heads (``head_importance``) by the built-in rules: those look only at a group's
    conv/linear output rows, and a ``nn.MultiheadAttention``'s q/k/v rows are a bare parameter
    of the attention module. A user's function scores every group, heads included."""

    def __init__(self, spec):
        self.base = make_importance(spec)
        # heads have no BatchNorm of their own: the norm-based rules score them by weight norm
        self.kind = ("taylor" if isinstance(self.base, TaylorImportance) else "magnitude"
                     if isinstance(self.base, (MagnitudeImportance, BNScaleImportance)) else None)
        self.needs_grad = bool(self.base.needs_grad)
        self.__name__ = self.base.name
        self._modules: tuple[int, dict] | None = None

    def __call__(self, model: nn.Module, group: ChannelGroup) -> torch.Tensor:
        if self._modules is None or self._modules[0] != id(model):
            self._modules = (id(model), dict(model.named_modules()))
        modules = self._modules[1]
        if self.kind is not None and group.heads_of is not None:
            return head_importance(self.kind, model, group, modules)
        return self.base(model, group, modules)
