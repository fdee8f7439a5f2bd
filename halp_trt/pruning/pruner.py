"""HALP progressive pruning for any training loop.

    pruner = HALPPruner(model, example_input, latency_table, HALPConfig(target="0.5"))
    for x, y in loader:
        optimizer.zero_grad(); criterion(model(x), y).backward()
        pruner.accumulate()          # importance from this batch's gradients
        optimizer.step()
        pruner.step()                # every `interval` calls: one pruning step, up to `steps`
    pruned = pruner.finalize()       # physical removal (torch-pruning); rebuild the optimizer

Each step solves a knapsack over importance-ordered neuron groups (attention heads: whole heads).
Until ``finalize()`` removed channels are masked, re-applied each ``step()`` so nothing revives them."""
from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass
from typing import Mapping, Sequence

import numpy as np
import torch
import torch.nn as nn

from halp_trt.errors import HalpError
from halp_trt.graph.groups import ChannelGroup, check_unique_coverage, find_channel_groups
from halp_trt.graph.layers import LayerSpec, list_layers
from halp_trt.pruning.config import HALPConfig
from halp_trt.pruning.contributions import (LatencyModel, neuron_group_size, option_costs,
                                            predict_model_ms)
from halp_trt.pruning.heads import HeadAwareImportance
from halp_trt.pruning.importance import ImportanceAccumulator, normalize_scores
from halp_trt.pruning.knapsack import KnapsackGroup, solve_knapsack
from halp_trt.pruning.masker import ChannelMasker
from halp_trt.pruning.result import PruningResult
from halp_trt.pruning.schedule import schedule_targets_ms
from halp_trt.pruning.surgery import (conv_group_slices, masked_pruned_difference,
                                      masked_then_pruned, remove_channels, unprunable_reason)
# Attempts at tightening the budget when the true prediction exceeds the knapsack's estimate
# (two-sided linearisation, or a non-monotone table).
_REPAIR_ATTEMPTS = 12
_RELINEARIZE = 4  # of those, re-linearisations of the two-sided costs around the trial
# Share of the mean channel importance each kept channel adds to its option's value (see plan).
_TIE_SHARE = 1e-6


@dataclass
class StepRecord:
    """One pruning step."""

    step: int
    target_ms: float
    predicted_ms: float  # the table's whole-model prediction at the new widths
    kept: dict[str, int]  # group root -> channels kept
    objective: float  # total importance kept (knapsack objective)
    error_bound_ms: float  # knapsack discretisation bound
    repairs: int = 0  # budget tightenings needed to meet the target
    rule: str = ""  # contribution rule whose solution was used ("min_widths": the fallback)

    def to_json(self) -> dict:
        return asdict(self)


@dataclass
class StepPlan:
    """A pruning step not yet taken: kept-channel mask per group id and its record fields."""

    keep: dict[int, torch.Tensor]
    record_fields: dict

    @property
    def predicted_ms(self) -> float:
        return self.record_fields["predicted_ms"]

    @property
    def kept(self) -> dict[str, int]:
        return self.record_fields["kept"]


def _unwrap(model: nn.Module) -> nn.Module:
    from torch.nn.parallel import DataParallel, DistributedDataParallel
    return model.module if isinstance(model, (DataParallel, DistributedDataParallel)) else model


class HALPPruner:
    """Latency-constrained progressive pruning (HALP). See the module docstring for the loop."""

    def __init__(self, model: nn.Module, example_input: torch.Tensor, latency_model: LatencyModel,
                 config: HALPConfig):
        if not isinstance(config, HALPConfig):
            raise HalpError("config must be a HALPConfig")
        for attr in ("layer_ms", "step_size"):
            if not callable(getattr(latency_model, attr, None)):
                raise HalpError(f"the latency model has no {attr}() method; pass a latency table")
        self.config = config
        self.model = _unwrap(model)
        self.input_shape = [int(d) for d in example_input.shape]
        self.latency_model = latency_model
        self.groups, self.graph = find_channel_groups(self.model, example_input, config.exclude)
        check_unique_coverage(self.groups)
        modules = dict(self.model.named_modules())
        self.fixed: dict[str, str] = {}  # group root -> why it keeps its width
        self.prunable: list[ChannelGroup] = []
        for g in self.groups:
            why = unprunable_reason(g, modules)
            if why is None and g.size > 1:
                self.prunable.append(g)
            else:
                self.fixed[g.root] = why or "a single channel"
        self.layers: list[LayerSpec] = list_layers(self.model, example_input, self.groups)
        self.group_sizes = {g.id: neuron_group_size(g, self.layers, latency_model,
                                                    config.group_size) for g in self.prunable}
        # groups feeding or leaving a grouped conv: channels split by conv group, pruned evenly
        # (every conv group narrower by the same count), so a neuron group spans all of them
        self.slices: dict[int, list[list[int]]] = {}
        for g in self.prunable:
            sl = conv_group_slices(g, modules)
            if sl is not None:
                self.slices[g.id] = sl
                n = len(sl)
                self.group_sizes[g.id] = n * max(1, math.ceil(self.group_sizes[g.id] / n))
        if config.verify_surgery:
            self._hold_groups_that_break_surgery(example_input)
        self.keep = {g.id: torch.ones(g.size, dtype=torch.bool) for g in self.prunable}

        self.full_ms = self.predict_ms()
        self.final_target_ms = config.target.to_ms(self.full_ms)
        if self.final_target_ms >= self.full_ms:
            raise HalpError(f"latency target {self.final_target_ms:.4f} ms is not below the full "
                            f"model's predicted {self.full_ms:.4f} ms: nothing to prune")
        self.min_ms = self.predict_ms(self._min_widths(full=True))
        if self.final_target_ms < self.min_ms:
            raise HalpError(self._infeasible_message(self.final_target_ms, self.min_ms))
        self.targets_ms = schedule_targets_ms(self.full_ms, self.final_target_ms, config.steps,
                                              config.schedule)
        self.accumulator = ImportanceAccumulator(self.model, self.prunable,
                                                 HeadAwareImportance(config.importance))
        self.masker = ChannelMasker(self.model, self.prunable)
        self.history: list[StepRecord] = []
        self.calls = 0
        self.finalized = False

    # ---- which groups channel surgery handles -------------------------------------------
    def _hold_groups_that_break_surgery(self, example_input: torch.Tensor) -> None:
        """Trial surgery on a copy: every prunable group loses one or two neuron groups
        (alternating, so that constraints *between* groups — equal halves of a channel split,
        an even concat before a shuffle — show), and the pruned copy must run and equal the
        masked one. Groups the dependency graph cannot really prune are found by bisection
        and keep their width, with the reason."""
        def trial(groups: list[ChannelGroup]) -> str | None:
            if not groups:
                return None
            copy_model = copy.deepcopy(self.model).eval()
            try:
                trial_groups, graph = find_channel_groups(copy_model, example_input,
                                                          self.config.exclude)
                by_root = {g.root: g for g in trial_groups}
                keep, drop = {}, {}
                for i, g in enumerate(groups):
                    k = g.size - self.group_sizes[g.id] * (1 + i % 2)
                    if k < 1:
                        continue
                    mask = self.uniform_mask(g, k)
                    tg = by_root[g.root]
                    keep[tg.id] = mask
                    drop[tg.id] = torch.nonzero(~mask).flatten().tolist()
                masked, pruned = masked_then_pruned(copy_model, graph, trial_groups, keep, drop,
                                                    example_input)
                diff = masked_pruned_difference(masked, pruned)
                return None if diff <= 1e-4 else f"pruned differs from masked by {diff:.1e}"
            except Exception as exc:  # noqa: BLE001 - any failure means: not safe to prune
                return f"{type(exc).__name__}: {str(exc).splitlines()[0][:120]}"

        def bisect(groups: list[ChannelGroup]) -> None:
            why = trial(groups)
            if why is None:
                return
            if len(groups) == 1:
                g = groups[0]
                self.prunable.remove(g)
                self.fixed[g.root] = f"channel surgery breaks the model there ({why})"
                return
            half = len(groups) // 2
            bisect(groups[:half])
            bisect(groups[half:])
            if trial([g for g in groups if g in self.prunable]) is not None:
                # only in combination: hold the rest of this set too
                for g in [g for g in groups if g in self.prunable]:
                    self.prunable.remove(g)
                    self.fixed[g.root] = "channel surgery breaks the model when it is pruned " \
                                         "together with its neighbours"

        bisect(list(self.prunable))

    # ---- state ---------------------------------------------------------------------------
    @property
    def widths(self) -> dict[int, int]:
        """Kept channels per group id (fixed groups at full width)."""
        w = {g.id: g.size for g in self.groups}
        w.update({gid: int(k.sum()) for gid, k in self.keep.items()})
        return w

    @property
    def masks(self) -> dict[str, torch.Tensor]:
        """Kept-channel mask per prunable group, keyed by root module name."""
        return {g.root: self.keep[g.id].clone() for g in self.prunable}

    @property
    def done(self) -> bool:
        return len(self.history) >= len(self.targets_ms)

    def retarget(self, remaining_targets_ms: Sequence[float]) -> None:
        """Replace the targets of the steps not yet taken (e.g. after measuring the masked
        model on the runtime); more targets than steps left add steps. Targets below the
        table's minimum are raised to it."""
        if not remaining_targets_ms:
            raise HalpError("retarget needs at least one target")
        done = len(self.history)
        self.targets_ms = self.targets_ms[:done] + [max(float(t), self.min_ms)
                                                    for t in remaining_targets_ms]

    def predict_ms(self, widths: Mapping[int, int] | None = None) -> float:
        return predict_model_ms(self.layers, self.widths if widths is None else widths,
                                self.latency_model, self.groups)

    def _min_count(self, g: ChannelGroup, n_cur: int) -> int:
        by_groups = self.config.min_groups_kept * self.group_sizes[g.id]
        by_ratio = math.ceil(g.size * (1.0 - self.config.max_prune_ratio) - 1e-9)
        if g.id in self.slices:  # whole rounds over the conv groups
            n = len(self.slices[g.id])
            by_ratio = n * math.ceil(by_ratio / n)
        return max(1, min(n_cur, max(by_groups, by_ratio)))

    def _importance_order(self, g: ChannelGroup, scores: torch.Tensor) -> torch.Tensor:
        """The group's kept channels, most important first (stable: ties keep the lower index
        first). For a group split by conv groups, round-robin over the conv groups — the r-th
        best of each, then the (r+1)-th — so every prefix of whole rounds keeps the same number
        in each conv group and is the most important such selection."""
        def ranked(idx: torch.Tensor) -> torch.Tensor:
            return idx[torch.sort(-scores[idx], stable=True).indices]

        keep = self.keep[g.id]
        if g.id not in self.slices:
            return ranked(torch.nonzero(keep).flatten())
        per = [ranked(torch.as_tensor([i for i in s if keep[i]], dtype=torch.long))
               for s in self.slices[g.id]]
        return torch.stack(per, dim=1).flatten()  # row r: the r-th best of every slice

    def uniform_mask(self, g: ChannelGroup, k: int) -> torch.Tensor:
        """A mask keeping ``k`` channels of ``g`` by index order (the first ones; for a group
        split by conv groups, the first k/n of each), for calibration copies."""
        keep = torch.zeros(g.size, dtype=torch.bool)
        if g.id not in self.slices:
            keep[:k] = True
            return keep
        n = len(self.slices[g.id])
        for s in self.slices[g.id]:
            keep[s[:max(1, k // n)]] = True
        return keep

    def _counts(self, g: ChannelGroup, n_cur: int) -> np.ndarray:
        # Prefix lengths in whole neuron groups from the most important end; the remainder
        # (n_cur mod step, the least important channels) is only ever kept with everything.
        step = self.group_sizes[g.id]
        counts = list(range(step, n_cur, step)) + [n_cur]
        lo = self._min_count(g, n_cur)
        kept = [c for c in counts if c >= lo]
        return np.asarray(kept, dtype=np.int64)

    def min_widths(self) -> dict[int, int]:
        """Group id -> the narrowest width the configuration allows (the table's floor)."""
        return self._min_widths(full=True)

    def _min_widths(self, full: bool = False) -> dict[int, int]:
        w = self.widths
        for g in self.prunable:
            n = g.size if full else w[g.id]
            w[g.id] = int(self._counts(g, n)[0])
        return w

    def _infeasible_message(self, target_ms: float, min_ms: float) -> str:
        return (f"latency target {target_ms:.4f} ms is infeasible: the minimum latency the table "
                f"allows is {min_ms:.4f} ms (full model {self.full_ms:.4f} ms, every prunable "
                f"group at {self.config.min_groups_kept} neuron group(s), "
                f"max_prune_ratio={self.config.max_prune_ratio}); raise the target")

    def set_masks(self, masks: Mapping[str, torch.Tensor | Sequence[bool]]) -> None:
        """Impose kept-channel masks (group root -> bool per channel, True = kept), e.g. to resume
        a run. Groups not named keep their current mask."""
        by_root = {g.root: g for g in self.prunable}
        for root, mask in masks.items():
            g = by_root.get(root)
            if g is None:
                raise HalpError(f"{root!r} is not the root of a prunable channel group "
                                f"(prunable roots look like {list(by_root)[:3]})")
            keep = torch.as_tensor(mask, dtype=torch.bool).flatten().cpu()
            if keep.numel() != g.size or not bool(keep.any()):
                raise HalpError(f"mask for {root} must have {g.size} entries, at least one True")
            if g.id in self.slices and len({int(keep[s].sum()) for s in self.slices[g.id]}) != 1:
                raise HalpError(f"mask for {root} must keep the same number of channels in each "
                                f"of the {len(self.slices[g.id])} groups of its grouped conv")
            self.keep[g.id] = keep.clone()
        self.masker.set_masks(self.keep)

    # ---- training-loop API ----------------------------------------------------------------
    def attach_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        """Also zero masked entries of this optimizer's state (momentum, Adam moments), so masked
        weights stay zero even between optimizer.step() and pruner.step()."""
        self.masker.attach_optimizer(optimizer)

    def accumulate(self) -> bool:
        """Add the current gradients' importance; call after each loss.backward()."""
        if self.done or self.finalized:
            return False
        return self.accumulator.accumulate()

    def prunes_at_next_step(self) -> bool:
        """Whether the next ``step()`` call runs a pruning step."""
        return not self.done and (self.calls + 1) % self.config.interval == 0

    def step(self) -> StepRecord | None:
        """Call after each optimizer.step(): re-applies the masks; every ``interval`` calls (up to
        ``steps`` times) runs one pruning step and returns its record."""
        if self.finalized:
            raise HalpError("the pruner was finalized; the model is already pruned")
        due = self.prunes_at_next_step()
        self.calls += 1
        record = self.prune_step() if due else None
        self.masker.apply()
        return record

    def prune_step(self) -> StepRecord:
        """One pruning step now, at the next scheduled target."""
        if self.done:
            raise HalpError(f"all {len(self.targets_ms)} pruning steps are done")
        t = len(self.history) + 1
        plan = self.plan(self.targets_ms[t - 1])
        self.accumulator.reset()
        self.keep = {gid: k.clone() for gid, k in plan.keep.items()}
        self.masker.set_masks(self.keep)
        record = StepRecord(step=t, **plan.record_fields)
        self.history.append(record)
        return record

    def plan(self, target_ms: float) -> "StepPlan":
        """What a pruning step at ``target_ms`` would keep, from the importance accumulated so
        far; changes nothing (e.g. to measure candidate architectures before committing).
        Under DDP every rank must call it (the scores are all-reduced)."""
        scores = [normalize_scores(s, self.keep[g.id], self.config.importance_normalizer)
                  for g, s in zip(self.prunable, self.accumulator.scores())]
        widths = self.widths
        # Ties in importance go to the wider option: each kept channel is worth a millionth of
        # the mean channel importance on top. Without it, a group whose importance is all zero
        # (a zero-initialised classifier, as torchvision's ViT has, gives every Taylor score 0)
        # falls to its minimum width whatever the budget.
        total = float(sum(float(s.sum()) for s in scores))
        channels = sum(g.size for g in self.prunable)
        per_channel_tiebreak = (total if total > 0 else 1.0) * _TIE_SHARE / max(channels, 1)
        orders, kgroups, options = {}, [], {}
        for g, s in zip(self.prunable, scores):
            order = self._importance_order(g, s)
            orders[g.id] = order
            counts = self._counts(g, len(order))
            cum = torch.cumsum(s[order], 0).numpy()
            options[g.id] = counts
            kgroups.append((g, counts, cum[counts - 1] + per_channel_tiebreak * counts))
        chosen = predicted = used = None
        rule_used = "min_widths"
        rules = [self.config.contribution]
        if self.config.contribution == "two_sided":
            # one-sided costs use the current (largest) input widths: an upper bound when the
            # table is monotone, so it meets the target where the linearisation keeps missing it
            rules.append("one_sided")
        repairs = 0
        for rule in rules:
            oc = option_costs(rule, self.layers, self.groups, widths, self.latency_model, options)
            knap = [KnapsackGroup(g.root, counts, values, oc.costs_ms[g.id])
                    for g, counts, values in kgroups]
            budget_ms = target_ms - oc.constant_ms
            for _ in range(_REPAIR_ATTEMPTS):
                try:
                    sol = solve_knapsack(knap, budget_ms, self.config.resolution_ms)
                except HalpError:
                    break  # below this rule's minimum: try the next rule, then the fallback
                trial = dict(widths)
                trial.update({g.id: k for (g, _, _), k in zip(kgroups, sol.kept)})
                predicted = self.predict_ms(trial)
                if predicted <= target_ms:
                    chosen, used, rule_used = trial, sol, rule
                    break
                repairs += 1
                if rule == "two_sided" and repairs <= _RELINEARIZE:
                    # The linearisation around the current widths misses the cross terms of
                    # groups shrinking together (conv cost ~ c_in·c_out): re-linearise around
                    # the trial widths, where the solution will be, and solve again.
                    oc = option_costs(rule, self.layers, self.groups, trial, self.latency_model,
                                      options)
                    knap = [KnapsackGroup(g.root, counts, values, oc.costs_ms[g.id])
                            for g, counts, values in kgroups]
                    budget_ms = target_ms - oc.constant_ms
                else:
                    # The estimate is still optimistic: tighten by the overshoot, solve again.
                    budget_ms -= (predicted - target_ms) + self.config.resolution_ms
            if chosen is not None:
                break
        if chosen is None:
            # Fall back to the smallest allowed widths if even those meet the target.
            trial = self._min_widths()
            predicted = self.predict_ms(trial)
            if predicted > target_ms:
                raise HalpError(self._infeasible_message(target_ms, predicted))
            chosen = trial
        if used is not None:
            objective, error_bound = float(used.objective), float(used.error_bound_ms)
        else:
            objective, error_bound = float(sum(v[0] for _, _, v in kgroups)), 0.0

        keep = {}
        for g in self.prunable:
            keep[g.id] = torch.zeros(g.size, dtype=torch.bool)
            keep[g.id][orders[g.id][:chosen[g.id]]] = True
        return StepPlan(keep, dict(
            target_ms=float(target_ms), predicted_ms=float(predicted),
            kept={g.root: int(chosen[g.id]) for g in self.prunable}, objective=objective,
            error_bound_ms=error_bound, repairs=repairs, rule=rule_used))

    # ---- checkpointing ---------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Masks, step counter, targets, history and the importance accumulated since the last
        pruning step: tensors and plain containers only, so a checkpoint loads with
        ``torch.load(..., weights_only=True)``."""
        return {"masks": self.masks, "calls": self.calls, "targets_ms": list(self.targets_ms),
                "history": [r.to_json() for r in self.history],
                "importance": self.accumulator.state_dict()}

    def load_state_dict(self, state: Mapping) -> None:
        try:
            self.set_masks(state["masks"])
            self.calls = int(state["calls"])
            self.history = [StepRecord(**r) for r in state["history"]]
            self.targets_ms = [float(t) for t in state.get("targets_ms", self.targets_ms)]
            if "importance" in state:
                self.accumulator.load_state_dict(state["importance"])
            else:
                self.accumulator.reset()
        except (KeyError, TypeError, ValueError) as exc:
            raise HalpError(f"the pruner checkpoint is not usable ({exc}); delete it to start "
                            "pruning over") from None

    # ---- end of pruning -------------------------------------------------------------------
    def finalize(self) -> nn.Module:
        """Remove masked channels physically and return the (same, now smaller) model.

        Parameters are new tensors afterwards: build a new optimizer (and re-wrap the model in
        DistributedDataParallel) for further training."""
        if self.finalized:
            return self.model
        self.masker.apply()
        drop = {g.id: torch.nonzero(~self.keep[g.id]).flatten().tolist() for g in self.prunable}
        self.masker.remove_hooks()
        remove_channels(self.model, self.graph, self.groups, drop)
        self.finalized = True
        return self.model

    def result(self, plan: "StepPlan | None" = None):
        """The decisions as a ``PruningResult`` (JSON; see ``halp_trt.pruning.result``) — the current
        masks, or those of ``plan`` (a candidate from ``plan()``)."""
        keep = self.keep if plan is None else plan.keep
        widths = None if plan is None else {**self.widths,
                                            **{gid: int(k.sum()) for gid, k in keep.items()}}
        return PruningResult(
            kept={g.root: torch.nonzero(keep[g.id]).flatten().tolist()
                  for g in self.prunable},
            original_widths={g.root: g.size for g in self.prunable},
            table_identity=dict(getattr(self.latency_model, "identity", {}) or {}),
            config=self.config.summary(),
            input_shape=self.input_shape,
            full_predicted_ms=self.full_ms,
            predicted_ms=self.predict_ms(widths),
            history=[r.to_json() for r in self.history])
