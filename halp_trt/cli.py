"""The ``halp-trt`` command line: each command parses options and calls the library.

User mistakes (HalpError) print one line to stderr and exit with status 2; no traceback.
"""
from __future__ import annotations

import functools
import os
import sys

import click

from halp_trt.errors import ConfigError, HalpError
from halp_trt.pipeline.config import CHOICES, DeployConfig


def _friendly(fn):
    """Turn library errors into one clear line and a non-zero exit."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except ConfigError as exc:  # a library field: name the flag that sets it
            click.echo(f"error: {exc.render_for_cli()}", err=True)
            sys.exit(exc.exit_code)
        except HalpError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo("interrupted; finished work is saved — rerun the same command to resume",
                       err=True)
            sys.exit(130)

    return wrapper


def _backend(gpu: bool, name: str | None, precision: str, threads: int = 1,
             optimization: str = "all", timing_cache: str | None = None):
    """The backend ``--gpu`` / ``--backend`` choose, with the options that apply to it."""
    from halp_trt.runtime import backend_for

    name = name or ("tensorrt" if gpu else "onnxruntime")
    opts = {"tensorrt": {"timing_cache_path": timing_cache} if timing_cache else {},
            "onnxruntime": {"threads": threads, "optimization": optimization},
            "openvino": {"threads": max(1, threads)}}.get(name, {})
    return backend_for(gpu, precision, backend=name, **opts)


def config_option(flag: str, **kw):
    """A prune-and-deploy option whose default and choices are DeployConfig's (one source)."""
    from dataclasses import MISSING, fields

    name = flag.lstrip("-").replace("-", "_")
    field = {f.name: f for f in fields(DeployConfig)}[name]
    if field.default is not MISSING:
        kw.setdefault("default", field.default)
        kw.setdefault("show_default", field.default is not None)
    if name in CHOICES:
        kw.setdefault("type", click.Choice(list(CHOICES[name])))
    return click.option(flag, **kw)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="halp-trt")
def main():
    """Latency-driven structured pruning (HALP) for TensorRT and ONNX Runtime."""


@main.command("build-table")
@click.argument("model")
@click.option("--input-shape", default="1,3,224,224", show_default=True,
              help="N,C,H,W of one inference; N is the batch the table is measured at.")
@click.option("--out", "out_path", required=True, type=click.Path(dir_okay=False),
              help="Table JSON to write (an interrupted build with the same --out resumes).")
@click.option("--num-classes", type=click.IntRange(1), default=None,
              help="Classifier outputs for torchvision models (default: the model's own).")
@click.option("--gpu", is_flag=True, help="Time TensorRT engines on the GPU (needs halp-trt[trt]).")
@click.option("--backend", type=click.Choice(list(CHOICES["backend"])),
              default=None, help="Runtime to time on (default onnxruntime; --gpu = tensorrt; "
              "openvino needs halp-trt[openvino]).")
@click.option("--precision", type=click.Choice(list(CHOICES["precision"])), default="fp32",
              show_default=True)
@click.option("--threads", type=click.IntRange(0), default=1, show_default=True,
              help="ONNX Runtime intra-op threads (1 is stable on shared machines).")
@click.option("--optimization", type=click.Choice(["disable", "basic", "extended", "all"]),
              default="all", show_default=True, help="ONNX Runtime graph optimization level.")
@click.option("--rounds", type=click.IntRange(1), default=15, show_default=True,
              help="Interleaved timing rounds per configuration.")
@click.option("--max-points", type=click.IntRange(2), default=None,
              help="Lattice points per channel axis; coarser lattices are interpolated "
              "(default 12; with --transfer-from, the source table's).")
@click.option("--validate", type=click.IntRange(0), default=0, show_default=True,
              help="Measure N random unmeasured points and report the table's error.")
@click.option("--exclude", multiple=True, help="Module names whose output width is fixed.")
@click.option("--timing-cache", type=click.Path(dir_okay=False), default=None,
              help="TensorRT timing cache file (default: beside the table).")
@click.option("--transfer-from", "transfer_from", type=click.Path(dir_okay=False), default=None,
              help="Another machine's table of the same model, input and runtime: measure only "
              "step sweeps and a few anchors per layer here and re-anchor it (a fraction of a "
              "full build's measurements).")
@_friendly
def build_table_cmd(model, input_shape, out_path, num_classes, gpu, backend, precision, threads,
                    optimization, rounds, max_points, validate, exclude, timing_cache,
                    transfer_from):
    """Measure the per-layer latency table of MODEL (torchvision name or module:factory)."""
    from halp_trt.latency.build import BuildConfig, build_table, grid_size
    from halp_trt.latency.table import LatencyTable
    from halp_trt.latency.transfer import TransferConfig, measured_configurations, transfer_table
    from halp_trt.latency.inspection import format_report
    from halp_trt.runtime.protocol import Protocol
    from halp_trt.models import create_model, parse_input_shape
    from halp_trt.fileio import check_writable

    shape = parse_input_shape(input_shape)
    check_writable(out_path)
    net = create_model(model, num_classes)
    backend = _backend(gpu, backend, precision, threads, optimization,
                       timing_cache or os.path.splitext(out_path)[0] + ".timing-cache")
    source = LatencyTable.load(transfer_from) if transfer_from else None
    try:
        if source is not None:
            tcfg = TransferConfig(protocol=Protocol(rounds=rounds),
                                  max_points_per_axis=max_points, validate=validate)
            table = transfer_table(source, net, shape, backend, out_path, model, tcfg,
                                   exclude=exclude)
        else:
            cfg = BuildConfig(protocol=Protocol(rounds=rounds),
                              max_points_per_axis=max_points or 12, validate=validate)
            table = build_table(net, shape, backend, out_path, model, cfg, exclude=exclude)
    finally:
        backend.close()
    if int(os.environ.get("RANK", "0")) == 0:
        n = measured_configurations(table)
        click.echo(format_report(table))
        how = f", transferred from {transfer_from}" if source is not None else ""
        click.echo(f"\nmeasured {n} configurations of a {grid_size(table)}-configuration grid "
                   f"({100 * n / max(1, grid_size(table)):.2f}%{how}); wrote {out_path}")


@main.command("inspect")
@click.argument("table_path", metavar="TABLE", type=click.Path(dir_okay=False))
@click.argument("other_path", metavar="[TABLE2]", type=click.Path(dir_okay=False), required=False)
@click.option("--layer", "pattern", default=None,
              help="Only signatures whose key or layer names match (glob or regex).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None,
              help="Directory for PNG step curves (one per signature).")
@_friendly
def inspect_cmd(table_path, other_path, pattern, out_dir):
    """Print a latency table's signatures and steps; draw their step curves. Given a second
    table of the same model (another runtime or precision), compare the two and draw both."""
    from halp_trt.latency.inspection import inspect_table, signature_rows
    from halp_trt.latency.table import LatencyTable

    table = LatencyTable.load(table_path, require_complete=False)
    other = LatencyTable.load(other_path, require_complete=False) if other_path else None
    if out_dir:
        from halp_trt.fileio import check_writable

        check_writable(out_dir, is_dir=True)
    if pattern and not signature_rows(table, pattern):
        raise HalpError(f"no signature or layer of {table_path} matches {pattern!r}")
    if other is not None:
        setups = [(t.identity.get("model"), t.identity.get("input_shape")) for t in (table, other)]
        if setups[0] != setups[1]:
            raise HalpError(f"{table_path} is a table of {setups[0][0]} at {setups[0][1]}, "
                            f"{other_path} of {setups[1][0]} at {setups[1][1]}: inspect compares "
                            "two tables of the same model and input")
    text, pngs = inspect_table(table, out_dir, pattern, other, ("A", "B"))
    if other is not None:
        click.echo(f"A = {table_path}\nB = {other_path}\n")
    click.echo(text)
    if pngs:
        click.echo(f"\nwrote {len(pngs)} step-curve PNGs to {out_dir}")


@main.command("check-table")
@click.argument("table_path", metavar="TABLE", type=click.Path(dir_okay=False))
@click.option("--model", default=None, help="Also check that the table covers this model's "
              "layers (torchvision name or module:factory).")
@click.option("--input-shape", default=None, help="N,C,H,W of --model (default: the table's).")
@click.option("--num-classes", type=click.IntRange(1), default=None)
@click.option("--no-probe", is_flag=True, help="Compare identities only; measure nothing.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None,
              help="Also write the verdict and its figures as JSON.")
@_friendly
def check_table_cmd(table_path, model, input_shape, num_classes, no_probe, json_path):
    """Does TABLE describe this machine? Identity, a short probe, coverage of --model.

    Exit status 0 when it fits, 2 when it does not."""
    from dataclasses import asdict

    from halp_trt.latency.resolve import check_table
    from halp_trt.latency.table import LatencyTable

    table = LatencyTable.load(table_path)
    ident = table.identity
    specs, shape = None, None
    if model:
        import torch

        from halp_trt.graph.groups import find_channel_groups
        from halp_trt.graph.layers import list_layers
        from halp_trt.models import create_model, parse_input_shape

        shape = parse_input_shape(input_shape) if input_shape else tuple(ident["input_shape"])
        net = create_model(model, num_classes, shape[-1]).eval()
        example = torch.randn(*shape)
        specs = list_layers(net, example, find_channel_groups(net, example)[0])
    name = ident.get("backend", "onnxruntime")
    backend = _backend(name == "tensorrt", name, ident.get("precision", "fp32"),
                       int(ident.get("threads", 1)), ident.get("optimization_level", "all"))
    try:
        result = check_table(table_path, backend, specs, shape, probe=not no_probe)
    finally:
        backend.close()
    click.echo("\n".join(result.lines()))
    if json_path:
        from halp_trt.fileio import write_json_atomic

        write_json_atomic(json_path, {**asdict(result), "fits": result.fits})
    sys.exit(0 if result.fits else 2)


@main.command("prune-and-deploy")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Directory for the report, model.onnx, pruning.json, weights and PNGs.")
@config_option("--model",
              help="torchvision model name or module:factory.")
@click.option("--weights", type=click.Path(dir_okay=False), default=None,
              help="State dict to start from (weights-only load); without it the model is "
                   "trained briefly on --data.")
@config_option("--data",
              help="digits (embedded) | imagefolder:DIR (DIR/train, DIR/val) | cifar10:DIR | "
                   "fashion-mnist[:DIR] (idx files, default /usr/share/datasets/fashion-mnist) "
                   "| shapes[:N] (built-in synthetic shapes for segmentation and detection, N "
                   "training images) | coco:DIR (segmentation or detection; COCO-format "
                   "annotations). Default: digits, shapes for segmentation and detection "
                   "models.")
@config_option("--task", help="What the model is trained and scored for (auto: from the "
               "model; torchvision's segmentation models are segmentation, scored by mean IoU; its "
               "one-stage detectors and Faster R-CNN are detection, trained on their own losses "
               "and scored by COCO mAP).")
@config_option("--input-size", type=int)
@config_option("--batch-size", type=int,
              help="Batch the latency is measured and optimized at.")
@config_option("--train-batch-size", type=int)
@config_option("--table",
              help="Latency table path, or auto (shipped profile, cache, or build one).")
@config_option("--target",
              help="Latency target: fraction of the measured original (0.5, 50%) or 12ms; "
              "several (0.7,0.5,0.3) give one model each and a Pareto front.")
@config_option("--steps", type=int, help="Pruning steps (m).")
@config_option("--interval", type=int,
              help="Minibatches between pruning steps (r).")
@config_option("--epochs", type=int,
              help="Fine-tuning epochs after the last pruning step.")
@config_option("--pretrain-lr", type=float,
              help="Peak learning rate of the pre-training (AdamW, one-cycle); default: the "
                   "task's (2e-3, detection 3e-3).")
@config_option("--pretrain-batch-size", type=int)
@config_option("--pretrain-epochs", type=int,
              help="Training epochs when no --weights are given; default: the task's (4, "
                   "detection 16).")
@config_option("--lr", type=float)
@config_option("--lr-schedule",
               help="constant, or cosine from --lr to 0 over pruning and fine-tuning.")
@config_option("--contribution",
              help="Latency contribution rule (one_sided is the paper's).")
@config_option("--importance")
@config_option("--importance-normalizer",
               help="none: raw importance values groups in the knapsack (HALP); mean: each "
                    "group's scores over their mean (Torch-Pruning's default).")
@config_option("--distill", type=float,
               help="Weight in [0, 1) of distillation from the unpruned original in the "
                    "pruning and fine-tuning loss (classification); 0: cross-entropy alone.")
@config_option("--distill-temperature", type=float,
               help="Temperature of the distilled logits (default 4).")
@config_option("--min-groups-kept", type=int,
               help="Latency steps of channels every prunable group keeps.")
@config_option("--calibration", help="How the rest of the model (outside the table) scales.")
@click.option("--gpu", is_flag=True, help="Deploy with TensorRT (needs halp-trt[trt]).")
@config_option("--backend", help="Runtime to time on (--gpu = tensorrt; "
              "openvino needs halp-trt[openvino]).")
@config_option("--precision")
@config_option("--rounds", type=int,
              help="Interleaved rounds when measuring original and pruned.")
@config_option("--seed", type=click.IntRange(0))
@click.option("--allow-table-mismatch", is_flag=True,
              help="Use a table measured on another device/runtime/precision/batch anyway.")
@click.option("--no-table-transfer", "table_transfer", flag_value=False, default=True,
              help="With --table auto on a machine no table fits: measure a table in full "
                   "instead of transferring another machine's table of the model.")
@click.option("--allow-untrained", is_flag=True,
              help="Prune a starting model at chance accuracy anyway (benchmarks on random "
                   "weights); non-finite outputs are still refused.")
@click.option("--exclude", multiple=True,
              help="Module whose output channels must not change (repeatable).")
@config_option("--max-batches", type=int, hidden=True)
@_friendly
def prune_and_deploy_cmd(out_dir, **options):
    """Prune a model to a latency target, deploy it, and measure the result."""
    from halp_trt.pipeline import DeployConfig, prune_and_deploy

    cfg = DeployConfig(out=out_dir, **options)
    result = prune_and_deploy(cfg)
    if len(cfg.parsed_targets) > 1 and result:
        click.echo(f"Pareto front of {len(result['points'])} targets: "
                   f"{os.path.join(out_dir, 'pareto.md')} and pareto.png")


@main.command("validate")
@click.argument("original", type=click.Path(dir_okay=False))
@click.argument("pruned", type=click.Path(dir_okay=False))
@click.option("--table", "table_path", type=click.Path(dir_okay=False), default=None,
              help="Latency table: also report predicted vs measured for each model.")
@click.option("--gpu", is_flag=True, help="Measure TensorRT engines (needs halp-trt[trt]).")
@click.option("--backend", type=click.Choice(list(CHOICES["backend"])),
              default=None, help="Runtime to time on (default onnxruntime; --gpu = tensorrt; "
              "openvino needs halp-trt[openvino]).")
@click.option("--precision", type=click.Choice(list(CHOICES["precision"])), default="fp32",
              show_default=True)
@click.option("--rounds", type=click.IntRange(3), default=30, show_default=True,
              help="Interleaved rounds in each of the 3 measurement calls.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None,
              help="Also write the figures as JSON.")
@_friendly
def validate_cmd(original, pruned, table_path, gpu, backend, precision, rounds, json_path):
    """Measure ORIGINAL.onnx and PRUNED.onnx interleaved and report the speedup."""
    from halp_trt.validate import format_validation, validate_onnx

    if json_path:
        from halp_trt.fileio import check_writable

        check_writable(json_path)
    if table_path:  # a bad table fails before the measurement, not after it
        from halp_trt.latency.table import LatencyTable

        LatencyTable.load(table_path)
    res = validate_onnx(original, pruned, table_path, gpu, precision, rounds, backend)
    click.echo(format_validation(res))
    if json_path:
        from halp_trt.fileio import write_json_atomic

        write_json_atomic(json_path, res)


if __name__ == "__main__":
    main()
