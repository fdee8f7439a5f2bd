"""Coupled channel groups: channels that must be pruned together.

A residual add ties the output channels of every conv feeding it; a depthwise conv ties its input
and output; a concat maps one producer's channels to a slice of each consumer's input. We do not
walk graphs ourselves: torch-pruning's dependency graph (DepGraph) finds these couplings and later
removes channels physically. This module turns its groups into plain records that the rest of
halp-trt (layers, importance, knapsack, masks) can use and serialize.
"""
from __future__ import annotations

import contextlib
import io
import warnings
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import torch
import torch.nn as nn
from torch.overrides import TorchFunctionMode

from halp_trt.graph.conv_kinds import is_depthwise
from halp_trt.graph.custom import surgery_for, torch_pruning_pruners
from halp_trt.errors import HalpError

# Parameterised modules whose channels a group may touch; anything else (adds, concats) is a
# graph op without weights and needs no mask.
_MASKABLE = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear, nn.BatchNorm1d, nn.BatchNorm2d,
             nn.BatchNorm3d, nn.GroupNorm, nn.LayerNorm, nn.PReLU)


@dataclass
class GroupMember:
    """One module's share of a coupled group."""

    module_name: str
    side: str  # "out": the module's output channels; "in": its input channels
    idxs: list[int]  # channel indices in that module
    root_idxs: list[int]  # the group's channel index for each entry of idxs


@dataclass
class ChannelGroup:
    """A set of channels pruned together, indexed 0..size-1 in the root layer's order."""

    id: int
    root: str  # module whose output channels define the group's indexing
    size: int
    members: list[GroupMember] = field(default_factory=list)
    held: str | None = None  # why the dependency graph cannot be trusted to prune it, if so
    # an attention module whose heads these are (indexed by head; see halp_trt.graph.attention)
    heads_of: str | None = None
    # group channel -> the root layer's channels it stands for, where one group channel is
    # several of the root's (a ghost module's tied pair; ``_fold_ghost_halves``); None: one each
    root_channels: dict[int, list[int]] | None = None

    def root_layer_channels(self, idxs: Iterable[int]) -> list[int]:
        """The root layer's output channels that group channels ``idxs`` stand for."""
        if self.root_channels is None:
            return sorted(int(i) for i in idxs)
        return sorted(c for i in idxs for c in self.root_channels[int(i)])

    def modules(self, side: str | None = None) -> list[str]:
        return [m.module_name for m in self.members if side is None or m.side == side]


@contextlib.contextmanager
def quiet_torch_pruning():
    """torch-pruning prints and warns while tracing and pruning; users should see our messages,
    not its chatter."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        yield


def run_example(model: nn.Module, example_input: torch.Tensor,
                fix: str = "--input-shape (prune-and-deploy: --input-size)"):
    """The model's eval-mode output on ``example_input``; a model that cannot run on it is one
    clear error (``fix`` names the option that sets the input)."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return model(example_input)
    except Exception as exc:  # the user's model and input shape disagree
        raise HalpError(f"the model cannot run on an input of shape "
                        f"{tuple(example_input.shape)} ({type(exc).__name__}: "
                        f"{str(exc).splitlines()[0][:200]}); give the N,C,H,W it expects "
                        f"({fix})") from None
    finally:
        model.train(was_training)


def output_layers(model: nn.Module, example_input: torch.Tensor) -> set[str]:
    """Names of the Conv/Linear modules whose output channels *are* a model output's channels:
    the classifier, and a segmentation head's class conv behind an upsampling, a sum of heads
    (LR-ASPP) or a global pool (SqueezeNet). They hold the task's classes and are never pruned.

    Found by walking the output's autograd graph back through every operation until a Conv or
    Linear module's output is reached (only those mix channels)."""
    names = {m: n for n, m in model.named_modules()}
    produced: dict = {}  # grad_fn of a Conv/Linear output -> module name

    def hook(module, _inputs, output):
        if isinstance(output, torch.Tensor) and output.grad_fn is not None:
            produced[output.grad_fn] = names[module]

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(m, (nn.Conv2d, nn.Linear))]
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            out = model(example_input.detach().requires_grad_(True))
    except Exception:  # noqa: BLE001 - run_example gives the user the clear error
        out = run_example(model, example_input)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    outs = out.values() if isinstance(out, dict) else \
        out if isinstance(out, (tuple, list)) else [out]
    found, seen = set(), set()
    stack = [o.grad_fn for o in outs if isinstance(o, torch.Tensor) and o.grad_fn is not None]
    while stack:
        fn = stack.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        if fn in produced:
            found.add(produced[fn])
            continue
        stack.extend(f for f, _ in getattr(fn, "next_functions", ()))
    return found


class _ChannelShuffleCut(TorchFunctionMode):
    """Cuts the traced graph at every channel shuffle while torch-pruning traces the model.

    A channel shuffle (ShuffleNet's ``view(n, g, c/g, h, w)`` → ``transpose(1, 2)`` → ``view(n,
    c, h, w)``, or ``torch.channel_shuffle`` / ``nn.ChannelShuffle``) permutes channels, and
    after pruning it interleaves whatever is left: only a pruning that keeps the same channels of
    every shuffle group, split evenly again by the next ``chunk``, survives it. torch-pruning
    1.6.1 cannot express that: it maps the shuffle's views as the identity (with PyTorch 2's
    saved shapes read, see ``_SavedSizes``; without them it divided by zero), so its groups
    through a shuffle would prune odd counts and the wrong channels. So the shuffled tensor is
    given to the rest of the model as a fresh leaf (its consumers have no producer: they keep
    their input width) and the tensor being shuffled becomes an extra traced output (groups
    that reach it are held by ``find_channel_groups``). The model computes the same values;
    only the traced graph ends there.
    """

    _VIEWS = {"view", "reshape", "unflatten"}
    _BACK = {"view", "reshape", "flatten"}
    _SWAP = {"transpose", "swapaxes", "swapdims"}
    _SAME = {"contiguous", "clone"}
    _NATIVE = {"channel_shuffle", "native_channel_shuffle"}

    def __init__(self):
        super().__init__()
        self.cuts: list[torch.Tensor] = []  # the tensors being shuffled
        self.leaves: list[torch.Tensor] = []  # their shuffled values, as the model goes on
        # id(tensor) -> (tensor, stage, source): the tensor is kept so its id is not reused
        self._pending: dict[int, tuple[torch.Tensor, str, torch.Tensor]] = {}

    def _cut(self, source: torch.Tensor, shuffled: torch.Tensor) -> torch.Tensor:
        self.cuts.append(source)
        leaf = shuffled.detach().requires_grad_(shuffled.requires_grad)
        self.leaves.append(leaf)
        return leaf

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        name = getattr(func, "__name__", "")
        x = args[0] if args else None
        if not isinstance(x, torch.Tensor) or not isinstance(out, torch.Tensor):
            return out
        if name in self._NATIVE:
            groups = args[1] if len(args) > 1 else kwargs.get("groups", 1)
            return self._cut(x, out) if int(groups) > 1 else out
        seen = self._pending.get(id(x))
        if seen is not None and seen[0] is not x:
            seen = None
        if seen is None:
            # 1. (n, c, h, w) viewed as (n, g, c/g, h, w) with g, c/g > 1
            if (name in self._VIEWS and x.dim() == 4 and out.dim() == 5
                    and out.shape[0] == x.shape[0] and out.shape[3:] == x.shape[2:]
                    and out.shape[1] > 1 and out.shape[2] > 1):
                self._pending[id(out)] = (out, "split", x)
            return out
        _, stage, source = seen
        if stage == "split" and name in self._SWAP | {"permute"} and _swaps_axes_1_2(
                name, args[1:], kwargs):
            self._pending[id(out)] = (out, "swapped", source)  # 2. the channel axes swapped
        elif stage == "swapped" and name in self._SAME:
            self._pending[id(out)] = (out, "swapped", source)
        elif stage == "swapped" and name in self._BACK and out.shape == source.shape:
            return self._cut(source, out)  # 3. back to (n, c, h, w): a channel shuffle
        return out


def _swaps_axes_1_2(name: str, rest: tuple, kwargs: dict) -> bool:
    """Whether a transpose/permute of a 5D tensor swaps exactly axes 1 and 2."""
    if name == "permute":
        dims = kwargs.get("dims", rest[0] if len(rest) == 1 else rest)
        return [int(d) % 5 for d in dims] == [0, 2, 1, 3, 4]
    dims = list(rest) + [kwargs[k] for k in ("dim0", "dim1", "axis0", "axis1") if k in kwargs]
    return len(dims) == 2 and sorted(int(d) % 5 for d in dims) == [1, 2]


class _ConcatSizes(TorchFunctionMode):
    """Records each traced concat's input sizes along its dimension, keyed by its autograd node.

    torch-pruning 1.6.1 infers a concat's input widths by walking the graph back to a layer of
    known width, with a depth limit: behind a long residual chain (Swin-S's 18-block stage before
    a patch merge) it gives up, and its index mapping then sums ``None`` (TypeError). The true
    sizes are known while tracing; ``_torch2_dependency_graph`` hands them to torch-pruning."""

    _CAT = {"cat", "concat", "concatenate"}

    def __init__(self):
        super().__init__()
        self.sizes: dict = {}  # grad_fn -> [size along the concat dim, per input]

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if getattr(func, "__name__", "") in self._CAT and isinstance(out, torch.Tensor) \
                and out.grad_fn is not None:
            tensors = args[0] if args else kwargs.get("tensors", kwargs.get("inputs", ()))
            dim = args[1] if len(args) > 1 else kwargs.get("dim", kwargs.get("axis", 0))
            # torch-pruning's node inputs are the inputs that carry gradients, in order: the
            # sizes line up with them only when every input does
            if all(isinstance(t, torch.Tensor) and t.requires_grad for t in tensors):
                self.sizes[out.grad_fn] = [int(t.shape[int(dim)]) for t in tensors]
        return out


class _SavedSizes:
    """A reshape's or split's autograd node as torch-pruning 1.6.1 reads it.

    torch-pruning looks for the input's shape in ``grad_fn._saved_self_sizes``; PyTorch 2 saves
    it as ``_saved_self_sym_sizes``. Without it, ``update_reshape_index_mapping`` skips its shape
    checks (a channel flatten is (n, c, h, w) → (n, c·h·w)) and maps *every* reshape between two
    differently inferred channel counts as a flatten: ShuffleNet's 4D↔5D shuffle views divide
    by zero, and Swin's/MaxViT's attention reshapes (heads → channels, stride 32) expand the
    index lists 32-fold on every lap of a residual cycle, without end (the out-of-memory kill).
    And ``init_shape_information`` guesses a ``chunk``'s split sizes instead of reading
    ``_saved_split_size``. This view adds the old name; everything else is the node itself."""

    def __init__(self, grad_fn):
        self.grad_fn = grad_fn

    def __getattr__(self, name):
        if name == "_saved_self_sizes":
            return tuple(int(d) for d in self.grad_fn._saved_self_sym_sizes)
        return getattr(self.grad_fn, name)


def _torch2_dependency_graph(concat_sizes: dict | None = None):
    """torch-pruning's DependencyGraph, reading PyTorch 2's saved shapes (see ``_SavedSizes``)
    and the concat sizes recorded while tracing (``_ConcatSizes.sizes``, filled during the
    trace)."""
    import torch_pruning as tp
    from torch_pruning import ops

    recorded = {} if concat_sizes is None else concat_sizes

    class DependencyGraph(tp.DependencyGraph):
        def _trace(self, *args, **kwargs):
            module2node = super()._trace(*args, **kwargs)
            for node in module2node.values():
                fn = node.grad_fn
                sizes = recorded.get(fn)
                if node.type == ops.OPTYPE.CONCAT and sizes and len(sizes) == len(node.inputs):
                    node.module.concat_sizes = list(sizes)
                if not hasattr(fn, "_saved_self_sym_sizes") or hasattr(fn, "_saved_self_sizes"):
                    continue
                split = node.type == ops.OPTYPE.SPLIT and hasattr(fn, "_saved_dim") and (
                    hasattr(fn, "_saved_split_size") or hasattr(fn, "_saved_split_sizes"))
                if node.type == ops.OPTYPE.RESHAPE or split:
                    node.grad_fn = _SavedSizes(fn)
            return module2node

    return DependencyGraph()


def _unmapped_channel_reshapes(graph) -> set:
    """Reshape nodes across which torch-pruning infers different channel counts but maps
    channels one to one (it maps only channel flattens, (n, c, h, w) → (n, c·h·w)): attention
    splitting a qkv projection into heads, for instance. A group through one would be cut at the
    wrong channels (MaxViT's ``to_qkv`` → ``merge``)."""
    from torch_pruning import ops
    from torch_pruning.dependency import shape_infer

    def first_known(counts):
        return next((c for c in counts if c is not None), None)

    found = set()
    for node in graph.module2node.values():
        if node.type != ops.OPTYPE.RESHAPE or any(
                m is not None for dep in node.dependencies for m in dep.index_mapping):
            continue
        c_in = first_known(shape_infer.infer_out_channels_recursively(graph, n, [0])
                           for n in node.inputs)
        c_out = first_known(shape_infer.infer_in_channels_recursively(graph, n, [0])
                            for n in node.outputs)
        if c_in is not None and c_out is not None and c_in != c_out:
            found.add(node)
    return found


def build_dependency_graph(model: nn.Module, example_input: torch.Tensor):
    """torch-pruning's dependency graph of ``model``. Channel shuffles end the traced graph
    (see ``_ChannelShuffleCut``); the nodes where it ends are ``graph.halp_cut_nodes``."""
    cut_grad_fns, leaves = set(), []
    concat_sizes = _ConcatSizes()
    dependency_graph = _torch2_dependency_graph(concat_sizes.sizes)

    def forward(module, example):
        mode = _ChannelShuffleCut()
        with mode, concat_sizes:
            out = module(example)
        # a fresh op on each cut tensor: a node of its own, even if the tensor is used elsewhere
        extra = [c.view_as(c) for c in mode.cuts if c.grad_fn is not None]
        cut_grad_fns.update(e.grad_fn for e in extra)
        leaves.extend(mode.leaves)
        return [out, *extra] if extra else out

    was_training = model.training
    try:
        model.eval()
        with quiet_torch_pruning():
            graph = dependency_graph.build_dependency(
                model, example_inputs=example_input, forward_fn=forward, verbose=False,
                customized_pruners=torch_pruning_pruners() or None)
    except Exception as exc:  # tracing failures come from the user's architecture
        raise HalpError(f"torch-pruning could not trace this model's channel couplings "
                        f"({type(exc).__name__}: {str(exc).splitlines()[0][:200]}); its "
                        "dependency graph cannot handle this architecture — halp-trt can only "
                        "prune models it can trace, so use another model") from exc
    finally:
        model.train(was_training)
    with quiet_torch_pruning():  # its channel inference warns when it gives up
        graph.halp_channel_reshapes = _unmapped_channel_reshapes(graph)
    leaf_ids = {id(t) for t in leaves}
    graph.halp_cut_nodes = {node for node in graph.module2node.values()
                            if node.grad_fn in cut_grad_fns}
    # nodes that take a shuffled tensor: its channels cannot change
    graph.halp_leaf_consumers = {
        node for node in graph.module2node.values()
        if any(id(getattr(f, "variable", None)) in leaf_ids
               for f, _ in getattr(node.grad_fn, "next_functions", ()) if f is not None)}
    return graph


def find_channel_groups(model: nn.Module, example_input: torch.Tensor,
                        exclude: Iterable[str] = (), graph=None) -> tuple[list[ChannelGroup], object]:
    """Discover prunable coupled groups.

    ``exclude`` names modules whose output channels must not change (the classifier is always
    excluded). Returns the groups and the torch-pruning graph (needed later for removal).
    """
    import torch_pruning as tp
    from torch_pruning.pruner import function as tp_fn

    name_of = {m: n for n, m in model.named_modules()}
    modules = dict(model.named_modules())
    excluded = set(exclude) | output_layers(model, example_input)
    unknown = [n for n in exclude if n not in modules]
    if unknown:
        raise HalpError(f"cannot exclude {unknown}: no such module in the model "
                        f"(module names look like {list(modules)[1:4]}).")
    if graph is None:
        graph = build_dependency_graph(model, example_input)
    ignored = [modules[n] for n in excluded]

    groups: list[ChannelGroup] = []
    with quiet_torch_pruning():
        tp_groups, unformed = _all_groups_bounded(graph, model, ignored)
    for root_name, size, why in unformed:
        groups.append(ChannelGroup(id=len(groups), root=root_name, size=size, held=why))
    reshapes = getattr(graph, "halp_channel_reshapes", set())
    for tp_group in tp_groups:
        if _held_by_graph_boundary(graph, tp_group):
            continue
        root_dep = tp_group[0].dep
        root_name = name_of.get(root_dep.target.module)
        size = len(tp_group[0].idxs)
        group = ChannelGroup(id=len(groups), root=root_name, size=size)
        if any(item.dep.target in reshapes for item in tp_group.items):
            group.held = ("a reshape changes its channel count (e.g. into attention heads) and "
                          "the dependency graph does not map its channels across it")
        for item in tp_group.items:
            dep, idxs = item.dep, item.idxs
            module = dep.target.module
            if module not in name_of or not (isinstance(module, _MASKABLE) or
                                             surgery_for(module) is not None):
                continue
            depthwise = dep.handler is tp_fn.prune_depthwise_conv_out_channels
            if depthwise or graph.is_out_channel_pruning_fn(dep.handler):
                side = "out"
            elif graph.is_in_channel_pruning_fn(dep.handler):
                side = "in"
            else:
                continue
            group.members.append(GroupMember(name_of[module], side, [int(i) for i in idxs],
                                             [int(i) for i in item.root_idxs]))
        groups.append(_fold_ghost_halves(group, modules))
    del tp
    groups = _heads_in_place_of_held(groups, head_groups(model, example_input, excluded, 0))
    for i, g in enumerate(groups):
        g.id = i
    return groups, graph


def _fold_ghost_halves(group: ChannelGroup, modules) -> ChannelGroup:
    """A ghost module (GhostNet: ``cat([x, depthwise(x)])``) ties concat channel k to channel
    w + k, since the depthwise copy of channel k is computed from it; torch-pruning maps the
    producing conv's channel k through the depthwise conv only, to w + k. Here each such pair
    becomes one channel of the group (indexed in root order), so that pruning it removes the
    conv's channel, its copy and both concat positions; masked ≡ pruned is checked by trial
    surgery as for every group.

    A pair is found where a conv member and a depthwise conv member cover the same roots R
    with the same channels, w = their width, and no other producer narrower than the group
    covers R − w (the concat position torch-pruning lost)."""
    def conv(m):
        return isinstance(modules.get(m.module_name), nn.Conv2d) and m.side == "out"

    def dw(m):
        c = modules[m.module_name]
        return is_depthwise(c.groups, c.in_channels, c.out_channels)

    partial = [m for m in group.members
               if m.side == "out" and len(set(m.root_idxs)) < group.size]
    partner: dict[int, int] = {}
    for d in (m for m in group.members if conv(m) and dw(m)):
        for p in (m for m in group.members if conv(m) and not dw(m)):
            if p.idxs != d.idxs or p.root_idxs != d.root_idxs:
                continue
            w = len(set(p.idxs))
            lost = {r - w for r in d.root_idxs}
            # the lost position may be mapped for a layer after the conv (its BatchNorm):
            # the same channels there; anything else there is another producer
            if min(lost) < 0 or any(lost & set(c.root_idxs) and not (
                    set(c.root_idxs) == lost and c.idxs == p.idxs) for c in partial):
                continue
            partner.update({r: r - w for r in d.root_idxs})
    if not partner:
        return group
    rep = {r: partner.get(r, r) for r in range(group.size)}
    position = {r: i for i, r in enumerate(sorted(set(rep.values())))}
    new = {r: position[rep[r]] for r in range(group.size)}
    for m in group.members:
        m.root_idxs = [new[r] for r in m.root_idxs]
    group.size = len(position)
    group.root_channels = {i: [] for i in range(group.size)}
    for r in sorted(new):
        group.root_channels[new[r]].append(r)
    return group


def _heads_in_place_of_held(groups: list[ChannelGroup],
                            heads: list[ChannelGroup]) -> list[ChannelGroup]:
    """Head groups added to the graph's groups. Where torch-pruning sees an attention's
    projections (timm's, called as modules), its group of them is held at the reshape into
    heads and the head group takes its place, provided the group stays inside the attention
    (its per-head q/k norms are head-sized and untouched by head removal); where it couples
    them to anything else, the graph's group stands and the heads keep their count."""
    claimed = {(m.module_name, m.side): h for h in heads for m in h.members}
    kept, vetoed = [], set()
    for g in groups:
        owners = {id(claimed[k]): claimed[k] for m in g.members
                  if (k := (m.module_name, m.side)) in claimed}
        if not owners:
            kept.append(g)
            continue
        inside = len(owners) == 1 and all(
            m.module_name.startswith(next(iter(owners.values())).heads_of + ".")
            for m in g.members)
        if not (g.held and inside):
            vetoed |= set(owners)
            kept.append(g)
    return kept + [h for h in heads if id(h) not in vetoed]


class _RunawayIndices(Exception):
    """A flatten mapping produced more channel indices than any layer of the model has."""


def _all_groups_bounded(graph, model: nn.Module, ignored: list) -> tuple[list, list]:
    """torch-pruning's groups rooted at every Conv2d and Linear (its ``get_all_groups``, over
    its public ``get_pruning_group``), and [(root name, width, why)] of the roots whose group
    could not be formed, which keep their widths while the search goes on. torch-pruning maps a
    reshape it reads as a flatten by multiplying each index by the stride; around a residual
    cycle (LeViT's attention reshapes on one token) that repeats on every lap, without end —
    15 GB in a minute, then the machine's OOM killer. A legitimate index list never outgrows
    the widest layer, so a longer one stops that group. Its other mappings can fail outright
    (GCViT: a grouped-query mapping divides by a head size of 0)."""
    from torch_pruning.dependency import index_mapping

    widths = [w for m in model.modules() for w in (getattr(m, "in_features", 0),
                                                   getattr(m, "out_features", 0),
                                                   getattr(m, "in_channels", 0),
                                                   getattr(m, "out_channels", 0))
              if isinstance(w, int)]
    limit = 4 * max(widths, default=1)
    flatten = index_mapping._FlattenIndexMapping
    original_call = flatten.__call__

    def bounded(self, idxs):
        out = original_call(self, idxs)
        if len(out) > limit:
            raise _RunawayIndices()
        return out

    ignored = list(ignored) + list(getattr(graph, "IGNORED_LAYERS_IN_TRACING", []))
    name_of = {m: n for n, m in model.named_modules()}
    groups, unformed, visited = [], [], set()
    flatten.__call__ = bounded
    try:
        for module in list(graph.module2node):
            if module in ignored or module in visited or \
                    not isinstance(module, (nn.Conv2d, nn.Linear)):
                continue
            pruner = graph.get_pruner_of_module(module)
            width = pruner.get_out_channels(module) if pruner is not None else None
            if width is None:
                continue
            try:
                group = graph.get_pruning_group(module, pruner.prune_out_channels,
                                                list(range(width)))
            except Exception as exc:  # noqa: BLE001 - the group is not formed: it is held
                visited.add(module)
                why = ("the dependency graph expands its channel indices without end here (a "
                       "reshape it reads as a flatten, inside a residual cycle)"
                       if isinstance(exc, _RunawayIndices) else
                       f"the dependency graph fails on it ({type(exc).__name__}: "
                       f"{str(exc).splitlines()[0][:120] if str(exc) else 'no message'})")
                unformed.append((name_of.get(module, type(module).__name__), int(width), why))
                continue
            members = [(dep.target.module, dep.handler) for dep, _ in group]
            visited.update(m for m, fn in members if graph.is_out_channel_pruning_fn(fn))
            if not any(m in ignored for m, fn in members
                       if graph.is_out_channel_pruning_fn(fn)):
                groups.append(group)
    finally:
        flatten.__call__ = original_call
    return groups, unformed


def head_groups(model: nn.Module, example_input: torch.Tensor, excluded: set[str],
                first_id: int) -> list[ChannelGroup]:
    """One group per self-attention module (``halp_trt.graph.attention``), indexed by head: the
    head's q, k, v rows of the packed input projection and its columns of the output
    projection. torch-pruning's graph has no node for either (they are not called as
    modules), so these groups overlap none of its groups; it does not remove them either
    (``halp_trt.pruning.surgery``)."""
    from halp_trt.graph.attention import find_attention, head_columns, projection_names, qkv_rows

    out = []
    for site in find_attention(model, example_input):
        qkv, proj = projection_names(site)
        if excluded & {site.name, qkv, proj}:
            continue
        rows, row_roots, cols, col_roots = [], [], [], []
        for h in range(site.num_heads):
            r = qkv_rows(site.num_heads, site.head_dim, [h])
            c = head_columns(site.head_dim, [h])
            rows += r
            row_roots += [h] * len(r)
            cols += c
            col_roots += [h] * len(c)
        out.append(ChannelGroup(id=first_id + len(out), root=site.name, size=site.num_heads,
                                members=[GroupMember(qkv, "out", rows, row_roots),
                                         GroupMember(proj, "in", cols, col_roots)],
                                heads_of=site.name))
    return out


def _held_by_graph_boundary(graph, tp_group) -> bool:
    """Whether a torch-pruning group must keep its width because its channels cross a channel
    shuffle, where the traced graph is cut (see ``_ChannelShuffleCut``): they reach the tensor
    being shuffled, or they are the shuffled tensor's own channels, which a depthwise conv, a
    norm or an element-wise op taking it would have to narrow."""
    cut_nodes = getattr(graph, "halp_cut_nodes", set())
    consumers = getattr(graph, "halp_leaf_consumers", set())
    for item in tp_group.items:
        node = item.dep.target
        if node in cut_nodes or (node in consumers
                                 and graph.is_in_channel_pruning_fn(item.dep.handler)):
            return True
    return False


def check_unique_coverage(groups: Sequence[ChannelGroup]) -> None:
    """Each (module, side, channel) must belong to one group; overlapping groups mean the
    dependency graph misread the architecture, and pruning would corrupt the model."""
    seen: dict[tuple[str, str, int], int] = {}
    for g in groups:
        for m in g.members:
            for i in m.idxs:
                key = (m.module_name, m.side, i)
                if key in seen and seen[key] != g.id:
                    raise HalpError(
                        f"channel {i} of {m.module_name} ({m.side}) is claimed by two channel "
                        f"groups ({seen[key]} and {g.id}): torch-pruning's dependency graph cannot "
                        "handle this architecture safely. Exclude the layer or use another model.")
                seen[key] = g.id
