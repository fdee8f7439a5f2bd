#!/usr/bin/env python
"""Do pruned detectors and segmenters keep their quality? Each of the seven dense models
through halp-trt's default run on the built-in shapes data.

The run a user gets from ``halp-trt prune-and-deploy --model NAME --out DIR`` with nothing
else given: pre-training from scratch on the seeded shapes task, the latency table (built or
taken from the cache), pruning to 0.5 of the measured latency during fine-tuning, channel
removal, ONNX, the numerical check, the measured ratio, the metric (mAP or mean IoU, from
torchmetrics) of the original and the pruned model on the held-out shapes. A row passes when
the pruned model keeps >= 90% of the original's metric; the measured ratio and the verdict on
the target are recorded beside it (at 64 px several of these models take about a millisecond,
so their readings spread a few percent). One model at a time, its row written when it
finishes: the same command resumes, and rows may come from several sessions, each with its
machine class. Needs a quiet machine for its timing (the machine-wide lock keeps halp-trt's
own jobs apart).

    python tools/bench_dense_quality.py --json tools/results/bench_dense_quality.json
        [--only ssdlite320_mobilenet_v3_large,lraspp_mobilenet_v3_large] [--rerun]

``--max-batches`` and ``--pretrain-epochs`` shrink the run (smoke tests); rows made that way
say so and never pass.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

KEEP_AT_LEAST = 0.9  # of the original's metric, after the default fine-tuning


def zoo():
    """The zoo's pieces this shares: the seven models, its row files, its failure reasons."""
    here = os.path.dirname(os.path.abspath(__file__))
    if here not in sys.path:
        sys.path.insert(0, here)
    import bench_zoo

    return bench_zoo


def run_one(name: str, work: str, target: float, max_batches: int | None,
            pretrain_epochs: int | None) -> dict:
    """One model's default run, in this process; its row."""
    from halp_trt.pipeline import DeployConfig, prune_and_deploy
    from halp_trt.runtime.timing_lock import sharing_the_machine

    row = {"model": name, "task": zoo().DENSE_MODELS.get(name), "passed": False, "reason": "",
           "shrunk": bool(max_batches or pretrain_epochs)}
    t0 = time.perf_counter()
    try:
        # other halp-trt jobs do not time while this one trains; its own timing takes the
        # machine-wide lock exclusively
        with sharing_the_machine():
            report = prune_and_deploy(DeployConfig(
                out=os.path.join(work, name), model=name, target=str(target),
                max_batches=max_batches, pretrain_epochs=pretrain_epochs, progress=False))
        acc = report["accuracy"]
        kept = acc["pruned"] / acc["original"] if acc["original"] > 0 else 0.0
        row.update(
            metric=acc["metric"], metric_original=round(acc["original"], 4),
            metric_pruned=round(acc["pruned"], 4), metric_kept=round(kept, 4),
            input=report["input_shape"][-1],
            measured_ratio=round(report["latency_ratio_measured"], 4),
            ratio_spread=[round(v, 4) for v in report["latency_ratio_spread"]],
            target_verdict=report["target_verdict"],
            original_ms=round(report["original"]["measured_ms"], 3),
            pruned_ms=round(report["pruned"]["measured_ms"], 3),
            stage_s={k: round(v, 1) for k, v in report.get("stage_s", {}).items()})
        if report.get("outside_graph"):
            og = report["outside_graph"]
            row["postprocess_ms"] = {k: round(og[k]["postprocess_ms"], 3)
                                     for k in ("original", "pruned")}
        row["passed"] = kept >= KEEP_AT_LEAST and not row["shrunk"]
        if not row["passed"]:
            row["reason"] = ("a shrunk run (smoke test), not a quality figure" if row["shrunk"]
                             else f"the pruned model keeps {100 * kept:.0f}% of the original's "
                                  f"{acc['metric']} (< {100 * KEEP_AT_LEAST:.0f}%)")
    except Exception as exc:  # noqa: BLE001 - this model's failure, recorded in its row
        zoo().record_failure(row, exc)
    row["wall_s"] = round(time.perf_counter() - t0, 1)
    return row


def markdown_section(data: dict) -> str:
    """BENCHMARKS' section: one row per model, its machine class and date."""
    rows = data.get("models", [])
    s = data.get("summary", {})
    lines = [
        "## Detectors and segmenters on shapes: the default run keeps their quality?", "",
        "`python tools/bench_dense_quality.py --json tools/results/bench_dense_quality.json "
        "[--only MODEL,...]` (resumes: each row stands alone)", "",
        f"The run a user gets with nothing but the model named: pre-training from scratch on "
        f"the built-in shapes data, table, pruning to {data.get('target', 0.5)} during "
        f"fine-tuning, removal, ONNX, checks. Passes when the pruned model keeps ≥ "
        f"{100 * data.get('keep_at_least', KEEP_AT_LEAST):.0f}% of the original's metric "
        f"(torchmetrics' mAP, or mean IoU, on the held-out shapes). "
        f"**{s.get('passed', 0)} of {s.get('run', 0)} run pass** (of 7).", "",
        "| model | machine | date | input | metric | original | pruned | kept | latency "
        "ratio (verdict) | ms orig → pruned | post-proc ms | wall | result |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "metric_kept" in r:
            pp = r.get("postprocess_ms")
            post = f"{pp['original']:.2f} → {pp['pruned']:.2f}" if pp else "-"
            lines.append(
                f"| {r['model']} | {r['machine']} | {r.get('date', '-')} | {r['input']} | "
                f"{r['metric']} | {r['metric_original']:.3f} | {r['metric_pruned']:.3f} | "
                f"{100 * r['metric_kept']:.0f}% | {r['measured_ratio']:.3f} "
                f"({r['target_verdict']}) | {r['original_ms']:.2f} → {r['pruned_ms']:.2f} | "
                f"{post} | "
                f"{r['wall_s'] / 60:.1f} min | {'pass' if r['passed'] else 'FAIL'} |")
        else:
            lines.append(f"| {r['model']} | {r['machine']} | {r.get('date', '-')} | - | - | - "
                         f"| - | - | - | - | - | {r['wall_s'] / 60:.1f} min | FAIL: "
                         f"{r['reason'][:160]} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", dest="json_path", required=True)
    ap.add_argument("--only", default="", help="comma-separated model names")
    ap.add_argument("--rerun", action="store_true",
                    help="run the --only models again even if the JSON has their rows")
    ap.add_argument("--target", type=float, default=0.5)
    ap.add_argument("--max-batches", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--pretrain-epochs", type=int, default=None, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    from halp_trt.runtime.machine import cpu_identity, machine_class

    names = list(zoo().DENSE_MODELS)
    if a.only:
        wanted = [n.strip() for n in a.only.split(",") if n.strip()]
        unknown = sorted(set(wanted) - set(names))
        if unknown:
            sys.exit(f"error: not among the dense models of this benchmark: {unknown}; "
                     f"choose from {', '.join(names)}")
        names = wanted
    rows = {r["model"]: r for r in zoo().load_rows(a.json_path)}
    identity = cpu_identity()
    meta = {"benchmark": "dense models on shapes: the default run's metric before and after",
            "target": a.target, "keep_at_least": KEEP_AT_LEAST, "machine": identity,
            "command": "python tools/bench_dense_quality.py " + " ".join(
                argv if argv is not None else sys.argv[1:])}
    todo = [n for n in names if n not in rows or (a.rerun and a.only)]
    with tempfile.TemporaryDirectory(prefix="halp-dense-quality-") as work:
        for name in todo:
            row = run_one(name, work, a.target, a.max_batches, a.pretrain_epochs)
            row["machine"], row["date"] = machine_class(identity), time.strftime("%Y-%m-%d")
            rows[name] = row
            zoo().save_rows(a.json_path, list(rows.values()), meta)
            kept = row.get("metric_kept")
            print(f"{name:40s} {'pass' if row['passed'] else 'FAIL'} "
                  f"kept {'-' if kept is None else f'{kept:.2f}'} ratio "
                  f"{row.get('measured_ratio', '-')} ({row['wall_s'] / 60:.1f} min) "
                  f"{row['reason'][:100]}", flush=True)
    n = sum(r["passed"] for r in rows.values())
    print(f"\n{n} of {len(rows)} models keep >= {100 * KEEP_AT_LEAST:.0f}% of their metric; "
          f"{sum('traceback' in r['reason'] for r in rows.values())} ended in a traceback")


if __name__ == "__main__":
    main()
