"""halp_trt.pruning.knapsack against brute force, scipy's HiGHS MILP and the plain reference DP."""

import itertools
import math

import numpy as np
import pytest
from scipy.optimize import Bounds, LinearConstraint, milp

from halp_trt.errors import HalpError
from halp_trt.pruning.knapsack import KnapsackGroup, min_cost_ms, solve_knapsack, solve_reference_dp


def random_groups(rng, n_groups, max_options, cost_units=None, resolution_ms=1e-3):
    """Random groups: values mostly non-decreasing (cumulative importance) with ties, else random;
    costs non-monotone, whole multiples of resolution_ms (up to cost_units) or continuous."""
    groups = []
    for g in range(n_groups):
        n = int(rng.integers(1, max_options + 1))
        if rng.random() < 0.7:
            values = np.cumsum(np.round(rng.random(n) * 3))  # integer steps: many ties
        else:
            values = np.round(rng.random(n) * 5, 1)
        if cost_units is not None:
            costs = rng.integers(0, cost_units + 1, n) * resolution_ms
        else:
            costs = rng.random(n) * 2.0
        groups.append(KnapsackGroup(f"g{g}", np.arange(1, n + 1) * 8, values, costs))
    return groups


def brute_force(groups, budget_ms):
    best = -math.inf
    for combo in itertools.product(*(range(len(g.counts)) for g in groups)):
        if math.fsum(g.costs[j] for g, j in zip(groups, combo)) <= budget_ms:
            best = max(best, math.fsum(g.values[j] for g, j in zip(groups, combo)))
    return best


def discretized_brute_force(groups, budget_ms, resolution_ms):
    """Optimum of the discretised problem the solver claims to solve exactly: each cost above its
    group's minimum rounded up to whole units (1e-6 unit float tolerance; non-zero ones >= 1)."""
    units = []
    for g in groups:
        extra = g.costs - g.costs.min()
        u = np.ceil(extra / resolution_ms - 1e-6)
        units.append(np.where(extra > 0, np.maximum(u, 1), 0))
    capacity = math.floor((budget_ms - min_cost_ms(groups)) / resolution_ms + 1e-6)
    best = -math.inf
    for combo in itertools.product(*(range(len(g.counts)) for g in groups)):
        if sum(u[j] for u, j in zip(units, combo)) <= capacity:
            best = max(best, math.fsum(g.values[j] for g, j in zip(groups, combo)))
    return best


def check_solution(groups, sol, budget_ms):
    assert len(sol.choice) == len(groups)
    assert sol.kept == [int(g.counts[j]) for g, j in zip(groups, sol.choice)]
    assert sol.predicted_ms == math.fsum(g.costs[j] for g, j in zip(groups, sol.choice))
    assert sol.objective == math.fsum(g.values[j] for g, j in zip(groups, sol.choice))
    assert sol.predicted_ms <= budget_ms
    assert 0.0 <= sol.error_bound_ms


def milp_optimum(groups, budget_ms):
    values = np.concatenate([g.values for g in groups])
    costs = np.concatenate([g.costs for g in groups])
    one_hot = np.zeros((len(groups), len(values)))
    start = 0
    for i, g in enumerate(groups):
        one_hot[i, start:start + len(g.counts)] = 1
        start += len(g.counts)
    res = milp(-values, integrality=np.ones(len(values)), bounds=Bounds(0, 1),
               constraints=[LinearConstraint(one_hot, 1, 1),
                            LinearConstraint(costs[None, :], -np.inf, budget_ms)],
               options={"mip_rel_gap": 0.0})
    assert res.status == 0, res.message
    return -res.fun


@pytest.mark.parametrize("resolution_ms", [1.0, 0.25, 1e-3])
def test_equals_brute_force_on_grid_costs(resolution_ms):
    # Costs on the resolution grid: the discretisation is exact, so the optimum must match exactly.
    rng = np.random.default_rng(int(resolution_ms * 1000))
    for _ in range(150):
        groups = random_groups(rng, int(rng.integers(1, 5)), 5, 6, resolution_ms)
        low, high = min_cost_ms(groups), sum(g.costs.max() for g in groups)
        units = int(rng.integers(round(low / resolution_ms), round(high / resolution_ms) + 2))
        # 1 and 0.25 are exact in binary, so budgets may sit on the grid; 1e-3 is not: stay mid-grid
        budget = units * resolution_ms if resolution_ms != 1e-3 else (units + 0.5) * resolution_ms
        best = brute_force(groups, budget)
        for solve in (solve_knapsack, solve_reference_dp):
            sol = solve(groups, budget, resolution_ms)
            check_solution(groups, sol, budget)
            assert sol.objective == pytest.approx(best, abs=1e-9)
            assert sol.error_bound_ms < 1e-9


def test_off_grid_costs_within_error_bound():
    # Continuous costs: feasible, and at least the true optimum at budget - error bound.
    rng = np.random.default_rng(7)
    for _ in range(200):
        groups = random_groups(rng, int(rng.integers(1, 5)), 5)
        resolution_ms = float(rng.choice([0.3, 0.05, 1e-3]))
        budget = float(rng.uniform(min_cost_ms(groups), sum(g.costs.max() for g in groups) + 0.5))
        sol = solve_knapsack(groups, budget, resolution_ms)
        check_solution(groups, sol, budget)
        assert sol.error_bound_ms <= len(groups) * resolution_ms
        assert sol.objective <= brute_force(groups, budget) + 1e-9
        assert sol.objective >= brute_force(groups, budget - sol.error_bound_ms) - 1e-9
        # Exact for the discretisation, unless the unconstrained optimum fits (then it is returned
        # as is) or a unit was given up to float noise (bound reaches n x resolution).
        discretized = discretized_brute_force(groups, budget, resolution_ms)
        assert sol.objective >= discretized - 1e-9
        top_fits = sol.objective == math.fsum(g.values.max() for g in groups)
        if not top_fits and sol.error_bound_ms < len(groups) * resolution_ms:
            assert sol.objective == pytest.approx(discretized, abs=1e-9)


def test_exact_for_discretisation_with_coarse_resolution():
    # Several options per group share a rounded cost: the solver must keep the most valuable one.
    rng = np.random.default_rng(8)
    for _ in range(100):
        groups = [KnapsackGroup(f"g{i}", np.arange(6), np.sort(rng.random(6)), rng.random(6))
                  for i in range(3)]
        budget = float(rng.uniform(min_cost_ms(groups), sum(g.costs.max() for g in groups)))
        sol = solve_knapsack(groups, budget, 0.25)
        check_solution(groups, sol, budget)
        if sol.objective < math.fsum(g.values.max() for g in groups):
            best = discretized_brute_force(groups, budget, 0.25)
            assert sol.objective == pytest.approx(best, abs=1e-12)


def test_equals_highs_milp():
    rng = np.random.default_rng(11)
    for _ in range(25):
        groups = random_groups(rng, 6, 10, cost_units=2000)
        low, high = min_cost_ms(groups), sum(g.costs.max() for g in groups)
        budget = (round(rng.uniform(low, high) * 1000) + 0.5) / 1000  # mid-grid: unambiguous
        sol = solve_knapsack(groups, budget)
        check_solution(groups, sol, budget)
        assert sol.objective == pytest.approx(milp_optimum(groups, budget), abs=1e-6)


def test_off_grid_costs_against_highs_milp():
    rng = np.random.default_rng(12)
    for _ in range(15):
        groups = random_groups(rng, 6, 10)
        budget = float(rng.uniform(min_cost_ms(groups) + 0.1, sum(g.costs.max() for g in groups)))
        sol = solve_knapsack(groups, budget, 0.01)
        check_solution(groups, sol, budget)
        assert sol.objective <= milp_optimum(groups, budget) + 1e-6
        assert sol.objective >= milp_optimum(groups, budget - sol.error_bound_ms - 1e-5) - 1e-6


def test_matches_reference_dp_on_medium_instance():
    rng = np.random.default_rng(3)
    groups = []
    for g in range(8):
        counts = np.arange(1, 61)
        values = np.cumsum(np.sort(rng.lognormal(0, 1, 60))[::-1])
        costs = (200 + 40 * np.ceil(counts / 8) + rng.integers(0, 30, 60)) / 1000  # noisy staircase
        groups.append(KnapsackGroup(f"g{g}", counts, values, costs))
    low, high = min_cost_ms(groups), sum(g.costs.max() for g in groups)
    for frac in (0.2, 0.5, 0.8):
        budget = (round((low + frac * (high - low)) * 1000) + 0.5) / 1000
        fast, ref = solve_knapsack(groups, budget), solve_reference_dp(groups, budget)
        check_solution(groups, fast, budget)
        check_solution(groups, ref, budget)
        assert fast.objective == pytest.approx(ref.objective, abs=1e-9)


def test_budget_at_or_above_full_cost_keeps_max_value_options():
    rng = np.random.default_rng(5)
    for _ in range(50):
        groups = random_groups(rng, 5, 8)
        # the cheapest max-value option per group, at exactly its total cost, and more
        top = []
        for g in groups:
            best = np.flatnonzero(g.values == g.values.max())
            top.append(int(best[np.argmin(g.costs[best])]))
        exact = math.fsum(g.costs[j] for g, j in zip(groups, top))
        for budget in (exact, sum(g.costs.max() for g in groups) + 1.0, math.inf):
            sol = solve_knapsack(groups, budget)
            assert [g.values[j] for g, j in zip(groups, sol.choice)] == [g.values.max()
                                                                         for g in groups]
            assert sol.error_bound_ms == 0.0
            assert sol.predicted_ms <= budget


def test_float_noise_never_breaks_the_budget():
    # 0.1 + 0.2 > 0.3 in floats, though both costs are whole units of 1 us: keep only one of them.
    groups = [KnapsackGroup("a", np.array([0, 1]), np.array([0.0, 1.0]), np.array([0.0, 0.1])),
              KnapsackGroup("b", np.array([0, 1]), np.array([0.0, 1.0]), np.array([0.0, 0.2]))]
    for solve in (solve_knapsack, solve_reference_dp):
        sol = solve(groups, 0.3)
        check_solution(groups, sol, 0.3)
        assert sol.objective == 1.0
        assert sol.error_bound_ms >= 1e-3  # the unit given up is reported


def test_infeasible_budget_reports_minimum():
    groups = [KnapsackGroup("a", np.array([4, 8]), np.array([1.0, 2.0]), np.array([0.7, 0.9])),
              KnapsackGroup("b", np.array([8, 16]), np.array([1.0, 3.0]), np.array([1.25, 1.0]))]
    assert min_cost_ms(groups) == pytest.approx(1.7)
    for solve in (solve_knapsack, solve_reference_dp):
        with pytest.raises(HalpError, match="1.7000 ms"):
            solve(groups, 1.69)
    sol = solve_knapsack(groups, 1.7)  # exactly the minimum is feasible
    assert sol.choice == [0, 1] and sol.predicted_ms <= 1.7


def _group(**kw):
    base = dict(name="g", counts=np.array([1, 2]), values=np.array([1.0, 2.0]),
                costs=np.array([1.0, 2.0]))
    base.update(kw)
    return KnapsackGroup(**base)


@pytest.mark.parametrize("group, match", [
    (_group(counts=np.array([], int), values=np.array([]), costs=np.array([])), "no options"),
    (_group(values=np.array([1.0])), "different lengths"),
    (_group(values=np.array([1.0, np.nan])), "NaN"),
    (_group(costs=np.array([np.nan, 1.0])), "NaN"),
    (_group(costs=np.array([1.0, np.inf])), "infinity"),
    (_group(costs=np.ones((2, 1))), "1-D"),
    (_group(counts=np.array([1.5, 2.0])), "whole numbers"),
    (_group(counts=np.array([-1, 2])), "negative"),
    (_group(values=["a", "b"]), "numeric"),
])
def test_bad_groups_raise(group, match):
    with pytest.raises(HalpError, match=match):
        solve_knapsack([group], 10.0)
    with pytest.raises(HalpError, match=match):
        min_cost_ms([group])


@pytest.mark.parametrize("budget, resolution, match", [
    (10.0, 0.0, "resolution_ms"), (10.0, -1e-3, "resolution_ms"), (10.0, math.nan, "resolution_ms"),
    (math.nan, 1e-3, "NaN"),
])
def test_bad_budget_or_resolution_raise(budget, resolution, match):
    with pytest.raises(HalpError, match=match):
        solve_knapsack([_group()], budget, resolution)


def test_too_fine_resolution_raises_instead_of_exhausting_memory():
    groups = [_group(costs=np.array([0.0, 1000.0]), name=f"g{i}") for i in range(10)]
    with pytest.raises(HalpError, match="coarser resolution_ms"):
        solve_knapsack(groups, 5000.0, 1e-6)
