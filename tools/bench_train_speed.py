#!/usr/bin/env python
"""Training throughput of resnet18 on Fashion-MNIST at 32x32 (the comparison's fine-tuning) on
this machine, one change at a time: batches through ``DataLoader`` vs held in memory
(``halp_trt.data.InMemoryBatches``), channels_last, bf16 autocast, batch size, and evaluation.

Interleaved: every variant runs ``--steps`` SGD steps per round, rounds shuffled, the best
round kept (other work on a shared VM only slows a round down).

    python tools/bench_train_speed.py --json tools/results/train_speed_zen4.json
"""
import argparse
import json
import os
import random
import sys
import time

import torch
import torch.nn as nn


def variants():
    """name -> (batch size, in memory, channels_last, bf16)."""
    return {"DataLoader, batch 64": (64, False, False, False),
            "in memory, batch 64": (64, True, False, False),
            "in memory, batch 64, channels_last": (64, True, True, False),
            "in memory, batch 64, bf16 autocast": (64, True, False, True),
            "DataLoader, batch 128": (128, False, False, False),
            "in memory, batch 128": (128, True, False, False)}


def steps_per_s(train, batch: int, in_memory: bool, channels_last: bool, bf16: bool,
                steps: int) -> float:
    from torch.utils.data import DataLoader

    from halp_trt.data import make_loader
    from halp_trt.models import create_model

    torch.manual_seed(0)
    model = create_model("resnet18", 10)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    g = torch.Generator().manual_seed(0)
    loader = make_loader(train, batch, True) if in_memory else DataLoader(
        train, batch_size=batch, shuffle=True, generator=g)
    model.train()
    it, t0 = iter(loader), None
    for i in range(steps + 3):  # 3 warm-up steps
        if i == 3:
            t0 = time.perf_counter()
        x, y = next(it)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
    return steps / (time.perf_counter() - t0)


def eval_images_per_s(val, batch: int) -> float:
    from halp_trt.data import make_loader
    from halp_trt.models import create_model
    from halp_trt.train import evaluate

    model = create_model("resnet18", 10)
    t0 = time.perf_counter()
    evaluate(model, make_loader(val, batch, False))
    return len(val) / (time.perf_counter() - t0)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", dest="json_path", default=None)
    a = ap.parse_args(argv)
    from halp_trt.data import load_data
    from halp_trt.runtime.machine import cpu_identity, machine_class
    from halp_trt.runtime.timing_lock import timing_exclusive

    data = load_data("fashion-mnist", (32, 32))
    data.train.batch(torch.arange(1))  # resize once, outside the timing
    best = {name: 0.0 for name in variants()}
    with timing_exclusive():  # nothing else of halp-trt runs meanwhile
        rng = random.Random(0)
        for r in range(a.rounds):
            names = list(best)
            rng.shuffle(names)
            for name in names:
                best[name] = max(best[name], steps_per_s(data.train, *variants()[name],
                                                         a.steps))
        evals = {b: eval_images_per_s(data.val, b) for b in (256, 1000)}
    rows = [{"variant": n, "batch": variants()[n][0], "steps_per_s": s,
             "images_per_s": s * variants()[n][0],
             "epoch_min": 60_000 / (s * variants()[n][0]) / 60} for n, s in best.items()]
    for row in rows:
        print(f"{row['variant']:40s} {row['steps_per_s']:5.2f} steps/s  "
              f"{row['images_per_s']:5.0f} images/s  one epoch {row['epoch_min']:.1f} min")
    for b, v in evals.items():
        print(f"evaluation at batch {b}: {v:.0f} images/s")
    out = {"machine": machine_class(cpu_identity()), "torch_threads": torch.get_num_threads(),
           "date": time.strftime("%Y-%m-%d"), "steps": a.steps, "rounds": a.rounds,
           "rows": rows, "eval_images_per_s": {str(b): v for b, v in evals.items()},
           "command": "python tools/bench_train_speed.py " + " ".join(sys.argv[1:])}
    if a.json_path:
        os.makedirs(os.path.dirname(os.path.abspath(a.json_path)), exist_ok=True)
        with open(a.json_path, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
