#!/usr/bin/env python
"""How far apart do sessions of one graph read, and what does warm-up per visit change?

Models: resnet18 and the same ResNet at half width, 10 classes, 1x3x64x64, seeded weights.
1. Spread (max/min - 1 of per-session minima, 8 sessions of one graph) by untimed runs per
   visit (1/2/4/8), sessions visited in build order (``fixed``) or shuffled per round.
2. ``compare_onnx(resnet18, half width)`` with the old protocol and with ``model_protocol()``,
   in ``--processes`` fresh processes: point ratio, ratio over session pairs, spreads.

    python tools/bench_session_spread.py --json tools/results/session_spread.json
    python tools/bench_session_spread.py --quick      # smoke check; writes nothing to results

Run it alone on the machine (about 5-6 minutes); it says which machine it ran on."""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results")
UNTIMED_RUNS = (1, 2, 4, 8)
SESSIONS = 8
INPUT_SHAPE = (1, 3, 64, 64)
WIDTHS = {"full": 64, "narrow": 32}  # first stage's width; stages double it
LABELS = {"full": "resnet18", "narrow": "half width"}
QUICK = {"rounds": 4, "compare_rounds": 3, "processes": 1, "seeds": [0]}


def build_models(seed: int = 0) -> dict[str, bytes]:
    """ONNX bytes of resnet18 and its half-width copy (random weights from ``seed``)."""
    import torch

    from halp_trt.runtime.export import export_onnx

    x = torch.randn(*INPUT_SHAPE, generator=torch.Generator().manual_seed(seed))
    return {name: export_onnx(_resnet(width, seed), x) for name, width in WIDTHS.items()}


def _resnet(width: int, seed: int):
    import torch
    from torch import nn
    from torchvision.models.resnet import BasicBlock, ResNet

    torch.manual_seed(seed)
    m = ResNet(BasicBlock, [2, 2, 2, 2], num_classes=10)
    if width == 64:
        return m
    # torchvision's ResNet fixes BasicBlock widths at 64-512; rebuild the stem and the stages
    # with its own _make_layer so the graph is the same apart from the widths.
    m.inplanes = width
    m.conv1 = nn.Conv2d(3, width, kernel_size=7, stride=2, padding=3, bias=False)
    m.bn1 = nn.BatchNorm2d(width)
    m.layer1 = m._make_layer(BasicBlock, width, 2)
    m.layer2 = m._make_layer(BasicBlock, 2 * width, 2, stride=2)
    m.layer3 = m._make_layer(BasicBlock, 4 * width, 2, stride=2)
    m.layer4 = m._make_layer(BasicBlock, 8 * width, 2, stride=2)
    m.fc = nn.Linear(8 * width, 10)
    return m


def _sweep_protocol(rounds: int, untimed: int, sessions: int, seed: int = 0):
    from halp_trt.runtime.protocol import Protocol

    # Whole models: warm (no eviction), one run per sample, no warm_ms: untimed runs as given.
    return Protocol(rounds=rounds, untimed_runs_per_round=untimed, cold_above_bytes=2 ** 62,
                    min_sample_ms=0.0, sessions_per_graph=sessions, seed=seed)


def _spread(minima_ms: list[float]) -> float:
    return max(minima_ms) / min(minima_ms) - 1.0


def untimed_sweep(backend, models: dict[str, bytes], rounds: int, seeds: list[int]) -> list[dict]:
    """Part 1: per-session minima and spread by untimed runs per visit, both layouts."""
    from halp_trt.runtime.protocol import measure_sessions

    rows = []
    for untimed in UNTIMED_RUNS:
        for name, onnx_bytes in models.items():
            stats = measure_sessions(backend, {name: onnx_bytes},
                                     _sweep_protocol(rounds, untimed, SESSIONS))[name]
            rows.append(_row("fixed", name, untimed, None, stats.session_estimates("min")))
            for seed in seeds:
                keys = {(name, i): onnx_bytes for i in range(SESSIONS)}
                stats = measure_sessions(backend, keys, _sweep_protocol(rounds, untimed, 1, seed))
                rows.append(_row("shuffled", name, untimed, seed,
                                 [stats[k].combined.min_ms for k in keys]))
            print(f"  untimed {untimed} {name:6s} " + ", ".join(
                f"{r['layout']} {100 * r['spread']:.1f}%" for r in rows
                if r["untimed"] == untimed and r["model"] == name), flush=True)
    return rows


def _row(layout, model, untimed, seed, minima_ms) -> dict:
    return {"layout": layout, "model": model, "untimed": untimed, "seed": seed,
            "session_min_ms": [round(m, 4) for m in minima_ms],
            "spread": round(_spread(minima_ms), 4)}


def compare_worker(which: str, full_path: str, narrow_path: str, rounds: int) -> dict:
    """Part 2, in a fresh process: one compare_onnx of resnet18 vs the half-width copy."""
    from halp_trt.runtime import get_backend
    from halp_trt.runtime.deploy import compare_onnx
    from halp_trt.runtime.protocol import model_protocol

    protocol = model_protocol(rounds, sessions_per_graph=SESSIONS) if which == "after" else \
        _sweep_protocol(rounds, 1, SESSIONS)
    with open(full_path, "rb") as f, open(narrow_path, "rb") as g:
        full, narrow = f.read(), g.read()
    cmp = compare_onnx(get_backend("onnxruntime"), full, narrow, protocol)
    out = {"protocol": which, "warm_ms": protocol.warm_ms, "ratio": round(cmp.ratio, 4),
           "ratio_spread": [round(r, 4) for r in cmp.ratio_spread]}
    for model, stats, sessions in (("original", cmp.original, cmp.original_sessions),
                                   ("pruned", cmp.pruned, cmp.pruned_sessions)):
        minima = [s.min_ms for s in sessions]
        out[model] = {"min_ms": round(stats.min_ms, 4), "median_ms": round(stats.median_ms, 4),
                      "session_min_ms": [round(m, 4) for m in minima],
                      "spread": round(_spread(minima), 4)}
    return out


def compare_runs(models: dict[str, bytes], rounds: int, processes: int) -> dict[str, list]:
    """Part 2: before/after alternating, each run in a fresh interpreter."""
    from halp_trt.errors import HalpError

    out: dict[str, list] = {"before": [], "after": []}
    with tempfile.TemporaryDirectory(prefix="session_spread_") as tmp:
        paths = {}
        for name, onnx_bytes in models.items():
            paths[name] = os.path.join(tmp, f"{name}.onnx")
            with open(paths[name], "wb") as f:
                f.write(onnx_bytes)
        for i in range(processes):
            for which in ("before", "after"):
                cmd = [sys.executable, os.path.abspath(__file__), "--worker", which,
                       "--compare-rounds", str(rounds), paths["full"], paths["narrow"]]
                proc = subprocess.run(cmd, capture_output=True, text=True)
                if proc.returncode != 0:
                    raise HalpError(f"the {which} comparison process failed (exit "
                                    f"{proc.returncode}): {proc.stderr.strip()[-800:]}")
                run = json.loads(proc.stdout.strip().splitlines()[-1])
                out[which].append(run)
                print(f"  process {i + 1} {which:6s} ratio {run['ratio']:.3f} pairs "
                      f"{run['ratio_spread'][0]:.3f}-{run['ratio_spread'][1]:.3f} spread "
                      f"pruned {100 * run['pruned']['spread']:.1f}% original "
                      f"{100 * run['original']['spread']:.1f}%", flush=True)
    return out


def _versions() -> dict:
    import numpy
    import onnxruntime
    import torch
    import torchvision

    from halp_trt.version import __version__
    return {"python": platform.python_version(), "onnxruntime": onnxruntime.__version__,
            "torch": torch.__version__, "torchvision": torchvision.__version__,
            "numpy": numpy.__version__, "halp_trt": __version__}


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _sweep_cells(results: dict, layout: str, model: str) -> list[str]:
    cells = []
    for untimed in results["untimed_runs"]:
        got = [r for r in results["untimed_sweep"]
               if r["layout"] == layout and r["model"] == model and r["untimed"] == untimed]
        cell = ", ".join(_pct(r["spread"]) for r in got) or "–"
        if layout == "fixed" and got:  # its sessions can all read high together: say the level
            cell += f" ({_median(got[0]['session_min_ms']):.3f})"
        cells.append(cell)
    return cells


def _median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2]


def _model_ms(results: dict, model: str) -> float:
    """The model's typical per-session minimum at the most untimed runs (fixed layout)."""
    rows = [r for r in results["untimed_sweep"] if r["layout"] == "fixed" and r["model"] == model]
    return _median(max(rows, key=lambda r: r["untimed"])["session_min_ms"])


def _compare_cells(runs: list[dict], sep: str) -> dict[str, str]:
    """Part 2's figures of one protocol as text: each run's, or the range over runs."""
    def each(key):
        return sep.join(key(r) for r in runs)

    def span(lo, hi):
        return f"{min(lo(r) for r in runs):.3f}–{max(hi(r) for r in runs):.3f}"

    return {"pruned": each(lambda r: _pct(r["pruned"]["spread"])),
            "original": each(lambda r: _pct(r["original"]["spread"])),
            "ratio": each(lambda r: f"{r['ratio']:.3f}"),
            "pairs": span(lambda r: r["ratio_spread"][0], lambda r: r["ratio_spread"][1]),
            "sessions": span(lambda r: min(r["pruned"]["session_min_ms"]),
                             lambda r: max(r["pruned"]["session_min_ms"]))}


def markdown_section(results: dict) -> str:
    """A BENCHMARKS.md section (≤ 25 lines) of one run's results."""
    v = results["versions"]
    full_ms, narrow_ms = _model_ms(results, "full"), _model_ms(results, "narrow")
    n = results["untimed_runs"]
    seeds = ", ".join(map(str, results["seeds"]))
    lines = [
        f"## Session spread of whole-model readings ({results['machine'].split(' (')[0]})", "",
        f"`{results['command']}`", "",
        f"Machine: {results['machine']}, 2 shared vCPUs; ONNX Runtime {v['onnxruntime']} CPU, "
        f"1 thread, opt. ALL. resnet18 (10 classes, 1×3×64×64, ≈{full_ms:.2f} ms) and a "
        f"half-width copy (widths 32–256, ≈{narrow_ms:.2f} ms), random weights. {SESSIONS} "
        f"sessions of one graph, min over {results['rounds']} rounds; spread = max/min − 1 of "
        "the per-session minima, by untimed runs before each timed one. *fixed*: one graph, "
        "sessions visited in build order (as inside `compare_onnx`); *shuffled*: one session "
        f"per key, seeded shuffle each round (seeds {seeds}); (ms): median session minimum.",
        "",
        "| layout, model | " + " | ".join(map(str, n)) + " |", "|---|" + "---|" * len(n)]
    for layout in ("fixed", "shuffled"):
        for model in ("narrow", "full"):
            lines.append(f"| {layout}, {LABELS[model]} | " +
                         " | ".join(_sweep_cells(results, layout, model)) + " |")
    cmp = results["compare"]
    lines += [
        "", f"`compare_onnx(resnet18, half width)`, {SESSIONS} sessions/graph, "
        f"{results['compare_rounds']} rounds, {results['processes']} fresh processes each; "
        f"before: 1 untimed run per visit; after: `model_protocol()` (≥ "
        f"{results['model_warm_ms']:g} ms of untimed runs"
        + (f" and ≥ {results['model_warm_runs']} runs up to 30 ms"
           if results.get("model_warm_runs") else "") + "):", "",
        "| | spread, half width | spread, resnet18 | ratio | ratio over session pairs | "
        "half-width sessions (ms) |", "|---|---|---|---|---|---|"]
    for which in ("before", "after"):
        c = _compare_cells(cmp[which], ", ")
        lines.append(f"| {which} | {c['pruned']} | {c['original']} | {c['ratio']} | "
                     f"{c['pairs']} | {c['sessions']} |")
    lines.append("")
    return "\n".join(lines)


def _print_tables(results: dict) -> None:
    n = results["untimed_runs"]
    print(f"\n{results['machine']}; spread of {SESSIONS} sessions' minima by untimed runs "
          f"({results['rounds']} rounds; fixed: (median session minimum, ms))")
    print(f"{'layout':9s} {'model':10s} " + " ".join(f"{'N=' + str(u):>14s}" for u in n))
    for layout in ("fixed", "shuffled"):
        for model in ("narrow", "full"):
            print(f"{layout:9s} {LABELS[model]:10s} " +
                  " ".join(f"{c:>14s}" for c in _sweep_cells(results, layout, model)))
    print(f"\ncompare_onnx, {results['compare_rounds']} rounds, {results['processes']} "
          "processes each")
    print(f"{'protocol':8s} {'ratio':>20s} {'pairs':>12s} {'spread half':>20s} "
          f"{'spread r18':>20s}")
    for which in ("before", "after"):
        c = _compare_cells(results["compare"][which], " ")
        print(f"{which:8s} {c['ratio']:>20s} {c['pairs']:>12s} {c['pruned']:>20s} "
              f"{c['original']:>20s}  half-width sessions {c['sessions']} ms")


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, not {text!r}")
    return value


def _seeds(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        seeds = []
    if not seeds:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, not {text!r}")
    return seeds


def _command(a) -> str:
    parts = ["python tools/bench_session_spread.py"]
    if a.quick:
        parts.append("--quick")
    else:
        parts += [f"--rounds {a.rounds}", f"--compare-rounds {a.compare_rounds}",
                  f"--processes {a.processes}", "--seeds " + ",".join(map(str, a.seeds))]
    if a.json_path:
        parts.append(f"--json {a.json_path}")
    return " ".join(parts)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=_positive, default=100,
                    help="rounds of the untimed-runs sweep (part 1)")
    ap.add_argument("--compare-rounds", type=_positive, default=30,
                    help="rounds of each compare_onnx (part 2)")
    ap.add_argument("--processes", type=_positive, default=3,
                    help="fresh processes per protocol in part 2")
    ap.add_argument("--seeds", type=_seeds, default=[0, 1],
                    help="order seeds of the shuffled layout (part 1), comma-separated")
    ap.add_argument("--quick", action="store_true",
                    help=f"tiny runs for a smoke check ({QUICK['rounds']}/"
                         f"{QUICK['compare_rounds']} rounds, 1 process); not for tools/results")
    ap.add_argument("--json", dest="json_path", default=None)
    ap.add_argument("--worker", choices=("before", "after"), help=argparse.SUPPRESS)
    ap.add_argument("onnx", nargs="*", help=argparse.SUPPRESS)  # the worker's two graphs
    a = ap.parse_args(argv)

    from halp_trt.errors import HalpError
    try:
        if a.worker:
            if len(a.onnx) != 2:
                ap.error("--worker takes the original and the pruned ONNX paths")
            print(json.dumps(compare_worker(a.worker, a.onnx[0], a.onnx[1], a.compare_rounds)))
            return 0
        if a.onnx:
            ap.error(f"unexpected arguments: {' '.join(a.onnx)}")
        return _run(a)
    except HalpError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code


def _run(a) -> int:
    from halp_trt.errors import HalpError
    from halp_trt.runtime import get_backend
    from halp_trt.runtime.machine import cpu_identity, machine_class
    from halp_trt.runtime.protocol import MODEL_WARM_MS, MODEL_WARM_RUNS

    if a.quick:
        if a.json_path and os.path.abspath(a.json_path).startswith(RESULTS + os.sep):
            raise HalpError("--quick figures are a smoke check, not results: write its --json "
                            "outside tools/results (or drop --quick)")
        a.rounds, a.compare_rounds = QUICK["rounds"], QUICK["compare_rounds"]
        a.processes, a.seeds = QUICK["processes"], QUICK["seeds"]
    ident = cpu_identity()
    machine = machine_class(ident)
    print(f"building models on {machine}", flush=True)
    models = build_models(seed=0)
    t0 = time.perf_counter()
    print(f"part 1: untimed runs per visit, {a.rounds} rounds", flush=True)
    sweep = untimed_sweep(get_backend("onnxruntime"), models, a.rounds, a.seeds)
    sweep_s = time.perf_counter() - t0
    print(f"part 2: compare_onnx, {a.compare_rounds} rounds", flush=True)
    t0 = time.perf_counter()
    compare = compare_runs(models, a.compare_rounds, a.processes)
    results = {
        "machine": machine, "cpu": ident, "versions": _versions(), "quick": a.quick,
        "models": {name: {"first_stage_width": w, "onnx_bytes": len(models[name]),
                          "input_shape": list(INPUT_SHAPE), "classes": 10, "weights_seed": 0}
                   for name, w in WIDTHS.items()},
        "sessions_per_graph": SESSIONS, "untimed_runs": list(UNTIMED_RUNS),
        "rounds": a.rounds, "seeds": a.seeds, "compare_rounds": a.compare_rounds,
        "processes": a.processes, "model_warm_ms": MODEL_WARM_MS,
        "model_warm_runs": MODEL_WARM_RUNS,
        "untimed_sweep": sweep, "compare": compare,
        "wall_s": {"sweep": round(sweep_s, 1), "compare": round(time.perf_counter() - t0, 1)},
        "command": _command(a),
    }
    if not all(math.isfinite(r["spread"]) for r in sweep):
        raise HalpError("a session read no finite minimum; nothing written")
    _print_tables(results)
    print(f"\nwall: sweep {results['wall_s']['sweep']} s, compare "
          f"{results['wall_s']['compare']} s")
    if a.json_path:
        os.makedirs(os.path.dirname(os.path.abspath(a.json_path)), exist_ok=True)
        with open(a.json_path, "w") as f:
            json.dump(results, f, indent=1)
        print(f"wrote {a.json_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
