"""``validate``: speedup of a pruned ONNX model over the original, measured interleaved, and —
given a latency table — each model's predicted latency next to its measurement."""
from __future__ import annotations

from halp_trt.errors import HalpError


def _read_onnx(path: str):
    import onnx

    try:
        model = onnx.load(path)
        onnx.checker.check_model(model)
    except FileNotFoundError:
        raise HalpError(f"{path} does not exist") from None
    except Exception as exc:
        raise HalpError(f"{path} is not a valid ONNX model: {str(exc).splitlines()[0][:300]}"
                        ) from None
    return model


def predict_onnx_ms(table, model) -> dict:
    """Table prediction for an ONNX graph: each Conv/Gemm is matched to a signature by its
    attributes and input size, and looked up at its actual channel counts."""
    from onnx import numpy_helper, shape_inference

    from halp_trt.graph.conv_kinds import is_depthwise
    from halp_trt.graph.layers import Signature

    inferred = shape_inference.infer_shapes(model)
    shapes = {}
    for vi in list(inferred.graph.value_info) + list(inferred.graph.input):
        dims = [d.dim_value for d in vi.type.tensor_type.shape.dim]
        shapes[vi.name] = dims
    inits = {t.name: numpy_helper.to_array(t).shape for t in model.graph.initializer}
    total, missing, matched = 0.0, [], 0
    for node in model.graph.node:
        if node.op_type not in ("Conv", "Gemm"):
            continue
        w_shape = inits.get(node.input[1])
        x_shape = shapes.get(node.input[0])
        if w_shape is None or not x_shape:
            missing.append(node.name)
            continue
        attrs = {a.name: (list(a.ints) if a.ints else a.i) for a in node.attribute}
        if node.op_type == "Conv":
            c_out, c_in_per_group = w_shape[0], w_shape[1]
            groups = attrs.get("group", 1) or 1
            c_in = c_in_per_group * groups
            depthwise = is_depthwise(groups, c_in, c_out)
            k = attrs.get("kernel_shape", list(w_shape[2:]))
            pads = attrs.get("pads", [0, 0, 0, 0])
            sig = Signature("dwconv" if depthwise else "conv", tuple(k),
                            tuple(attrs.get("strides", [1, 1])), (pads[0], pads[1]),
                            tuple(attrs.get("dilations", [1, 1])), 1 if depthwise else groups,
                            tuple(x_shape[2:4]))
        else:
            trans_b = attrs.get("transB", 0)
            c_out, in_features = (w_shape[0], w_shape[1]) if trans_b else (w_shape[1], w_shape[0])
            cands = [s for s in table.signatures.values() if s.signature.op == "linear"]
            sig = next((s.signature for s in cands
                        if in_features % s.signature.in_scale == 0 and
                        in_features // s.signature.in_scale <= s.c_in_max), Signature("linear"))
            c_in = in_features // sig.in_scale
        st = table.signatures.get(sig.key)
        if st is None:
            missing.append(f"{node.name or node.op_type} ({sig.key})")
            continue
        try:
            total += st.lookup(c_in, c_out)
            matched += 1
        except ValueError:
            missing.append(f"{node.name} ({sig.key} at {c_in}->{c_out})")
    if not matched and not missing:
        raise HalpError("the graph has no Conv or Gemm layers for the table to predict")
    if missing:
        raise HalpError(f"the table has no entry for {len(missing)} layer(s) of the graph, e.g. "
                        f"{missing[:3]}; build a table for this model and input shape")
    return {"layers_sum_ms": total, "layers": matched}


def _output_shapes(model) -> list[list]:
    return [[d.dim_value or d.dim_param for d in o.type.tensor_type.shape.dim]
            for o in model.graph.output]


def validate_onnx(original: str, pruned: str, table_path: str | None = None, gpu: bool = False,
                  precision: str = "fp32", rounds: int = 30, backend: str | None = None) -> dict:
    from halp_trt.runtime import backend_for
    from halp_trt.runtime.deploy import compare_onnx
    from halp_trt.runtime.protocol import model_protocol

    models = {"original": _read_onnx(original), "pruned": _read_onnx(pruned)}
    # a detector's graph has several outputs (class logits, boxes, ...): the pruned one must
    # give the same, or it is no drop-in replacement whatever its speed
    shapes = {k: _output_shapes(m) for k, m in models.items()}
    if shapes["original"] != shapes["pruned"]:
        raise HalpError(f"{pruned} gives outputs of shapes {shapes['pruned']}, {original} "
                        f"{shapes['original']}: the pruned model must keep every output's shape "
                        "(prune with halp-trt, which keeps output layers at their width)")
    backend = backend_for(gpu, precision, backend=backend)
    cmp = compare_onnx(backend, models["original"].SerializeToString(),
                       models["pruned"].SerializeToString(), model_protocol(rounds))
    res = {k: {"path": path, "measured_ms": getattr(cmp, k).estimate(cmp.estimator),
               "stats": getattr(cmp, k).to_json(),
               "session_ms": [s.estimate(cmp.estimator) for s in getattr(cmp, f"{k}_sessions")]}
           for k, path in (("original", original), ("pruned", pruned))}
    lo, hi = cmp.ratio_spread
    res.update({"speedup_measured": cmp.speedup, "backend": backend.identity(),
                "noisy": cmp.original.noisy or cmp.pruned.noisy,
                # one session per graph could have read any ratio in this range
                "latency_ratio_measured": cmp.ratio, "latency_ratio_spread": [lo, hi],
                "speedup_spread": [1 / hi, 1 / lo],
                "measurement_calls": len(set(cmp.original_calls)) or 1,
                "output_shapes": shapes["original"]})
    if table_path:
        from halp_trt.latency.calibration import Calibration
        from halp_trt.latency.table import LatencyTable

        table = LatencyTable.load(table_path)
        table.check_compatible(backend.identity())
        preds = {k: predict_onnx_ms(table, m) for k, m in models.items()}
        # the table's own whole-model measurement calibrates the rest of the model
        calib = Calibration("additive", preds["original"]["layers_sum_ms"],
                            table.model_measured_ms or preds["original"]["layers_sum_ms"])
        for k in models:
            pred = calib.model_ms(preds[k]["layers_sum_ms"])
            res[k]["predicted_ms"] = pred
            res[k]["predicted_over_measured"] = pred / res[k]["measured_ms"]
        res["speedup_predicted"] = res["original"]["predicted_ms"] / res["pruned"]["predicted_ms"]
        res["calibration"] = calib.to_json()
    return res


def format_validation(res: dict) -> str:
    lines = [f"{'':10s} {'measured ms':>12s} {'median ms':>10s} {'predicted ms':>13s}"]
    for k in ("original", "pruned"):
        r = res[k]
        pred = f"{r['predicted_ms']:13.3f}" if "predicted_ms" in r else f"{'-':>13s}"
        lines.append(f"{k:10s} {r['measured_ms']:12.3f} {r['stats']['median_ms']:10.3f} {pred}")
    lines.append(f"speedup: {res['speedup_measured']:.2f}x measured" +
                 (f", {res['speedup_predicted']:.2f}x predicted" if "speedup_predicted" in res
                  else ""))
    if "latency_ratio_spread" in res:
        lo, hi = res["latency_ratio_spread"]
        n = {k: len(res[k]["session_ms"]) for k in ("original", "pruned")}
        per_session = "; ".join(f"{k} {min(res[k]['session_ms']):.3f}-"
                                f"{max(res[k]['session_ms']):.3f} ms"
                                for k in ("original", "pruned") if res[k]["session_ms"])
        lines.append(f"latency ratio (pruned/original): {res['latency_ratio_measured']:.3f}, "
                     f"{lo:.3f}-{hi:.3f} over pairs of sessions ({n['original']} and "
                     f"{n['pruned']} sessions in {res.get('measurement_calls', 1)} calls; "
                     f"{per_session})")
    if res["noisy"]:
        lines.append("warning: noisy measurement (median > 15% above minimum); the machine was "
                      "busy — re-run on a quiet machine")
    return "\n".join(lines)



