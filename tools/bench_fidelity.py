#!/usr/bin/env python
"""Latency fidelity: does a pruned model measure what the table predicted?

For each target ratio and each latency-contribution rule (one-sided = the paper's, two-sided),
prune one-shot (importance from a few digits batches, no fine-tuning — latency does not depend
on the weights), export, and measure original and pruned interleaved on ONNX Runtime CPU.
Reports measured/predicted and measured/target. "predicted" is the table's layer sum mapped to
a whole-model latency by the affine calibration (original + a uniformly slimmed copy, both
measured); the closed-loop feedback of prune-and-deploy is *not* used here, so these numbers
show the open-loop quality of table + calibration + contribution rule.

    python tools/bench_fidelity.py --model resnet18 --num-classes 10 --input-shape 1,3,64,64 \
        --table profiles/resnet18_1x3x64x64_ort-cpu_zen3-avx2.json --json tools/results/fidelity_resnet18.json
"""
import argparse
import copy
import json
import math

import torch

from halp_trt.runtime import get_backend
from halp_trt.latency.calibration import Calibration
from halp_trt.data import load_data, make_loader
from halp_trt.runtime.export import export_onnx
from halp_trt.runtime.protocol import measure_interleaved, model_protocol
from halp_trt.models import create_model, parse_input_shape
from halp_trt.pruning.calibration_models import slimmed_copy
from halp_trt.pruning.pruner import HALPConfig, HALPPruner
import halp_trt
from halp_trt.latency.table import LatencyTable
from halp_trt.runtime.machine import cpu_identity, machine_class


def prune_one_shot(model, example, table, loader, layers_target_ms, rule, batches):
    """One Taylor pruning step of a copy to a layer-sum target (``halp_trt.prune``)."""
    net, result = halp_trt.prune(copy.deepcopy(model), example, f"{layers_target_ms}ms", table,
                                 loader, batches=batches, contribution=rule)
    return result.predicted_ms, net.eval()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="resnet18")
    ap.add_argument("--num-classes", type=int, default=10)
    ap.add_argument("--input-shape", default="1,3,64,64")
    ap.add_argument("--table", required=True)
    ap.add_argument("--targets", default="0.7,0.5,0.3")
    ap.add_argument("--rules", default="one_sided,two_sided")
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--batches", type=int, default=4)
    ap.add_argument("--quick", action="store_true", help="one target, 10 rounds")
    ap.add_argument("--json", dest="json_path")
    a = ap.parse_args()
    if a.quick:
        a.targets, a.rounds = "0.5", 10
    shape = parse_input_shape(a.input_shape)
    torch.manual_seed(0)
    model = create_model(a.model, a.num_classes).eval()
    example = torch.randn(*shape)
    table = LatencyTable.load(a.table)
    backend = get_backend("onnxruntime")
    data = load_data("digits", shape[2:])
    loader = make_loader(data.train, 32, True)
    sizing = HALPPruner(copy.deepcopy(model), example, table, HALPConfig(target=0.99))
    layers_full = sizing.full_ms
    targets = [float(t) for t in a.targets.split(",")]
    slim, slim_layers = slimmed_copy(sizing, copy.deepcopy(model), example,
                                     math.sqrt(min(targets)))
    graphs = {"original": export_onnx(model, example), "slim": export_onnx(slim, example)}
    st = measure_interleaved(backend, graphs, model_protocol(a.rounds))
    calib = Calibration("affine", layers_full, st["original"].min_ms, slim_layers,
                        st["slim"].min_ms)
    rows, pruned = [], {}
    for t in targets:
        for rule in a.rules.split(","):
            layers_target = calib.layers_ms(t * st["original"].min_ms)
            pred_layers, net = prune_one_shot(model, example, table, loader, layers_target, rule,
                                              a.batches)
            pruned[(t, rule)] = (pred_layers, export_onnx(net, example))
    # one interleaved measurement of everything, so all ratios share the machine's state
    graphs = {"original": graphs["original"]}
    graphs.update({f"{t}/{r}": v[1] for (t, r), v in pruned.items()})
    st = measure_interleaved(backend, graphs, model_protocol(a.rounds))
    orig = st["original"].min_ms
    print(f"{a.model} {shape}: original {orig:.3f} ms measured, layer sum {layers_full:.3f} ms; "
          f"calibration {calib.slope_intercept[0]:.3f}·sum + {calib.slope_intercept[1]:.3f} ms")
    print(f"{'target':>6s} {'rule':>10s} {'pred ms':>8s} {'meas ms':>8s} {'meas/pred':>9s} "
          f"{'meas/target':>11s}")
    for (t, rule), (pred_layers, _) in pruned.items():
        pred = calib.model_ms(pred_layers)
        meas = st[f"{t}/{rule}"].min_ms
        rows.append({"target_ratio": t, "rule": rule, "predicted_ms": pred, "measured_ms": meas,
                     "original_ms": orig, "measured_over_predicted": meas / pred,
                     "measured_over_target": meas / (t * orig)})
        print(f"{t:6.2f} {rule:>10s} {pred:8.3f} {meas:8.3f} {meas / pred:9.3f} "
              f"{meas / (t * orig):11.3f}")
    if a.json_path:
        with open(a.json_path, "w") as f:
            json.dump({"model": a.model, "input_shape": list(shape), "rounds": a.rounds,
                       "machine": machine_class(cpu_identity()), "table": a.table,
                       "table_cold_level": table.identity.get("protocol", {}).get(
                           "cold_level", "llc"),
                       "layer_sum_over_whole": layers_full / orig,
                       "calibration": calib.to_json(), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
