"""DeployConfig: every option of a prune-and-deploy run, validated before any work.

Errors name the field (``ConfigError``); the CLI names the matching flag instead.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from halp_trt.errors import ConfigError
from halp_trt.pruning.targets import parse_target

# Beyond these a run is almost surely a typo (a 16k image, a batch of 100k) and would only fail
# minutes later, out of memory in export or the runtime.
MAX_INPUT_SIZE = 4096
MAX_BATCH_SIZE = 1024

# Choice fields and their values (the CLI offers the same choices).
CHOICES = {
    "contribution": ("two_sided", "one_sided"),
    "importance": ("taylor", "taylor_per_layer", "magnitude", "magnitude_in",
                   "taylor_magnitude_in", "l1", "bn_scale"),
    "importance_normalizer": ("none", "mean"),
    "lr_schedule": ("constant", "cosine"),
    "calibration": ("affine", "additive", "ratio"),
    "precision": ("fp32", "fp16", "int8"),
    "backend": ("onnxruntime", "openvino", "tensorrt"),
    "task": ("auto", "classification", "segmentation", "detection"),
}


@dataclass
class DeployConfig:
    out: str
    model: str = "resnet18"
    weights: str | None = None
    data: str | None = None  # None: the task's (digits; shapes for segmentation and detection)
    # what the model is trained and scored for; auto: from the model (halp_trt.tasks)
    task: str = "auto"
    input_size: int = 64
    batch_size: int = 1  # latency measurement batch
    train_batch_size: int = 64
    table: str = "auto"  # path | auto (profiles/, cache, or build one)
    # fraction of the measured original, or "12ms"; several comma-separated targets make a
    # Pareto front from one run (``halp_trt.pipeline.front``)
    target: str = "0.5"
    steps: int = 8
    interval: int = 5  # minibatches between pruning steps
    epochs: int = 2  # fine-tuning epochs after the last pruning step
    # when no --weights are given; None: the task's (halp_trt.tasks: 4, detection 16)
    pretrain_epochs: int | None = None
    # pre-training recipe (AdamW, one-cycle, clipped gradients, small batches, BN statistics
    # re-estimated after): converges in one epoch on digits for every torchvision family.
    # None: the task's (2e-3, detection 3e-3)
    pretrain_lr: float | None = None
    pretrain_batch_size: int = 16
    lr: float = 0.01  # pruning and fine-tuning (SGD with momentum)
    # "cosine": from lr down to 0 over the pruning epoch(s) and the fine-tuning epochs together.
    # The default since Fashion-MNIST at 0.15 of the latency: +1.1 points over a constant rate
    # (3 seeds), ahead of every peer given the same schedule (BENCHMARKS.md)
    lr_schedule: str = "cosine"
    contribution: str = "two_sided"
    # taylor_per_layer: measured above HALP's taylor on Fashion-MNIST (BENCHMARKS.md)
    importance: str = "taylor_per_layer"
    importance_normalizer: str = "none"
    # classification: the pruning and fine-tuning loss mixes in this weight of distillation
    # from the unpruned original (its logits softened by distill_temperature); 0: none
    distill: float = 0.0
    distill_temperature: float = 4.0
    # neuron groups (latency steps) every channel group keeps; 2 stops a block's inner width
    # from falling to a single step at aggressive targets
    min_groups_kept: int = 1
    calibration: str = "affine"
    gpu: bool = False  # shorthand for backend="tensorrt"
    backend: str = "onnxruntime"  # the runtime the model is deployed on and timed with
    precision: str = "fp32"
    rounds: int = 30  # interleaved rounds when measuring whole models
    seed: int = 0
    allow_table_mismatch: bool = False
    # re-measure a few of a table's configurations here before pruning with it (a few seconds;
    # refuses a table from another machine class). Off only where the table was just measured.
    probe_table: bool = True
    # --table auto on a machine no table fits: re-anchor another machine's table of this model
    # (a fraction of a full build's measurements) instead of measuring one in full
    table_transfer: bool = True
    allow_untrained: bool = False  # prune a model at chance accuracy (benchmarks)
    exclude: tuple = ()  # modules whose output channels must not change
    max_batches: int | None = None  # cap batches per epoch (tests, smoke runs)
    progress: bool = True

    def __post_init__(self):
        for name, allowed in CHOICES.items():
            if getattr(self, name) not in allowed:
                raise ConfigError(name, f"{{field}} must be one of {', '.join(allowed)}, got "
                                  f"{getattr(self, name)!r}")
        if self.gpu and self.backend == "onnxruntime":
            self.backend = "tensorrt"
        elif self.gpu and self.backend != "tensorrt":
            raise ConfigError("backend", f"--gpu means TensorRT; it cannot be combined with "
                              f"{{field}} {self.backend}")
        self.gpu = self.backend == "tensorrt"
        if self.precision == "fp16" and not self.gpu:
            raise ConfigError("precision", f"{{field}} fp16 needs the TensorRT backend (gpu); "
                              f"{self.backend} on the CPU measures fp32 or int8")
        if self.precision == "int8" and self.backend != "onnxruntime":
            raise ConfigError("precision", f"{{field}} int8 is measured with ONNX Runtime (QDQ) "
                              f"here, not {self.backend}")
        if not 8 <= self.input_size <= MAX_INPUT_SIZE:
            raise ConfigError("input_size", f"{{field}} must be between 8 and {MAX_INPUT_SIZE}, "
                              f"got {self.input_size}")
        if self.batch_size > MAX_BATCH_SIZE:
            raise ConfigError("batch_size", f"{{field}} (latency measurement batch) must be at "
                              f"most {MAX_BATCH_SIZE}, got {self.batch_size}")
        for name in ("batch_size", "train_batch_size", "pretrain_batch_size", "steps", "interval",
                     "rounds", "min_groups_kept"):
            if getattr(self, name) < 1:
                raise ConfigError(name, "{field} must be >= 1")
        for name in ("epochs", "pretrain_epochs", "seed"):
            if getattr(self, name) is not None and getattr(self, name) < 0:
                raise ConfigError(name, "{field} must be >= 0")
        if self.max_batches is not None and self.max_batches < 1:
            raise ConfigError("max_batches", "{field} must be >= 1")
        for name in ("lr", "pretrain_lr"):
            v = getattr(self, name)
            if v is not None and not (v > 0 and math.isfinite(v)):
                raise ConfigError(name, "{field} must be a positive number")
        if not 0 <= self.distill < 1:
            raise ConfigError("distill", "{field} is the distillation loss's weight, in [0, 1)")
        if not (self.distill_temperature > 0 and math.isfinite(self.distill_temperature)):
            raise ConfigError("distill_temperature", "{field} must be a positive number")
        if isinstance(self.exclude, str):
            self.exclude = (self.exclude,)
        self.exclude = tuple(self.exclude)
        parts = [p.strip() for p in str(self.target).split(",")]
        self.parsed_targets = [parse_target(p, of="measured", field_name="target")
                               for p in parts]
        if len({str(t) for t in self.parsed_targets}) < len(parts):
            raise ConfigError("target", f"{{field}} {self.target!r} repeats a target")
        self.parsed_target = self.parsed_targets[0]

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        return (self.batch_size, 3, self.input_size, self.input_size)

    def to_json(self) -> dict:
        from dataclasses import asdict

        d = asdict(self)
        d.pop("parsed_target", None)
        d.pop("parsed_targets", None)
        d["exclude"] = list(self.exclude)
        return d
