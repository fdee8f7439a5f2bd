"""One pruning step's widths: a knapsack over each group's importance-ordered options (keep the
best k channels), its latency costs linearised around the current widths, repaired until the
table's own whole-model prediction meets the target."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable, Sequence

import torch

from halp_trt.errors import HalpError
from halp_trt.pruning.contributions import option_costs
from halp_trt.pruning.knapsack import KnapsackGroup, solve_knapsack

# Attempts at tightening the budget when the true prediction exceeds the knapsack's estimate
# (two-sided linearisation, or a non-monotone table).
REPAIR_ATTEMPTS = 12
RELINEARIZE = 4  # of those, re-linearisations of the two-sided costs around the trial


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


@dataclass
class Selection:
    widths: dict[int, int] | None  # group id -> channels kept; None: no rule met the target
    predicted_ms: float | None
    solution: object | None  # the knapsack's solution (objective, error bound)
    rule: str | None  # the contribution rule whose costs gave it
    repairs: int


def select_widths(kgroups: Sequence, rules: Sequence[str], target_ms: float,
                  widths: dict[int, int], layers, groups, latency_model,
                  predict_ms: Callable[[dict[int, int]], float],
                  resolution_ms: float) -> Selection:
    """``kgroups``: (group, counts, values) per prunable group — the channel counts it may keep
    and the importance each keeps. Tries each contribution rule of ``rules`` in order until
    one's solution is predicted at or under ``target_ms``."""
    options = {g.id: counts for g, counts, _ in kgroups}
    repairs = 0
    for rule in rules:
        oc = option_costs(rule, layers, groups, widths, latency_model, options)
        budget_ms = target_ms - oc.constant_ms
        for _ in range(REPAIR_ATTEMPTS):
            knap = [KnapsackGroup(g.root, counts, values, oc.costs_ms[g.id])
                    for g, counts, values in kgroups]
            try:
                sol = solve_knapsack(knap, budget_ms, resolution_ms)
            except HalpError:
                break  # below this rule's minimum: try the next rule, then the fallback
            trial = dict(widths)
            trial.update({g.id: k for (g, _, _), k in zip(kgroups, sol.kept)})
            predicted = predict_ms(trial)
            if predicted <= target_ms:
                return Selection(trial, predicted, sol, rule, repairs)
            repairs += 1
            if rule == "two_sided" and repairs <= RELINEARIZE:
                # The linearisation around the current widths misses the cross terms of
                # groups shrinking together (conv cost ~ c_in·c_out): re-linearise around
                # the trial widths, where the solution will be, and solve again.
                oc = option_costs(rule, layers, groups, trial, latency_model, options)
                budget_ms = target_ms - oc.constant_ms
            else:
                # The estimate is still optimistic: tighten by the overshoot, solve again.
                budget_ms -= (predicted - target_ms) + resolution_ms
    return Selection(None, None, None, None, repairs)
