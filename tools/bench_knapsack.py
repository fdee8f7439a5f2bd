#!/usr/bin/env python3
"""Benchmark halp_trt.pruning.knapsack on ResNet-50-scale instances (seeded, synthetic).

    python tools/bench_knapsack.py [--json PATH] [--dump DIR] [--quick]

Instances: ResNet-50-like groups with options at every channel count and at multiples of 8 and
32; seeded lognormal importance; a staircase latency ``a + b·ceil(c/8) + d·ceil(c/32)`` µs
scaled to ~60 ms, plus "noisy" (0.5% lognormal per option: non-monotone) and "linear" (no
steps) instances. Budget 50% of the unpruned cost, resolution 1 µs. Each is solved by
``solve_knapsack`` (best of 3; tracemalloc peak), by the plain reference DP where its size
allows, and by scipy's HiGHS MILP (exact costs), and the objectives are compared."""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np

try:
    import halp_trt  # noqa: F401
except ImportError:  # run from a checkout without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from halp_trt.pruning.knapsack import KnapsackGroup, solve_knapsack, solve_reference_dp

HIGHS_LIMIT_S = 300.0

RESOLUTION_MS = 1e-3
FULL_MS = 60.0
BUDGET_FRACTION = 0.5
# ResNet-50 stages: (blocks, bottleneck width, output width)
STAGES = [(3, 64, 256), (4, 128, 512), (6, 256, 1024), (3, 512, 2048)]
# Reference DP limits and cost model (fitted on this 2-core machine): its keep matrix is one byte
# per item x capacity cell; time ~ cells * REF_NS_PER_CELL + items * REF_US_PER_ITEM.
REF_MAX_BYTES = 4e9
REF_MAX_S = 120.0
REF_NS_PER_CELL = 3.0
REF_US_PER_ITEM = 15.0


def resnet50_widths(all_convs: bool) -> list[tuple[str, int]]:
    """37 groups: stem, each block's conv2 and conv3, each stage's downsample; or all 53 convs."""
    out = [("conv1", 64)]
    for s, (blocks, mid, wide) in enumerate(STAGES, start=1):
        for b in range(blocks):
            if all_convs:
                out.append((f"layer{s}.{b}.conv1", mid))
            out += [(f"layer{s}.{b}.conv2", mid), (f"layer{s}.{b}.conv3", wide)]
        out.append((f"layer{s}.0.downsample", wide))
    return out


def build_instance(name: str, widths, granularity: int, model: str = "staircase",
                   seed: int = 0) -> dict:
    """Groups with options at granularity, 2 * granularity, ..., width; plus what --dump needs."""
    rng = np.random.default_rng(seed)
    noise = np.random.default_rng(seed + 1)
    shares = rng.uniform(0.6, 1.4, len(widths))
    full_us = shares / shares.sum() * FULL_MS * 1000.0
    groups, raw = [], []
    for (gname, width), full in zip(widths, full_us):
        importance = np.sort(rng.lognormal(-7.0, 1.0, width))[::-1]
        base_us = max(1, round(0.15 * full))
        step8_us = max(1, round(0.6 * (full - base_us) / (width / 8)))
        jump32_us = max(1, round(0.4 * (full - base_us) / math.ceil(width / 32)))
        counts = np.arange(granularity, width + 1, granularity)
        cost_us = base_us + step8_us * np.ceil(counts / 8) + jump32_us * np.ceil(counts / 32)
        cost_ms = cost_us / 1000.0
        if model == "noisy":
            cost_ms = cost_ms * noise.lognormal(0.0, 0.005, len(counts))
        elif model == "linear":
            cost_ms = cost_ms[-1] * (0.1 + 0.9 * counts / width)
        groups.append(KnapsackGroup(gname, counts, np.cumsum(importance)[counts - 1], cost_ms))
        raw.append((importance, cost_ms))
    full_ms = sum(float(g.costs[-1]) for g in groups)
    return {"name": name, "granularity": granularity, "groups": groups, "raw": raw,
            "on_grid": model == "staircase", "budget_ms": BUDGET_FRACTION * full_ms,
            "full_ms": full_ms}


def dump_instance(inst: dict, kept: list[int], path: Path) -> None:
    """Items in importance order: value = importance of the item's channels, cost = marginal ms."""
    gran = inst["granularity"]
    groups = []
    for g, (importance, cost_ms), k in zip(inst["groups"], inst["raw"], kept):
        item_value = importance.reshape(-1, gran).sum(axis=1)
        item_cost_ms = np.diff(cost_ms, prepend=0.0)  # first item carries the fixed cost
        items = [{"value": float(v), "cost": float(c)} for v, c in zip(item_value, item_cost_ms)]
        groups.append({"name": g.name, "width": int(g.counts[-1]), "channels_per_item": gran,
                       "items": items, "kept": k})
    path.write_text(json.dumps({"name": inst["name"], "granularity": gran,
                                "budget": inst["budget_ms"], "cost_unit": "ms",
                                "resolution_ms": RESOLUTION_MS, "groups": groups}))


def solve_highs(groups, budget_ms: float, limit_s: float):
    """The same multiple-choice problem as a MILP for HiGHS: (seconds, objective or None, note)."""
    from scipy.optimize import Bounds, LinearConstraint, milp
    from scipy.sparse import csr_matrix

    values = np.concatenate([g.values for g in groups])
    costs = np.concatenate([g.costs for g in groups])
    rows = np.concatenate([np.full(len(g.counts), i) for i, g in enumerate(groups)])
    one_hot = csr_matrix((np.ones(len(values)), (rows, np.arange(len(values)))),
                         shape=(len(groups), len(values)))
    t0 = time.perf_counter()
    res = milp(-values, integrality=np.ones(len(values)), bounds=Bounds(0, 1),
               constraints=[LinearConstraint(one_hot, 1, 1),
                            LinearConstraint(csr_matrix(costs[None, :]), -np.inf, budget_ms)],
               options={"mip_rel_gap": 1e-9, "time_limit": limit_s})
    took = time.perf_counter() - t0
    if res.x is None:
        return took, None, f"HiGHS: no solution in {limit_s:.0f} s ({res.message})"
    return took, float(-res.fun), f"HiGHS {took:.2f} s, status {res.status} ({res.message})"


def run(inst: dict, dump_dir: Path | None, highs_limit_s: float = HIGHS_LIMIT_S) -> dict:
    groups, budget = inst["groups"], inst["budget_ms"]
    n_items = sum(len(g.counts) for g in groups)
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        sol = solve_knapsack(groups, budget, RESOLUTION_MS)
        times.append(time.perf_counter() - t0)
    tracemalloc.start()
    solve_knapsack(groups, budget, RESOLUTION_MS)
    peak_mb = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()

    capacity = math.floor(budget / RESOLUTION_MS) + 1
    cells = n_items * capacity
    est_s = cells * REF_NS_PER_CELL * 1e-9 + n_items * REF_US_PER_ITEM * 1e-6
    ref_s = same = None
    if cells > REF_MAX_BYTES or est_s > REF_MAX_S:
        ref_note = (f"reference DP skipped: estimated keep matrix {cells / 1e9:.1f} GB, "
                    f"~{est_s:.0f} s (from {n_items} items x {capacity} capacity cells)")
    else:
        t0 = time.perf_counter()
        ref = solve_reference_dp(groups, budget, RESOLUTION_MS)
        ref_s = time.perf_counter() - t0
        ref_note = (f"reference DP {ref_s:.2f} s (estimated {est_s:.1f} s, keep matrix "
                    f"{cells / 1e9:.2f} GB), objective {ref.objective:.9g}")
        rel_diff = (sol.objective - ref.objective) / max(1.0, abs(sol.objective))
        if inst["on_grid"]:  # both discretisations are exact: the optima must agree
            same = abs(rel_diff) <= 1e-9
            ref_note += " -> SAME" if same else " -> MISMATCH"
        else:  # off-grid costs: absolute vs per-group rounding, optima agree only within bounds
            ref_note += f" (off-grid costs, rounded differently: rel. difference {rel_diff:+.1e})"
        if same is False:
            print(f"ERROR: objectives differ on {inst['name']}: {sol.objective!r} vs "
                  f"{ref.objective!r}")
    highs_s, highs_obj, highs_note = solve_highs(groups, budget, highs_limit_s)
    if highs_obj is not None:
        # HiGHS uses exact costs; ours are exact on the grid, within the error bound off it
        highs_note += (f", objective {highs_obj:.9g}, ours / HiGHS "
                       f"{sol.objective / highs_obj:.9f}")
    print(f"{inst['name']:<22} items {n_items:>6}  solve {min(times):.3f} s  "
          f"peak {peak_mb:6.1f} MB  objective {sol.objective:.9g}  predicted "
          f"{sol.predicted_ms:.3f} / budget {budget:.3f} ms (full {inst['full_ms']:.3f}, "
          f"bound {sol.error_bound_ms:.2g} ms)\n    {ref_note}\n    {highs_note}")
    if dump_dir is not None:
        dump_instance(inst, sol.kept, dump_dir / f"{inst['name']}.json")
    return {"name": inst["name"], "granularity": inst["granularity"], "n_items": n_items,
            "solve_s": min(times), "peak_mb": peak_mb, "objective": sol.objective,
            "reference_dp_s": ref_s, "objectives_match": same, "highs_s": highs_s,
            "highs_objective": highs_obj}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", type=Path, help="write the figures as JSON here")
    ap.add_argument("--dump", type=Path, help="write each instance (items, budget, kept) here")
    ap.add_argument("--quick", action="store_true", help="first 13 groups only, for CI smoke runs")
    ap.add_argument("--highs-limit-s", type=float, default=HIGHS_LIMIT_S,
                    help="time limit for each HiGHS MILP solve")
    args = ap.parse_args(argv)
    if args.dump:
        args.dump.mkdir(parents=True, exist_ok=True)

    widths = resnet50_widths(all_convs=False)
    specs = [("resnet50-37g", widths, g, "staircase") for g in (1, 8, 32)]
    if args.quick:
        specs = [("resnet50q-13g", widths[:13], g, "staircase") for g in (1, 8)]
    else:
        specs += [("resnet50-53conv", resnet50_widths(all_convs=True), 1, "staircase"),
                  ("resnet50-37g-noisy", widths, 1, "noisy"),
                  ("resnet50-37g-linear", widths, 1, "linear")]
    print(f"budget {BUDGET_FRACTION:.0%} of the unpruned cost, resolution "
          f"{RESOLUTION_MS * 1000:g} us; solve time best of 3, peak = tracemalloc peak "
          "(Python + numpy allocations)")
    results = [run(build_instance(f"{name}-g{g}", w, g, model), args.dump, args.highs_limit_s)
               for name, w, g, model in specs]
    if args.json:
        args.json.write_text(json.dumps({"instances": results}, indent=1))
    return 0 if all(r["objectives_match"] is not False for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
