#!/usr/bin/env python
"""Table transfer against a full local build, in one run on this machine.

A table measured on another machine (same model, input and runtime) is re-anchored here with
`halp_trt.latency.transfer` (a few step sweeps, a handful of anchors per signature, the whole
model); a full build of the same model is measured here too; then random held-out points at
the full build's step ends (the widths a pruner picks), measured by neither table, are timed
in a few interleaved sessions, and both tables' predictions of them are scored. The source table as it is
is scored as well, to show what the transfer corrects.
Goal (resnet50 @ 224): <= 20% of the full build's measurements, held-out median error <= 3%.

    python tools/bench_transfer.py --source profiles/resnet50_1x3x224x224_ort-cpu_zen3-avx2.json \
        --model resnet50 --input-shape 1,3,224,224 --max-points 16 \
        --json tools/results/bench_transfer.json
Run it on a quiet machine; it says which machine it ran on.
"""
import argparse
import json
import os
import tempfile
import time

import numpy as np

from halp_trt.latency.build import (BuildConfig, build_table, compare_with_measurements,
                                    random_step_ends)
from halp_trt.latency.table import LatencyTable
from halp_trt.latency.transfer import TransferConfig, measured_configurations, transfer_table
from halp_trt.models import create_model, parse_input_shape
from halp_trt.runtime import get_backend
from halp_trt.runtime.machine import machine_class
from halp_trt.runtime.protocol import Protocol


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source", required=True, help="another machine's table of the model")
    ap.add_argument("--model", default="resnet50")
    ap.add_argument("--num-classes", type=int, default=None)
    ap.add_argument("--input-shape", default="1,3,224,224")
    ap.add_argument("--max-points", type=int, default=16,
                    help="full build's lattice points per axis (the source's, to compare)")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--held-out", type=int, default=60, help="held-out points per session")
    ap.add_argument("--held-out-sessions", type=int, default=2,
                    help="separate interleaved sessions of held-out points: one session's "
                         "readings sit a few percent above or below another's as a whole, "
                         "which moves every table's error alike")
    ap.add_argument("--workdir", default=None,
                    help="where the two local tables go (default: a temporary folder); an "
                         "interrupted full build resumes from there")
    ap.add_argument("--json", dest="json_path", default=None)
    a = ap.parse_args()

    shape = parse_input_shape(a.input_shape)
    source = LatencyTable.load(a.source)
    work = a.workdir or tempfile.mkdtemp(prefix="bench_transfer_")
    os.makedirs(work, exist_ok=True)
    backend = get_backend("onnxruntime")
    proto = Protocol(rounds=a.rounds)

    full_path, wall_path = os.path.join(work, "full.json"), os.path.join(work, "full_wall.json")
    reused = os.path.exists(full_path) and os.path.exists(wall_path) and \
        LatencyTable.load(full_path, require_complete=False).complete
    t0 = time.perf_counter()
    full = build_table(create_model(a.model, a.num_classes), shape, backend, full_path, a.model,
                       BuildConfig(protocol=proto, max_points_per_axis=a.max_points))
    full_s = time.perf_counter() - t0
    if reused:  # a finished full build from an earlier run in --workdir: its own wall time
        with open(wall_path) as f:
            full_s = json.load(f)["wall_s"]
    else:
        with open(wall_path, "w") as f:
            json.dump({"wall_s": full_s}, f)
    moved_path = os.path.join(work, "transferred.json")
    if os.path.exists(moved_path):
        os.unlink(moved_path)  # a transfer is measured whole, so its cost is this run's
    t0 = time.perf_counter()
    moved = transfer_table(source, create_model(a.model, a.num_classes), shape, backend,
                           moved_path, a.model, TransferConfig(protocol=proto))
    moved_s = time.perf_counter() - t0
    tables = {"full": full, "transferred": moved, "source": source}
    points = random_step_ends(full, a.held_out * a.held_out_sessions, seed=1, exclude=[moved])
    # held-out points timed as the full build timed its own (its cache level: the builder
    # chooses it for this machine)
    held_out_proto = Protocol.from_json(full.identity["protocol"])
    sessions = [compare_with_measurements(tables, points[i::a.held_out_sessions], backend,
                                          held_out_proto, batch=shape[0])
                for i in range(a.held_out_sessions)]
    scores = {name: {"points": [p for s in sessions for p in s[name]["points"]]}
              for name in tables}
    for name, sc in scores.items():
        errs = np.abs([p["rel_error"] for p in sc["points"]])
        sc.update(n=len(errs), median_abs_rel_error=float(np.median(errs)),
                  max_abs_rel_error=float(errs.max()),
                  per_session_median=[s[name]["median_abs_rel_error"] for s in sessions])
    n_full, n_moved = measured_configurations(full), measured_configurations(moved)

    def figures(name):
        s = scores[name]
        return {"median_abs_rel_error": s["median_abs_rel_error"],
                "max_abs_rel_error": s["max_abs_rel_error"],
                "per_session_median": s["per_session_median"]}

    steps_moved = {k: s.step_out.step for k, s in moved.signatures.items()}
    steps_full = {k: s.step_out.step for k, s in full.signatures.items()}
    result = {
        "model": a.model, "input_shape": list(shape), "machine": machine_class(full.identity),
        "source": a.source, "source_machine": moved.extra["transfer"]["source"],
        "full": {"configurations_measured": n_full, "wall_s": round(full_s, 1),
                 "model_measured_ms": full.model_measured_ms, **figures("full")},
        "transferred": {"configurations_measured": n_moved, "wall_s": round(moved_s, 1),
                        "fraction_of_full": round(n_moved / n_full, 4),
                        "model_measured_ms": moved.model_measured_ms,
                        "output_steps_agree_with_full": sum(
                            steps_moved[k] == steps_full[k] for k in steps_full),
                        "signatures": len(steps_full), **figures("transferred")},
        "source_unchanged": figures("source"),
        "held_out_points": scores["full"]["n"], "held_out_sessions": a.held_out_sessions,
        "full_build_reused_from_workdir": reused,
        "points": {name: s["points"] for name, s in scores.items()},
        "command": "python tools/bench_transfer.py --source " + a.source + f" --model {a.model}"
                   f" --input-shape {a.input_shape} --max-points {a.max_points}"
                   + (" --json " + a.json_path if a.json_path else ""),
    }
    pct = lambda x: f"{100 * x:.2f}%"  # noqa: E731
    print(f"{a.model} {list(shape)} on {result['machine']}")
    print(f"full build:  {n_full} configurations, {full_s / 60:.1f} min; held-out median "
          f"{pct(scores['full']['median_abs_rel_error'])}, max "
          f"{pct(scores['full']['max_abs_rel_error'])}")
    print(f"transferred: {n_moved} configurations ({100 * n_moved / n_full:.1f}% of the full "
          f"build), {moved_s / 60:.1f} min; held-out median "
          f"{pct(scores['transferred']['median_abs_rel_error'])}, max "
          f"{pct(scores['transferred']['max_abs_rel_error'])}; output steps agree with the "
          f"full build on {result['transferred']['output_steps_agree_with_full']} of "
          f"{len(steps_full)} signatures")
    print(f"source as it is: held-out median {pct(scores['source']['median_abs_rel_error'])}")
    print(f"{scores['full']['n']} held-out points in {a.held_out_sessions} sessions; "
          "per-session medians: " + "; ".join(
              f"{n} " + ", ".join(pct(x) for x in scores[n]["per_session_median"])
              for n in ("full", "transferred")))
    if a.json_path:
        with open(a.json_path, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
