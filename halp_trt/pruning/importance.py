"""Channel importance, accumulated over the minibatches between two pruning steps.

Scores are per coupled channel group, in the group's root order (``ChannelGroup``), so channels
tied by a residual add, depthwise conv or concat share one score.

* ``TaylorImportance``: HALP's first-order estimate of the loss change, |Σ_BN (γ·∂L/∂γ + β·∂L/∂β)|
  over the group's BNs, or |Σ w·∂L/∂w| over each channel's out-side filters without BN; absolute per
  batch, then averaged, since signed values would cancel towards zero as training converges.
  ``taylor_per_layer`` (the default) sums each layer's |term| instead, so a residual-stream
  channel is not cheapened by terms cancelling across the layers it feeds.
* ``MagnitudeImportance``: L2 norm of each channel's out-side filters (no gradients needed).
* ``ConsumerMagnitudeImportance`` (``magnitude_in``): L2 norm of the weights reading each
  channel in the layers it feeds (FastNAS's ranking).
* Any callable ``fn(model, group) -> tensor[group.size]``.

Under ``torch.distributed`` sums and counts are all-reduced, so every rank decides identically."""
from __future__ import annotations

import warnings
from typing import Callable, Sequence

import torch
import torch.nn as nn

from halp_trt.distributed import all_reduce_sum_then_broadcast
from halp_trt.errors import HalpError
from halp_trt.graph.groups import ChannelGroup

NORMALIZERS = ("none", "mean")


def over_group_mean(scores: torch.Tensor, kept: torch.Tensor | None = None) -> torch.Tensor:
    """A group's scores over the mean of its (``kept``) channels' scores; a group whose scores
    are all zero stays zero."""
    of = scores if kept is None else scores[kept]
    mean = float(of.mean()) if of.numel() else 0.0
    return scores / mean if mean > 0 else scores


def normalize_scores(scores: torch.Tensor, kept: torch.Tensor, how: str) -> torch.Tensor:
    """One group's scores as the knapsack values them: raw, or over the mean of its ``kept``
    channels' scores."""
    return scores if how == "none" else over_group_mean(scores, kept)


_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_FILTER = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


def _root_index(member, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(channel indices in the module on its device, group indices on the CPU)."""
    return (torch.as_tensor(member.idxs, dtype=torch.long, device=device),
            torch.as_tensor(member.root_idxs, dtype=torch.long))


def _filter_rows(module: nn.Module, param: torch.Tensor) -> torch.Tensor:
    """A conv/linear parameter as one row per output channel."""
    if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)) and module.transposed:
        param = param.transpose(0, 1)
    return param.reshape(param.shape[0], -1)


def _row_dots(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Σ_j a[i, j]·b[i, j] per row, without an elementwise product as big as the weight (a VGG
    classifier has 10^8 weights)."""
    return torch.bmm(a.unsqueeze(1), b.unsqueeze(2)).flatten()


class Importance:
    """How much each channel of a coupled group matters: ``__call__(model, group, modules)``
    returns one non-negative score per channel of ``group`` (root order). Subclass it for your
    own criterion; ``needs_grad`` says whether scores read gradients (then they are accumulated
    after each backward). A plain callable ``fn(model, group)`` is accepted as well."""

    needs_grad = False
    name = "importance"

    def __call__(self, model: nn.Module, group: ChannelGroup,
                 modules: dict[str, nn.Module] | None = None) -> torch.Tensor:
        raise NotImplementedError


def _members_on(side: str, group: ChannelGroup, modules, kinds):
    """(module, member's channel indices on its device, root indices) of the group's members
    of ``kinds`` on ``side`` ("out": the channels they make; "in": the channels they read;
    BatchNorms: affine ones only)."""
    for m in group.members:
        mod = modules[m.module_name]
        if m.side != side or not isinstance(mod, kinds) or (
                isinstance(mod, _BN) and not mod.affine):
            continue
        yield (mod, *_root_index(m, mod.weight.device))


class TaylorImportance(Importance):
    """First-order Taylor importance on BN (γ, β), falling back to filters without BN.

    A channel of a coupled group (a residual stream) sits in several layers. HALP sums their
    terms before the absolute value: the first-order change of removing the channel everywhere,
    in which layers can cancel. ``per_layer=True`` takes each layer's absolute value first, so
    a channel counts once per layer it feeds, as its latency cost does."""

    needs_grad = True

    def __init__(self, per_layer: bool = False):
        self.per_layer = per_layer
        self.name = "taylor_per_layer" if per_layer else "taylor"

    def __call__(self, model: nn.Module, group: ChannelGroup,
                 modules: dict[str, nn.Module] | None = None) -> torch.Tensor:
        modules = modules if modules is not None else dict(model.named_modules())
        score = torch.zeros(group.size, dtype=torch.float64)
        found_bn = False
        for mod, idx, root in _members_on("out", group, modules, _BN):
            if mod.weight.grad is None and mod.bias.grad is None:
                continue
            found_bn = True
            contrib = torch.zeros(len(idx), dtype=torch.float64, device=mod.weight.device)
            for p in (mod.weight, mod.bias):
                if p.grad is not None:
                    contrib += p.detach()[idx].double() * p.grad[idx].double()
            score.index_add_(0, root, (contrib.abs() if self.per_layer else contrib).cpu())
        if found_bn:
            return score.abs()
        for mod, idx, root in _members_on("out", group, modules, _FILTER):
            contrib = torch.zeros(len(idx), dtype=torch.float64, device=mod.weight.device)
            for p in (mod.weight, mod.bias):
                if p is not None and p.grad is not None:
                    contrib += _row_dots(_filter_rows(mod, p.detach()),
                                         _filter_rows(mod, p.grad))[idx].double()
            score.index_add_(0, root, (contrib.abs() if self.per_layer else contrib).cpu())
        return score.abs()


class MagnitudeImportance(Importance):
    """Lp norm (``p`` 2 or 1) of each channel's out-side conv/linear filters (weights and
    bias), divided by the group's mean norm.

    Raw filter norms have per-layer scales (fan-in, initialisation, BN after the conv), which a
    knapsack across layers cannot compare. Dividing by the group mean (as Torch-Pruning's "mean"
    normaliser does) keeps the ranking within a group and makes groups comparable."""

    needs_grad = False

    def __init__(self, p: int = 2):
        if p not in (1, 2):
            raise HalpError(f"magnitude importance takes p = 1 or 2, got {p!r}")
        self.p = p
        self.name = "magnitude" if p == 2 else "l1"

    def __call__(self, model: nn.Module, group: ChannelGroup,
                 modules: dict[str, nn.Module] | None = None) -> torch.Tensor:
        modules = modules if modules is not None else dict(model.named_modules())
        acc = torch.zeros(group.size, dtype=torch.float64)
        for mod, idx, root in _members_on("out", group, modules, _FILTER):
            for p in (mod.weight, mod.bias):
                if p is not None:
                    rows = _filter_rows(mod, p.detach())[idx].double()
                    acc.index_add_(0, root, rows.abs().pow(self.p).sum(dim=1).cpu())
        return over_group_mean(acc.sqrt() if self.p == 2 else acc)


class ConsumerMagnitudeImportance(Importance):
    """L2 norm of the weights that read each channel in the group's in-side convs and linears
    (a conv's input slice over its filters and kernel), divided by the group's mean: how much
    the next layers use a channel rather than how big the filter making it is. ModelOpt's
    FastNAS ranks channels this way. Grouped convs (a channel read by its own filter only) are
    left out; a group no layer reads this way scores by its filters (``magnitude``)."""

    needs_grad = False
    name = "magnitude_in"

    def __call__(self, model: nn.Module, group: ChannelGroup,
                 modules: dict[str, nn.Module] | None = None) -> torch.Tensor:
        modules = modules if modules is not None else dict(model.named_modules())
        acc = torch.zeros(group.size, dtype=torch.float64)
        found = False
        for mod, idx, root in _members_on("in", group, modules, _FILTER):
            if getattr(mod, "groups", 1) != 1 or getattr(mod, "transposed", False):
                continue
            columns = mod.weight.detach().transpose(0, 1).reshape(mod.weight.shape[1], -1)
            acc.index_add_(0, root, columns[idx].double().pow(2).sum(dim=1).cpu())
            found = True
        return over_group_mean(acc.sqrt()) if found else \
            MagnitudeImportance()(model, group, modules)


class TaylorSharedByConsumerMagnitude(Importance):
    """A group's Taylor mass (``taylor_per_layer``, its mean over the group's channels) shared
    out by ``magnitude_in``: the knapsack weighs groups against each other by the loss change,
    and within a group keeps the channels the next layers read most. At FastNAS's widths on
    Fashion-MNIST, keeping channels by the weights reading them ended 0.2 points above keeping
    them by Taylor (BENCHMARKS, diagnostics)."""

    needs_grad = True
    name = "taylor_magnitude_in"

    def __init__(self):
        self.taylor, self.consumer = TaylorImportance(per_layer=True), \
            ConsumerMagnitudeImportance()

    def __call__(self, model: nn.Module, group: ChannelGroup,
                 modules: dict[str, nn.Module] | None = None) -> torch.Tensor:
        modules = modules if modules is not None else dict(model.named_modules())
        return self.consumer(model, group, modules) * self.taylor(model, group, modules).mean()


class BNScaleImportance(Importance):
    """|γ| of the group's BatchNorms, summed over them and divided by the group's mean (the
    network-slimming criterion); groups without an affine BN score by filter L2 norm."""

    needs_grad = False
    name = "bn_scale"

    def __call__(self, model: nn.Module, group: ChannelGroup,
                 modules: dict[str, nn.Module] | None = None) -> torch.Tensor:
        modules = modules if modules is not None else dict(model.named_modules())
        acc = torch.zeros(group.size, dtype=torch.float64)
        found = False
        for mod, idx, root in _members_on("out", group, modules, _BN):
            found = True
            acc.index_add_(0, root, mod.weight.detach()[idx].abs().double().cpu())
        return over_group_mean(acc) if found else MagnitudeImportance()(model, group, modules)


# The importances named by string (HALPConfig.importance, --importance).
IMPORTANCES: dict[str, Callable[[], Importance]] = {
    "taylor": TaylorImportance, "taylor_per_layer": lambda: TaylorImportance(per_layer=True),
    "magnitude": MagnitudeImportance, "magnitude_in": ConsumerMagnitudeImportance,
    "taylor_magnitude_in": TaylorSharedByConsumerMagnitude,
    "l1": lambda: MagnitudeImportance(p=1), "bn_scale": BNScaleImportance}


class _UserImportance(Importance):
    def __init__(self, fn: Callable):
        self.fn = fn
        self.needs_grad = bool(getattr(fn, "needs_grad", True))
        self.name = getattr(fn, "__name__", type(fn).__name__)

    def __call__(self, model, group, modules=None):
        out = self.fn(model, group)
        if not isinstance(out, torch.Tensor):
            out = torch.as_tensor(out)
        out = out.detach().reshape(-1).double().cpu()
        if out.numel() != group.size:
            raise HalpError(f"importance function {self.name} returned {out.numel()} scores for "
                            f"group {group.root} of {group.size} channels; return one per channel")
        return out


def make_importance(spec) -> Importance:
    """A name from ``IMPORTANCES``, an ``Importance`` object, or a callable fn(model, group)."""
    if isinstance(spec, str):
        if spec not in IMPORTANCES:
            raise HalpError(f"unknown importance {spec!r}; choose {', '.join(IMPORTANCES)} or "
                            "pass an Importance object or a callable fn(model, group) -> tensor")
        return IMPORTANCES[spec]()
    if isinstance(spec, Importance):
        return spec
    if callable(spec):
        return _UserImportance(spec)
    raise HalpError(f"importance must be one of {', '.join(IMPORTANCES)}, an Importance or a "
                    f"callable, got {spec!r}")


class ImportanceAccumulator:
    """Sums per-group scores over batches; ``scores()`` averages them (across ranks too)."""

    def __init__(self, model: nn.Module, groups: Sequence[ChannelGroup],
                 importance="taylor_per_layer"):
        self.model = model
        self.groups = list(groups)
        self.importance = make_importance(importance)
        self._modules = dict(model.named_modules())
        # every parameter of the groups' modules: a batch whose gradients there are not finite
        # (fp16 overflow, a diverging step) must not enter the estimate
        seen, self._params = set(), []
        for g in self.groups:
            for m in g.members:
                for p in self._modules[m.module_name].parameters(recurse=False):
                    if id(p) not in seen:
                        seen.add(id(p))
                        self._params.append(p)
        self._offsets = [0]
        for g in self.groups:
            self._offsets.append(self._offsets[-1] + g.size)
        self.reset()

    def reset(self) -> None:
        self._sum = torch.zeros(self._offsets[-1], dtype=torch.float64)
        self.count = 0
        self.skipped = 0

    def state_dict(self) -> dict:
        return {"sum": self._sum.clone(), "count": self.count, "skipped": self.skipped}

    def load_state_dict(self, state) -> None:
        total = torch.as_tensor(state["sum"], dtype=torch.float64)
        if total.shape != self._sum.shape:
            raise ValueError(f"importance of {total.numel()} channels, the groups have "
                             f"{self._sum.numel()}")
        self._sum = total.clone()
        self.count, self.skipped = int(state["count"]), int(state["skipped"])

    def _compute(self) -> torch.Tensor:
        parts = []
        for g in self.groups:
            s = self.importance(self.model, g, self._modules)
            parts.append(torch.as_tensor(s, dtype=torch.float64).reshape(-1).cpu())
        return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.float64)

    def _grads_finite(self) -> bool:
        peaks = [p.grad.detach().abs().amax() for p in self._params
                 if p.grad is not None and p.grad.numel()]
        if not peaks:
            return True
        dev = peaks[0].device  # one stack and one sync, not one per parameter
        return bool(torch.isfinite(torch.stack([x.float().to(dev) for x in peaks])).all())

    def accumulate(self) -> bool:
        """Add this batch's scores (call after ``loss.backward()``; with a GradScaler, after
        ``scaler.unscale_(optimizer)`` so the gradients are not scaled). Returns False if the
        batch was skipped."""
        with torch.no_grad():
            flat = self._compute()
            finite = self._grads_finite() and bool(torch.isfinite(flat).all())
        if not finite:
            self.skipped += 1
            warnings.warn("halp-trt: skipped a batch in the importance estimate: its gradients "
                          "contain NaN or infinity", RuntimeWarning, stacklevel=2)
            return False
        self._sum += flat
        self.count += 1
        return True

    def scores(self) -> list[torch.Tensor]:
        """Average per group since the last ``reset()``; one float64 tensor per group.

        Collective under torch.distributed: every rank must call it at the same point."""
        total = torch.cat([self._sum, torch.tensor([float(self.count)], dtype=torch.float64)])
        total = all_reduce_sum_then_broadcast(total)
        sums, count = total[:-1], float(total[-1])
        if count == 0:
            if self.importance.needs_grad:
                raise HalpError("no importance was accumulated before this pruning step: call "
                                "pruner.accumulate() after each loss.backward() (or every batch "
                                "had NaN/inf gradients)")
            flat = self._compute()
        else:
            flat = sums / count
        return [flat[a:b].clone() for a, b in zip(self._offsets[:-1], self._offsets[1:])]


__all__ = ["TaylorImportance", "MagnitudeImportance", "ImportanceAccumulator", "make_importance"]
