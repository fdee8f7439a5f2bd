"""Prunable layers of a model and the signature under which each is timed.

A layer's latency depends on its op, kernel/stride/padding/dilation, groups, input feature-map
size and the batch; the channel counts are the table's axes. Layers with the same signature share
one set of measurements. Which coupled channel group (``halp_trt.graph.groups``) sets a layer's input
width and which sets its output width ties the table to the pruning decisions.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Sequence

from halp_trt.graph.conv_kinds import is_depthwise

if TYPE_CHECKING:  # torch stays unimported for table-only work (loading, inspect)
    import torch

    from halp_trt.graph.groups import ChannelGroup


# Self-attention blocks timed as one layer (projections + attention): c_in is the embedding
# width, c_out the head count. "mha": ViT-style global attention; "wattn": Swin's window
# attention with its relative position bias; "wattn2": Swin-V2's cosine window attention.
ATTENTION_OPS = ("mha", "wattn", "wattn2")


@dataclass(frozen=True)
class Signature:
    """What a latency measurement depends on, apart from channel counts, batch and precision."""

    op: str  # "conv" | "dwconv" | "linear" | an attention op (ATTENTION_OPS)
    kernel: tuple[int, int] = (1, 1)
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    dilation: tuple[int, int] = (1, 1)
    groups: int = 1  # for grouped (not depthwise) convs; depthwise scales groups with channels
    input_hw: tuple[int, int] = (1, 1)
    in_scale: int = 1  # Linear only: input features per input channel (a flatten before it)
    tokens: int = 1  # Linear: rows per sample (N×H×W×C or N×L×C inputs); attention: tokens
    # per attention sequence (per window for Swin)
    head_dim: int = 0  # attention only: channels per head (the table's c_out axis is heads)
    windows: int = 1  # attention only: sequences per sample (Swin's windows)

    @property
    def is_attention(self) -> bool:
        return self.op in ATTENTION_OPS

    @property
    def key(self) -> str:
        k, s, p, d, hw = self.kernel, self.stride, self.padding, self.dilation, self.input_hw
        if self.op == "linear":
            return f"linear_x{self.in_scale}" + (f"_t{self.tokens}" if self.tokens > 1 else "")
        if self.is_attention:
            return (f"{self.op}_d{self.head_dim}_t{self.tokens}"
                    + (f"_w{self.windows}" if self.windows > 1 else ""))
        return (f"{self.op}_k{k[0]}x{k[1]}_s{s[0]}x{s[1]}_p{p[0]}x{p[1]}_d{d[0]}x{d[1]}"
                f"_g{self.groups}_hw{hw[0]}x{hw[1]}")

    def to_json(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_json(cls, d: dict) -> "Signature":
        return cls(op=d["op"], kernel=tuple(d["kernel"]), stride=tuple(d["stride"]),
                   padding=tuple(d["padding"]), dilation=tuple(d["dilation"]),
                   groups=int(d["groups"]), input_hw=tuple(d["input_hw"]),
                   in_scale=int(d.get("in_scale", 1)), tokens=int(d.get("tokens", 1)),
                   head_dim=int(d.get("head_dim", 0)), windows=int(d.get("windows", 1)))


@dataclass
class LayerSpec:
    """One prunable layer of the model, with the groups that set its widths."""

    name: str
    signature: Signature
    in_channels: int  # channels entering the layer (for linear: input features / in_scale)
    out_channels: int  # for attention: heads
    in_group: int | None  # channel group that sets the input width; None = fixed (e.g. image)
    out_group: int | None  # None = output width fixed (classifier, excluded layer)

    @property
    def depthwise(self) -> bool:
        return self.signature.op == "dwconv"

    def to_json(self) -> dict:
        d = asdict(self)
        d["signature"] = self.signature.key
        return d


def _pair(v) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


def conv_padding(conv: "torch.nn.Conv2d") -> tuple[int, int]:
    """The conv's padding per side as numbers; ``padding="same"`` (ConvMixer) is half the
    dilated kernel's reach, rounded up where the kernel is even (PyTorch then pads one side
    one more: a table entry one output row larger, no different step)."""
    if not isinstance(conv.padding, str):
        return _pair(conv.padding)
    if conv.padding == "valid":
        return (0, 0)
    k, d = _pair(conv.kernel_size), _pair(conv.dilation)
    return tuple((d[i] * (k[i] - 1) + 1) // 2 for i in range(2))


def list_layers(model: "torch.nn.Module", example_input: "torch.Tensor",
                groups: Sequence["ChannelGroup"]) -> list[LayerSpec]:
    """Every Conv2d (plain, grouped, depthwise) and Linear in forward order, with its signature
    and coupled groups, and every self-attention whose heads can be pruned
    (``halp_trt.graph.attention``; its projections are not called as modules) where its
    forward ends. A module called more than once must see one input size."""
    import torch.nn as nn

    from halp_trt.graph.attention import KINDS, find_attention, projection_names
    from halp_trt.graph.trace import forward_with_hooks

    names = {m: n for n, m in model.named_modules()}
    batch = max(1, int(example_input.shape[0]))
    seen_hw: dict[str, tuple[int, int]] = {}
    seen_tokens: dict[str, int] = {}
    order: list[str] = []

    def hook(module, inputs, _output):
        x = inputs[0]
        name = names[module]
        hw = tuple(x.shape[-2:]) if isinstance(module, nn.Conv2d) else (1, 1)
        if name not in seen_hw:
            order.append(name)
            seen_hw[name] = hw
            if isinstance(module, nn.Linear) and x.dim() > 2:
                seen_tokens[name] = x[0].numel() // x.shape[-1]
            elif isinstance(module, nn.Linear) and x.dim() == 2 and x.shape[0] > batch:
                # rows per sample (a detector's box head: one row per proposal)
                seen_tokens[name] = x.shape[0] // batch

    sites = {s.name: s for s in find_attention(model, example_input)}
    # an attention's projections are timed inside its own layer (timm calls them as modules)
    inside = {n for s in sites.values() if s.kind == "timm"
              for n in projection_names(s)}
    handles = [m.register_forward_hook(hook) for m in model.modules()
               if (isinstance(m, (nn.Conv2d, nn.Linear)) and names[m] not in inside)
               or names[m] in sites]
    forward_with_hooks(model, example_input, handles)

    out_group: dict[str, int] = {}
    in_group: dict[str, tuple[int, int]] = {}  # module -> (group id, channels of it in module)
    for g in groups:
        for m in g.members:
            if m.side == "out":
                out_group[m.module_name] = g.id
            else:
                in_group[m.module_name] = (g.id, len(m.idxs))

    modules = dict(model.named_modules())
    heads_group = {g.heads_of: g.id for g in groups if getattr(g, "heads_of", None)}
    for name, gid in heads_group.items():
        # Swin-V2's position-bias MLP ends in one output per head: it narrows with the heads
        cpb = getattr(modules[name], "cpb_mlp", None)
        if isinstance(cpb, nn.Sequential) and isinstance(cpb[-1], nn.Linear):
            out_group[f"{name}.cpb_mlp.{len(cpb) - 1}"] = gid
    specs = []
    for name in order:
        if name in sites:
            site = sites[name]
            sig = Signature(op=KINDS[site.kind], tokens=site.tokens, head_dim=site.head_dim,
                            windows=site.windows)
            specs.append(LayerSpec(name=name, signature=sig, in_channels=site.embed_dim,
                                   out_channels=site.num_heads, in_group=None,
                                   out_group=heads_group.get(name)))
            continue
        mod = modules[name]
        if isinstance(mod, nn.Conv2d):
            depthwise = is_depthwise(mod.groups, mod.in_channels, mod.out_channels)
            sig = Signature(op="dwconv" if depthwise else "conv", kernel=_pair(mod.kernel_size),
                            stride=_pair(mod.stride), padding=conv_padding(mod),
                            dilation=_pair(mod.dilation), groups=1 if depthwise else mod.groups,
                            input_hw=seen_hw[name])
            c_in = mod.in_channels
            og = out_group.get(name)
            ig = og if depthwise else in_group.get(name, (None, 0))[0]
        else:
            gid, n_idx = in_group.get(name, (None, 0))
            g_size = next((g.size for g in groups if g.id == gid), 0)
            # A flatten before the Linear maps each channel to several features.
            scale = max(1, n_idx // g_size) if gid is not None and g_size else 1
            sig = Signature(op="linear", in_scale=scale, tokens=seen_tokens.get(name, 1))
            c_in, ig, og = mod.in_features // scale, gid, out_group.get(name)
        specs.append(LayerSpec(name=name, signature=sig, in_channels=c_in,
                               out_channels=mod.out_channels if isinstance(mod, nn.Conv2d)
                               else mod.out_features,
                               in_group=ig, out_group=og))
    return specs

