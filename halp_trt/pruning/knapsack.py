"""Exact latency-constrained channel selection for HALP (HALP's augmented knapsack).

Each pruning group offers options (keep the top-``counts[j]`` channels, worth ``values[j]``
importance, costing ``costs[j]`` ms); exactly one option per group is picked to maximise the
total importance with the total latency at most the budget: a multiple-choice knapsack (the
prefix constraint of HALP's augmented knapsack is already in the options). ``solve_knapsack`` is
a dynamic programme over integer cost units, exact for the discretised problem and fast at
channel granularity; ``solve_reference_dp`` is the plain O(items x capacity) DP of the
published HALP solver, kept only to compare against (tools/bench_knapsack.py)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from halp_trt.errors import HalpError

# Costs within this many resolution units above a grid point are treated as on the grid, so float
# noise (0.007 / 0.001 = 7.000000000000001) does not cost a whole unit. The possible under-count
# (at most this fraction of a unit per group) is caught by the exact feasibility check at the end.
_GRID_TOL_UNITS = 1e-6
# The DP keeps one float64 row of (capacity + 1) per group; refuse tables larger than this.
_MAX_TABLE_BYTES = 2 << 30


@dataclass
class KnapsackGroup:
    """One pruning group and the widths it may be pruned to (one option per allowed width)."""

    name: str
    counts: np.ndarray  # int, channels kept per option
    values: np.ndarray  # float, importance kept per option
    costs: np.ndarray  # float ms per option (predicted latency of the group's layers; any finite
    # value works, only differences within a group matter to the DP)


@dataclass
class KnapsackSolution:
    """The chosen option per group.

    Guarantee: ``predicted_ms <= budget_ms`` (checked on the undiscretised costs), and
    ``objective`` is at least the true optimum of the undiscretised problem at budget
    ``budget_ms - error_bound_ms``. ``error_bound_ms`` is the sum over groups of the largest
    amount by which rounding up to ``resolution_ms`` overstated an option's cost, plus one
    resolution per unit of capacity given up when float noise put the exact sum over the budget
    (rare). So it is below n_groups x resolution_ms, and ~0 (float noise) when all costs lie on the
    resolution grid relative to each group's cheapest option; 0 means exactly optimal at
    ``budget_ms`` (returned as is when every group's most valuable option fits).
    """

    choice: list[int]  # option index per group
    kept: list[int]  # counts[choice] per group
    predicted_ms: float  # exact (undiscretised) sum of the chosen costs
    objective: float  # sum of the chosen values
    error_bound_ms: float
    resolution_ms: float


def _checked(groups) -> list[tuple[str, np.ndarray, np.ndarray, np.ndarray]]:
    """Validate the groups; return (name, counts, values, costs) as 1-D numpy arrays."""
    out = []
    for i, g in enumerate(groups):
        name = getattr(g, "name", f"#{i}")
        try:
            counts = np.asarray(g.counts)
            values = np.asarray(g.values, dtype=np.float64)
            costs = np.asarray(g.costs, dtype=np.float64)
        except (AttributeError, TypeError, ValueError) as e:
            raise HalpError(f"knapsack group {name!r}: counts, values and costs must be numeric "
                            f"arrays ({e})") from None
        if counts.ndim != 1 or values.ndim != 1 or costs.ndim != 1:
            raise HalpError(f"knapsack group {name!r}: counts, values and costs must be 1-D arrays")
        if not len(counts) == len(values) == len(costs):
            raise HalpError(
                f"knapsack group {name!r}: counts, values and costs have different lengths "
                f"({len(counts)}, {len(values)}, {len(costs)}); they need one entry per option")
        if len(counts) == 0:
            raise HalpError(f"knapsack group {name!r} has no options; give it at least one width "
                            "to keep")
        for what, arr in (("values", values), ("costs", costs)):
            if not np.all(np.isfinite(arr)):
                raise HalpError(f"knapsack group {name!r}: {what} contain NaN or infinity "
                                f"(option {int(np.flatnonzero(~np.isfinite(arr))[0])})")
        if counts.dtype.kind not in "iu":
            whole = counts.dtype.kind == "f" and np.all(np.isfinite(counts))
            if not (whole and np.all(counts == np.round(counts))):
                raise HalpError(f"knapsack group {name!r}: counts must be whole numbers")
            counts = counts.astype(np.int64)
        if np.any(counts < 0):
            raise HalpError(f"knapsack group {name!r}: counts must not be negative")
        out.append((str(name), counts, values, costs))
    return out


def _as_float(x, what: str) -> float:
    try:
        return float(x)
    except (TypeError, ValueError):
        raise HalpError(f"{what} must be a number of milliseconds, got {x!r}") from None


def _check_resolution(resolution_ms) -> float:
    r = _as_float(resolution_ms, "resolution_ms")
    if not (math.isfinite(r) and r > 0):
        raise HalpError(f"resolution_ms must be a positive number, got {resolution_ms!r}")
    return r


def _check_budget(budget_ms, checked) -> float:
    """Return the budget as float; raise if it is NaN or below the cheapest possible choice."""
    budget = _as_float(budget_ms, "latency budget")
    if math.isnan(budget):
        raise HalpError("latency budget is NaN")
    floor_ms = math.fsum(float(c.min()) for _, _, _, c in checked)
    if budget < floor_ms:
        raise HalpError(
            f"latency budget {budget:.4f} ms is infeasible: the minimum achievable latency is "
            f"{floor_ms:.4f} ms (every group at its cheapest width); raise the target")
    return budget


def min_cost_ms(groups) -> float:
    """Smallest achievable total cost in ms (every group at its cheapest option)."""
    return math.fsum(float(c.min()) for _, _, _, c in _checked(groups))


def _solution(checked, choice: list[int], resolution_ms: float,
              error_bound_ms: float) -> KnapsackSolution:
    return KnapsackSolution(
        choice=[int(j) for j in choice],
        kept=[int(counts[j]) for (_, counts, _, _), j in zip(checked, choice)],
        predicted_ms=math.fsum(float(c[j]) for (_, _, _, c), j in zip(checked, choice)),
        objective=math.fsum(float(v[j]) for (_, _, v, _), j in zip(checked, choice)),
        error_bound_ms=float(error_bound_ms),
        resolution_ms=resolution_ms,
    )


def _frontier(values: np.ndarray, costs: np.ndarray) -> np.ndarray:
    """Indices of the options not Pareto-dominated, by ascending cost (values strictly ascending).

    An option whose value is not strictly greater than that of some option costing no more can be
    swapped for that option in any solution without losing value or feasibility, so dropping it
    keeps the optimum. Ties (equal cost and value) keep the lowest index.
    """
    order = np.lexsort((np.arange(len(costs)), -values, costs))  # cost asc, value desc, index asc
    v = values[order]
    best_before = np.maximum.accumulate(np.concatenate(([-np.inf], v[:-1])))
    return order[v > best_before]


def _units(cost_ms: np.ndarray, resolution_ms: float) -> np.ndarray:
    """Costs rounded up to whole resolution units (within the float-noise tolerance)."""
    x = cost_ms / resolution_ms
    w = np.ceil(x - _GRID_TOL_UNITS)
    w[cost_ms > 0] = np.maximum(w[cost_ms > 0], 1)  # only a truly free option may weigh 0 units
    return w.astype(np.int64)


def _dp_rows(weights: list[np.ndarray], values: list[np.ndarray], capacity: int) -> np.ndarray:
    """rows[g][k] = best value of groups 0..g with total weight <= k, valid where later groups can
    still reach ``capacity`` (-inf below). Every group has a 0-weight option, so rows are finite and
    non-decreasing there."""
    n = len(weights)
    spans = np.array([int(w[-1]) for w in weights], dtype=np.int64)
    reach = np.cumsum(spans)  # most weight groups 0..g can use: rows are flat beyond it
    rest = int(spans.sum()) - reach  # most weight groups g+1.. can use: smaller k is never traced
    rows = np.empty((n, capacity + 1))
    prev = np.zeros(capacity + 1)
    tmp = np.empty(capacity + 1)
    for g in range(n):
        lo, hi = max(0, capacity - int(rest[g])), min(capacity, int(reach[g]))
        row = rows[g]
        row[:lo] = -np.inf
        np.add(prev[lo:hi + 1], values[g][0], out=row[lo:hi + 1])  # option 0 weighs 0
        for w, v in zip(weights[g][1:].tolist(), values[g][1:].tolist()):
            start = max(lo, w)
            if start > hi:
                break  # weights ascend: no further option fits
            t = tmp[:hi + 1 - start]
            np.add(prev[start - w:hi + 1 - w], v, out=t)
            np.maximum(row[start:hi + 1], t, out=row[start:hi + 1])
        row[hi + 1:] = row[hi]
        prev = row
    return rows


def _trace(rows: np.ndarray, weights, values, capacity: int) -> list[int]:
    """Frontier position chosen per group for the optimum at ``capacity``: recompute each group's
    candidates exactly as the DP did and take the argmax (any maximiser is optimal)."""
    n = len(weights)
    picks = [0] * n
    k = capacity
    for g in range(n - 1, -1, -1):
        w = weights[g]
        m = int(np.searchsorted(w, k, side="right"))  # options that fit in k
        cand = values[g][:m] + (rows[g - 1][k - w[:m]] if g else 0.0)
        j = int(np.argmax(cand))
        picks[g] = j
        k -= int(w[j])
    return picks


def solve_knapsack(groups: list[KnapsackGroup], budget_ms: float,
                   resolution_ms: float = 1e-3) -> KnapsackSolution:
    """Pick one option per group maximising total value with total cost <= ``budget_ms``.

    Costs are rounded up to ``resolution_ms`` (relative to each group's cheapest option), so the
    discretised optimum is truly feasible; the DP is exact for that discretisation. See
    ``KnapsackSolution`` for the guarantee. Fast because it drops Pareto-dominated options (a
    staircase latency curve leaves one per step); measures each group's costs from its cheapest
    option, so the capacity is only the budget left after every group's minimum, capped by the
    sum of the groups' cost spans; updates a whole capacity row per option with numpy, only
    over capacities a group can affect; and keeps one float row per group instead of an items x
    capacity keep matrix (the traceback recomputes each argmax from the previous row). Raises
    ``HalpError`` for bad input or a budget below ``min_cost_ms(groups)``.
    """
    checked = _checked(groups)
    r = _check_resolution(resolution_ms)
    budget = _check_budget(budget_ms, checked)
    if not checked:
        return _solution(checked, [], r, 0.0)
    fronts = [_frontier(v, c) for _, _, v, c in checked]

    # The unconstrained optimum (each group's most valuable option) is exact when it fits.
    top = [int(f[-1]) for f in fronts]
    if _solution(checked, top, r, 0.0).predicted_ms <= budget:
        return _solution(checked, top, r, 0.0)

    weights, vals, idxs = [], [], []
    bound_ms = 0.0
    for (_, _, v, c), f in zip(checked, fronts):
        extra_ms = c[f] - c[f[0]]  # cost above the group's cheapest option
        w = _units(extra_ms, r)
        bound_ms += max(0.0, float(np.max(w * r - extra_ms)))  # worst rounding-up in this group
        last = np.append(w[1:] != w[:-1], True)  # equal weight: keep only the most valuable
        weights.append(w[last])
        vals.append(v[f][last])
        idxs.append(f[last])
    spare_ms = budget - math.fsum(float(c.min()) for _, _, _, c in checked)
    capacity = min(math.floor(spare_ms / r + _GRID_TOL_UNITS), sum(int(w[-1]) for w in weights))
    table_bytes = len(weights) * (capacity + 1) * 8
    if table_bytes > _MAX_TABLE_BYTES:
        raise HalpError(
            f"knapsack table would need {table_bytes / 2**30:.1f} GiB ({capacity + 1} cost units "
            f"of {r} ms x {len(weights)} groups); use a coarser resolution_ms")

    while True:
        rows = _dp_rows(weights, vals, capacity)
        picks = _trace(rows, weights, vals, capacity)
        choice = [int(ix[p]) for ix, p in zip(idxs, picks)]
        sol = _solution(checked, choice, r, bound_ms)
        if sol.predicted_ms <= budget:
            return sol
        # Float noise within the grid tolerance put the exact sum over the budget: give up one unit
        # of capacity (and of the guarantee) and solve again. Capacity 0 is the all-cheapest choice,
        # which _check_budget proved feasible, so this ends.
        capacity -= 1
        bound_ms += r


def solve_reference_dp(groups: list[KnapsackGroup], budget_ms: float,
                       resolution_ms: float = 1e-3) -> KnapsackSolution:
    """Plain O(items x capacity) DP with a full boolean keep matrix, like the published HALP solver.

    Every option is an item, costs are absolute (rounded up to ``resolution_ms``), the capacity is
    the whole budget, and there is no pruning of dominated options or capacities. For comparison
    only (tools/bench_knapsack.py): memory is items x (budget / resolution) bytes.
    """
    checked = _checked(groups)
    r = _check_resolution(resolution_ms)
    budget = _check_budget(budget_ms, checked)
    if any(np.any(c < 0) for _, _, _, c in checked) or not math.isfinite(budget):
        raise HalpError("the reference DP needs non-negative costs and a finite budget")
    capacity = math.floor(budget / r + _GRID_TOL_UNITS)
    units = [_units(c, r) for _, _, _, c in checked]
    n_items = sum(len(u) for u in units)
    keep = np.zeros((n_items, capacity + 1), dtype=bool)  # keep[item, k]: item is best so far at k
    f = np.zeros(capacity + 1)
    item = 0
    for (_, _, v, _), u in zip(checked, units):
        new = np.full(capacity + 1, -np.inf)
        for j in range(len(u)):
            w = int(u[j])
            if w <= capacity:
                cand = f[:capacity + 1 - w] + v[j]
                better = cand > new[w:]
                np.maximum(new[w:], cand, out=new[w:])
                keep[item, w:] = better
            item += 1
        f = new
    if not np.isfinite(f[capacity]):
        raise HalpError("no choice fits the budget once costs are rounded up to the resolution; "
                        "use a finer resolution_ms")
    bound_ms = sum(max(0.0, float(np.max(u * r - c))) for u, (_, _, _, c) in zip(units, checked))
    k_top = capacity
    while True:
        choice, k, item = [], k_top, n_items
        for u in reversed(units):
            item -= len(u)
            # the option chosen at k is the last one that improved it
            j = next(j for j in range(len(u) - 1, -1, -1) if keep[item + j, k])
            choice.append(j)
            k -= int(u[j])
        choice.reverse()
        sol = _solution(checked, choice, r, bound_ms)
        if sol.predicted_ms <= budget:
            return sol
        k_top -= 1  # float noise, as in solve_knapsack
        bound_ms += r
        if k_top < 0 or not np.isfinite(f[k_top]):
            raise HalpError("no choice fits the budget at this resolution; use a finer "
                            "resolution_ms")
