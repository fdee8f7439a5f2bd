"""What each stage of prune-and-deploy does (``run.STAGES`` lists them in order with what each
reads and leaves). Each is a function of the ``DeployRun`` it works on: it reads earlier
stages' results from the run and leaves its own there, and saves what a resumed run needs in
``run.state`` through ``run.checkpoint``."""
from __future__ import annotations

import copy
import math
import os
import time

import torch

from halp_trt.distributed import broadcast_object, check_same_on_all_ranks
from halp_trt.errors import ConfigError, HalpError
from halp_trt.fileio import check_writable, write_bytes_atomic
from halp_trt.pipeline.state import RunState
from halp_trt.train import capped

# INT8: calibration batches from the training split (MinMax ranges)
INT8_CALIBRATION_BATCHES = 32


# ---- load --------------------------------------------------------------------------------
def load(run) -> None:
    from halp_trt.data import check_sample, load_data, make_loader
    from halp_trt.graph.groups import find_channel_groups, run_example
    from halp_trt.graph.layers import list_layers
    from halp_trt.latency.resolve import resolve_table
    from halp_trt.models import create_model
    from halp_trt.runtime import backend_for
    from halp_trt.tasks import resolve_task

    cfg = run.cfg
    torch.manual_seed(cfg.seed)
    check_writable(cfg.out, is_dir=True)
    run.task = resolve_task(cfg.task, cfg.model)
    if run.task.name == "detection" and (run.world > 1 or cfg.precision == "int8"):
        raise ConfigError("task", "{field} detection runs in one process at fp32 for now "
                          "(no torchrun, no --precision int8)")
    if cfg.distill and run.task.name != "classification":
        raise ConfigError("distill", f"{{field}} distils a classifier's logits; it is not "
                          f"available for {run.task.name}")
    run.data_spec = cfg.data or run.task.default_data
    if cfg.data is None and run.task.default_data == "shapes":
        run.log(f"{run.task.name} trains on the built-in synthetic shapes (--data shapes:N sets "
                "their number, coco:DIR gives your own detection data)")
    run.data = load_data(run.data_spec, (cfg.input_size, cfg.input_size), cfg.seed,
                         run.task.name)
    run.model = run.task.prepare(create_model(cfg.model, run.data.num_classes, cfg.input_size),
                                 cfg.input_size)
    check_sample(run.data, cfg.input_shape)
    run.example = torch.randn(*cfg.input_shape)
    try:
        run_example(run.model, run.example, fix="set {field} to the size the model expects")
        n_out = run.task.num_classes(run.model, run.example)
    except HalpError as exc:
        raise ConfigError("input_size", f"{cfg.model}: {exc}") from None
    if n_out != run.data.num_classes:
        raise HalpError(f"the model has {n_out} outputs but {run.data.name} has "
                        f"{run.data.num_classes} classes")
    run.train_loader = make_loader(run.data.train, cfg.train_batch_size, True, cfg.seed,
                                   run.world > 1)
    run.val_loader = make_loader(run.data.val, 256, False, cfg.seed, run.world > 1)
    run.backend = backend_for(cfg.gpu, cfg.precision, backend=cfg.backend)
    if cfg.precision == "int8":  # every whole model is quantized with the task's data
        run.backend.int8_calibration = [
            x.numpy() for x, _ in capped(make_loader(run.data.train, cfg.batch_size, True,
                                                     cfg.seed), INT8_CALIBRATION_BATCHES)
            if x.shape[0] == cfg.batch_size]
    # before any training: the architecture must be prunable and an explicit table must fit
    # (channel groups and layer signatures depend on the architecture only, not on weights)
    groups, _ = find_channel_groups(run.model, run.example)
    run.specs = list_layers(run.model, run.example, groups)
    modules = dict(run.model.named_modules())
    unknown = [n for n in cfg.exclude if n not in modules]
    if unknown:
        raise ConfigError("exclude", f"cannot {{field}} {unknown}: no such module in the "
                          f"model (module names look like {list(modules)[1:4]})")
    run.state = _resumed_state(run)
    run.explicit_table = (resolve_table(cfg.table, run.model, cfg.model, cfg.input_shape,
                                        run.specs, run.backend, cfg.allow_table_mismatch,
                                        run.show_progress, run.log, cfg.probe_table)
                          if cfg.table != "auto" else None)


def _resumed_state(run) -> RunState:
    cfg = run.cfg
    identity = {"model": cfg.model, "data": run.data_spec, "input_size": cfg.input_size,
                "batch_size": cfg.batch_size}
    state = RunState.load(run.ckpt_path) if os.path.exists(run.ckpt_path) else \
        RunState(run=identity)
    if state.run != identity:
        raise HalpError(f"{run.ckpt_path} belongs to another run ({state.run}); rerun "
                        "that command to resume it, or choose another --out (or delete the "
                        "checkpoint) to start this one")
    if state.reached("original"):
        run.log(f"resuming from {run.ckpt_path} (phase {state.phase})")
    return state


# ---- original ----------------------------------------------------------------------------
def original(run) -> None:
    from halp_trt.models import strip_aux_heads
    from halp_trt.runtime.export import export_onnx
    from halp_trt.sanity import check_model_is_sane
    from halp_trt.train import load_weights

    cfg, model = run.cfg, run.model
    if not run.state.reached("original"):
        if cfg.weights:
            load_weights(model, cfg.weights)
            run.log(f"loaded weights {cfg.weights}")
        elif run.pretrain_epochs:
            run.log(f"no --weights: training {cfg.model} on {run.data.name} for "
                    f"{run.pretrain_epochs} epochs (AdamW, one-cycle to {run.pretrain_lr:g})")
            run._pretrain(model)
        # auxiliary heads train the original; the deployed (eval) graph has none
        strip_aux_heads(model)
        # a copy: the live tensors are trained and pruned later, the state keeps the original
        # (deepcopy keeps the state dict's _metadata: MNASNet refuses to load without it)
        run.checkpoint(phase="original", original=copy.deepcopy(model.state_dict()))
    else:
        strip_aux_heads(model)
        model.load_state_dict(run.state.original)
    run.original_model = run.new_model()
    run.original_model.load_state_dict(run.state.original)
    run.original_model.eval()
    run.acc_original = run.evaluate(run.original_model)
    run.log(f"original {run.task.metric} on {run.data.name}: {run.acc_original:.4f}")
    try:
        constant_score = None if run.task.constant_score is None else (
            lambda labels: run.task.constant_score(labels, run.data.num_classes))
        check_model_is_sane(run.original_model, run.val_loader, run.acc_original,
                            cfg.allow_untrained, chance_test=run.task.name == "classification",
                            untrained_at_or_below=run.task.untrained_at_or_below,
                            metric=run.task.metric, constant_score=constant_score)
    except HalpError:
        # nothing worth resuming: the same command with other settings starts afresh
        if run.is_main and os.path.exists(run.ckpt_path):
            os.unlink(run.ckpt_path)
        raise
    run.original_onnx = export_onnx(run.original_model, run.example)


# ---- table -------------------------------------------------------------------------------
def table(run) -> None:
    from halp_trt.latency.resolve import resolve_table

    cfg = run.cfg
    run.resolved_table = run.explicit_table or resolve_table(
        cfg.table, run.original_model, cfg.model, cfg.input_shape, run.specs, run.backend,
        cfg.allow_table_mismatch, run.show_progress, run.log, cfg.probe_table,
        cfg.table_transfer)
    run.latency_table = run.resolved_table.table
    run.layers_full_ms = run.latency_table.layers_sum_ms(run.specs)


# ---- calibrate ---------------------------------------------------------------------------
def calibrate(run) -> None:
    from halp_trt.latency.calibration import (floor_worth_measuring, from_measurements,
                                              layers_target_ms)
    from halp_trt.pruning.config import HALPConfig

    cfg, st = run.cfg, run.state
    pruning_ahead = not st.reached("pruned")
    # one sizing pruner (each construction traces the graph and trial-cuts every group)
    # gives the table's floor and the widths of both calibration models
    sizing = _sizing_pruner(run) if pruning_ahead or st.calibration is None else None
    layers_min_ms = sizing.min_ms if pruning_ahead else None
    if st.calibration is None:
        t = cfg.parsed_target  # a target in ms: the original is not measured yet
        factor = min(0.9, max(0.25, math.sqrt(t.value if t.kind == "fraction" else 0.5)))
        run.log(f"measuring the original and a {factor:.2f}-width copy on "
                f"{run.backend.identity().get('runtime')} ({cfg.rounds} interleaved "
                "rounds) to calibrate whole-model predictions")
        _measure_beside_original(run, "slim", factor, sizing)
    run.calib, note = from_measurements(cfg.calibration, st.calibration)
    if note:
        run.log(note)
    run.measured_goal_ms = cfg.parsed_target.to_ms(st.original_ms)
    if layers_min_ms is not None and run.measured_goal_ms < st.original_ms and \
            floor_worth_measuring(run.calib, layers_min_ms, run.measured_goal_ms):
        run.log("the target is near the table's predicted floor: measuring the smallest "
                "model too")
        _measure_beside_original(run, "floor", None, sizing)
        run.calib, _ = from_measurements(cfg.calibration, st.calibration)
    layers_ms, note = layers_target_ms(run.calib, run.measured_goal_ms, layers_min_ms,
                                       cfg.target)
    if note:
        run.log(note)
    run.halp_config = HALPConfig(target=f"{layers_ms}ms", steps=cfg.steps,
                                 interval=cfg.interval, contribution=cfg.contribution,
                                 importance=cfg.importance,
                                 importance_normalizer=cfg.importance_normalizer,
                                 min_groups_kept=cfg.min_groups_kept,
                                 exclude=tuple(cfg.exclude))


def _sizing_pruner(run):
    from halp_trt.pruning.config import HALPConfig
    from halp_trt.pruning.pruner import HALPPruner

    return HALPPruner(copy.deepcopy(run.original_model), run.example, run.latency_table,
                      HALPConfig(target=1 - 1e-9, steps=1, interval=1,
                                 exclude=tuple(run.cfg.exclude)))


def _measure_beside_original(run, kind: str, width_factor: float | None,
                             sizing) -> None:
    """Measure a ``slim`` copy (``width_factor`` of every group's width) or the ``floor``
    (every group at its minimum) interleaved with the original, and add it to the
    calibration (the slim copy starts it)."""
    from halp_trt.pruning.calibration_models import floor_copy, slimmed_copy
    from halp_trt.runtime.export import export_onnx
    from halp_trt.runtime.protocol import measure_interleaved

    fresh = copy.deepcopy(run.original_model)
    net, layers_ms = slimmed_copy(sizing, fresh, run.example, width_factor) \
        if kind == "slim" else floor_copy(sizing, fresh, run.example)
    stats = measure_interleaved(run.backend, {"original": run.original_onnx,
                                              kind: export_onnx(net, run.example)},
                                run._model_protocol())
    ratio = stats[kind].estimate("min") / stats["original"].estimate("min")
    if kind == "slim":
        cal = {"layers_full_ms": run.layers_full_ms,
               "model_full_ms": stats["original"].estimate("min")}
    else:
        cal = dict(run.state.calibration)
        run.log(f"smallest model measured at {ratio:.3f} of the original")
    cal.update({f"layers_{kind}_ms": layers_ms,
                f"model_{kind}_ms": ratio * cal["model_full_ms"]})
    cal = broadcast_object(cal)  # every rank must prune to the same targets
    run.checkpoint(original_ms=cal["model_full_ms"], calibration=cal)


# ---- prune -------------------------------------------------------------------------------
def prune(run) -> None:
    from halp_trt.pruning.feedback import LatencyFeedback, steering_protocol
    from halp_trt.pruning.pruner import HALPPruner
    from halp_trt.pruning.result import PruningResult, apply_result
    from halp_trt.pruning.surgery import check_masked_equals_pruned
    from halp_trt.runtime.export import export_onnx

    cfg, st, model, example = run.cfg, run.state, run.model, run.example
    per_epoch = run.batches_per_epoch
    if st.reached("pruned"):  # resuming: the pruned architecture from its decisions
        run.result = PruningResult.from_json(st.result, source=run.ckpt_path)
        run.pruned_model = apply_result(run.new_model(), example, run.result)
        run.pruned_model.load_state_dict(st.model if st.reached("finetune") else st.pruned)
        run.prune_batches = st.prune_epochs_done * per_epoch
        return
    pruner = HALPPruner(model, example, run.latency_table, run.halp_config)
    final_ratio = run.measured_goal_ms / st.original_ms

    def build_arch(result):
        # with the current weights: INT8 latency depends on them through the activation
        # ranges (seen on resnet18: randomly initialised copies read a 0.93-width model at
        # 1.40x the trained original and the last step at 0.48; the deployed model, 0.37)
        net = run.new_model()
        net.load_state_dict(model.state_dict())
        return apply_result(net, example, result).eval()

    protocol = run._model_protocol()
    feedback = LatencyFeedback(
        pruner, build_arch, lambda net: export_onnx(net, example), run.backend,
        run.original_onnx, final_ratio, protocol, log=run.log,
        broadcast=broadcast_object if run.world > 1 else None,
        steering_protocol=steering_protocol(protocol), prior_points=run.calib.prior_points())
    opt = run._optimizer(model.parameters())
    resuming = st.reached("pruning")
    if resuming:
        model.load_state_dict(st.model)
        pruner.load_state_dict(st.pruner)
        feedback.load_state_dict(st.feedback)
        opt.load_state_dict(st.optimizer)
        torch.set_rng_state(st.rng)
    pruner.attach_optimizer(opt)
    done_before = st.prune_epochs_done if resuming else 0
    scheduler = run._lr_scheduler(opt, done_before * per_epoch)
    run.log(f"pruning to {final_ratio:.3f} of the original's latency "
            f"({run.measured_goal_ms:.3f} ms of {st.original_ms:.3f} ms measured) in "
            f"{cfg.steps} steps every {cfg.interval} batches, measuring after each step")

    def save_pruning(epoch=0):
        run.checkpoint(phase="pruning", model=model.state_dict(),
                       pruner=pruner.state_dict(), feedback=feedback.state_dict(),
                       optimizer=opt.state_dict(), rng=torch.get_rng_state(),
                       prune_epochs_done=done_before + epoch)

    try:
        run._run_epochs(model, opt, 0, "prune", pruner=feedback, scheduler=scheduler,
                        until=lambda: feedback.done, on_epoch=save_pruning,
                        first_epoch=1000 + done_before)
    except KeyboardInterrupt:
        save_pruning()
        raise
    if run.world > 1:
        check_same_on_all_ranks(pruner.result().kept)
    run.result = pruner.result()
    model.eval()
    with torch.no_grad():
        masked_out = model(example)
    run.pruned_model = pruner.finalize()
    with torch.no_grad():
        check_masked_equals_pruned(masked_out, run.pruned_model.eval()(example))
    if run.is_main:
        run.result.save(os.path.join(cfg.out, "pruning.json"))
    run.prune_batches = st.prune_epochs_done * per_epoch
    run.checkpoint(phase="pruned", pruned=run.pruned_model.state_dict(),
                   feedback=feedback.state_dict(), finetune_epochs_done=0,
                   result=run.result.to_json(), optimizer=None, rng=None)


# ---- fine-tune ---------------------------------------------------------------------------
def finetune(run) -> None:
    from halp_trt.sanity import check_not_collapsed

    cfg, net = run.cfg, run.pruned_model
    done_epochs = run.state.finetune_epochs_done
    if done_epochs < cfg.epochs:
        opt = run._optimizer(net.parameters())
        scheduler = run._lr_scheduler(opt, (run.state.prune_epochs_done + done_epochs) *
                                      run.batches_per_epoch)
        run._run_epochs(net, opt, cfg.epochs - done_epochs, "fine-tune", scheduler=scheduler,
                        on_epoch=lambda e: run.checkpoint(
                            phase="finetune", model=net.state_dict(),
                            finetune_epochs_done=done_epochs + e),
                        first_epoch=2000 + done_epochs)
    net.eval()
    run.acc_pruned = run.evaluate(net)
    run.log(f"pruned {run.task.metric}: {run.acc_pruned:.4f}")
    check_not_collapsed(run.acc_original, run.acc_pruned, run.task.metric,
                        cfg.allow_untrained)


# ---- deploy ------------------------------------------------------------------------------
def deploy(run) -> None:
    from halp_trt.data import make_loader
    from halp_trt.runtime import backend_for
    from halp_trt.runtime.deploy import check_outputs, deploy_int8
    from halp_trt.runtime.export import export_onnx

    cfg = run.cfg
    val_x = [x[: cfg.batch_size] for x, _ in
             capped(make_loader(run.data.val, cfg.batch_size, False), 8)]
    pruned_onnx = export_onnx(run.pruned_model, run.example)
    sane = not cfg.allow_untrained  # random weights may give huge (finite) outputs
    # the float graphs are checked in float (an INT8 backend would quantize them first)
    float_backend = run.backend if cfg.precision != "int8" else \
        backend_for(False, "fp32", backend=cfg.backend)
    run.check = check_outputs(float_backend, pruned_onnx, run.pruned_model, val_x,
                              label="pruned model", sane_outputs=sane)
    check_outputs(float_backend, run.original_onnx, run.original_model, val_x[:2],
                  label="original model", sane_outputs=sane)
    run.deployed, run.int8 = {"original": run.original_onnx, "pruned": pruned_onnx}, None
    if cfg.precision == "int8":  # from here on the INT8 graphs are deployed and timed
        original_int8, pruned_int8, run.int8 = deploy_int8(
            run.backend, run.original_onnx, pruned_onnx, run.pruned_model,
            make_loader(run.data.val, cfg.batch_size, False), cfg.batch_size,
            cfg.allow_untrained, run.log)
        run.deployed = {"original": original_int8, "pruned": pruned_int8}


# ---- verify ------------------------------------------------------------------------------
def verify(run) -> None:
    from halp_trt.runtime.deploy import COMPARE_CALLS, compare_onnx

    run.log(f"measuring original and pruned interleaved ({COMPARE_CALLS} calls of fresh "
            f"sessions, {run.cfg.rounds} rounds each)")
    run.comparison = compare_onnx(run.backend, run.deployed["original"],
                                  run.deployed["pruned"], run._model_protocol())
    run.pruned_layers_ms = run.latency_table.layer_predictions(
        run.specs, run.pruned_model)
    run.outside_graph_ms = None
    if run.task.name == "detection":  # a user's speedup is end to end
        from halp_trt.data import make_loader
        from halp_trt.runtime.timing_lock import timing_exclusive
        from halp_trt.tasks.detection import outside_graph_ms

        images = next(iter(make_loader(run.data.val, run.cfg.batch_size, False)))[0]
        with timing_exclusive():
            run.outside_graph_ms = {"original": outside_graph_ms(run.original_model, images),
                                    "pruned": outside_graph_ms(run.pruned_model, images)}
        og = run.outside_graph_ms
        run.log("outside the graph (PyTorch): post-processing "
                + ("(with the proposal selection) " if og["pruned"].get("proposals_included")
                   else "")
                + f"{og['original']['postprocess_ms']:.2f} -> {og['pruned']['postprocess_ms']:.2f}"
                f" ms, pre-processing {og['pruned']['preprocess_ms']:.2f} ms")


# ---- report ------------------------------------------------------------------------------
def report(run) -> None:
    from halp_trt.report import build_report, write_outputs

    cfg, table = run.cfg, run.resolved_table
    report = build_report(
        cfg, run.latency_table, table.path, table.reason, table.probe, run.backend,
        run.calib, run.layers_full_ms, run.pruned_layers_ms, run.comparison, run.check,
        run.acc_original, run.acc_pruned, run.result,
        time.perf_counter() - run.t_start, run.stage_s, run.state.feedback or {},
        metric=run.task.metric, data=run.data_spec)
    if run.int8 is not None:
        report["int8"] = run.int8
    if run.outside_graph_ms:
        report["outside_graph"] = run.outside_graph_ms
    write_bytes_atomic(os.path.join(cfg.out, "original.onnx"), run.deployed["original"])
    write_outputs(cfg.out, report, run.deployed["pruned"], run.pruned_model,
                  run.latency_table, run.specs, run.pruned_layers_ms)
    lo, hi = report["latency_ratio_spread"]
    run.log(f"speedup {report['speedup_measured']:.2f}x measured, latency ratio "
            f"{report['latency_ratio_measured']:.3f} ({lo:.3f}-{hi:.3f} over pairs of "
            f"sessions) for target {report['target_ratio']:.3f}: {report['target_verdict']}"
            f"; {run.task.metric} {run.acc_original:.4f} -> {run.acc_pruned:.4f}; "
            f"report in {os.path.join(cfg.out, 'report.md')}")
    if os.path.exists(run.ckpt_path):
        os.unlink(run.ckpt_path)
    run.final_report = report
