"""prune-and-deploy as a list of named stages (``STAGES``), each declaring what it reads from
the run and what it leaves on it. ``DeployRun(cfg).run()`` runs them all; ``run(until=...)``
stops after one (a tool that scores the pruned model itself stops after ``prune``).

The latency target is a fraction of the *measured* original (or ms). ``RunState`` holds what a
resumed run needs; it is saved after every stage and epoch, and Ctrl-C leaves it in
``out/checkpoint.pt``, from which the same command resumes.
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from typing import Callable

import torch

from halp_trt.distributed import broadcast_object, dist_context, finish_distributed
from halp_trt.errors import HalpError
import halp_trt.pipeline.stages as stages
from halp_trt.pipeline.config import DeployConfig

CHECKPOINT = "checkpoint.pt"


@dataclass(frozen=True)
class Stage:
    name: str
    fn: Callable[["DeployRun"], None]
    reads: tuple[str, ...]  # attributes of the run it needs (besides cfg and state)
    leaves: tuple[str, ...]  # attributes it sets
    every_rank: bool = True  # False: rank 0 only when several processes train


STAGES = (
    # data, model, layer graph, backend; every check that needs no training
    Stage("load", stages.load, (), ("task", "data_spec", "data", "model", "example",
                                    "train_loader", "val_loader", "backend", "specs", "state",
                                    "explicit_table")),
    # weights (given or trained briefly), the original's accuracy and ONNX graph
    Stage("original", stages.original, ("task", "model", "data"),
          ("original_model", "original_onnx", "acc_original")),
    # the latency table: explicit, shipped, cached, or measured now
    Stage("table", stages.table, ("original_model", "specs", "backend", "explicit_table"),
          ("resolved_table", "latency_table", "layers_full_ms")),
    # whole-model measurements that map the table's layer sum to real latency; the target
    Stage("calibrate", stages.calibrate,
          ("original_model", "original_onnx", "latency_table", "layers_full_ms"),
          ("calib", "measured_goal_ms", "halp_config")),
    # HALP during training, closed loop on measured latency; channels removed
    Stage("prune", stages.prune,
          ("model", "original_onnx", "halp_config", "calib", "measured_goal_ms"),
          ("pruned_model", "result", "prune_batches")),
    # further epochs on the pruned model
    Stage("finetune", stages.finetune, ("task", "pruned_model"), ("acc_pruned",)),
    # ONNX export, the runtime's outputs checked against PyTorch (and INT8 quantization)
    Stage("deploy", stages.deploy, ("original_onnx", "pruned_model"),
          ("deployed", "check", "int8"), every_rank=False),
    # original and pruned measured interleaved
    Stage("verify", stages.verify, ("deployed", "latency_table", "specs"),
          ("comparison", "pruned_layers_ms", "outside_graph_ms"), every_rank=False),
    # report.json / report.md / model.onnx / pruning.json / weights / PNGs
    Stage("report", stages.report, ("task", "data_spec", "comparison", "check", "acc_pruned",
                                    "result", "outside_graph_ms"),
          ("final_report",), every_rank=False),
)
STAGE_NAMES = tuple(s.name for s in STAGES)


class DeployRun:
    """One prune-and-deploy run: ``run()`` calls the stages of ``STAGES`` in order."""

    def __init__(self, cfg: DeployConfig):
        if not isinstance(cfg, DeployConfig):
            raise HalpError("prune_and_deploy needs a DeployConfig")
        if len(cfg.parsed_targets) > 1:
            raise HalpError("a DeployRun prunes to one target; halp_trt.pipeline.prune_and_deploy "
                            "runs several")
        self.cfg = cfg
        self.t_start = time.perf_counter()
        self.stage_s: dict[str, float] = {}  # wall seconds per finished stage, in the report
        self.rank, self.world = dist_context()
        self.is_main = self.rank == 0
        self.show_progress = cfg.progress and self.is_main
        self.ckpt_path = os.path.join(cfg.out, CHECKPOINT)

    def run(self, until: str | None = None) -> dict:
        """The stages not run yet, up to and including ``until`` (default: all). Returns the
        report once the last stage ran (``{}`` before, and on ranks other than 0)."""
        if until is not None and until not in STAGE_NAMES:
            raise HalpError(f"no stage {until!r}: the stages are {', '.join(STAGE_NAMES)}")
        for stage in STAGES:
            if stage.name in self.stage_s:
                continue
            if not stage.every_rank and not self.is_main:
                break
            missing = [a for a in stage.reads if not hasattr(self, a)]
            if missing:  # a stage called by hand out of order
                raise HalpError(f"stage {stage.name} needs {missing} from an earlier stage")
            t0 = time.perf_counter()
            stage.fn(self)
            unset = [a for a in stage.leaves if not hasattr(self, a)]
            if unset:
                raise HalpError(f"stage {stage.name} left {unset} unset")
            self.stage_s[stage.name] = time.perf_counter() - t0
            if stage.name == until:
                return getattr(self, "final_report", {})
        finish_distributed(self.world)
        return getattr(self, "final_report", {})

    def log(self, msg: str) -> None:
        if self.is_main:
            print(f"[halp-trt] {msg}", flush=True)

    def checkpoint(self, **fields) -> None:
        for k, v in fields.items():
            setattr(self.state, k, v)
        if self.is_main:
            self.state.save(self.ckpt_path)

    def new_model(self):
        """A fresh model of the run's architecture, without auxiliary heads (every model after
        the original's training is built so)."""
        from halp_trt.models import create_model, strip_aux_heads

        return strip_aux_heads(self.task.prepare(create_model(
            self.cfg.model, self.data.num_classes, self.cfg.input_size), self.cfg.input_size))

    def _model_protocol(self):
        """Whole-model timing. Sessions of one graph read a few percent apart, which rounds
        cannot average out (1-2% over 100 rounds for a 0.75 ms model, 2-9% over 30); under 2 ms
        that is a good part of the ±5% a target is judged by, so small models get 8 sessions
        per graph instead of 3."""
        from halp_trt.runtime.protocol import model_protocol

        small = self.state.original_ms is not None and self.state.original_ms < 2.0
        return model_protocol(self.cfg.rounds, sessions_per_graph=8 if small else 3)

    def evaluate(self, model) -> float:
        """The task's metric (top-1 accuracy, mean IoU) on the validation split."""
        return self.task.evaluate(model, self.val_loader, self.data.num_classes)

    def _optimizer(self, params):
        return torch.optim.SGD(params, lr=self.cfg.lr, momentum=0.9, weight_decay=1e-4)

    @property
    def batches_per_epoch(self) -> int:
        return min(len(self.train_loader), self.cfg.max_batches or len(self.train_loader))

    def _lr_scheduler(self, optimizer, batches_done: int):
        """``cfg.lr_schedule`` for ``optimizer``, ``batches_done`` batches into pruning and
        fine-tuning (None: constant). The cosine spans the pruning epochs its steps need and the
        fine-tuning epochs; steps the feedback adds beyond them run at the final rate, 0."""
        if self.cfg.lr_schedule == "constant":
            return None
        from halp_trt.train import cosine_schedule

        cfg, per_epoch = self.cfg, self.batches_per_epoch
        total = per_epoch * (math.ceil(cfg.steps * cfg.interval / per_epoch) + cfg.epochs)
        return cosine_schedule(optimizer, total, batches_done)

    def _run_epochs(self, net, optimizer, n_epochs, desc, **kwargs):
        """``train.train_epochs`` on this run's loader, seed and batch cap, under DDP when
        several ranks run."""
        from torch.nn.parallel import DistributedDataParallel as DDP

        from halp_trt.train import train_epochs

        train_epochs(DDP(net) if self.world > 1 else net, self.train_loader, optimizer, n_epochs,
                     seed=self.cfg.seed, max_batches=self.cfg.max_batches, desc=desc,
                     progress=self.show_progress, loss_fn=self._loss_fn(),
                     clip_grad_norm=self.task.clip_grad_norm, **kwargs)

    def _loss_fn(self):
        """The task's loss, or with ``cfg.distill`` (classification: checked at load) the
        distillation loss from the original."""
        if not self.cfg.distill:
            return self.task.loss
        from halp_trt.train import distillation_loss_fn

        return distillation_loss_fn(self.original_model, self.cfg.distill,
                                    self.cfg.distill_temperature)

    def _pretrain(self, model) -> None:
        from torch.nn.parallel import DistributedDataParallel as DDP

        from halp_trt.data import make_loader
        from halp_trt.train import pretrain

        cfg = self.cfg
        loader = make_loader(self.data.train, cfg.pretrain_batch_size, True, cfg.seed,
                             self.world > 1)
        pretrain(model, loader, self.pretrain_epochs, self.pretrain_lr, seed=cfg.seed,
                 net=DDP(model) if self.world > 1 else None, max_batches=cfg.max_batches,
                 progress=self.show_progress, loss_fn=self.task.loss)
        if self.world > 1:  # every rank starts pruning from rank 0's weights and statistics
            model.load_state_dict(broadcast_object(model.state_dict()))

    @property
    def pretrain_epochs(self) -> int:
        """--pretrain-epochs, or the task's when not given."""
        given = self.cfg.pretrain_epochs
        return self.task.pretrain_epochs if given is None else given

    @property
    def pretrain_lr(self) -> float:
        given = self.cfg.pretrain_lr
        return self.task.pretrain_lr if given is None else given

    @property
    def feedback_points(self) -> list:
        """The closed loop's measurements: one per pruning step (layer-sum and measured ratio)."""
        return (self.state.feedback or {}).get("points", [])

