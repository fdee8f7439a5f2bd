"""Attention heads as prunable groups: one group per attention module, indexed by head, whose
members are the head's q, k and v rows of the input projection (side "out") and its columns of
the output projection (side "in"). torch-pruning 1.6.1 sees neither torchvision ViT's
``nn.MultiheadAttention`` projections nor Swin's ``qkv``/``proj`` (called through ``F.linear``),
and its own attention pruner narrows ``embed_dim``, not heads. Masking a whole head zeroes its
output exactly, so masked equals pruned; the knapsack's items are whole heads (one is kept).
timm's ``Attention`` (ViT, DeiT and the families built on its blocks) calls ``qkv`` and
``proj`` as modules: torch-pruning sees them, but holds their group at the reshape into heads;
the head group takes that group's place (``halp_trt.graph.groups``).

A pruned attention keeps its embedding width and computes with ``heads × head_dim`` inner
channels, which neither torch module allows: ``nn.MultiheadAttention`` becomes ``HeadAttention``
(same parameters and state-dict keys, unfused math) and Swin's window attention
``HeadPrunedWindowAttention(V2)`` (the head size taken from the module, not the input width);
timm's keeps its class, which computes from its own ``num_heads``, ``head_dim``, ``attn_dim``."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision.models.swin_transformer import ShiftedWindowAttention, ShiftedWindowAttentionV2

from halp_trt.graph.timm_layers import loaded_timm_class
from halp_trt.graph.trace import forward_with_hooks

# op of the timed per-layer graph, by attention kind
KINDS = {"mha": "mha", "window": "wattn", "window_v2": "wattn2", "timm": "mha"}


@dataclass(frozen=True)
class AttentionSite:
    """One self-attention module whose heads can be pruned, and what its latency depends on."""

    name: str
    kind: str  # "mha" | "window" | "window_v2" | "timm"
    embed_dim: int
    num_heads: int
    head_dim: int
    tokens: int  # tokens per attention sequence (a window's tokens for Swin)
    windows: int  # sequences per sample (windows of the padded feature map; 1 for ViT)


# ---- the pruned modules ------------------------------------------------------------------

class HeadAttention(nn.Module):
    """``nn.MultiheadAttention`` (self or cross attention, packed ``in_proj_weight``) with
    ``num_heads · head_dim`` inner channels independent of ``embed_dim``. Same parameter names
    as the module it replaces; the math is written out so it exports as plain ONNX ops."""

    def __init__(self, embed_dim: int, num_heads: int, head_dim: int, bias: bool = True,
                 dropout: float = 0.0, batch_first: bool = False):
        super().__init__()
        inner = num_heads * head_dim
        self.embed_dim, self.num_heads, self.head_dim = embed_dim, num_heads, head_dim
        self.dropout, self.batch_first = float(dropout), bool(batch_first)
        self.in_proj_weight = nn.Parameter(torch.empty(3 * inner, embed_dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * inner)) if bias else None
        self.out_proj = nn.Linear(inner, embed_dim, bias=bias)
        nn.init.xavier_uniform_(self.in_proj_weight)

    def forward(self, query, key, value, key_padding_mask=None, need_weights=True,
                attn_mask=None, average_attn_weights=True, is_causal=False):
        if not self.batch_first:  # (L, N, E) -> (N, L, E)
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        inner = self.num_heads * self.head_dim
        w, b = self.in_proj_weight, self.in_proj_bias
        bq, bk, bv = (None, None, None) if b is None else b.split(inner)
        q = F.linear(query, w[:inner], bq)
        k = F.linear(key, w[inner:2 * inner], bk)
        v = F.linear(value, w[2 * inner:], bv)
        n, lq, lk = query.shape[0], query.shape[1], key.shape[1]
        q, k, v = (t.view(n, -1, self.num_heads, self.head_dim).transpose(1, 2)
                   for t in (q, k, v))
        logits = (q * self.head_dim ** -0.5) @ k.transpose(-2, -1)  # (N, heads, Lq, Lk)
        if is_causal and attn_mask is None:
            attn_mask = torch.ones(lq, lk, dtype=torch.bool, device=q.device).triu(1)
        if attn_mask is not None:  # (Lq, Lk), or (N·heads, Lq, Lk) as in nn.MultiheadAttention
            add = _additive(attn_mask, logits)
            logits = logits + (add.view(n, self.num_heads, lq, lk) if add.dim() == 3 else add)
        if key_padding_mask is not None:
            logits = logits + _additive(key_padding_mask, logits)[:, None, None, :]
        p = F.dropout(logits.softmax(dim=-1), self.dropout, self.training)
        out = (p @ v).transpose(1, 2).reshape(n, lq, inner)
        out = self.out_proj(out)
        if not self.batch_first:
            out = out.transpose(0, 1)
        if not need_weights:
            return out, None
        return out, p.mean(dim=1) if average_attn_weights else p


def _additive(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A boolean mask (True = not attended) or an additive float mask, as an additive one."""
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=like.dtype, device=like.device).masked_fill(
            mask, float("-inf"))
    return mask.to(like.dtype)


def _window_attention(attn: ShiftedWindowAttention, x: torch.Tensor, head_dim: int,
                      cosine: bool) -> torch.Tensor:
    """Swin's shifted-window self-attention of ``x`` (N, H, W, C) with ``attn.num_heads`` heads
    of ``head_dim`` channels (torchvision derives the head size from C instead)."""
    n, h, w, c = x.shape
    wh, ww = attn.window_size
    x = F.pad(x, (0, 0, 0, -w % ww, 0, -h % wh))
    hp, wp = x.shape[1], x.shape[2]
    # no shift along an axis one window covers
    sh = attn.shift_size[0] if wh < hp else 0
    sw = attn.shift_size[1] if ww < wp else 0
    if sh or sw:
        x = torch.roll(x, shifts=(-sh, -sw), dims=(1, 2))
    rows, cols, tokens, heads = hp // wh, wp // ww, wh * ww, attn.num_heads
    win = x.view(n, rows, wh, cols, ww, c).permute(0, 1, 3, 2, 4, 5).reshape(-1, tokens, c)
    bias = attn.qkv.bias
    if cosine and bias is not None:  # Swin-V2 has no key bias
        inner = bias.numel() // 3
        bias = torch.cat([bias[:inner], torch.zeros_like(bias[inner:2 * inner]),
                          bias[2 * inner:]])
    qkv = F.linear(win, attn.qkv.weight, bias).view(-1, tokens, 3, heads, head_dim)
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (windows·N, heads, T, d)
    if cosine:
        scale = torch.clamp(attn.logit_scale, max=math.log(100.0)).exp()
        logits = F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-2, -1) * scale
    else:
        logits = (q * head_dim ** -0.5) @ k.transpose(-2, -1)
    logits = logits + attn.get_relative_position_bias()
    if sh or sw:
        # tokens that came from different regions of the unshifted map do not attend to each
        # other: region label 0/1/2 per axis (before the last window, in it, in the shift)
        def labels(size, win_size, shift):
            i = torch.arange(size, device=x.device)
            return (i >= size - win_size).long() + (i >= size - shift).long()

        region = labels(hp, wh, sh)[:, None] * 3 + labels(wp, ww, sw)[None, :]
        region = region.view(rows, wh, cols, ww).permute(0, 2, 1, 3).reshape(-1, tokens)
        mask = (region[:, None, :] != region[:, :, None]).to(logits.dtype) * -100.0
        logits = (logits.view(n, rows * cols, heads, tokens, tokens) + mask[None, :, None]
                  ).view(-1, heads, tokens, tokens)
    p = F.dropout(logits.softmax(dim=-1), attn.attention_dropout, attn.training)
    out = (p @ v).transpose(1, 2).reshape(-1, tokens, heads * head_dim)
    out = F.dropout(F.linear(out, attn.proj.weight, attn.proj.bias), attn.dropout,
                    attn.training)
    out = out.view(n, rows, cols, wh, ww, c).permute(0, 1, 3, 2, 4, 5).reshape(n, hp, wp, c)
    if sh or sw:
        out = torch.roll(out, shifts=(sh, sw), dims=(1, 2))
    return out[:, :h, :w, :].contiguous()


class HeadPrunedWindowAttention(ShiftedWindowAttention):
    """A Swin window attention after head pruning: same parameters, ``head_dim`` kept."""

    head_dim: int

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _window_attention(self, x, self.head_dim, cosine=False)


class HeadPrunedWindowAttentionV2(ShiftedWindowAttentionV2):
    """A Swin-V2 window attention after head pruning: same parameters, ``head_dim`` kept."""

    head_dim: int

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _window_attention(self, x, self.head_dim, cosine=True)


# ---- finding attention -------------------------------------------------------------------

def _mha_supported(m: nn.Module) -> bool:
    """Packed projections, no extra key/value rows: the layout head pruning slices."""
    if isinstance(m, HeadAttention):
        return True
    return (isinstance(m, nn.MultiheadAttention) and m._qkv_same_embed_dim
            and m.bias_k is None and not m.add_zero_attn)


def is_timm_attention(m: nn.Module) -> bool:
    """timm's ``Attention`` with the layout head pruning slices: no norm across all heads'
    outputs (``scale_norm``: LayerNorm statistics would change with the heads) and no gate.
    Subclasses are left alone: they may compute differently."""
    cls = loaded_timm_class("layers.attention", "Attention")
    return (cls is not None and type(m) is cls and isinstance(m.norm, nn.Identity)
            and getattr(m, "gate", None) is None
            and m.qkv.out_features == 3 * m.num_heads * m.head_dim)


def _is_attention(m: nn.Module) -> bool:
    return isinstance(m, ShiftedWindowAttention) or _mha_supported(m) or is_timm_attention(m)


def head_dim_of(m: nn.Module) -> int:
    if isinstance(m, (HeadAttention, HeadPrunedWindowAttention, HeadPrunedWindowAttentionV2)):
        return int(m.head_dim)
    if isinstance(m, nn.MultiheadAttention) or is_timm_attention(m):
        return int(m.head_dim)
    return int(m.qkv.in_features // m.num_heads)


def embed_dim_of(m: nn.Module) -> int:
    return int(m.embed_dim) if hasattr(m, "embed_dim") else int(m.qkv.in_features)


def find_attention(model: nn.Module, example_input: torch.Tensor) -> list[AttentionSite]:
    """Every self-attention module whose heads can be pruned, in forward order, with the token
    count it runs at (a module run twice must see one shape). Cross attention (query not the
    key) and unpacked projections are left alone."""
    names = {m: n for n, m in model.named_modules()}
    seen: dict[str, AttentionSite] = {}
    skip: set[str] = set()

    def hook(module, args, kwargs, _output):
        name = names[module]
        if name in seen or name in skip:
            return
        if isinstance(module, ShiftedWindowAttention):
            x = args[0] if args else kwargs["x"]
            _, h, w, _ = x.shape
            wh, ww = module.window_size
            windows = math.ceil(h / wh) * math.ceil(w / ww)
            kind = "window_v2" if isinstance(module, ShiftedWindowAttentionV2) else "window"
            tokens = wh * ww
        elif is_timm_attention(module):
            x = args[0] if args else kwargs["x"]
            if x.dim() != 3:
                skip.add(name)
                return
            kind, tokens, windows = "timm", x.shape[1], 1
        else:
            qkv = list(args[:3]) + [kwargs.get(k) for k in ("query", "key", "value")
                                    if k in kwargs]
            if len(qkv) < 3 or not (qkv[0] is qkv[1] is qkv[2]):
                skip.add(name)  # cross attention: key/value token counts differ
                return
            tokens = qkv[0].shape[1 if module.batch_first else 0]
            kind, windows = "mha", 1
        seen[name] = AttentionSite(name, kind, embed_dim_of(module), int(module.num_heads),
                                   head_dim_of(module), int(tokens), int(windows))

    handles = [m.register_forward_hook(hook, with_kwargs=True) for m in model.modules()
               if _is_attention(m)]
    forward_with_hooks(model, example_input, handles)
    return list(seen.values())


def projection_names(site: AttentionSite) -> tuple[str, str]:
    """(module holding the packed q/k/v rows, output projection) of an attention."""
    # timm's and Swin's: nn.Linear children named qkv and proj
    if site.kind == "mha":
        return site.name, f"{site.name}.out_proj"
    return f"{site.name}.qkv", f"{site.name}.proj"


def qkv_rows(num_heads: int, head_dim: int, heads) -> list[int]:
    """Rows of a packed q/k/v projection that belong to ``heads`` (in the q, k, v sections)."""
    inner = num_heads * head_dim
    return [s * inner + h * head_dim + j for s in range(3) for h in heads
            for j in range(head_dim)]


def head_columns(head_dim: int, heads) -> list[int]:
    """Columns of the output projection (its input channels) that belong to ``heads``."""
    return [h * head_dim + j for h in heads for j in range(head_dim)]
