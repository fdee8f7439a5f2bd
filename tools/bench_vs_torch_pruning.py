#!/usr/bin/env python
"""halp-trt against Torch-Pruning at equal *measured* latency (ONNX Runtime CPU).

Torch-Pruning's MetaPruner with Taylor and L2-magnitude importance, uniform and global, round_to=8,
prunes the embedded model (resnet18 at 64x64 on digits) at several channel ratios. Each
result's latency is measured against the original (interleaved); halp-trt then prunes the same
original to that measured latency, with Taylor and with L2-magnitude importance (so the effect
of latency-aware allocation is separated from the criterion), closing the loop with its own
measurements. Every model is then scored the way that separates methods on this easy task:
accuracy right after pruning with BatchNorm statistics recalibrated (no fine-tuning) and after
one short fine-tuning epoch, plus the share of the original model's Taylor importance it keeps.
Mean ± std over seeds (seeds change the importance batches and the fine-tuning order).

    python tools/bench_vs_torch_pruning.py --json tools/results/vs_torch_pruning.json \
        --png tools/results/vs_torch_pruning.png
    python tools/bench_vs_torch_pruning.py --quick      # 1 ratio, 2 seeds
"""
import argparse
import copy
import json
import statistics
import time

import torch
import torch.nn as nn

from halp_trt.runtime import get_backend
from halp_trt.data import load_data, make_loader
from halp_trt.runtime.export import export_onnx
from halp_trt.pruning.feedback import LatencyFeedback
from halp_trt.graph.groups import find_channel_groups
from halp_trt.pruning.importance import ImportanceAccumulator
from halp_trt.runtime.protocol import measure_interleaved, model_protocol
from halp_trt.models import create_model
from halp_trt.pruning.pruner import HALPConfig, HALPPruner
from halp_trt.pruning.result import apply_result
from halp_trt.latency.table import LatencyTable
from halp_trt.train import evaluate, recalibrate_bn, train_epoch

SHAPE = (1, 3, 64, 64)


def train_base(train_loader, epochs: int, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    model = create_model("resnet18", 10)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.05,
                                                total_steps=epochs * len(train_loader))
    for _ in range(epochs):
        train_epoch(model, train_loader, opt, scheduler=sched)
    return model.eval()


def batches(loader, n):
    for i, b in enumerate(loader):
        if i >= n:
            return
        yield b


def tp_prune(base, importance: str, global_pruning: bool, ratio: float, loader, n_batches):
    import torch_pruning as tp

    model = copy.deepcopy(base)
    imp = tp.importance.TaylorImportance() if importance == "taylor" else \
        tp.importance.MagnitudeImportance(p=2)
    pruner = tp.pruner.MetaPruner(model, torch.randn(*SHAPE), importance=imp,
                                  global_pruning=global_pruning, pruning_ratio=ratio,
                                  ignored_layers=[model.fc], round_to=8)
    if importance == "taylor":
        model.train()
        model.zero_grad()
        for x, y in batches(loader, n_batches):
            nn.functional.cross_entropy(model(x), y).backward()
    pruner.step()
    return model.eval()


def halp_prune(base, importance: str, target_ratio: float, loader, n_batches, table, backend,
               original_onnx, rounds, reference_onnx):
    """Progressive HALP pruning to the measured latency of ``reference_onnx`` (first estimate
    ``target_ratio`` of the original), importance from a few batches and no weight updates
    (comparable to one-shot Torch-Pruning). The reference is timed in every feedback session,
    so the target is read where it is hit."""
    model = copy.deepcopy(base)
    example = torch.randn(*SHAPE)
    steps, interval = 6, 2  # several measured steps land closer to the matched latency
    pr = HALPPruner(model, example, table, HALPConfig(target=target_ratio, steps=steps,
                                                      interval=interval, importance=importance))
    fb = LatencyFeedback(pr, lambda result: apply_result(create_model("resnet18", 10), example,
                                                         result).eval(),
                         lambda net: export_onnx(net, example), backend, original_onnx,
                         target_ratio, model_protocol(rounds), log=lambda m: None,
                         reference_onnx=reference_onnx)
    model.train()
    while not fb.done:
        for x, y in loader:
            model.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            fb.accumulate()
            fb.step()  # masks re-applied; no optimizer step: weights stay the original's
            if fb.done:
                break
    return pr.finalize().eval()


def kept_by_bn(base, pruned, groups):
    """Which original channels a pruned model kept, matched by their BatchNorm parameters
    (Torch-Pruning does not report indices; BN affine values survive pruning unchanged)."""
    bmods, pmods = dict(base.named_modules()), dict(pruned.named_modules())
    kept = {}
    for g in groups:
        bn = next((m for m in g.members if m.side == "out" and
                   isinstance(bmods[m.module_name], nn.BatchNorm2d)), None)
        if bn is None:
            continue
        ob, pb = bmods[bn.module_name], pmods[bn.module_name]
        have = {(round(float(w), 6), round(float(b), 6))
                for w, b in zip(pb.weight.detach(), pb.bias.detach())}
        kept[g.id] = [r for i, r in zip(bn.idxs, bn.root_idxs)
                      if (round(float(ob.weight[i]), 6), round(float(ob.bias[i]), 6)) in have]
    return kept


def score(model, train_loader, val_loader, seed):
    m = copy.deepcopy(model)
    recalibrate_bn(m, train_loader, max_batches=10)
    acc0 = evaluate(m, val_loader)
    torch.manual_seed(seed)
    opt = torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    train_epoch(m, train_loader, opt)
    return acc0, evaluate(m.eval(), val_loader)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--table", default="profiles/resnet18_1x3x64x64_ort-cpu_zen3-avx2.json")
    ap.add_argument("--ratios", default="0.3,0.6", help="Torch-Pruning channel pruning ratios")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--batches", type=int, default=6, help="importance batches")
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--base-epochs", type=int, default=4)
    ap.add_argument("--quick", action="store_true", help="one ratio, 2 seeds")
    ap.add_argument("--json", dest="json_path")
    ap.add_argument("--png", dest="png_path")
    a = ap.parse_args()
    if a.quick:
        a.ratios, a.seeds = "0.5", 2
    t0 = time.perf_counter()
    data = load_data("digits", SHAPE[2:])
    train_loader = make_loader(data.train, 64, True, 0)
    val_loader = make_loader(data.val, 256, False)
    base = train_base(train_loader, a.base_epochs, 0)
    base_acc = evaluate(base, val_loader)
    example = torch.randn(*SHAPE)
    table = LatencyTable.load(a.table)
    backend = get_backend("onnxruntime")
    original_onnx = export_onnx(base, example)
    groups, _ = find_channel_groups(base, example)
    groups = [g for g in groups if g.size > 1]

    rows = []
    for seed in range(a.seeds):
        imp_loader = make_loader(data.train, 32, True, seed)
        # the yardstick for "retained importance": Taylor on the original, same batches
        acc = ImportanceAccumulator(copy.deepcopy(base), groups, "taylor")
        net = acc.model
        net.train()
        for x, y in batches(imp_loader, a.batches):
            net.zero_grad()
            nn.functional.cross_entropy(net(x), y).backward()
            acc.accumulate()
        base_scores = {g.id: s for g, s in zip(groups, acc.scores())}
        total_imp = sum(float(s.sum()) for s in base_scores.values())
        ft_loader = make_loader(data.train, 64, True, 100 + seed)
        for ratio in [float(r) for r in a.ratios.split(",")]:
            tp_models = {}
            for imp in ("taylor", "l2"):
                for glob in (False, True):
                    name = f"tp-{imp}-{'global' if glob else 'uniform'}"
                    tp_models[name] = tp_prune(base, "taylor" if imp == "taylor" else "l2",
                                               glob, ratio, imp_loader, a.batches)
            tp_onnx = {k: export_onnx(m, example) for k, m in tp_models.items()}
            graphs = {"original": original_onnx, **tp_onnx}
            st = measure_interleaved(backend, graphs, model_protocol(a.rounds))
            tp_ratio = {k: st[k].min_ms / st["original"].min_ms for k in tp_models}
            candidates = {}
            for name, model in tp_models.items():
                candidates[name] = (model, tp_ratio[name], name)
                # uniform Taylor and uniform L2 give the same widths: one halp run serves both
                key = "uniform" if "uniform" in name else name
                for crit in ("taylor", "magnitude"):
                    hname = f"halp-{crit}@{key}"
                    if hname not in candidates:
                        hm = halp_prune(base, crit, tp_ratio[name], imp_loader, a.batches, table,
                                        backend, original_onnx, a.rounds, tp_onnx[name])
                        candidates[hname] = (hm, None, name)
            graphs = {"original": original_onnx}
            graphs.update({k: export_onnx(v[0], example) for k, v in candidates.items()})
            st = measure_interleaved(backend, graphs, model_protocol(a.rounds))
            for name, (model, _, matched) in candidates.items():
                acc0, acc1 = score(model, ft_loader, val_loader, seed)
                kept = kept_by_bn(base, model, groups)
                retained = sum(float(base_scores[g][kept[g]].sum()) for g in kept) / total_imp
                row = {"seed": seed, "tp_ratio": ratio, "method": name.split("@")[0],
                       "matched_to": matched,
                       "latency_ratio": st[name].min_ms / st["original"].min_ms,
                       # same session as the Torch-Pruning model it was matched to
                       "latency_vs_matched": st[name].min_ms / st[matched].min_ms,
                       "acc_no_ft": acc0, "acc_1_epoch": acc1, "retained_importance": retained}
                rows.append(row)
                print(f"seed {seed} ratio {ratio} {name:28s} latency {row['latency_ratio']:.3f} "
                      f"acc0 {acc0:.3f} acc1 {acc1:.3f} retained {retained:.3f}", flush=True)
    summary = summarize(rows)
    out = {"base_accuracy": base_acc, "rows": rows, "summary": summary,
           "wall_s": time.perf_counter() - t0, "seeds": a.seeds, "ratios": a.ratios}
    print_summary(summary, base_acc)
    if a.json_path:
        with open(a.json_path, "w") as f:
            json.dump(out, f, indent=1)
    if a.png_path:
        plot(summary, base_acc, a.png_path)


def summarize(rows):
    keys = sorted({(r["tp_ratio"], r["method"], r["matched_to"]) for r in rows})
    out = []
    for ratio, method, matched in keys:
        rs = [r for r in rows if (r["tp_ratio"], r["method"], r["matched_to"]) ==
              (ratio, method, matched)]
        if method.startswith("halp") and "uniform" in matched and "l2" in matched:
            continue  # the same halp run is listed once, under the uniform Taylor match
        entry = {"tp_ratio": ratio, "method": method, "matched_to": matched, "n": len(rs)}
        for k in ("latency_ratio", "latency_vs_matched", "acc_no_ft", "acc_1_epoch",
                  "retained_importance"):
            vals = [r[k] for r in rs]
            entry[k] = statistics.mean(vals)
            entry[k + "_std"] = statistics.stdev(vals) if len(vals) > 1 else 0.0
        out.append(entry)
    return out


def print_summary(summary, base_acc):
    print(f"\noriginal accuracy {base_acc:.4f}")
    print(f"{'ratio':>5s} {'method':>22s} {'matched to':>20s} {'latency':>13s} "
          f"{'acc no FT':>13s} {'acc 1 epoch':>13s} {'retained imp':>13s}")
    for e in summary:
        print(f"{e['tp_ratio']:5.2f} {e['method']:>22s} {e['matched_to']:>20s} "
              f"{e['latency_ratio']:.3f}±{e['latency_ratio_std']:.3f} "
              f"{e['acc_no_ft']:.3f}±{e['acc_no_ft_std']:.3f} "
              f"{e['acc_1_epoch']:.3f}±{e['acc_1_epoch_std']:.3f} "
              f"{e['retained_importance']:.3f}±{e['retained_importance_std']:.3f}")


def plot(summary, base_acc, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharex=True)
    for ax, key, title in ((axes[0], "acc_no_ft", "BN recalibrated, no fine-tuning"),
                           (axes[1], "acc_1_epoch", "after 1 fine-tuning epoch")):
        for method in sorted({e["method"] for e in summary}):
            es = [e for e in summary if e["method"] == method]
            ax.errorbar([e["latency_ratio"] for e in es], [e[key] for e in es],
                        yerr=[e[key + "_std"] for e in es], fmt="o" if method.startswith("tp")
                        else "s", label=method, capsize=3)
        ax.axhline(base_acc, color="0.6", ls="--", lw=0.8)
        ax.set_title(title)
        ax.set_xlabel("measured latency / original (ORT CPU)")
        ax.set_ylabel("digits accuracy")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)


if __name__ == "__main__":
    main()
