"""The stages of prune-and-deploy, each a method a reader can follow:

1. ``load``      data, model, layer graph, backend; every check that needs no training
2. ``original``  weights (given or trained briefly) and the original's accuracy
3. ``table``     the latency table (explicit, shipped, cached, or measured now)
4. ``calibrate`` whole-model measurements that map the table's layer sum to real latency
5. ``prune``     HALP during fine-tuning, closed loop on measured latency; channels removed
6. ``finetune``  further epochs on the pruned model
7. ``deploy``    ONNX export and the runtime's outputs checked against PyTorch
8. ``verify``    original and pruned measured interleaved
9. ``report``    report.json / report.md / model.onnx / pruning.json / weights / PNGs

The latency target is a fraction of the *measured* original (or ms). ``RunState`` owns what a
resumed run needs; it is saved after every stage and epoch, and Ctrl-C leaves it in
``out/checkpoint.pt``, from which the same command resumes.
"""
from __future__ import annotations

import copy
import dataclasses
import math
import os
import time

import torch

from halp_trt.distributed import (broadcast_object, check_same_on_all_ranks, dist_context,
                                  finish_distributed)
from halp_trt.errors import ConfigError, HalpError
from halp_trt.fileio import check_writable, write_bytes_atomic
from halp_trt.pipeline.config import DeployConfig
from halp_trt.pipeline.state import RunState
from halp_trt.pruning.surgery import check_masked_equals_pruned
from halp_trt.sanity import check_model_is_sane
from halp_trt.train import capped

CHECKPOINT = "checkpoint.pt"
# A target whose predicted floor is within this factor of it is tried (and measured), not
# refused.
NEAR_FLOOR = 1.3
# A target under this many times the predicted floor gets the floor measured (calibration).
MEASURE_FLOOR_WITHIN = 2.0
# INT8: calibration batches from the training split (MinMax ranges), and the validation inputs
# the INT8 model is compared with PyTorch on (top-1 agreement needs ~100 to mean something)
INT8_CALIBRATION_BATCHES = 32
INT8_CHECK_INPUTS = 128


class DeployRun:
    """One prune-and-deploy run. ``run()`` calls the stages in order; each reads what earlier
    stages left on ``self`` and in ``self.state``."""

    def __init__(self, cfg: DeployConfig):
        if not isinstance(cfg, DeployConfig):
            raise HalpError("prune_and_deploy needs a DeployConfig")
        if len(cfg.parsed_targets) > 1:
            raise HalpError("a DeployRun prunes to one target; halp_trt.pipeline.prune_and_deploy "
                            "runs several")
        self.cfg = cfg
        self.t_start = time.perf_counter()
        self.stage_s: dict[str, float] = {}  # wall seconds per stage, in the report
        self.rank, self.world = dist_context()
        self.is_main = self.rank == 0
        self.show_progress = cfg.progress and self.is_main
        self.ckpt_path = os.path.join(cfg.out, CHECKPOINT)

    def log(self, msg: str) -> None:
        if self.is_main:
            print(f"[halp-trt] {msg}", flush=True)

    def checkpoint(self, **fields) -> None:
        for k, v in fields.items():
            setattr(self.state, k, v)
        if self.is_main:
            self.state.save(self.ckpt_path)

    def _timed(self, stage) -> None:
        t0 = time.perf_counter()
        stage()
        self.stage_s[stage.__name__] = time.perf_counter() - t0

    def run(self) -> dict:
        for stage in (self.load, self.original, self.table, self.calibrate, self.prune,
                      self.finetune):
            self._timed(stage)
        if not self.is_main:
            finish_distributed(self.world)
            return {}
        for stage in (self.deploy, self.verify):
            self._timed(stage)
        report = self.report()
        finish_distributed(self.world)
        return report

    # ---- 1. load -----------------------------------------------------------------------------
    def load(self) -> None:
        from halp_trt.data import check_sample, load_data, make_loader
        from halp_trt.graph.groups import find_channel_groups, run_example
        from halp_trt.graph.layers import list_layers
        from halp_trt.latency.resolve import resolve_table
        from halp_trt.models import create_model, strip_aux_heads
        from halp_trt.runtime import backend_for

        cfg = self.cfg
        torch.manual_seed(cfg.seed)
        check_writable(cfg.out, is_dir=True)
        self.data = load_data(cfg.data, (cfg.input_size, cfg.input_size), cfg.seed)
        # every model after the original's training is built without auxiliary heads
        self.new_model = lambda: strip_aux_heads(create_model(cfg.model, self.data.num_classes,
                                                              cfg.input_size))
        self.model = create_model(cfg.model, self.data.num_classes, cfg.input_size)
        check_sample(self.data, cfg.input_shape)
        self.example = torch.randn(*cfg.input_shape)
        try:
            n_out = run_example(self.model, self.example,
                                fix="set {field} to the size the model expects").shape[-1]
        except HalpError as exc:
            raise ConfigError("input_size", f"{cfg.model}: {exc}") from None
        if n_out != self.data.num_classes:
            raise HalpError(f"the model has {n_out} outputs but {self.data.name} has "
                            f"{self.data.num_classes} classes")
        self.train_loader = make_loader(self.data.train, cfg.train_batch_size, True, cfg.seed,
                                        self.world > 1)
        self.val_loader = make_loader(self.data.val, 256, False, cfg.seed, self.world > 1)
        self.backend = backend_for(cfg.gpu, cfg.precision, backend=cfg.backend)
        if cfg.precision == "int8":  # every whole model is quantized with the task's data
            self.backend.int8_calibration = self._int8_calibration_inputs()
        # before any training: the architecture must be prunable and an explicit table must fit
        # (channel groups and layer signatures depend on the architecture only, not on weights)
        groups, _ = find_channel_groups(self.model, self.example)
        self.specs = list_layers(self.model, self.example, groups)
        modules = dict(self.model.named_modules())
        unknown = [n for n in cfg.exclude if n not in modules]
        if unknown:
            raise ConfigError("exclude", f"cannot {{field}} {unknown}: no such module in the "
                              f"model (module names look like {list(modules)[1:4]})")
        run = {"model": cfg.model, "data": cfg.data, "input_size": cfg.input_size,
               "batch_size": cfg.batch_size}
        self.state = (RunState.load(self.ckpt_path) if os.path.exists(self.ckpt_path)
                      else RunState(run=run))
        if self.state.run != run:
            raise HalpError(f"{self.ckpt_path} belongs to another run ({self.state.run}); rerun "
                            "that command to resume it, or choose another --out (or delete the "
                            "checkpoint) to start this one")
        if self.state.phase != "start":
            self.log(f"resuming from {self.ckpt_path} (phase {self.state.phase})")
        # an explicit table must fit this model and machine before any training (probed here)
        self.explicit_table = (resolve_table(cfg.table, self.model, cfg.model, cfg.input_shape,
                                             self.specs, self.backend, cfg.allow_table_mismatch,
                                             self.show_progress, self.log, cfg.probe_table)
                               if cfg.table != "auto" else None)

    def _model_protocol(self):
        """Whole-model timing. Sessions of one graph read a few percent apart (seen before the
        protocol's warm-up: 0.596-0.673 ms for four sessions of one pruned resnet18; with it,
        for a 0.75 ms model, 1-2% over 100 rounds, 2-9% over 30), which rounds cannot average
        out; under 2 ms that is a good
        part of the ±5% a target is judged by, so small models get 8 sessions per graph
        instead of 3, and the report gives the ratio's spread over pairs of sessions."""
        from halp_trt.runtime.protocol import model_protocol

        small = self.state.original_ms is not None and self.state.original_ms < 2.0
        return model_protocol(self.cfg.rounds, sessions_per_graph=8 if small else 3)

    # ---- training helpers ------------------------------------------------------------------------
    def _optimizer(self, params):
        return torch.optim.SGD(params, lr=self.cfg.lr, momentum=0.9, weight_decay=1e-4)

    def _run_epochs(self, net, optimizer, n_epochs, desc, pruner=None, scheduler=None,
                    until=None, on_epoch=None, first_epoch: int = 0, loader=None,
                    clip_grad_norm: float | None = None):
        """``train.train_epochs`` on this run's loader, seed and batch cap, under DDP when
        several ranks run."""
        from torch.nn.parallel import DistributedDataParallel as DDP

        from halp_trt.train import train_epochs

        wrapped = DDP(net) if self.world > 1 else net
        train_epochs(wrapped, loader or self.train_loader, optimizer, n_epochs, seed=self.cfg.seed,
                     first_epoch=first_epoch, pruner=pruner, scheduler=scheduler, until=until,
                     on_epoch=on_epoch, clip_grad_norm=clip_grad_norm,
                     max_batches=self.cfg.max_batches, desc=desc, progress=self.show_progress)

    def _pretrain(self, model) -> None:
        from torch.nn.parallel import DistributedDataParallel as DDP

        from halp_trt.data import make_loader
        from halp_trt.train import pretrain

        cfg = self.cfg
        loader = make_loader(self.data.train, cfg.pretrain_batch_size, True, cfg.seed,
                             self.world > 1)
        pretrain(model, loader, cfg.pretrain_epochs, cfg.pretrain_lr, seed=cfg.seed,
                 net=DDP(model) if self.world > 1 else None, max_batches=cfg.max_batches,
                 progress=self.show_progress)
        if self.world > 1:  # every rank starts pruning from rank 0's weights and statistics
            model.load_state_dict(broadcast_object(model.state_dict()))

    # ---- 2. original -------------------------------------------------------------------------
    def original(self) -> None:
        from halp_trt.models import strip_aux_heads
        from halp_trt.train import evaluate, load_weights

        cfg, model = self.cfg, self.model
        if self.state.phase == "start":
            if cfg.weights:
                load_weights(model, cfg.weights)
                self.log(f"loaded weights {cfg.weights}")
            elif cfg.pretrain_epochs:
                self.log(f"no --weights: training {cfg.model} on {self.data.name} for "
                         f"{cfg.pretrain_epochs} epochs")
                self._pretrain(model)
            # auxiliary heads train the original; the deployed (eval) graph has none, so they
            # are dropped before pruning and every later model is built without them
            strip_aux_heads(model)
            # a copy: the live tensors are trained and pruned later, the state keeps the original
            # (deepcopy keeps the state dict's _metadata: MNASNet refuses to load without it)
            self.checkpoint(phase="original", original=copy.deepcopy(model.state_dict()))
        else:
            strip_aux_heads(model)
            model.load_state_dict(self.state.original)
        self.original_model = self.new_model()
        self.original_model.load_state_dict(self.state.original)
        self.original_model.eval()
        self.acc_original = evaluate(self.original_model, self.val_loader)
        self.log(f"original accuracy on {self.data.name}: {self.acc_original:.4f}")
        try:
            check_model_is_sane(self.original_model, self.val_loader, self.acc_original,
                                cfg.allow_untrained)
        except HalpError:
            # nothing worth resuming: the same command with other settings starts afresh
            if self.is_main and os.path.exists(self.ckpt_path):
                os.unlink(self.ckpt_path)
            raise

    # ---- 3. table ----------------------------------------------------------------------------
    def table(self) -> None:
        from halp_trt.latency.resolve import resolve_table

        cfg = self.cfg
        self.resolved_table = self.explicit_table or resolve_table(
            cfg.table, self.original_model, cfg.model, cfg.input_shape, self.specs, self.backend,
            cfg.allow_table_mismatch, self.show_progress, self.log, cfg.probe_table,
            cfg.table_transfer)
        self.latency_table, self.table_path = self.resolved_table.table, self.resolved_table.path
        self.layers_full_ms = self.latency_table.layers_sum_ms(self.specs)

    # ---- 4. calibrate ------------------------------------------------------------------------
    def calibrate(self) -> None:
        from halp_trt.latency.calibration import Calibration, slimmed_copy
        from halp_trt.pruning.config import HALPConfig
        from halp_trt.runtime.export import export_onnx
        from halp_trt.runtime.protocol import measure_interleaved

        cfg, st = self.cfg, self.state
        # One throw-away pruner on a copy gives both the table's floor (the lowest target the
        # pruner accepts, checked before calibrating and training towards it) and the slimmed
        # calibration model: each construction traces the dependency graph.
        pruning_ahead = st.phase in ("original", "pruning")
        sizing_pruner = (self._throwaway_pruner()
                         if pruning_ahead or st.calibration is None else None)
        layers_min_ms = sizing_pruner.min_ms if pruning_ahead else None
        if st.calibration is None:
            factor = min(0.9, max(0.25, math.sqrt(cfg.target_fraction or 0.5)))
            slim, slim_layers_ms = slimmed_copy(sizing_pruner, factor)
            self.log(f"measuring the original and a {factor:.2f}-width copy on "
                     f"{self.backend.identity().get('runtime')} ({cfg.rounds} interleaved "
                     "rounds) to calibrate whole-model predictions")
            stats = measure_interleaved(
                self.backend, {"original": export_onnx(self.original_model, self.example),
                               "slim": export_onnx(slim, self.example)},
                self._model_protocol())
            cal = broadcast_object({  # every rank must prune to the same targets
                "layers_full_ms": self.layers_full_ms,
                "model_full_ms": stats["original"].estimate("min"),
                "layers_slim_ms": slim_layers_ms, "model_slim_ms": stats["slim"].estimate("min")})
            self.checkpoint(original_ms=cal["model_full_ms"], calibration=cal)
        c = st.calibration
        kind = cfg.calibration
        if kind == "affine" and c["layers_slim_ms"] >= c["layers_full_ms"]:
            # every group is a single latency step wide: no narrower second point exists
            self.log("no group can be slimmed by a whole step: calibrating proportionally "
                     "(ratio) instead of affine")
            kind = "ratio"
        self.calib = Calibration(kind, c["layers_full_ms"], c["model_full_ms"],
                                 c["layers_slim_ms"], c["model_slim_ms"],
                                 c.get("layers_floor_ms"), c.get("model_floor_ms"))
        original_ms = st.original_ms
        self.measured_goal_ms = cfg.parsed_target.to_ms(original_ms)
        if self.measured_goal_ms >= original_ms:
            raise ConfigError("target", f"{{field}} {cfg.target} is not below the original's "
                              f"measured {original_ms:.3f} ms: nothing to prune; give a lower "
                              "target")
        floor_ms = None if layers_min_ms is None else self.calib.model_ms(layers_min_ms)
        if floor_ms is not None and c.get("model_floor_ms") is None and \
                floor_ms * MEASURE_FLOOR_WITHIN >= self.measured_goal_ms:
            self._measure_floor()
            c = st.calibration
            self.calib = Calibration(kind, c["layers_full_ms"], c["model_full_ms"],
                                     c["layers_slim_ms"], c["model_slim_ms"],
                                     c["layers_floor_ms"], c["model_floor_ms"])
            floor_ms = self.calib.model_ms(layers_min_ms)
        layers_target_ms = self.calib.layers_ms(self.measured_goal_ms)
        if floor_ms is not None and layers_target_ms < layers_min_ms and \
                floor_ms <= self.measured_goal_ms * NEAR_FLOOR:
            # The floor is a two-point calibration's prediction, a few percent either way from
            # one run to the next (seen: MNASNet and EfficientNet at 64x64 refused in one run,
            # met the target in the next): near it, the measurements decide.
            self.log(f"the table puts the smallest model at {floor_ms / original_ms:.3f} of the "
                     "original, near the target: pruning towards it and measuring")
            layers_target_ms = layers_min_ms
        if floor_ms is not None and layers_target_ms < layers_min_ms:
            raise ConfigError(
                "target", f"{{field}} {cfg.target} ({self.measured_goal_ms:.3f} ms) is infeasible with "
                f"this table: its smallest model (every prunable group at its minimum width) is "
                f"predicted at {floor_ms:.3f} ms, {floor_ms / original_ms:.3f} of the original's "
                f"{original_ms:.3f} ms measured. Use {{field}} "
                f"{math.ceil(1000 * floor_ms / original_ms) / 1000:.3f} or more.")
        if layers_target_ms <= 0:
            raise ConfigError("target", f"target {self.measured_goal_ms:.3f} ms is infeasible: the part "
                              "of the model the table does not hold alone takes "
                              f"{self.measured_goal_ms - layers_target_ms:.3f} ms (original "
                              f"{original_ms:.3f} ms measured)")
        self.halp_config = HALPConfig(target=f"{layers_target_ms}ms", steps=cfg.steps,
                                      interval=cfg.interval, contribution=cfg.contribution,
                                      importance=cfg.importance,
                                      importance_normalizer=cfg.importance_normalizer,
                                      exclude=tuple(cfg.exclude))

    def _throwaway_pruner(self):
        """A pruner on a copy of the original at full width: the table's floor and the
        calibration models come from it (each use consumes one)."""
        from halp_trt.pruning.config import HALPConfig
        from halp_trt.pruning.pruner import HALPPruner

        return HALPPruner(copy.deepcopy(self.original_model), self.example, self.latency_table,
                          HALPConfig(target=1 - 1e-9, steps=1, interval=1,
                                     exclude=tuple(self.cfg.exclude)))

    def _measure_floor(self) -> None:
        """Measure the smallest model the table allows against the original (one interleaved
        session) and add it to the calibration: near the floor, a line through the original
        and a uniform slim can be far off."""
        from halp_trt.latency.calibration import floor_copy
        from halp_trt.runtime.export import export_onnx
        from halp_trt.runtime.protocol import measure_interleaved

        st = self.state
        floor, floor_layers_ms = floor_copy(self._throwaway_pruner())
        self.log("the target is near the table's predicted floor: measuring the smallest model "
                 "too")
        stats = measure_interleaved(
            self.backend, {"original": export_onnx(self.original_model, self.example),
                           "floor": export_onnx(floor, self.example)}, self._model_protocol())
        ratio = stats["floor"].estimate("min") / stats["original"].estimate("min")
        cal = broadcast_object(dict(st.calibration, layers_floor_ms=floor_layers_ms,
                                    model_floor_ms=ratio * st.calibration["model_full_ms"]))
        self.log(f"smallest model measured at {ratio:.3f} of the original")
        self.checkpoint(calibration=cal)

    # ---- 5. prune ----------------------------------------------------------------------------
    def prune(self) -> None:
        from halp_trt.pruning.feedback import LatencyFeedback, steering_protocol
        from halp_trt.pruning.pruner import HALPPruner
        from halp_trt.pruning.result import PruningResult, apply_result
        from halp_trt.runtime.export import export_onnx

        cfg, st, model, example = self.cfg, self.state, self.model, self.example
        if st.phase not in ("original", "pruning"):
            # resuming after pruning: rebuild the pruned architecture from its decisions
            self.result = PruningResult.from_json(st.result, source=self.ckpt_path)
            self.pruned_model = apply_result(self.new_model(), example, self.result)
            self.pruned_model.load_state_dict(st.model if st.phase == "finetune" else st.pruned)
            return
        pruner = HALPPruner(model, example, self.latency_table, self.halp_config)
        final_ratio = self.measured_goal_ms / st.original_ms
        def build_arch(result):
            # with the current weights: INT8 latency depends on them through the activation
            # ranges (seen on resnet18: randomly initialised copies read a 0.93-width model at
            # 1.40x the trained original and the last step at 0.48; the deployed model, 0.37)
            net = self.new_model()
            net.load_state_dict(model.state_dict())
            return apply_result(net, example, result).eval()

        protocol = self._model_protocol()
        feedback = LatencyFeedback(
            pruner, build_arch,
            lambda net: export_onnx(net, example), self.backend,
            export_onnx(self.original_model, example), final_ratio, protocol,
            log=self.log, broadcast=broadcast_object if self.world > 1 else None,
            steering_protocol=steering_protocol(protocol), prior_points=self.calib.prior_points())
        opt = self._optimizer(model.parameters())
        if st.phase == "pruning":
            model.load_state_dict(st.model)
            pruner.load_state_dict(st.pruner)
            feedback.load_state_dict(st.feedback)
            opt.load_state_dict(st.optimizer)
            torch.set_rng_state(st.rng)
        pruner.attach_optimizer(opt)
        self.log(f"pruning to {final_ratio:.3f} of the original's latency "
                 f"({self.measured_goal_ms:.3f} ms of {st.original_ms:.3f} ms measured) in {cfg.steps} "
                 f"steps every {cfg.interval} batches, measuring after each step")

        done_before = st.prune_epochs_done if st.phase == "pruning" else 0

        def save_pruning(epoch=0):
            self.checkpoint(phase="pruning", model=model.state_dict(),
                            pruner=pruner.state_dict(), feedback=feedback.state_dict(),
                            optimizer=opt.state_dict(), rng=torch.get_rng_state(),
                            prune_epochs_done=done_before + epoch)

        try:
            self._run_epochs(model, opt, 0, "prune", pruner=feedback,
                             until=lambda: feedback.done, on_epoch=save_pruning,
                             first_epoch=1000 + done_before)
        except KeyboardInterrupt:
            save_pruning()
            raise
        st.feedback = feedback.state_dict()
        if self.world > 1:
            check_same_on_all_ranks(pruner.result().kept)
        self.result = pruner.result()
        model.eval()
        with torch.no_grad():
            masked_out = model(example)
        self.pruned_model = pruner.finalize()
        with torch.no_grad():
            pruned_out = self.pruned_model.eval()(example)
        check_masked_equals_pruned(masked_out, pruned_out)
        if self.is_main:
            self.result.save(os.path.join(cfg.out, "pruning.json"))
        self.checkpoint(phase="pruned", pruned=self.pruned_model.state_dict(),
                        finetune_epochs_done=0, result=self.result.to_json(), optimizer=None,
                        rng=None)

    # ---- 6. fine-tune ------------------------------------------------------------------------
    def finetune(self) -> None:
        from halp_trt.train import evaluate

        cfg, net = self.cfg, self.pruned_model
        done_epochs = self.state.finetune_epochs_done
        if done_epochs < cfg.epochs:
            opt = self._optimizer(net.parameters())
            self._run_epochs(net, opt, cfg.epochs - done_epochs, "fine-tune",
                             on_epoch=lambda e: self.checkpoint(
                                 phase="finetune", model=net.state_dict(),
                                 finetune_epochs_done=done_epochs + e),
                             first_epoch=2000 + done_epochs)
        net.eval()
        self.acc_pruned = evaluate(net, self.val_loader)
        self.log(f"pruned accuracy: {self.acc_pruned:.4f}")

    # ---- 7. deploy ---------------------------------------------------------------------------
    def deploy(self) -> None:
        from halp_trt.data import make_loader
        from halp_trt.runtime import backend_for
        from halp_trt.runtime.deploy import check_outputs
        from halp_trt.runtime.export import export_onnx

        cfg = self.cfg
        val_x = [x[: cfg.batch_size] for x, _ in
                 capped(make_loader(self.data.val, cfg.batch_size, False), 8)]
        self.original_onnx = export_onnx(self.original_model, self.example)
        self.pruned_onnx = export_onnx(self.pruned_model, self.example)
        sane = not cfg.allow_untrained  # random weights may give huge (finite) outputs
        # the float graphs are checked in float (an INT8 backend would quantize them first)
        float_backend = self.backend if cfg.precision != "int8" else \
            backend_for(False, "fp32", backend=cfg.backend)
        self.check = check_outputs(float_backend, self.pruned_onnx, self.pruned_model, val_x,
                                   label="pruned model", sane_outputs=sane)
        check_outputs(float_backend, self.original_onnx, self.original_model, val_x[:2],
                      label="original model", sane_outputs=sane)
        self.int8 = self._deploy_int8() if cfg.precision == "int8" else None

    def _int8_calibration_inputs(self) -> list:
        """``INT8_CALIBRATION_BATCHES`` model inputs from the training split (seeded)."""
        from halp_trt.data import make_loader

        cfg = self.cfg
        return [x.numpy() for x, _ in
                capped(make_loader(self.data.train, cfg.batch_size, True, cfg.seed),
                        INT8_CALIBRATION_BATCHES) if x.shape[0] == cfg.batch_size]

    def _deploy_int8(self) -> dict:
        """Quantize original and pruned with calibration images from the task, check the INT8
        pruned model against PyTorch (top-1 agreement, logit error) and measure both INT8
        models' accuracy; from here on the INT8 graphs are what is deployed and timed."""
        import numpy as np

        from halp_trt.data import make_loader
        from halp_trt.runtime.deploy import check_int8_outputs

        cfg = self.cfg
        n_calib = len(self.backend.int8_calibration)
        self.log(f"quantizing to INT8 (QDQ) with {n_calib} calibration batches of "
                 f"{self.data.name}")
        # the backend's own quantization: the deployed graphs are the ones it timed
        self.original_onnx = self.backend.int8_graph(self.original_onnx, "original model")
        self.pruned_onnx = self.backend.int8_graph(self.pruned_onnx, "pruned model")
        loader = make_loader(self.data.val, cfg.batch_size, False)
        acc, ref, got = {}, [], []
        for key, onnx_bytes in (("original", self.original_onnx), ("pruned", self.pruned_onnx)):
            handle = self.backend.prepare(onnx_bytes, label=f"INT8 {key} model")
            correct = total = 0
            try:
                for x, y in loader:
                    if x.shape[0] != cfg.batch_size:
                        continue
                    out = self.backend.infer(handle, [x.numpy()])[0]
                    correct += int((out.argmax(-1) == y.numpy()).sum())
                    total += len(y)
                    if key == "pruned" and len(got) < INT8_CHECK_INPUTS:
                        with torch.no_grad():
                            ref.append(self.pruned_model(x).numpy())
                        got.append(out)
            finally:
                self.backend.release(handle)
            acc[key] = correct / max(total, 1)
        check = check_int8_outputs(np.concatenate(ref), np.concatenate(got),
                                   **({"min_top1_agreement": 0.0} if cfg.allow_untrained else {}))
        if not check.passed:
            raise HalpError(f"the INT8 pruned model does not match the float one: {check.reason}."
                            " Check the calibration data, or deploy in fp32")
        self.log(f"INT8 pruned model: top-1 agreement {check.top1_agreement:.3f} with PyTorch, "
                 f"logit error {100 * check.rel_logit_error:.1f}%; INT8 accuracy original "
                 f"{acc['original']:.4f}, pruned {acc['pruned']:.4f}")
        return {"check": dataclasses.asdict(check), "accuracy": acc,
                "calibration_batches": n_calib}

    # ---- 8. verify ---------------------------------------------------------------------------
    def verify(self) -> None:
        from halp_trt.runtime.deploy import COMPARE_CALLS, compare_onnx

        self.log(f"measuring original and pruned interleaved ({COMPARE_CALLS} calls of fresh "
                 f"sessions, {self.cfg.rounds} rounds each)")
        self.comparison = compare_onnx(self.backend, self.original_onnx, self.pruned_onnx,
                                       self._model_protocol())
        self.pruned_layers_ms = self.latency_table.layer_predictions(
            self.specs, self.pruned_model)

    # ---- 9. report ---------------------------------------------------------------------------
    def report(self) -> dict:
        from halp_trt.report import build_report, write_outputs

        cfg = self.cfg
        report = build_report(
            cfg, self.latency_table, self.table_path, self.resolved_table.reason,
            self.resolved_table.probe, self.backend, self.calib,
            self.layers_full_ms, self.pruned_layers_ms, self.comparison, self.check,
            self.acc_original, self.acc_pruned, self.result,
            time.perf_counter() - self.t_start, self.stage_s, self.state.feedback or {})
        if self.int8 is not None:
            report["int8"] = self.int8
        write_bytes_atomic(os.path.join(cfg.out, "original.onnx"), self.original_onnx)
        write_outputs(cfg.out, report, self.pruned_onnx, self.pruned_model, self.latency_table,
                      self.specs, self.pruned_layers_ms)
        lo, hi = report["latency_ratio_spread"]
        self.log(f"speedup {report['speedup_measured']:.2f}x measured, latency ratio "
                 f"{report['latency_ratio_measured']:.3f} ({lo:.3f}-{hi:.3f} over pairs of "
                 f"sessions) for target {report['target_ratio']:.3f}: {report['target_verdict']}"
                 f"; accuracy {self.acc_original:.4f} -> {self.acc_pruned:.4f}; "
                 f"report in {os.path.join(cfg.out, 'report.md')}")
        if os.path.exists(self.ckpt_path):
            os.unlink(self.ckpt_path)
        return report
