#!/usr/bin/env python
"""Do untimed warm-up runs before each timed one make a latency table agree with itself?

The probe of ``check-table`` re-measures a few of a table's entries minutes after its build.
On small models whole signatures read off together (mobilenet_v3_small's depthwise convs at
0.54-0.69 of the table, the same in two checks ten minutes apart): the table, not the probe,
is the odd reading. This builds one table per ``--warm-ms`` value (the table protocol's
untimed runs before each timed sample; 0 is the default protocol) and checks each twice with
``halp-trt check-table`` in fresh processes, keeping every lattice point's ratio.

    python tools/bench_table_warmup.py --json tools/results/bench_table_warmup.json \\
        [--models mobilenet_v3_small,mobilenet_v2] [--warm-ms 0,3]"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

INPUT_SHAPE = (1, 3, 64, 64)


def build(model_name: str, warm_ms: float, path: str) -> float:
    import torchvision

    from halp_trt.latency.build import BuildConfig, build_table
    from halp_trt.runtime import get_backend
    from halp_trt.runtime.protocol import Protocol

    model = getattr(torchvision.models, model_name)(num_classes=1000).eval()
    t0 = time.perf_counter()
    cfg = BuildConfig(protocol=Protocol(rounds=15, warm_ms=warm_ms), max_points_per_axis=6,
                      progress=False)
    build_table(model, INPUT_SHAPE, get_backend("onnxruntime"), path, model_name, cfg)
    return time.perf_counter() - t0


def check(path: str) -> dict:
    """One ``check-table`` of ``path`` in a fresh process: fit, shape deviation and each
    signature's median here/table; ``error`` (the command's last words) if it wrote no probe."""
    out = path + ".check.json"
    if os.path.exists(out):
        os.unlink(out)  # an earlier check's file is not this check
    done = subprocess.run([sys.executable, "-m", "halp_trt.cli", "check-table", path, "--json",
                           out], capture_output=True, text=True)
    probe = None
    if os.path.exists(out):
        with open(out) as f:
            probe = json.load(f).get("probe")
    if not probe:
        words = (done.stderr or done.stdout).strip().splitlines()
        return {"fits": None, "error": (words[-1] if words else
                                        f"check-table exited {done.returncode}")[:300]}
    by_signature: dict[str, list[float]] = {}
    for p in probe["lattice"]:
        by_signature.setdefault(p["config"].split(" ")[0], []).append(
            p["here_ms"] / p["table_ms"])
    return {"fits": probe["fits"], "shape_deviation": probe["shape_deviation"],
            "scale_ratio": probe["scale_ratio"],
            "signature_medians": {k: round(statistics.median(v), 3)
                                  for k, v in by_signature.items()}}


def markdown_section(results: dict) -> str:
    """The BENCHMARKS.md section for ``results`` (the JSON this script writes)."""
    lines = ["### Warm-up before each timed run of a table entry", "",
             f"`{results['command']}` — {results['machine']}, {results['date']}; a table per "
             "warm-up (15 rounds, 6 lattice points per axis, batch 1 at 64 px), then "
             "`check-table` twice in fresh processes.", "",
             "| model | warm_ms | build | shape deviation (two checks) | signatures here / "
             "table (first check) |", "|---|---|---|---|---|"]
    for r in results["rows"]:
        c1 = r["checks"][0]
        deviations = ", ".join("failed" if "error" in c else f"{100 * c['shape_deviation']:.0f}%"
                               for c in r["checks"])
        medians = c1["error"] if "error" in c1 else \
            " ".join(f"{v:.2f}" for v in c1["signature_medians"].values())
        lines.append(f"| {r['model']} | {r['warm_ms']:g} | {r['build_s']:.0f} s | "
                     f"{deviations} | {medians} |")
    return "\n".join(lines + [""])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", dest="json_path", required=True)
    ap.add_argument("--models", default="mobilenet_v3_small,mobilenet_v2")
    ap.add_argument("--warm-ms", default="0,3")
    a = ap.parse_args(argv)
    from halp_trt.runtime.machine import cpu_identity, machine_class

    work = tempfile.mkdtemp(prefix="halp-warmup-")
    rows = []
    for model in a.models.split(","):
        for warm in (float(w) for w in a.warm_ms.split(",")):
            path = os.path.join(work, f"{model}_warm{warm:g}.json")
            row = {"model": model, "warm_ms": warm, "build_s": round(build(model, warm, path), 1),
                   "checks": [check(path), check(path)]}
            rows.append(row)
            print(f"{model} warm_ms {warm:g}: build {row['build_s']:.0f} s | "
                  + markdown_section({"command": "", "machine": "", "date": "",
                                      "rows": [row]}).splitlines()[-1], flush=True)
    result = {"machine": machine_class(cpu_identity()), "date": time.strftime("%Y-%m-%d"),
              "input_shape": list(INPUT_SHAPE),
              "command": "python tools/bench_table_warmup.py --json " + a.json_path,
              "rows": rows}
    with open(a.json_path, "w") as f:
        json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
