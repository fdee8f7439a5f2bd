"""Several latency targets from one run: a Pareto front of measured latency vs accuracy.

Users rarely know which target to pick. ``prune-and-deploy --target 0.7,0.5,0.3`` trains (or
loads) the original once, resolves the latency table once and calibrates once, then prunes one
model per target, each in its own folder (``OUT/target_0.5/`` with its report and ONNX), and
writes ``pareto.md`` / ``pareto.json`` / ``pareto.png`` with the original beside them.

Targets run from the mildest to the most aggressive. The first target's run does the shared
work; its original weights, measured latency and calibration are saved as ``shared.pt`` and
every later target starts from them as from a checkpoint. Rerunning the same command skips
targets whose report exists and resumes the one that was interrupted.
"""
from __future__ import annotations

import dataclasses
import json
import os

from halp_trt.errors import HalpError
from halp_trt.fileio import make_dirs, write_atomic_with, write_json_atomic
from halp_trt.pipeline.config import DeployConfig
from halp_trt.pipeline.run import CHECKPOINT, DeployRun
from halp_trt.pipeline.state import RunState

SHARED = "shared.pt"


def target_dir(out: str, target: str) -> str:
    return os.path.join(out, "target_" + target.replace(".", "_"))


def _order(cfg: DeployConfig) -> list[str]:
    """Mildest first (largest fraction / most ms): its calibration suits the others."""
    return [str(t) for t in sorted(cfg.parsed_targets, key=lambda t: -t.value)] \
        if len({t.kind for t in cfg.parsed_targets}) == 1 else \
        [str(t) for t in cfg.parsed_targets]


def prune_and_deploy_front(cfg: DeployConfig) -> dict:
    """One pruned model per target of ``cfg.target`` (comma-separated); returns the front."""
    if len(cfg.parsed_targets) < 2:
        raise HalpError("prune_and_deploy_front needs several targets, e.g. target='0.7,0.5'")
    make_dirs(cfg.out)
    shared_path = os.path.join(cfg.out, SHARED)
    reports, table_path = {}, None
    for i, target in enumerate(_order(cfg)):
        out = target_dir(cfg.out, target)
        report_path = os.path.join(out, "report.json")
        sub = dataclasses.replace(cfg, target=target, out=out)
        if i > 0:
            if table_path is None:  # the first target finished in an earlier invocation
                table_path = reports[_order(cfg)[0]]["table"]["path"]
            # the table was probed or measured by the first target's run moments ago
            sub = dataclasses.replace(sub, table=table_path, probe_table=False)
        if os.path.exists(report_path) and (i > 0 or os.path.exists(shared_path)):
            with open(report_path) as f:
                reports[target] = json.load(f)
            print(f"[halp-trt] target {target}: done earlier, report in {report_path}")
            continue
        if i > 0:
            make_dirs(out)
            ckpt = os.path.join(out, CHECKPOINT)
            if not os.path.exists(ckpt):  # start from the shared original and calibration
                RunState.load(shared_path).save(ckpt)
            print(f"[halp-trt] target {target}: reusing the original model, latency table and "
                  "calibration of this run")
        run = DeployRun(sub)
        reports[target] = run.run()
        if i == 0:
            table_path = run.resolved_table.path
            st = run.state
            RunState(run=st.run, phase="original", original=st.original,
                     original_ms=st.original_ms, calibration=st.calibration).save(shared_path)
    front = pareto_front(cfg, reports)
    if reports and next(iter(reports.values())):  # rank 0 only (other ranks return {})
        write_front(cfg.out, front)
    return front


def pareto_front(cfg: DeployConfig, reports: dict[str, dict]) -> dict:
    """The original and each pruned model: measured latency, ratio, accuracy, folder."""
    reports = {t: r for t, r in reports.items() if r}
    if not reports:
        return {}
    first = next(iter(reports.values()))
    points = []
    for target, r in reports.items():
        points.append({"target": target, "folder": os.path.basename(target_dir(cfg.out, target)),
                       "measured_ms": r["pruned"]["measured_ms"],
                       "latency_ratio_measured": r["latency_ratio_measured"],
                       "speedup_measured": r["speedup_measured"],
                       "accuracy": r["accuracy"]["pruned"],
                       "accuracy_drop": r["accuracy"]["drop"]})
    points.sort(key=lambda p: p["measured_ms"])
    # a point is on the front when no faster point is at least as accurate
    best = -1.0
    for p in points:
        p["on_front"] = p["accuracy"] > best
        best = max(best, p["accuracy"])
    return {"model": cfg.model, "data": first["data"], "input_shape": list(cfg.input_shape),
            "original": {"measured_ms": first["original"]["measured_ms"],
                         "accuracy": first["accuracy"]["original"]},
            "machine": first["backend"].get("cpu_model") or first["backend"].get("device"),
            "points": points}


def write_front(out: str, front: dict) -> None:
    write_json_atomic(os.path.join(out, "pareto.json"), front)
    o = front["original"]
    lines = [f"# Pareto front: {front['model']} on {front['data']}, input "
             f"{'x'.join(map(str, front['input_shape']))}", "",
             "Each pruned model measured interleaved with the original in its own run; "
             "accuracy on the validation split after fine-tuning.", "",
             "| model | target | measured ms | ratio | speedup | accuracy | drop | on front |",
             "|---|---|---|---|---|---|---|---|",
             f"| original | — | {o['measured_ms']:.3f} | 1.000 | 1.00× | {o['accuracy']:.4f} "
             "| — | — |"]
    for p in front["points"]:
        lines.append(f"| `{p['folder']}/` | {p['target']} | {p['measured_ms']:.3f} | "
                     f"{p['latency_ratio_measured']:.3f} | {p['speedup_measured']:.2f}× | "
                     f"{p['accuracy']:.4f} | {p['accuracy_drop']:+.4f} | "
                     f"{'yes' if p['on_front'] else 'no'} |")
    write_atomic_with(os.path.join(out, "pareto.md"),
                      lambda f: f.write(("\n".join(lines) + "\n").encode()))
    _plot(out, front)


def _plot(out: str, front: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    pts = front["points"]
    ax.plot([p["measured_ms"] for p in pts], [p["accuracy"] for p in pts], "o-",
            label="pruned (halp-trt)")
    for p in pts:
        ax.annotate(f"target {p['target']}", (p["measured_ms"], p["accuracy"]),
                    textcoords="offset points", xytext=(4, -10), fontsize=8)
    o = front["original"]
    ax.plot([o["measured_ms"]], [o["accuracy"]], "s", color="black", label="original")
    ax.set_xlabel("measured latency (ms)")
    ax.set_ylabel("validation accuracy")
    ax.set_title(f"{front['model']}: latency vs accuracy")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    write_atomic_with(os.path.join(out, "pareto.png"), lambda f: fig.savefig(f, format="png"))
    plt.close(fig)
