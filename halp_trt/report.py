"""The prune-and-deploy report: its figures as a dict (report.json), Markdown and PNGs."""
from __future__ import annotations

import os

from halp_trt.version import __version__
from halp_trt.fileio import write_atomic_with, write_bytes_atomic, write_json_atomic

# A measured ratio this close to the target (relative) meets it: the ±5% the model benchmarks
# judge targets by.
TARGET_TOLERANCE = 0.05
VERDICT_MET, VERDICT_IN_SPREAD, VERDICT_MISSED = "met", "within the session spread", "missed"


def target_verdict(ratio: float, target_ratio: float, spread: tuple[float, float],
                   tolerance: float = TARGET_TOLERANCE) -> str:
    """``met`` when the point ratio is within ``tolerance`` of the target; else ``within the
    session spread`` when the target lies between the lowest and highest ratio any pair of
    sessions read (the measurement cannot tell a miss from a hit); else ``missed``."""
    if abs(ratio / target_ratio - 1) <= tolerance:
        return VERDICT_MET
    if spread[0] <= target_ratio <= spread[1]:
        return VERDICT_IN_SPREAD
    return VERDICT_MISSED


def build_report(cfg, table, table_path, table_reason, table_probe, backend, calib,
                 layers_full_ms, pruned_layers_ms, cmp, check, acc_original, acc_pruned, result,
                 wall_s, stage_s, feedback_state, metric: str = "top-1 accuracy",
                 data: str | None = None) -> dict:
    """Every figure of a run. ``cmp``: the interleaved original/pruned measurement;
    ``check``: the numeric check; ``stage_s``: wall seconds per pipeline stage;
    ``feedback_state``: ``LatencyFeedback.state_dict()``; ``data``: the data spec the run
    trained on (default: ``cfg.data``)."""
    from dataclasses import asdict

    est = cmp.estimator
    orig_ms, pruned_ms = cmp.original.estimate(est), cmp.pruned.estimate(est)
    pred_orig = calib.model_ms(layers_full_ms)
    pred_pruned = calib.model_ms(sum(pruned_layers_ms.values()))
    target_ratio = cfg.parsed_target.to_ms(orig_ms) / orig_ms
    ratio_spread = cmp.ratio_spread
    sessions = {k: [s.estimate(est) for s in getattr(cmp, f"{k}_sessions")]
                for k in ("original", "pruned")}
    return {
        "halp_trt_version": __version__,
        "model": cfg.model, "data": data or cfg.data, "input_shape": list(cfg.input_shape),
        "target": cfg.target, "target_ratio": target_ratio,
        "original": {"measured_ms": orig_ms, "predicted_ms": pred_orig,
                     "stats": cmp.original.to_json(), "layers_sum_ms": layers_full_ms,
                     "session_ms": sessions["original"]},
        "pruned": {"measured_ms": pruned_ms, "predicted_ms": pred_pruned,
                   "stats": cmp.pruned.to_json(), "layers_sum_ms": sum(pruned_layers_ms.values()),
                   "session_ms": sessions["pruned"]},
        "speedup_measured": orig_ms / pruned_ms,
        "speedup_predicted": pred_orig / pred_pruned,
        "latency_ratio_measured": pruned_ms / orig_ms,
        "latency_ratio_vs_target": (pruned_ms / orig_ms) / target_ratio,
        # lowest and highest pruned/original ratio over every pair of sessions
        "latency_ratio_spread": list(ratio_spread),
        "target_tolerance": TARGET_TOLERANCE,
        "target_verdict": target_verdict(pruned_ms / orig_ms, target_ratio, ratio_spread),
        "max_abs_diff": check.max_abs_diff,
        "numeric_check": asdict(check),
        "accuracy": {"original": acc_original, "pruned": acc_pruned,
                     "drop": acc_original - acc_pruned, "metric": metric},
        "backend": {**backend.identity(), "verified": backend.verification_note,
                    "verified_here": backend.verified},
        "table": {"path": table_path, "why": table_reason,
                  "probe": table_probe.to_json() if table_probe else None,
                  "identity": table.identity,
                  "calibration": calib.to_json()},
        "noisy_measurement": cmp.original.noisy or cmp.pruned.noisy,
        "widths": {k: {"original": result.original_widths[k], "kept": len(v)}
                   for k, v in result.kept.items()},
        "pruning_history": result.history,
        "feedback": feedback_state.get("points", []),
        "last_step_candidates": feedback_state.get("brackets", []),
        "config": cfg.to_json(),
        "wall_s": wall_s,
        "stage_s": dict(stage_s),
    }


def write_outputs(out: str, report: dict, pruned_onnx: bytes, pruned_model, table, specs,
                  pruned_layers_ms: dict) -> None:
    import torch

    write_bytes_atomic(os.path.join(out, "model.onnx"), pruned_onnx)
    write_atomic_with(os.path.join(out, "pruned_weights.pt"),
                      lambda f: torch.save(pruned_model.state_dict(), f))
    write_plots(out, report, table, specs, pruned_layers_ms)
    write_markdown(os.path.join(out, "report.md"), report)
    write_json_atomic(os.path.join(out, "report.json"), report)


def write_markdown(path: str, r: dict) -> None:
    o, p = r["original"], r["pruned"]
    acc = r["accuracy"]
    b = r["backend"]
    lines = [
        f"# halp-trt report: {r['model']} on {r['data']}",
        "",
        f"Runtime: {b.get('runtime')} {b.get('runtime_version')} on {b.get('device')} "
        f"({b.get('cpu_model', b.get('device_name', ''))}), precision {b.get('precision')}, "
        f"threads {b.get('threads', '-')}. How this backend was checked: {b['verified']}.",
        "",
        "| | original | pruned |",
        "|---|---|---|",
        f"| measured latency (ms, min of {o['stats']['n']} interleaved runs) | "
        f"{o['measured_ms']:.3f} | {p['measured_ms']:.3f} |",
        f"| predicted latency (ms, table) | {o['predicted_ms']:.3f} | {p['predicted_ms']:.3f} |",
        f"| median latency (ms) | {o['stats']['median_ms']:.3f} | {p['stats']['median_ms']:.3f} |",
    ]
    if o.get("session_ms") and p.get("session_ms"):
        lines.append(f"| per-session minima (ms, {len(o['session_ms'])} and "
                     f"{len(p['session_ms'])} sessions) | {_range(o['session_ms'])} | "
                     f"{_range(p['session_ms'])} |")
    lines += [
        f"| {acc.get('metric', 'accuracy')} | {acc['original']:.4f} | {acc['pruned']:.4f} |",
        "",
        f"- Target: {r['target']} → latency ratio target {r['target_ratio']:.3f}; measured "
        f"ratio {r['latency_ratio_measured']:.3f}{_spread_text(r)} "
        f"({100 * (r['latency_ratio_vs_target'] - 1):+.1f}% vs target): {_verdict_text(r)}.",
        f"- Speedup: {r['speedup_measured']:.2f}× measured, {r['speedup_predicted']:.2f}× "
        "predicted.",
        f"- Pruned ONNX vs PyTorch on {r['numeric_check']['n_inputs']} real inputs: max abs diff "
        f"{r['max_abs_diff']:.2e} (tolerance {r['numeric_check']['tolerance']:.1e}).",
        f"- Table: `{r['table']['path']}` ({r['table'].get('why', '')}). Predictions = "
        f"{r['table']['calibration']['slope']:.3f}"
        f" × table's layer sum + {r['table']['calibration']['intercept_ms']:.3f} ms "
        f"({r['table']['calibration']['kind']} calibration on measured whole models).",
    ]
    if r.get("int8"):
        q = r["int8"]
        lines.append(f"- INT8 (QDQ, {q['calibration_batches']} calibration batches): accuracy "
                     f"original {q['accuracy']['original']:.4f}, pruned "
                     f"{q['accuracy']['pruned']:.4f} (FP32 above); pruned INT8 vs PyTorch: top-1 "
                     f"agreement {q['check']['top1_agreement']:.3f}, logit error "
                     f"{100 * q['check']['rel_logit_error']:.1f}% on "
                     f"{q['check']['n_inputs']} inputs. Latencies above are INT8.")
    if r.get("outside_graph"):
        og = r["outside_graph"]
        o_end, p_end = (o["measured_ms"] + og["original"]["total_ms"],
                        p["measured_ms"] + og["pruned"]["total_ms"])
        lines.append(f"- Outside the pruned graph (PyTorch on this CPU, min of "
                     f"{og['pruned']['rounds']} calls, batch {og['pruned']['images']}): "
                     f"pre-processing {og['pruned']['preprocess_ms']:.2f} ms, post-processing "
                     + ("(proposal selection, decoding, NMS; the ROI box head is in the "
                        "graph) " if og["pruned"].get("proposals_included") else
                        "(anchors, decoding, NMS) ")
                     + f"{og['pruned']['postprocess_ms']:.2f} ms (original "
                     f"{og['original']['postprocess_ms']:.2f} ms). End to end: "
                     f"{o_end:.2f} → {p_end:.2f} ms, {o_end / p_end:.2f}×.")
    if r.get("noisy_measurement"):
        lines.append("- **Warning:** the latency measurements were noisy (median > 15% above "
                     "the minimum); re-run `halp-trt validate` on a quiet machine.")
    if r.get("stage_s"):
        stages = ", ".join(f"{k} {v:.0f} s" for k, v in r["stage_s"].items())
        lines.append(f"- Wall time: {r['wall_s']:.0f} s ({stages}).")
    lines += ["", "## Widths", "", "| group | original | kept |", "|---|---|---|"]
    for k, w in r["widths"].items():
        lines.append(f"| {k} | {w['original']} | {w['kept']} |")
    lines += ["", "## Pruning steps", "", "| step | target ms (table) | predicted ms (table) |",
              "|---|---|---|"]
    for h in r["pruning_history"]:
        lines.append(f"| {h['step']} | {h['target_ms']:.3f} | {h['predicted_ms']:.3f} |")
    if r.get("feedback"):
        lines += ["", "## Measured after each step (interleaved with the original)", "",
                  "| step | scheduled ratio | measured ratio | table layer-sum ratio |",
                  "|---|---|---|---|"]
        for f in r["feedback"]:
            lines.append(f"| {f['step']} | {f['target_ratio']:.3f} | {f['measured_ratio']:.3f} "
                         f"| {f['layers_ratio']:.3f} |")
    for b in r.get("last_step_candidates", []):
        lines += ["", f"## Step {b['step']}: candidate widths measured before committing", "",
                  f"Target {b['goal_ratio']:.3f} of the original; took `{b['picked']}` (the "
                  "candidate keeping the most latency at or under the target).", "",
                  "| candidate | table layer-sum target ms | measured ratio |", "|---|---|---|"]
        for k, c in b["candidates"].items():
            lines.append(f"| {k} | {c['layers_target_ms']:.3f} | {c['measured_ratio']:.3f} |")
    lines += ["", "Figures: `widths.png`, `layer_latency.png`. Re-measure any time with "
              "`halp-trt validate original.onnx model.onnx --table TABLE`.", ""]
    write_bytes_atomic(path, "\n".join(lines).encode("utf-8"))


def _range(values) -> str:
    return f"{min(values):.3f}–{max(values):.3f}"


def _spread_text(r: dict) -> str:
    if "latency_ratio_spread" not in r:  # reports written before sessions were kept
        return ""
    lo, hi = r["latency_ratio_spread"]
    return f" ({lo:.3f}–{hi:.3f} over pairs of sessions)"


def _verdict_text(r: dict) -> str:
    verdict = r.get("target_verdict")
    tol = 100 * r.get("target_tolerance", TARGET_TOLERANCE)
    if verdict == VERDICT_MET:
        return f"**met** (within ±{tol:.0f}%)"
    if verdict == VERDICT_IN_SPREAD:
        return (f"**within the session spread**, not met: the point estimate is more than "
                f"±{tol:.0f}% off, but the target lies inside the range the sessions read, so "
                "this measurement cannot tell a hit from a miss (re-measure with "
                "`halp-trt validate`, more `--rounds`)")
    if verdict == VERDICT_MISSED:
        side = "slower than" if r["latency_ratio_vs_target"] > 1 else "faster than (pruned more)"
        return f"**missed** ({side} the target by more than ±{tol:.0f}% and the session spread)"
    return "not judged"


def write_plots(out_dir: str, r: dict, table, specs, pruned_layers_ms: dict) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    names = list(r["widths"])
    fig, ax = plt.subplots(figsize=(max(6, 0.28 * len(names)), 4))
    xs = range(len(names))
    ax.bar(xs, [r["widths"][n]["original"] for n in names], color="0.8", label="original")
    ax.bar(xs, [r["widths"][n]["kept"] for n in names], color="tab:blue", label="kept")
    ax.set_xticks(list(xs), names, rotation=90, fontsize=7)
    ax.set_ylabel("channels")
    ax.set_title("kept width per channel group")
    ax.legend()
    fig.tight_layout()
    paths.append(_save(fig, os.path.join(out_dir, "widths.png")))
    plt.close(fig)

    before = [table.layer_ms(s, s.in_channels, s.out_channels) for s in specs]
    after = [pruned_layers_ms[s.name] for s in specs]
    fig, ax = plt.subplots(figsize=(max(6, 0.28 * len(specs)), 4))
    xs = range(len(specs))
    ax.bar(xs, before, color="0.8", label=f"original ({sum(before):.2f} ms)")
    ax.bar(xs, after, color="tab:orange", label=f"pruned ({sum(after):.2f} ms)")
    ax.set_xticks(list(xs), [s.name for s in specs], rotation=90, fontsize=7)
    ax.set_ylabel("predicted latency (ms)")
    ax.set_title("per-layer predicted latency (table), before and after")
    ax.legend()
    fig.tight_layout()
    paths.append(_save(fig, os.path.join(out_dir, "layer_latency.png")))
    plt.close(fig)
    return paths


def _save(fig, path):
    write_atomic_with(path, lambda f: fig.savefig(f, format="png", dpi=90))
    return path
