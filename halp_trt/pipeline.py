"""prune-and-deploy: the whole job as one call with a validated config.

    report = prune_and_deploy(DeployConfig(out="run1"))

1. measure the original on the target runtime (with the table's protocol);
2. prune during fine-tuning on the HALP schedule, finalize, fine-tune further;
3. export the pruned model to ONNX, build the session/engine, compare outputs with PyTorch;
4. measure original and pruned interleaved; predicted vs measured;
5. write report.json / report.md / model.onnx / pruning.json / weights / PNGs into ``out``.

The latency target is a fraction of the *measured* original (or ms). Whole-model predictions
are the table's per-layer sum plus the part of the original the table does not hold, measured
once (``halp_trt.calibration``). Ctrl-C leaves ``out/checkpoint.pt``; the same command resumes.
"""
from __future__ import annotations

import copy
import glob
import math
import os
import re
import time
from dataclasses import asdict, dataclass

import torch

import halp_trt
from halp_trt.atomic import write_bytes_atomic
from halp_trt.errors import HalpError

CHECKPOINT = "checkpoint.pt"
# Beyond these a run is almost surely a typo (a 16k image, a batch of 100k) and would only fail
# minutes later, out of memory in export or the runtime.
MAX_INPUT_SIZE = 4096
MAX_BATCH_SIZE = 1024


@dataclass
class DeployConfig:
    out: str
    model: str = "resnet18"
    weights: str | None = None
    data: str = "digits"
    input_size: int = 64
    batch_size: int = 1  # latency measurement batch
    train_batch_size: int = 64
    table: str = "auto"  # path | auto (profiles/, cache, or build one)
    target: str = "0.5"  # fraction of the measured original, or "12ms"
    steps: int = 8
    interval: int = 5  # minibatches between pruning steps
    epochs: int = 2  # fine-tuning epochs after the last pruning step
    pretrain_epochs: int = 4  # when no --weights are given
    lr: float = 0.01
    contribution: str = "two_sided"
    importance: str = "taylor"
    calibration: str = "affine"
    gpu: bool = False
    precision: str = "fp32"
    rounds: int = 30  # interleaved rounds when measuring whole models
    seed: int = 0
    allow_table_mismatch: bool = False
    exclude: tuple = ()  # modules whose output channels must not change
    max_batches: int | None = None  # cap batches per epoch (tests, smoke runs)
    progress: bool = True

    def __post_init__(self):
        if not 8 <= self.input_size <= MAX_INPUT_SIZE:
            raise HalpError(f"--input-size must be between 8 and {MAX_INPUT_SIZE}, got "
                            f"{self.input_size}")
        if self.batch_size > MAX_BATCH_SIZE:
            raise HalpError(f"--batch-size (latency measurement batch) must be at most "
                            f"{MAX_BATCH_SIZE}, got {self.batch_size}")
        for name in ("batch_size", "train_batch_size", "steps", "interval", "rounds"):
            if getattr(self, name) < 1:
                raise HalpError(f"--{name.replace('_', '-')} must be >= 1")
        for name in ("epochs", "pretrain_epochs", "seed"):
            if getattr(self, name) < 0:
                raise HalpError(f"--{name.replace('_', '-')} must be >= 0")
        if self.max_batches is not None and self.max_batches < 1:
            raise HalpError("--max-batches must be >= 1")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise HalpError("--lr must be a positive number")
        self.target_fraction, self.target_ms = parse_measured_target(self.target)

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        return (self.batch_size, 3, self.input_size, self.input_size)


def parse_measured_target(text) -> tuple[float | None, float | None]:
    """"0.5" / "50%" -> fraction; "12ms" / "12.5 ms" -> ms. Bad values are one clear error."""
    s = str(text).strip().lower()
    m = re.fullmatch(r"([0-9]*\.?[0-9]+(?:e-?[0-9]+)?)\s*ms", s)
    if m:
        ms = float(m.group(1))
        if not (ms > 0 and math.isfinite(ms)):
            raise HalpError(f"--target {text!r}: a latency in ms must be a positive number")
        return None, ms
    try:
        frac = float(s[:-1]) / 100 if s.endswith("%") else float(s)
    except ValueError:
        raise HalpError(f"--target {text!r} is neither a fraction (0.5, 50%) nor a latency "
                        "(12ms)") from None
    if not (0 < frac < 1) or not math.isfinite(frac):
        raise HalpError(f"--target {text!r}: a fraction of the original's latency must be "
                        "between 0 and 1 (exclusive)")
    return frac, None


# ---- tables ----------------------------------------------------------------------------------

def profile_dirs() -> list[str]:
    here = os.path.dirname(os.path.abspath(halp_trt.__file__))
    cache = os.environ.get("HALP_TRT_CACHE", os.path.join(os.path.expanduser("~"), ".cache",
                                                           "halp-trt"))
    return [os.path.join(os.path.dirname(here), "profiles"), os.path.join(cache, "tables")]


def _table_fits(table, specs, backend_identity: dict, model_name: str, shape) -> bool:
    if table.identity.get("model") != model_name:
        return False
    if list(table.identity.get("input_shape", [])) != list(shape):
        return False
    if table.check_compatible(backend_identity, allow_mismatch=True):
        return False
    if table.identity.get("runtime_version") != backend_identity.get("runtime_version"):
        return False
    try:
        table.layers_sum_ms(specs)
    except (HalpError, ValueError):
        return False
    return True


def _check_table_covers(table, specs, cfg: DeployConfig) -> None:
    """Every layer's signature must be in the table, at widths within its range."""
    bad = []
    for s in specs:
        sig = table.signatures.get(s.signature.key)
        if sig is None:
            bad.append(f"{s.name} ({s.signature.key}) is not in it")
        elif s.in_channels > sig.c_in_max or s.out_channels > sig.c_out_max:
            bad.append(f"{s.name} ({s.signature.key}) is {s.in_channels}->{s.out_channels} "
                       f"channels, the table covers up to {sig.c_in_max}->{sig.c_out_max}")
    if bad:
        more = f" (and {len(bad) - 1} more layer(s))" if len(bad) > 1 else ""
        raise HalpError(f"the latency table {cfg.table} does not fit this model: layer "
                        f"{bad[0]}{more}. Measure a table for it with: halp-trt build-table "
                        f"{cfg.model} --input-shape {','.join(map(str, cfg.input_shape))} "
                        "--out NEW_TABLE.json")


def resolve_table(cfg: DeployConfig, model, specs, backend, log) -> tuple[object, str]:
    """The table to prune with: an explicit path, or (auto) a shipped profile or cached table
    that matches this model, input shape and runtime, or a new one built into the cache."""
    from halp_trt.build import BuildConfig, build_table
    from halp_trt.table import LatencyTable

    ident = backend.identity()
    if cfg.table != "auto":
        table = LatencyTable.load(cfg.table)
        table.check_compatible({**ident, "batch": cfg.batch_size}, cfg.allow_table_mismatch)
        _check_table_covers(table, specs, cfg)
        return table, cfg.table
    for d in profile_dirs():
        for path in sorted(glob.glob(os.path.join(d, "*.json"))):
            try:
                table = LatencyTable.load(path)
            except HalpError:
                continue
            if _table_fits(table, specs, {**ident, "batch": cfg.batch_size}, cfg.model,
                           cfg.input_shape):
                log(f"using latency table {path}")
                return table, path
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", f"{cfg.model}_{'x'.join(map(str, cfg.input_shape))}"
                  f"_{ident.get('backend')}_{ident.get('precision')}.json")
    path = os.path.join(profile_dirs()[1], name)
    log(f"no matching latency table; measuring one into {path} (resumable)")
    table = build_table(model, cfg.input_shape, backend, path, cfg.model,
                        BuildConfig(progress=cfg.progress))
    return table, path


# ---- the pipeline ----------------------------------------------------------------------------

def _progress(iterable, enabled: bool, **kw):
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, dynamic_ncols=True, leave=False, **kw)


def _capped(loader, max_batches):
    for i, b in enumerate(loader):
        if max_batches is not None and i >= max_batches:
            break
        yield b


def prune_and_deploy(cfg: DeployConfig) -> dict:
    """Run the whole job; returns the report (also written to ``cfg.out``)."""
    from halp_trt.backends import backend_for
    from halp_trt.data import check_sample, load_data, make_loader
    from halp_trt.deploy import check_outputs, compare_onnx
    from halp_trt.calibration import Calibration
    from halp_trt.export import export_onnx
    from halp_trt.feedback import FeedbackPoint, LatencyFeedback
    from halp_trt.groups import find_channel_groups
    from halp_trt.layers import list_layers
    from halp_trt.measure import measure_interleaved, model_protocol
    from halp_trt.models import create_model
    from halp_trt.pruner import HALPConfig, HALPPruner
    from halp_trt.result import PruningResult, apply_result
    from halp_trt.train import (dist_context, evaluate, finish_distributed, load_checkpoint,
                                load_weights, save_checkpoint, train_epoch)

    t_start = time.perf_counter()
    rank, world = dist_context()
    is_main = rank == 0
    log = (lambda msg: print(f"[halp-trt] {msg}", flush=True)) if is_main else (lambda m: None)
    progress = cfg.progress and is_main
    torch.manual_seed(cfg.seed)
    from halp_trt.table import check_writable

    check_writable(cfg.out, is_dir=True)
    ckpt_path = os.path.join(cfg.out, CHECKPOINT)

    data = load_data(cfg.data, (cfg.input_size, cfg.input_size), cfg.seed)
    model = create_model(cfg.model, data.num_classes)
    check_sample(data, cfg.input_shape)
    example = torch.randn(*cfg.input_shape)
    try:
        with torch.no_grad():
            n_out = model.eval()(example).shape[-1]
    except Exception as exc:
        raise HalpError(f"{cfg.model} cannot run on input of shape {tuple(example.shape)} "
                        f"({type(exc).__name__}: {str(exc).splitlines()[0][:200]}); set "
                        "--input-size to the size the model expects") from None
    if n_out != data.num_classes:
        raise HalpError(f"the model has {n_out} outputs but {data.name} has {data.num_classes} "
                        "classes")
    train_loader = make_loader(data.train, cfg.train_batch_size, True, cfg.seed, world > 1)
    val_loader = make_loader(data.val, 256, False, cfg.seed, world > 1)
    backend = backend_for(cfg.gpu, cfg.precision)
    # before any training: the architecture must be prunable and an explicit table must fit
    # (channel groups and layer signatures depend on the architecture only, not on weights)
    groups, _ = find_channel_groups(model, example)
    specs = list_layers(model, example, groups)
    modules = dict(model.named_modules())
    unknown = [n for n in cfg.exclude if n not in modules]
    if unknown:
        raise HalpError(f"cannot --exclude {unknown}: no such module in the model (module "
                        f"names look like {list(modules)[1:4]})")
    explicit_table = (resolve_table(cfg, model, specs, backend, log) if cfg.table != "auto"
                      else None)

    run = {"model": cfg.model, "data": cfg.data, "input_size": cfg.input_size,
           "batch_size": cfg.batch_size}
    state = load_checkpoint(ckpt_path) if os.path.exists(ckpt_path) else {"phase": "start"}
    if state.setdefault("run", run) != run:
        raise HalpError(f"{ckpt_path} belongs to another run ({state['run']}); rerun that "
                        "command to resume it, or choose another --out (or delete the "
                        "checkpoint) to start this one")
    if state["phase"] != "start":
        log(f"resuming from {ckpt_path} (phase {state['phase']})")

    def checkpoint(**kw):
        state.update(kw)
        if is_main:
            save_checkpoint(ckpt_path, state)

    def make_opt(params):
        return torch.optim.SGD(params, lr=cfg.lr, momentum=0.9, weight_decay=1e-4)

    def run_epochs(net, optimizer, n_epochs, desc, pruner=None, scheduler=None, until=None,
                   on_epoch=None):
        """``n_epochs`` epochs, or with ``until`` as many as it takes until it returns True."""
        from torch.nn.parallel import DistributedDataParallel as DDP

        wrapped = DDP(net) if world > 1 else net
        epoch = 0
        while (epoch < n_epochs) if until is None else not until():
            if hasattr(train_loader.sampler, "set_epoch"):
                train_loader.sampler.set_epoch(epoch + 1000 * cfg.seed)
            n = min(len(train_loader), cfg.max_batches or len(train_loader))
            bar = _progress(_capped(train_loader, cfg.max_batches), progress, total=n,
                            desc=f"{desc} epoch {epoch + 1}" + (f"/{n_epochs}" if until is None
                                                                 else ""))
            train_epoch(wrapped, bar, optimizer, pruner, scheduler=scheduler)
            epoch += 1
            if on_epoch:
                on_epoch(epoch)

    # 1. the original model: weights, accuracy, latency
    if state["phase"] == "start":
        if cfg.weights:
            load_weights(model, cfg.weights)
            log(f"loaded weights {cfg.weights}")
        elif cfg.pretrain_epochs:
            log(f"no --weights: training {cfg.model} on {data.name} for {cfg.pretrain_epochs} "
                "epochs")
            opt = make_opt(model.parameters())
            per_epoch = min(len(train_loader), cfg.max_batches or len(train_loader))
            sched = torch.optim.lr_scheduler.OneCycleLR(
                opt, max_lr=cfg.lr * 5, total_steps=cfg.pretrain_epochs * per_epoch)
            run_epochs(model, opt, cfg.pretrain_epochs, "pre-train", scheduler=sched)
        checkpoint(phase="original", original=model.state_dict())
    else:
        model.load_state_dict(state["original"])
    original_model = create_model(cfg.model, data.num_classes)
    original_model.load_state_dict(state["original"])
    original_model.eval()
    acc_original = evaluate(original_model, val_loader)
    log(f"original accuracy on {data.name}: {acc_original:.4f}")

    table, table_path = explicit_table or resolve_table(cfg, original_model, specs, backend,
                                                        log)
    layers_full_ms = table.layers_sum_ms(specs)
    # One throw-away pruner on a copy gives both the table's floor (the lowest target the
    # pruner accepts, checked before calibrating and training towards it) and the slimmed
    # calibration model: each construction traces the dependency graph.
    pruning_ahead = state["phase"] in ("original", "pruning")
    probe = (HALPPruner(copy.deepcopy(original_model), example, table,
                        HALPConfig(target=1 - 1e-9, steps=1, interval=1,
                                   exclude=tuple(cfg.exclude)))
             if pruning_ahead or "calibration" not in state else None)
    layers_min_ms = probe.min_ms if pruning_ahead else None
    if "calibration" not in state:
        factor = min(0.9, max(0.25, math.sqrt(cfg.target_fraction or 0.5)))
        slim, slim_layers_ms = slimmed_copy(probe, factor)
        log(f"measuring the original and a {factor:.2f}-width copy on "
            f"{backend.identity().get('runtime')} ({cfg.rounds} interleaved rounds) to "
            "calibrate whole-model predictions")
        stats = measure_interleaved(backend, {"original": export_onnx(original_model, example),
                                              "slim": export_onnx(slim, example)},
                                    model_protocol(cfg.rounds))
        cal = {"layers_full_ms": layers_full_ms, "model_full_ms": stats["original"].estimate("min"),
               "layers_slim_ms": slim_layers_ms, "model_slim_ms": stats["slim"].estimate("min")}
        if world > 1:  # every rank must prune to the same targets
            cal = _broadcast(cal)
        checkpoint(original_ms=cal["model_full_ms"], calibration=cal)
    c = state["calibration"]
    calib = Calibration(cfg.calibration, c["layers_full_ms"], c["model_full_ms"],
                        c["layers_slim_ms"], c["model_slim_ms"])
    target_ms = (cfg.target_fraction * state["original_ms"] if cfg.target_fraction is not None
                 else cfg.target_ms)
    if target_ms >= state["original_ms"]:
        raise HalpError(f"--target {cfg.target} is not below the original's measured "
                        f"{state['original_ms']:.3f} ms: nothing to prune; give a lower target")
    layers_target_ms = calib.layers_ms(target_ms)
    if layers_min_ms is not None and layers_target_ms < layers_min_ms:
        floor_ms, orig_ms = calib.model_ms(layers_min_ms), state["original_ms"]
        raise HalpError(
            f"--target {cfg.target} ({target_ms:.3f} ms) is infeasible with this table: its "
            f"smallest model (every prunable group at its minimum width) is predicted at "
            f"{floor_ms:.3f} ms, {floor_ms / orig_ms:.3f} of the original's {orig_ms:.3f} ms "
            f"measured. Use --target {math.ceil(1000 * floor_ms / orig_ms) / 1000:.3f} or more.")
    if layers_target_ms <= 0:
        raise HalpError(f"target {target_ms:.3f} ms is infeasible: the part of the model the "
                        f"table does not hold alone takes {target_ms - layers_target_ms:.3f} ms "
                        f"(original {state['original_ms']:.3f} ms measured)")
    pruner_target = f"{layers_target_ms}ms"
    hcfg = HALPConfig(target=pruner_target, steps=cfg.steps, interval=cfg.interval,
                      contribution=cfg.contribution, importance=cfg.importance,
                      exclude=tuple(cfg.exclude))

    # 2. prune during fine-tuning
    result_path = os.path.join(cfg.out, "pruning.json")
    if state["phase"] in ("original", "pruning"):
        pruner = HALPPruner(model, example, table, hcfg)
        if state["phase"] == "pruning":
            model.load_state_dict(state["model"])
            pruner.load_state_dict(state["pruner"])
        opt = make_opt(model.parameters())
        pruner.attach_optimizer(opt)
        final_ratio = target_ms / state["original_ms"]
        feedback = LatencyFeedback(
            pruner, lambda result: apply_result(create_model(cfg.model, data.num_classes),
                                                example, result).eval(),
            lambda net: export_onnx(net, example), backend,
            export_onnx(original_model, example), final_ratio, model_protocol(cfg.rounds),
            log=log, broadcast=_broadcast if world > 1 else None)
        feedback.points = [FeedbackPoint(**p) for p in state.get("feedback", [])]
        log(f"pruning to {final_ratio:.3f} of the original's latency "
            f"({target_ms:.3f} ms of {state['original_ms']:.3f} ms measured) in {cfg.steps} "
            f"steps every {cfg.interval} batches, measuring after each step")

        def save_pruning(_epoch=None):
            checkpoint(phase="pruning", model=model.state_dict(), pruner=pruner.state_dict(),
                       feedback=feedback.to_json())

        try:
            run_epochs(model, opt, 0, "prune", pruner=feedback, until=lambda: feedback.done,
                       on_epoch=save_pruning)
        except KeyboardInterrupt:
            save_pruning()
            raise
        state["feedback"] = feedback.to_json()
        state["last_step_candidates"] = feedback.brackets
        if world > 1:
            _check_same_on_all_ranks(pruner.result().kept)
        result = pruner.result()
        pruned_model = pruner.finalize()
        if is_main:
            result.save(result_path)
        checkpoint(phase="pruned", pruned=pruned_model.state_dict(), finetune_epochs_done=0,
                   result=result.to_json())
    else:  # resuming after pruning: rebuild the pruned architecture from its decisions
        result = PruningResult.from_json(state["result"], source=ckpt_path)
        pruned_model = apply_result(create_model(cfg.model, data.num_classes), example, result)
        pruned_model.load_state_dict(state["model"] if state["phase"] == "finetune"
                                     else state["pruned"])

    # 2b. fine-tune the pruned model
    done_epochs = state.get("finetune_epochs_done", 0)
    if done_epochs < cfg.epochs:
        opt = make_opt(pruned_model.parameters())
        run_epochs(pruned_model, opt, cfg.epochs - done_epochs, "fine-tune",
                   on_epoch=lambda e: checkpoint(phase="finetune", model=pruned_model.state_dict(),
                                                 finetune_epochs_done=done_epochs + e))
    pruned_model.eval()
    acc_pruned = evaluate(pruned_model, val_loader)
    log(f"pruned accuracy: {acc_pruned:.4f}")

    if not is_main:
        finish_distributed(world)
        return {}

    # 3. export, build, numerical check on real inputs
    val_x = [x[: cfg.batch_size] for x, _ in _capped(make_loader(data.val, cfg.batch_size, False),
                                                     8)]
    original_onnx = export_onnx(original_model, example)
    pruned_onnx = export_onnx(pruned_model, example)
    check = check_outputs(backend, pruned_onnx, pruned_model, val_x, label="pruned model")
    check_outputs(backend, original_onnx, original_model, val_x[:2], label="original model")

    # 4. measure both interleaved
    log(f"measuring original and pruned interleaved ({cfg.rounds} rounds)")
    cmp = compare_onnx(backend, original_onnx, pruned_onnx, model_protocol(cfg.rounds))
    pruned_layers_ms = _pruned_layers_ms(table, specs, pruned_model, example)
    report = _report(cfg, table, table_path, backend, calib, layers_full_ms,
                     pruned_layers_ms, cmp, check, acc_original, acc_pruned, result,
                     time.perf_counter() - t_start, state.get("feedback", []),
                     state.get("last_step_candidates", []))
    write_bytes_atomic(os.path.join(cfg.out, "original.onnx"), original_onnx)
    _write_outputs(cfg, report, pruned_onnx, pruned_model, table, specs, pruned_layers_ms)
    log(f"speedup {report['speedup_measured']:.2f}x measured (target ratio {cfg.target}), "
        f"accuracy {acc_original:.4f} -> {acc_pruned:.4f}; report in "
        f"{os.path.join(cfg.out, 'report.md')}")
    if os.path.exists(ckpt_path):
        os.unlink(ckpt_path)
    finish_distributed(world)
    return report


def _broadcast(value):
    """Rank 0's value on every rank (measurements differ per rank; decisions must not)."""
    import torch.distributed as dist

    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _check_same_on_all_ranks(kept: dict) -> None:
    """DDP: every rank must have made the same pruning decisions (all-reduced importance,
    broadcast measurements); a mismatch would silently desynchronize the replicas."""
    import torch.distributed as dist

    parts: list = [None] * dist.get_world_size()
    dist.all_gather_object(parts, kept)
    if any(p != parts[0] for p in parts[1:]):
        raise HalpError("ranks made different pruning decisions; this is a bug in halp-trt's "
                        "distributed synchronization — please report it")


def slimmed_copy(pr, width_factor: float):
    """Cut every prunable group of pruner ``pr``'s model to ``width_factor`` of its width
    (whole neuron groups); returns the finalized model and its table layer sum — a second
    calibration point. ``pr`` is used up (its model is pruned in place)."""
    masks = {}
    for g in pr.prunable:
        step = pr.group_sizes[g.id]
        k = min(g.size, max(step, int(round(g.size * width_factor / step)) * step))
        masks[g.root] = torch.arange(g.size) < k
    pr.set_masks(masks)
    layers_ms = pr.predict_ms()
    return pr.finalize().eval(), layers_ms


def _pruned_layers_ms(table, specs, pruned_model, example) -> dict[str, float]:
    """Per-layer predictions at the pruned model's actual widths (read off its modules)."""
    mods = dict(pruned_model.named_modules())
    out = {}
    for s in specs:
        m = mods[s.name]
        if s.signature.op == "linear":
            ci, co = m.in_features // s.signature.in_scale, m.out_features
        else:
            ci, co = m.in_channels, m.out_channels
        out[s.name] = table.layer_ms(s, ci, co)
    return out


def _report(cfg, table, table_path, backend, calib, layers_full_ms, pruned_layers_ms,
            cmp, check, acc_original, acc_pruned, result, wall_s, feedback_points,
            last_step_candidates) -> dict:
    est = cmp.estimator
    orig_ms, pruned_ms = cmp.original.estimate(est), cmp.pruned.estimate(est)
    pred_orig = calib.model_ms(layers_full_ms)
    pred_pruned = calib.model_ms(sum(pruned_layers_ms.values()))
    ident = backend.identity()
    verified = ("measured on this machine with ONNX Runtime" if ident.get("backend") ==
                "onnxruntime" else "TensorRT path: written from the API and contract-tested; "
                "these numbers come from the machine it ran on")
    target_ratio = cfg.target_fraction if cfg.target_fraction is not None else \
        cfg.target_ms / orig_ms
    return {
        "halp_trt_version": halp_trt.__version__,
        "model": cfg.model, "data": cfg.data, "input_shape": list(cfg.input_shape),
        "target": cfg.target, "target_ratio": target_ratio,
        "original": {"measured_ms": orig_ms, "predicted_ms": pred_orig,
                     "stats": cmp.original.to_json(), "layers_sum_ms": layers_full_ms},
        "pruned": {"measured_ms": pruned_ms, "predicted_ms": pred_pruned,
                   "stats": cmp.pruned.to_json(), "layers_sum_ms": sum(pruned_layers_ms.values())},
        "speedup_measured": orig_ms / pruned_ms,
        "speedup_predicted": pred_orig / pred_pruned,
        "latency_ratio_measured": pruned_ms / orig_ms,
        "latency_ratio_vs_target": (pruned_ms / orig_ms) / target_ratio,
        "max_abs_diff": check.max_abs_diff,
        "numeric_check": asdict(check),
        "accuracy": {"original": acc_original, "pruned": acc_pruned,
                     "drop": acc_original - acc_pruned},
        "backend": {**ident, "verified": verified},
        "table": {"path": table_path, "identity": table.identity,
                  "calibration": calib.to_json()},
        "noisy_measurement": cmp.original.noisy or cmp.pruned.noisy,
        "widths": {k: {"original": result.original_widths[k], "kept": len(v)}
                   for k, v in result.kept.items()},
        "pruning_history": result.history,
        "feedback": feedback_points,
        "last_step_candidates": last_step_candidates,
        "config": {k: v for k, v in asdict(cfg).items()},
        "wall_s": wall_s,
    }


def _write_outputs(cfg, report, pruned_onnx, pruned_model, table, specs, pruned_layers_ms):
    from halp_trt.report import write_markdown, write_plots
    from halp_trt.atomic import write_atomic_with, write_json_atomic

    out = cfg.out
    write_bytes_atomic(os.path.join(out, "model.onnx"), pruned_onnx)
    write_atomic_with(os.path.join(out, "pruned_weights.pt"),
                      lambda f: torch.save(pruned_model.state_dict(), f))
    write_plots(out, report, table, specs, pruned_layers_ms)
    write_markdown(os.path.join(out, "report.md"), report)
    write_json_atomic(os.path.join(out, "report.json"), report)
