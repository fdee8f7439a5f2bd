#!/usr/bin/env python
"""Cost and fidelity of building a latency table on ONNX Runtime CPU.

Reports wall time, configurations measured vs the full (c_in, c_out) grid, and the held-out
median / max relative error of the table's lookup at random unmeasured points.
Targets (resnet50 at 1x3x224x224): <= 30 min, <= 5% of the grid, median error <= 3%.

    python tools/bench_table.py --model resnet50 --input-shape 1,3,224,224 \
        --out profiles/resnet50_1x3x224x224_ort-cpu_zen3-avx2.json --validate 60 --json bench_table.json
Run it on a quiet machine: other work on the cores shows up as noise.
"""
import argparse
import json
import time

from halp_trt.runtime import get_backend
from halp_trt.latency.build import BuildConfig, build_table, grid_size
from halp_trt.runtime.protocol import Protocol
from halp_trt.models import create_model, parse_input_shape


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="resnet50")
    ap.add_argument("--num-classes", type=int, default=None)
    ap.add_argument("--input-shape", default="1,3,224,224")
    ap.add_argument("--out", required=True, help="table JSON (resumes if present)")
    ap.add_argument("--validate", type=int, default=60)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--max-points", type=int, default=12)
    ap.add_argument("--quick", action="store_true", help="resnet18 at 32x32, 5 rounds (smoke)")
    ap.add_argument("--json", dest="json_path", default=None)
    a = ap.parse_args()
    if a.quick:
        a.model, a.input_shape, a.rounds, a.validate, a.num_classes = \
            "resnet18", "1,3,32,32", 5, 10, 10
    shape = parse_input_shape(a.input_shape)
    model = create_model(a.model, a.num_classes)
    cfg = BuildConfig(protocol=Protocol(rounds=a.rounds), max_points_per_axis=a.max_points,
                      validate=a.validate)
    t0 = time.perf_counter()
    table = build_table(model, shape, get_backend("onnxruntime"), a.out, a.model, cfg)
    wall_s = time.perf_counter() - t0
    measured = sum(len(s.entries) for s in table.signatures.values())
    grid = grid_size(table)
    val = table.extra.get("validation", {})
    result = {
        "model": a.model, "input_shape": list(shape), "wall_s": round(wall_s, 1),
        "signatures": len(table.signatures), "configurations_measured": measured,
        "full_grid": grid, "fraction_of_grid": measured / grid,
        "validation_points": val.get("n"),
        "median_abs_rel_error": val.get("median_abs_rel_error"),
        "max_abs_rel_error": val.get("max_abs_rel_error"),
        "model_measured_ms": table.model_measured_ms,
        "identity": {k: table.identity.get(k) for k in
                     ("cpu_model", "isa", "runtime_version", "threads", "optimization_level")},
        "note": "wall_s covers only what this run measured; a resumed build reports less",
    }
    print(f"{a.model} {shape}: {wall_s / 60:.1f} min, {measured} of {grid} configurations "
          f"({100 * measured / grid:.3f}%), held-out {val.get('n')} points: median |error| "
          f"{100 * (val.get('median_abs_rel_error') or 0):.2f}%, max "
          f"{100 * (val.get('max_abs_rel_error') or 0):.1f}%")
    if a.json_path:
        with open(a.json_path, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
