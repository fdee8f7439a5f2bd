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

import re
from collections import Counter
from typing import Mapping, Sequence

import torch
import torch.nn as nn

from halp_trt.errors import HalpError
from halp_trt.graph.groups import ChannelGroup, check_unique_coverage, find_channel_groups
from halp_trt.graph.layers import LayerSpec, list_layers
from halp_trt.pruning.config import HALPConfig
from halp_trt.pruning.contributions import LatencyModel, predict_model_ms
from halp_trt.pruning.heads import HeadAwareImportance
from halp_trt.pruning.importance import ImportanceAccumulator, normalize_scores
from halp_trt.pruning.masker import ChannelMasker
from halp_trt.pruning.options import ChannelOptions, split_prunable
from halp_trt.pruning.result import PruningResult
from halp_trt.pruning.schedule import schedule_targets_ms
from halp_trt.pruning.selection import StepPlan, StepRecord, select_widths
from halp_trt.pruning.surgery import groups_that_break_surgery, remove_channels


def _unwrap(model: nn.Module) -> nn.Module:
    from torch.nn.parallel import DataParallel, DistributedDataParallel
    return model.module if isinstance(model, (DataParallel, DistributedDataParallel)) else model


def nothing_prunable_message(model: nn.Module, fixed: Mapping[str, str]) -> str:
    """Why a model has nothing to prune: its groups' reasons, the most frequent first."""
    if not fixed:
        return (f"{type(model).__name__} has no Conv2d or Linear whose channels halp-trt can "
                "prune: nothing to make faster")
    # reasons name their layers: one pattern repeated per block (digits aside) counts once,
    # shown by its first example
    pattern, counts = {}, Counter()
    for why in fixed.values():
        key = re.sub(r"\d+", "#", why)
        pattern.setdefault(key, why)
        counts[key] += 1
    top = "; ".join(f"{n} like: {pattern[key]}" for key, n in counts.most_common(3))
    return (f"nothing in {type(model).__name__} can be pruned: each of its {len(fixed)} channel "
            f"groups keeps its width ({top}{'; ...' if len(counts) > 3 else ''}); README's "
            "Architectures lists what halp-trt prunes")


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
        # fixed: group root -> why it keeps its width
        self.prunable, self.fixed = split_prunable(self.groups, modules)
        self.layers: list[LayerSpec] = list_layers(self.model, example_input, self.groups)
        self.options = ChannelOptions(self.prunable, self.layers, latency_model, modules, config)
        self.group_sizes, self.slices = self.options.group_sizes, self.options.slices
        self.uniform_mask = self.options.uniform_mask
        if config.verify_surgery:
            def cut(g: ChannelGroup, n_groups: int) -> torch.Tensor | None:
                k = g.size - self.group_sizes[g.id] * n_groups
                return self.uniform_mask(g, k) if k >= 1 else None

            for g, why in groups_that_break_surgery(self.model, example_input, config.exclude,
                                                    self.prunable, cut):
                self.prunable.remove(g)
                self.fixed[g.root] = why
        if not self.prunable:
            raise HalpError(nothing_prunable_message(self.model, self.fixed))
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

    def min_widths(self) -> dict[int, int]:
        """Group id -> the narrowest width the configuration allows (the table's floor)."""
        return self._min_widths(full=True)

    def _min_widths(self, full: bool = False) -> dict[int, int]:
        w = self.widths
        for g in self.prunable:
            n = g.size if full else w[g.id]
            w[g.id] = int(self.options.counts(g, n)[0])
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
            why = self.options.check_mask(g, keep)
            if why is not None:
                raise HalpError(why)
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
        orders, kgroups = self.options.knapsack_items(self.prunable, self.keep, scores)
        rules = [self.config.contribution]
        if self.config.contribution == "two_sided":
            # one-sided costs use the current (largest) input widths: an upper bound when the
            # table is monotone, so it meets the target where the linearisation keeps missing it
            rules.append("one_sided")
        sel = select_widths(kgroups, rules, target_ms, widths, self.layers, self.groups,
                            self.latency_model, self.predict_ms, self.config.resolution_ms)
        chosen, predicted, rule_used, repairs = sel.widths, sel.predicted_ms, sel.rule, sel.repairs
        if chosen is None:
            # Fall back to the smallest allowed widths if even those meet the target.
            chosen, rule_used = self._min_widths(), "min_widths"
            predicted = self.predict_ms(chosen)
            if predicted > target_ms:
                raise HalpError(self._infeasible_message(target_ms, predicted))
        if sel.solution is not None:
            objective = float(sel.solution.objective)
            error_bound = float(sel.solution.error_bound_ms)
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
