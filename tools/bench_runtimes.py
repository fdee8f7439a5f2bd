#!/usr/bin/env python
"""One model, several runtimes: do their latency landscapes give different widths?

The embedded model (resnet18, 10 classes, 64x64, trained once on digits) is pruned to a
measured 0.5 for each setup — ONNX Runtime FP32, OpenVINO FP32, ONNX Runtime INT8 — each with
its own table measured here. Then every pruned model is also measured on the other setups
(interleaved with the original on that setup): a model pruned for one landscape may be worse on
another. Writes widths per channel group, ratios on every setup, and a PNG of the widths.

    python tools/bench_runtimes.py --json tools/results/bench_runtimes.json \
        [--setups onnxruntime:fp32,openvino:fp32,onnxruntime:int8] [--epochs 1]

Run on a quiet machine; it times for about 15-25 minutes.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

SETUPS = ("onnxruntime:fp32", "openvino:fp32", "onnxruntime:int8")


def parse_setups(text: str) -> list[tuple[str, str]]:
    out = []
    for item in text.split(","):
        backend, _, precision = item.strip().partition(":")
        out.append((backend, precision or "fp32"))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", dest="json_path", default="tools/results/bench_runtimes.json")
    ap.add_argument("--setups", default=",".join(SETUPS))
    ap.add_argument("--target", default="0.5")
    ap.add_argument("--epochs", type=int, default=1, help="fine-tuning epochs per setup")
    ap.add_argument("--pretrain-epochs", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=30, help="whole-model timing rounds")
    ap.add_argument("--work", default=None, help="folder for tables and runs (default: temp)")
    args = ap.parse_args()

    import torch

    from halp_trt.fileio import write_json_atomic
    from halp_trt.latency.build import BuildConfig, build_table
    from halp_trt.models import create_model
    from halp_trt.pipeline import DeployConfig
    from halp_trt.pipeline.run import DeployRun
    from halp_trt.runtime import backend_for
    from halp_trt.runtime.machine import cpu_identity, machine_class
    from halp_trt.validate import validate_onnx

    setups = parse_setups(args.setups)
    work = args.work or tempfile.mkdtemp(prefix="halp-runtimes-")
    shape = (1, 3, 64, 64)
    weights = os.path.join(work, "original.pt")
    results, t0 = {}, time.perf_counter()
    for backend, precision in setups:
        name = f"{backend}:{precision}"
        table = os.path.join(work, f"table_{backend}_{precision}.json")
        t_table = time.perf_counter()
        build_table(create_model("resnet18", 10), shape,
                    backend_for(False, precision, backend=backend), table, "resnet18",
                    BuildConfig(progress=False))
        table_s = time.perf_counter() - t_table
        trained = os.path.exists(weights)
        run = DeployRun(DeployConfig(
            out=os.path.join(work, f"run_{backend}_{precision}"), model="resnet18",
            backend=backend, precision=precision, table=table, target=args.target,
            epochs=args.epochs, rounds=args.rounds, progress=False,
            weights=weights if trained else None,
            pretrain_epochs=0 if trained else args.pretrain_epochs))
        report = run.run()
        if not trained:  # every setup prunes the same trained original
            torch.save(run.state.original, weights)
        results[name] = {
            "table": table, "table_build_s": round(table_s, 1),
            "steps_out": sorted({s["step_out"]["step"] for s in
                                 json.load(open(table))["signatures"].values()}),
            "measured_ratio": report["latency_ratio_measured"],
            "original_ms": report["original"]["measured_ms"],
            "accuracy": report["accuracy"],
            "widths": {g: w["kept"] for g, w in report["widths"].items()},
            "original_widths": {g: w["original"] for g, w in report["widths"].items()},
            "run": run.cfg.out}
        print(f"{name}: measured {report['latency_ratio_measured']:.3f} of the original for "
              f"target {args.target} (table {table_s:.0f} s)", flush=True)
    # every pruned model on every setup, interleaved with the original on that setup
    for name, r in results.items():
        r["on_other_setups"] = {}
        for other in results:
            backend, precision = other.split(":")
            v = validate_onnx(os.path.join(r["run"], "original.onnx"),
                              os.path.join(r["run"], "model.onnx"), rounds=args.rounds,
                              backend=backend, precision=precision)
            r["on_other_setups"][other] = v["pruned"]["measured_ms"] / v["original"]["measured_ms"]
            print(f"pruned for {name}, measured on {other}: "
                  f"{r['on_other_setups'][other]:.3f} of the original", flush=True)
    groups = list(next(iter(results.values()))["widths"])
    same = all(r["widths"] == next(iter(results.values()))["widths"] for r in results.values())
    out = {"model": "resnet18", "input_shape": list(shape), "target": float(args.target),
           "machine": machine_class(cpu_identity()), "setups": results,
           "same_widths_everywhere": same, "wall_s": round(time.perf_counter() - t0, 1),
           "command": "python tools/bench_runtimes.py --json " + args.json_path}
    write_json_atomic(args.json_path, out)
    plot_widths(results, groups, os.path.splitext(args.json_path)[0] + ".png")
    print(f"widths {'identical' if same else 'differ'} across setups; wrote {args.json_path}")


def plot_widths(results: dict, groups: list[str], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(max(8, 0.35 * len(groups)), 4))
    n = len(results)
    x = np.arange(len(groups))
    first = next(iter(results.values()))
    ax.bar(x, [first["original_widths"][g] for g in groups], 0.9, color="0.9",
           label="original")
    for i, (name, r) in enumerate(results.items()):
        ax.bar(x - 0.4 + (i + 0.5) * 0.8 / n, [r["widths"][g] for g in groups], 0.8 / n,
               label=f"{name} ({r['measured_ratio']:.2f})")
    ax.set_xticks(x)
    ax.set_xticklabels(groups, rotation=90, fontsize=6)
    ax.set_ylabel("channels kept")
    ax.set_title("resnet18 pruned to 0.5 for each runtime's own table")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    main()
