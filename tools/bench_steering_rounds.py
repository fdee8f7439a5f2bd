#!/usr/bin/env python
"""How many rounds (and sessions) does a steering reading need?

Times the readings ``LatencyFeedback`` aims pruning steps with —
``measure_interleaved({original, current}, model_protocol(R, S))`` of resnet18 against its
half-width copy (``bench_session_spread``'s models) — ``--repeats`` times for each R rounds x S
sessions per graph, in shuffled order, and reports the seconds a reading takes and how far its
ratio moves between repeats (std, range, largest deviation from the median).

    python tools/bench_steering_rounds.py --json tools/results/steering_rounds_xeon.json

Run it alone on the machine (about 2 minutes at the defaults); it says which machine it ran on."""
from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results")
# rounds x sessions per graph; 3 sessions is what the pipeline uses for models over 2 ms
DEFAULT_CONFIGS = ((10, 3), (15, 3), (30, 3), (10, 6))


def reading(backend, original: bytes, current: bytes, rounds: int, sessions: int
            ) -> tuple[float, float]:
    """(current / original, seconds) of one steering reading."""
    from halp_trt.runtime.protocol import measure_interleaved, model_protocol

    protocol = model_protocol(rounds, sessions_per_graph=sessions)
    t0 = time.perf_counter()
    stats = measure_interleaved(backend, {"original": original, "current": current}, protocol)
    return stats["current"].min_ms / stats["original"].min_ms, time.perf_counter() - t0


def _name(config) -> str:
    return f"{config[0]}x{config[1]}"


def summarize(rows: list[dict], configs) -> dict[str, dict]:
    reference = statistics.median(r["ratio"] for r in rows)
    out = {}
    for config in configs:
        ratios = [r["ratio"] for r in rows if r["config"] == _name(config)]
        seconds = [r["seconds"] for r in rows if r["config"] == _name(config)]
        out[_name(config)] = {
            "rounds": config[0], "sessions_per_graph": config[1], "readings": len(ratios),
            "mean_ratio": statistics.fmean(ratios),
            "std_ratio": statistics.stdev(ratios) if len(ratios) > 1 else 0.0,
            "min_ratio": min(ratios), "max_ratio": max(ratios),
            "max_abs_dev_from_median": max(abs(x - reference) for x in ratios),
            "seconds_per_reading": statistics.fmean(seconds)}
    return out


def markdown_section(results: dict) -> str:
    """A BENCHMARKS.md section of one run."""
    s = results["summary"]
    lines = [f"## Steering readings: rounds vs noise ({results['machine'].split(' (')[0]})", "",
             f"`{results['command']}`", "",
             f"Machine: {results['machine']}; ONNX Runtime {results['onnxruntime']} CPU, 1 "
             f"thread. One reading = resnet18 vs its half-width copy (1×3×64×64, random "
             "weights) timed interleaved in fresh sessions (`model_protocol`), as after each "
             f"pruning step before the last; {results['repeats']} readings per configuration, "
             "configurations shuffled per repeat. Deviation: from the median of all readings.",
             "", "| rounds × sessions per graph | s / reading | ratio mean ± std | range | "
             "max deviation |", "|---|---|---|---|---|"]
    for name, v in s.items():
        lines.append(f"| {v['rounds']} × {v['sessions_per_graph']} | "
                     f"{v['seconds_per_reading']:.1f} | {v['mean_ratio']:.3f} ± "
                     f"{v['std_ratio']:.3f} | {v['min_ratio']:.3f}–{v['max_ratio']:.3f} | "
                     f"{v['max_abs_dev_from_median']:.3f} |")
    lines.append("")
    return "\n".join(lines)


def _configs(text: str) -> list[tuple[int, int]]:
    try:
        values = [tuple(int(x) for x in t.lower().split("x")) for t in text.split(",")
                  if t.strip()]
    except ValueError:
        values = []
    if not values or any(len(v) != 2 or min(v) < 1 for v in values):
        raise argparse.ArgumentTypeError(
            f"expected ROUNDSxSESSIONS,... (e.g. 10x3,30x3), not {text!r}")
    return values


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configs", type=_configs, default=list(DEFAULT_CONFIGS),
                    help="ROUNDSxSESSIONS per graph to compare, comma-separated "
                         "(default 10x3,15x3,30x3,10x6)")
    ap.add_argument("--repeats", type=int, default=8, help="readings per configuration")
    ap.add_argument("--seed", type=int, default=0, help="order of the configurations")
    ap.add_argument("--json", dest="json_path", default=None)
    a = ap.parse_args(argv)
    if a.repeats < 2:
        ap.error("--repeats must be at least 2 (the spread needs two readings)")

    import onnxruntime

    from bench_session_spread import build_models
    from halp_trt.fileio import check_writable, write_json_atomic
    from halp_trt.runtime import get_backend
    from halp_trt.runtime.machine import cpu_identity, machine_class

    if a.json_path:
        check_writable(a.json_path)  # before two minutes of timing; creates the folder
    machine = machine_class(cpu_identity())
    print(f"building models on {machine}", flush=True)
    models = build_models(seed=0)
    backend = get_backend("onnxruntime")
    rng = random.Random(a.seed)
    rows = []
    for i in range(a.repeats):
        order = list(a.configs)
        rng.shuffle(order)
        for config in order:
            ratio, seconds = reading(backend, models["full"], models["narrow"], *config)
            rows.append({"repeat": i, "config": _name(config), "ratio": round(ratio, 5),
                         "seconds": round(seconds, 3)})
        print(f"  repeat {i + 1}/{a.repeats}: " + ", ".join(
            f"{r['config']} {r['ratio']:.3f}" for r in rows if r["repeat"] == i), flush=True)
    command = (f"python tools/bench_steering_rounds.py --configs "
               f"{','.join(map(_name, a.configs))} --repeats {a.repeats}"
               + (f" --json {a.json_path}" if a.json_path else ""))
    results = {"machine": machine, "onnxruntime": onnxruntime.__version__,
               "repeats": a.repeats, "configs": [_name(c) for c in a.configs],
               "readings": rows, "summary": summarize(rows, a.configs), "command": command}
    print()
    print(markdown_section(results))
    if a.json_path:
        write_json_atomic(a.json_path, results)
        print(f"wrote {a.json_path}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, HERE)
    sys.exit(main())
