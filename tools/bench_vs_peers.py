#!/usr/bin/env python
"""halp-trt against Torch-Pruning and NVIDIA ModelOpt FastNAS at equal *measured* latency, on a
model trained here on Fashion-MNIST (ONNX Runtime CPU).

One resnet18 (10 classes) is trained once on Fashion-MNIST at 32x32 until its accuracy stops
moving (AdamW, one-cycle; the per-epoch test accuracy is recorded) and cached. Then, for every
latency level (measured latency / the original's, default 0.5, 0.3, 0.15) and seed:

* ``halp-trt``: the prune-and-deploy stages (``DeployRun``: calibrate, then Taylor importance,
  two-sided contributions, progressive pruning with its schedule during training, closed loop on
  measured latency with a bracketed last step) aim at the level.
* Torch-Pruning 1.6.1 (``tp-{l2,taylor}-{uniform,global}-r{8,16}``): one-shot ``MetaPruner``
  with L2-magnitude or Taylor importance (Taylor from 8 batches), uniform or global, round_to 8 or
  16, the classifier kept — the variants a Torch-Pruning user would try by hand on this machine
  (its ORT kernels step by 16 channels on AVX-512, by 8 on AVX2).
* ModelOpt FastNAS (``modelopt-fastnas``): ``modelopt.torch.prune.prune(mode="fastnas",
  constraints={"flops": ...})`` with its default search space (channel ratios in 5% steps,
  divisor 32), BatchNorm calibration on 10 training batches and a score of accuracy on 1,024
  held-out *training* images (never the test set); the sensitivity map is computed once per seed
  and reused from its checkpoint.

How latencies are matched, and why that direction: halp-trt is the method under test and the only
one that aims at a latency by itself, so it prunes to the level with its own closed loop; each
peer is then bisected over its one knob (Torch-Pruning's ``pruning_ratio``; FastNAS's FLOPs
fraction) until its model measures within 2% of *that seed's halp-trt model*, both timed
interleaved with the original in the same session (``model_protocol``: 30 rounds, minimum
estimator, 3 ORT sessions per graph). Matching every peer to one concrete model read side by side
with it is steadier than matching each method to the nominal level across sessions (between
sessions the same model's ratio moves by a few percent; within one it moves by ~1%). A peer whose
knob cannot land within 2% (e.g. round_to steps) keeps its closest reading, and the row says so.
Every method's ratio to the original is reported as measured.

Why 32x32 with latency measured at batch 16: training at 64x64 costs ~15 min per epoch on this
2-core machine and a full run needs ~250 fine-tuning epochs, so the model trains at 32x32
(~4-5 min per epoch); at batch 1, resnet18 at 32x32 takes ~0.8-0.9 ms on ORT CPU, where one
session's reading is ±5-10% off another's. At batch 16 it takes ~10 ms (measured here: 0.75-0.91 ms
at batch 1, 5.0-5.3 ms at 8, 9.6-10.1 ms at 16, two sessions), so the whole model is well above
5 ms, the 0.5 level sits at ~5 ms, and ratios between graphs of one session repeat within ~0.5%.
The latency table is built at batch 16 (``halp-trt build-table --input-shape 16,3,32,32``; tables
record their batch, and prune-and-deploy times every graph at ``--batch-size``), so every method
is judged on batch-16 throughput latency. The channel structure (and the step sizes) are the same
as at batch 1 on this machine class.

Scores: accuracy on the 10,000 test images right after pruning with BatchNorm statistics
recalibrated (20 training batches, no weight update), and after fine-tuning. Every method gets
the same number of SGD steps after the base model (``--ft-epochs`` full epochs, batch 64, SGD
lr 0.01 momentum 0.9 as prune-and-deploy fine-tunes): halp-trt's pruning phase (one epoch of
training during which its steps are taken) counts against that budget, so it fine-tunes
``--ft-epochs`` − 1 epochs after ``finalize()``; its "BN" accuracy is therefore read after its
pruning epoch, not one-shot. Seeds change the data order, the importance batches and halp-trt's
run seed. Mean ± std over seeds.

The run is resumable: each (level, method, seed) row is appended to ``--rows`` (JSON lines) as
it finishes, with the setup it belongs to; a rerun skips the rows it has, and halp-trt's pruned
architecture is kept in its row, so peers can be matched to it in a later session. The trained
base model (``torch.save`` state dict, loaded ``weights_only=True``), the latency table and
FastNAS's checkpoints are cached in ``--cache-dir``.

ModelOpt is not a dependency of halp-trt. ``pip install nvidia-modelopt`` (0.47.0) installs beside
torch 2.14.1 but does not import as installed: ``import modelopt.torch.prune`` fails with
"ModuleNotFoundError: No module named 'requests'", then "... 'huggingface_hub'" (neither is
declared), and the FLOPs constraint needs the undeclared ``torchprofile`` at exactly 0.0.4 (the
current 0.1.0 fails: "AttributeError: module 'torchprofile.profile' has no attribute
'handlers'"). It therefore runs in its own virtualenv, called as a subprocess:

    python3 -m venv /tmp/mo && /tmp/mo/bin/pip install torch==2.14.1 torchvision==0.29.1 \
        nvidia-modelopt requests huggingface_hub torchprofile==0.0.4

and is given as ``--modelopt-python /tmp/mo/bin/python``. Without it (or when the search fails)
the method is listed under "excluded" in the results with the reason.

    python tools/bench_vs_peers.py --modelopt-python /tmp/mo/bin/python \
        --json tools/results/vs_peers_fashion.json --png tools/results/vs_peers_fashion.png
    python tools/bench_vs_peers.py --quick     # smoke run: results stay in /tmp
"""
import argparse
import copy
import hashlib
import json
import math
import os
import statistics
import subprocess
import sys
import time

import torch
import torch.nn as nn

LEVELS = (0.5, 0.3, 0.15)
INPUT_SIZE = 32
TIMING_BATCH = 16
TRAIN_BATCH = 64
LR = 0.01  # fine-tuning, as prune-and-deploy does it
MATCH_TOLERANCE = 0.02  # a peer's latency / halp-trt's, same session
MAX_MATCH_SESSIONS = 8
ROUNDS = 30
IMPORTANCE_BATCHES = 8  # Torch-Pruning Taylor
BN_BATCHES = 20
FASTNAS_SCORE_IMAGES = 1024
FASTNAS_CALIB_BATCHES = 10
TP_METHODS = {f"tp-{imp}-{scope}-r{r}": (imp, scope == "global", r)
              for imp in ("l2", "taylor") for scope in ("uniform", "global") for r in (8, 16)}
METHODS = ("halp-trt", *TP_METHODS, "modelopt-fastnas")
QUICK_METHODS = ("halp-trt", "tp-taylor-global-r16")
QUICK_TRAIN_IMAGES = 2000
# what `pip install nvidia-modelopt` (0.47.0) beside torch 2.14.1 gives, as measured here
MODELOPT_NOT_IMPORTABLE = (
    "nvidia-modelopt 0.47.0 installs beside torch 2.14.1 but does not import as installed: "
    "'import modelopt.torch.prune' fails with \"ModuleNotFoundError: No module named 'requests'\" "
    "and then 'huggingface_hub' (undeclared), and its FLOPs constraint needs the undeclared "
    "torchprofile==0.0.4 (0.1.0: \"AttributeError: module 'torchprofile.profile' has no attribute "
    "'handlers'\"); run with --modelopt-python pointing at a virtualenv that has them")
RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
COMMAND = ("python tools/bench_vs_peers.py --modelopt-python /tmp/mo/bin/python "
           "--json tools/results/vs_peers_fashion.json --png tools/results/vs_peers_fashion.png")


def _default_cache() -> str:
    root = os.environ.get("HALP_TRT_CACHE", os.path.join(os.path.expanduser("~"), ".cache",
                                                         "halp-trt"))
    return os.path.join(root, "bench_vs_peers")


def _progress(iterable, **kw):
    from tqdm.auto import tqdm

    kw.setdefault("leave", False)
    return tqdm(iterable, dynamic_ncols=True, **kw)


def _batches(loader, n):
    for i, b in enumerate(loader):
        if i >= n:
            return
        yield b


# ---- sharing the machine: exclusive while timing, shared while training ------------------------
class TimingLock:
    """With ``--timing-lock FILE``: hold FILE shared (flock) while training, as other CPU-heavy
    work on the machine does, and exclusively during every timing session, so that nothing
    else runs on the cores while latencies are read and this run's training never disturbs
    another's timing. Run the command itself outside any wrapper that holds the same lock."""

    def __init__(self, path: str | None):
        self.fd = None
        if path:
            import fcntl

            self.fcntl = fcntl
            self.fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
            fcntl.flock(self.fd, fcntl.LOCK_SH)

    def wrap(self, measure):
        if self.fd is None:
            return measure

        def exclusive(*args, **kw):
            self.fcntl.flock(self.fd, self.fcntl.LOCK_EX)
            try:
                return measure(*args, **kw)
            finally:
                self.fcntl.flock(self.fd, self.fcntl.LOCK_SH)

        return exclusive

    def install(self) -> None:
        """Every timing session of this process, halp-trt's own (calibration, closed loop)
        included, goes through ``measure_interleaved``."""
        if self.fd is None:
            return
        import halp_trt.latency.probe as probe
        import halp_trt.pruning.feedback as feedback
        import halp_trt.runtime.protocol as protocol

        wrapped = self.wrap(protocol.measure_interleaved)
        for module in (protocol, feedback, probe):  # the names they call it by
            module.measure_interleaved = wrapped


# ---- the setup: data, base model, table -------------------------------------------------------
class Setup:
    """Everything shared by the rows of one run: data, the cached base model and the table."""

    def __init__(self, a):
        from halp_trt.data import load_data
        from halp_trt.models import create_model

        self.a = a
        self.lock = TimingLock(a.timing_lock)
        self.lock.install()
        os.makedirs(a.cache_dir, exist_ok=True)
        data = load_data("fashion-mnist", (INPUT_SIZE, INPUT_SIZE))
        self.full_train, self.val = data.train, data.val
        self.train = data.train
        if a.quick:
            self.train = torch.utils.data.Subset(data.train, range(QUICK_TRAIN_IMAGES))
            self.val = torch.utils.data.Subset(data.val, range(QUICK_TRAIN_IMAGES))
        self.new_model = lambda: create_model("resnet18", 10)
        self.example = torch.randn(TIMING_BATCH, 3, INPUT_SIZE, INPUT_SIZE)
        self.base_path = os.path.join(a.cache_dir, "base_resnet18_fashion32" +
                                      ("_quick" if a.quick else f"_e{a.base_epochs}") + ".pt")
        self.base, self.base_info = self._base_model()
        self.table_path = os.path.join(a.cache_dir,
                                       f"resnet18_{TIMING_BATCH}x3x{INPUT_SIZE}x{INPUT_SIZE}.json")
        self._table()
        from halp_trt.runtime import get_backend
        from halp_trt.runtime.export import export_onnx

        self.backend = get_backend("onnxruntime")
        self.original_onnx = export_onnx(self.base, self.example)
        # rows of another setup (other base recipe, budget, timing batch or machine class) are
        # not mixed into these. The key is the base's recipe, not its weights' hash: the run
        # spans sessions on machines that do not keep the cache, and a base retrained with the
        # same recipe and seed is the same experiment (each row keeps the hash it was run with)
        from halp_trt.runtime.machine import cpu_identity, machine_class

        self.signature = {"base_recipe": self.base_info.get("recipe"),
                          "base_epochs": self.base_info.get("epochs"),
                          "machine": machine_class(cpu_identity()), "input_size": INPUT_SIZE,
                          "timing_batch": TIMING_BATCH, "ft_epochs": a.ft_epochs,
                          "quick": bool(a.quick)}

    def loader(self, seed: int, batch: int = TRAIN_BATCH, dataset=None):
        from halp_trt.data import make_loader

        return make_loader(dataset or self.train, batch, True, seed)

    def _base_model(self):
        from halp_trt.train import evaluate, load_weights, recalibrate_bn, train_epoch

        info_path = self.base_path + ".json"
        model = self.new_model()
        if os.path.exists(self.base_path) and os.path.exists(info_path):
            load_weights(model, self.base_path)
            with open(info_path) as f:
                return model.eval(), json.load(f)
        epochs = 1 if self.a.quick else self.a.base_epochs
        print(f"training the base resnet18 on Fashion-MNIST at {INPUT_SIZE}x{INPUT_SIZE} for "
              f"{epochs} epochs (cached in {self.base_path})", flush=True)
        torch.manual_seed(0)
        loader = self.loader(0, 128)
        val_loader = self._val_loader()
        opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3,
                                                    total_steps=epochs * len(loader))
        curve = []
        for e in range(epochs):
            loader.generator.manual_seed(e)
            train_epoch(model, _progress(loader, desc=f"base epoch {e + 1}/{epochs}"), opt,
                        scheduler=sched, clip_grad_norm=2.0)
            curve.append(evaluate(model, val_loader))
            print(f"base epoch {e + 1}: test accuracy {curve[-1]:.4f}", flush=True)
        recalibrate_bn(model, loader, max_batches=BN_BATCHES)
        acc = evaluate(model, val_loader)
        torch.save(model.state_dict(), self.base_path)
        with open(self.base_path, "rb") as f:
            sha = hashlib.sha256(f.read()).hexdigest()
        info = {"accuracy": acc, "epochs": epochs, "test_accuracy_per_epoch": curve,
                # plateau: the last epoch moved test accuracy by under half a point
                "plateau": len(curve) > 1 and abs(curve[-1] - curve[-2]) < 0.005,
                "sha256": sha, "recipe": "AdamW lr 2e-3 one-cycle, batch 128, clip 2.0"}
        with open(info_path, "w") as f:
            json.dump(info, f, indent=1)
        return model.eval(), info

    def _val_loader(self):
        from halp_trt.data import make_loader

        return make_loader(self.val, 256, False)

    def _table(self):
        if os.path.exists(self.table_path):
            return
        from halp_trt.latency.build import BuildConfig, build_table
        from halp_trt.runtime import get_backend
        from halp_trt.runtime.protocol import Protocol

        print(f"building the latency table at {tuple(self.example.shape)} into "
              f"{self.table_path}", flush=True)
        self.lock.wrap(build_table)(self.new_model(), tuple(self.example.shape), get_backend("onnxruntime"),
                    self.table_path, "resnet18", BuildConfig(protocol=Protocol(rounds=15)))

    def measure(self, graphs: dict) -> dict:
        """Each graph's latency over the original's, from one interleaved session."""
        from halp_trt.runtime.protocol import measure_interleaved, model_protocol

        st = measure_interleaved(self.backend, {"original": self.original_onnx, **graphs},
                                 model_protocol(self.a.rounds))
        return {k: st[k].min_ms / st["original"].min_ms for k in graphs}

    # ---- scoring: the same for every method ---------------------------------------------------
    def score_bn(self, model, seed) -> float:
        from halp_trt.train import evaluate, recalibrate_bn

        m = copy.deepcopy(model)
        recalibrate_bn(m, self.loader(10_000 + seed), max_batches=BN_BATCHES)
        return evaluate(m, self._val_loader())

    def finetune(self, model, n_batches: int, seed: int) -> float:
        """``n_batches`` SGD steps (whole epochs re-seeded per epoch), then test accuracy."""
        from halp_trt.train import evaluate, train_epoch

        torch.manual_seed(seed)
        opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=0.9, weight_decay=1e-4)
        loader, done, epoch = self.loader(seed), 0, 0
        while done < n_batches:
            loader.generator.manual_seed(20_000 + 100 * seed + epoch)
            n = min(len(loader), n_batches - done)
            train_epoch(model, _progress(_batches(loader, n), total=n, desc="fine-tune"), opt)
            done, epoch = done + n, epoch + 1
        return evaluate(model.eval(), self._val_loader())

    def budget_batches(self) -> int:
        return self.a.ft_epochs * len(self.loader(0))


# ---- halp-trt -----------------------------------------------------------------------------------
def run_halp(s: Setup, level: float, seed: int) -> dict:
    from halp_trt.pipeline.config import DeployConfig
    from halp_trt.pipeline.run import DeployRun
    from halp_trt.runtime.export import export_onnx

    out = os.path.join(s.a.cache_dir, "halp_runs", f"{'quick_' if s.a.quick else ''}"
                       f"level{level}_seed{seed}")
    cfg = DeployConfig(out=out, model="resnet18", weights=s.base_path, data="fashion-mnist",
                       input_size=INPUT_SIZE, batch_size=TIMING_BATCH,
                       train_batch_size=TRAIN_BATCH, table=s.table_path, target=str(level),
                       epochs=0, lr=LR, rounds=s.a.rounds, seed=seed,
                       importance="taylor", contribution="two_sided",
                       max_batches=math.ceil(QUICK_TRAIN_IMAGES / TRAIN_BATCH) if s.a.quick
                       else None)
    run = DeployRun(cfg)
    run.load()
    run.original()
    run.table()
    run.calibrate()
    run.prune()
    model = run.pruned_model.eval()
    per_epoch = min(len(run.train_loader), cfg.max_batches or len(run.train_loader))
    prune_batches = run.state.prune_epochs_done * per_epoch
    acc_bn = s.score_bn(model, seed)
    ft_batches = max(0, s.budget_batches() - prune_batches)
    acc_ft = s.finetune(model, ft_batches, seed)
    ratio = s.measure({"halp-trt": export_onnx(model, s.example)})["halp-trt"]
    ckpt = os.path.join(out, "checkpoint.pt")
    if os.path.exists(ckpt):  # its row holds what later rows need; the weights are not needed
        os.unlink(ckpt)
    return {"latency_ratio": ratio, "latency_vs_halp": 1.0, "matched": True, "acc_bn": acc_bn,
            "acc_ft": acc_ft, "prune_batches": prune_batches, "ft_batches": ft_batches,
            "result": run.result.to_json(),
            "feedback_points": (run.state.feedback or {}).get("points", [])}


def halp_arch_onnx(s: Setup, row: dict) -> bytes:
    from halp_trt.pruning.result import PruningResult, apply_result
    from halp_trt.runtime.export import export_onnx

    result = PruningResult.from_json(row["result"], source="the halp-trt row")
    return export_onnx(apply_result(s.new_model(), s.example, result).eval(), s.example)


# ---- Torch-Pruning ------------------------------------------------------------------------------
def tp_pruner(s: Setup, method: str, seed: int):
    """``amount`` (Torch-Pruning's pruning_ratio) -> pruned copy of the base."""
    imp_name, global_pruning, round_to = TP_METHODS[method]
    import torch_pruning as tp

    imp_batches = list(_batches(s.loader(30_000 + seed), IMPORTANCE_BATCHES))

    def prune(amount: float) -> nn.Module:
        model = copy.deepcopy(s.base)
        imp = tp.importance.TaylorImportance() if imp_name == "taylor" else \
            tp.importance.MagnitudeImportance(p=2)
        pruner = tp.pruner.MetaPruner(model, s.example[:1], importance=imp,
                                      global_pruning=global_pruning, pruning_ratio=amount,
                                      ignored_layers=[model.fc], round_to=round_to)
        if imp_name == "taylor":
            model.train()
            model.zero_grad()
            for x, y in imp_batches:
                nn.functional.cross_entropy(model(x), y).backward()
        pruner.step()
        model.zero_grad(set_to_none=True)
        return model.eval()

    return prune, (0.0, 0.95)


# ---- ModelOpt FastNAS (in its own interpreter) ---------------------------------------------------
def fastnas_pruner(s: Setup, seed: int):
    """``amount`` (1 − FLOPs fraction) -> FastNAS subnet, searched by ``--modelopt-python``."""
    if not s.a.modelopt_python:
        raise RuntimeError("no --modelopt-python given: nvidia-modelopt does not import in this "
                           "environment (see the module docstring)")
    work = os.path.join(s.a.cache_dir, "fastnas" + ("_quick" if s.a.quick else ""))
    os.makedirs(work, exist_ok=True)
    job_path = os.path.join(work, f"job_seed{seed}.pt")
    if not os.path.exists(job_path):
        g = torch.Generator().manual_seed(40_000 + seed)
        n = len(s.train)
        idx = torch.randperm(n, generator=g)[:FASTNAS_SCORE_IMAGES + FASTNAS_CALIB_BATCHES *
                                             TRAIN_BATCH].tolist()
        xs, ys = zip(*(s.train[i] for i in idx))
        x, y = torch.stack(xs), torch.stack([torch.as_tensor(v) for v in ys])
        torch.save({"state": s.base.state_dict(), "score_x": x[:FASTNAS_SCORE_IMAGES],
                    "score_y": y[:FASTNAS_SCORE_IMAGES],
                    "calib_x": x[FASTNAS_SCORE_IMAGES:]}, job_path)

    def prune(amount: float) -> nn.Module:
        flops_pct = max(1.0, 100.0 * (1.0 - amount))
        out_path = os.path.join(work, f"subnet_seed{seed}_{flops_pct:.3f}.pt")
        if not os.path.exists(out_path):
            cmd = [s.a.modelopt_python, os.path.abspath(__file__), "--fastnas-worker", job_path,
                   f"{flops_pct:.3f}%", os.path.join(work, f"search_seed{seed}.pth"), out_path]
            p = subprocess.run(cmd, capture_output=True, text=True)
            if p.returncode != 0 or not os.path.exists(out_path):
                last = [ln for ln in (p.stderr or p.stdout).splitlines() if ln.strip()][-1:]
                raise RuntimeError(f"FastNAS search failed (exit {p.returncode}): "
                                   f"{last[0] if last else 'no output'}")
        state = torch.load(out_path, map_location="cpu", weights_only=True)
        return shrink_to_state(s.new_model(), state).eval()

    return prune, (0.0, 0.97)


def shrink_to_state(model: nn.Module, state: dict) -> nn.Module:
    """Rebuild ``model``'s convolutions, BatchNorms and linear layers at the shapes of a pruned
    copy's state dict (a FastNAS subnet is the same module tree with fewer channels)."""
    for name, m in list(model.named_modules()):
        if not name or f"{name}.weight" not in state:
            continue
        w = state[f"{name}.weight"]
        if isinstance(m, nn.Conv2d):
            new = nn.Conv2d(w.shape[1] * m.groups, w.shape[0], m.kernel_size, m.stride,
                            m.padding, m.dilation, m.groups, m.bias is not None)
        elif isinstance(m, nn.BatchNorm2d):
            new = nn.BatchNorm2d(w.shape[0], m.eps, m.momentum)
        elif isinstance(m, nn.Linear):
            new = nn.Linear(w.shape[1], w.shape[0], m.bias is not None)
        else:
            continue
        parent, _, leaf = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, leaf, new)
    model.load_state_dict(state)
    return model


def fastnas_worker(job_path: str, flops: str, checkpoint: str, out_path: str) -> None:
    """Runs under ``--modelopt-python``: needs torch, torchvision and modelopt only."""
    import modelopt.torch.prune as mtp
    import torchvision

    job = torch.load(job_path, map_location="cpu", weights_only=True)
    model = torchvision.models.resnet18(num_classes=10)
    model.load_state_dict(job["state"])
    calib = list(job["calib_x"].split(TRAIN_BATCH))

    def score(net) -> float:
        net.eval()
        with torch.no_grad():
            pred = torch.cat([net(x).argmax(1) for x in job["score_x"].split(256)])
        return float((pred == job["score_y"]).float().mean())

    subnet, _ = mtp.prune(model, mode="fastnas", constraints={"flops": flops},
                          dummy_input=torch.randn(1, 3, INPUT_SIZE, INPUT_SIZE),
                          config={"data_loader": calib, "collect_func": lambda b: b,
                                  "score_func": score, "checkpoint": checkpoint,
                                  "verbose": False})
    torch.save({k: v.detach().clone().contiguous() for k, v in subnet.state_dict().items()},
               out_path)


# ---- peers: matched to halp-trt's model by bisection on their one knob ---------------------------
def match_latency(s: Setup, prune, bounds, reference_onnx: bytes, guess: float,
                  exponent: float) -> dict:
    """Bisect ``amount`` (more = faster) until the pruned model measures within
    ``MATCH_TOLERANCE`` of the reference, both timed in one session with the original. Each
    next amount is where latency ∝ (1 − amount)^``exponent`` through the last reading puts the
    reference, if that lies inside the bracket (plain bisection from the first guess spent most
    sessions far from the answer); otherwise the bracket's midpoint."""
    from halp_trt.runtime.export import export_onnx

    lo, hi = bounds
    amount, best, sessions = min(max(guess, lo), hi), None, []
    for _ in range(MAX_MATCH_SESSIONS):
        try:
            model = prune(amount)
            onnx_bytes = export_onnx(model, s.example)
        except Exception as exc:  # noqa: BLE001 - too much pruning breaks some variants
            sessions.append({"amount": amount, "error": f"{type(exc).__name__}: {exc}"[:200]})
            hi = amount
            amount = (lo + hi) / 2
            continue
        r = s.measure({"reference": reference_onnx, "candidate": onnx_bytes})
        vs_ref = r["candidate"] / r["reference"]
        sessions.append({"amount": amount, "latency_ratio": r["candidate"],
                         "reference_ratio": r["reference"], "latency_vs_halp": vs_ref})
        if best is None or abs(vs_ref - 1) < abs(best[1]["latency_vs_halp"] - 1):
            best = (model, sessions[-1])
        if abs(vs_ref - 1) <= MATCH_TOLERANCE:
            break
        if vs_ref > 1:
            lo = amount
        else:
            hi = amount
        aimed = 1 - (1 - amount) * vs_ref ** (-1 / exponent)
        amount = aimed if lo < aimed < hi else (lo + hi) / 2
    if best is None:
        raise RuntimeError(f"every pruning attempt failed: {sessions[-1]['error']}")
    model, pick = best
    return {"model": model, "amount": pick["amount"], "latency_ratio": pick["latency_ratio"],
            "latency_vs_halp": pick["latency_vs_halp"],
            "matched": abs(pick["latency_vs_halp"] - 1) <= MATCH_TOLERANCE, "sessions": sessions}


def run_peer(s: Setup, method: str, level: float, seed: int, halp_row: dict) -> dict:
    prune, bounds = (fastnas_pruner(s, seed) if method == "modelopt-fastnas"
                     else tp_pruner(s, method, seed))
    ref = halp_row["latency_ratio"]
    # first guess: channels scale latency about quadratically (TP), FLOPs about linearly
    guess = 1 - ref if method == "modelopt-fastnas" else 1 - math.sqrt(ref)
    m = match_latency(s, prune, bounds, halp_arch_onnx(s, halp_row), guess,
                      exponent=1.0 if method == "modelopt-fastnas" else 2.0)
    model = m.pop("model")
    acc_bn = s.score_bn(model, seed)
    acc_ft = s.finetune(model, s.budget_batches(), seed)
    return {**m, "acc_bn": acc_bn, "acc_ft": acc_ft, "prune_batches": 0,
            "ft_batches": s.budget_batches(),
            "params": sum(p.numel() for p in model.parameters())}


# ---- rows, summary, outputs ---------------------------------------------------------------------
def read_rows(path: str, signature: dict) -> list[dict]:
    if not os.path.exists(path):
        return []
    rows, other = [], 0
    with open(path) as f:
        for line in f:
            if line.strip():
                r = json.loads(line)
                if r.get("setup") == signature:
                    rows.append(r)
                else:
                    other += 1
    if other:
        print(f"{path}: {other} rows of another setup (base model, budget or timing batch) "
              "are ignored", flush=True)
    return rows


def append_row(path: str, row: dict) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")
        f.flush()
        os.fsync(f.fileno())


def summarize(rows: list[dict], levels, methods, excluded: dict, setup_info: dict) -> dict:
    out = {"levels": [], "excluded": excluded, **setup_info}
    for level in levels:
        entry = {"target": level, "methods": {}}
        for method in methods:
            rs = [r for r in rows if r["level"] == level and r["method"] == method]
            if not rs:
                continue
            e = {"n_seeds": len(rs)}
            for key, name in (("latency_ratio", "latency_ratio"), ("acc_bn", "acc_bn"),
                              ("acc_ft", "acc_ft"), ("latency_vs_halp", "latency_vs_halp")):
                vals = [r[key] for r in rs]
                e[f"{name}_mean"] = statistics.mean(vals)
                e[f"{name}_std"] = statistics.stdev(vals) if len(vals) > 1 else 0.0
            e["matched_within_tolerance"] = sum(bool(r.get("matched")) for r in rs)
            entry["methods"][method] = e
        out["levels"].append(entry)
    return out


def _pm(e: dict, key: str, digits: int = 3) -> str:
    return f"{e[key + '_mean']:.{digits}f} ± {e[key + '_std']:.{digits}f}"


def markdown_section(results: dict) -> str:
    """The BENCHMARKS.md section for ``results`` (the JSON this script writes)."""
    base = results.get("base", {})
    lines = ["## Against Torch-Pruning and ModelOpt FastNAS at equal measured latency "
             "(resnet18, Fashion-MNIST)", "", f"`{results.get('command', COMMAND)}`", ""]
    if not results.get("levels"):
        return "\n".join(lines + ["(not run yet)", ""])
    lines += [f"Machine: {results.get('machine', '(unknown)')}. resnet18 (10 classes) trained "
              f"here at {INPUT_SIZE}×{INPUT_SIZE} ({base.get('epochs')} epochs, test accuracy "
              f"{base.get('accuracy', float('nan')):.4f}); latency is ONNX Runtime CPU at batch "
              f"{results.get('timing_batch', TIMING_BATCH)} (the original takes "
              f"{results.get('original_ms', float('nan')):.1f} ms), measured / original. Every "
              "peer is bisected over its pruning knob to within 2% of that seed's halp-trt model, "
              "timed in the same session; accuracy on the 10,000 test images after BatchNorm "
              f"recalibration (no fine-tuning) and after {results.get('ft_epochs')} epochs' worth "
              "of SGD steps (halp-trt's pruning epoch included); mean ± std over seeds.", "",
              "| level | method | latency / original | vs halp-trt (same session) | acc, BN recal | "
              "acc, fine-tuned | seeds | matched ±2% |", "|---|---|---|---|---|---|---|---|"]
    for lv in results["levels"]:
        for name, e in sorted(lv["methods"].items(),
                              key=lambda kv: (kv[0] != "halp-trt", -kv[1]["acc_ft_mean"])):
            bold = "**" if name == "halp-trt" else ""
            lines.append(f"| {lv['target']} | {bold}{name}{bold} | {_pm(e, 'latency_ratio')} | "
                         f"{'reference' if name == 'halp-trt' else _pm(e, 'latency_vs_halp')} | "
                         f"{_pm(e, 'acc_bn')} | "
                         f"{_pm(e, 'acc_ft')} | {e['n_seeds']} | "
                         f"{e.get('matched_within_tolerance', '-')}/{e['n_seeds']} |")
    lines.append("")
    for lv in results["levels"]:
        ms = lv["methods"]
        if "halp-trt" not in ms or len(ms) < 2:
            continue
        best = max((k for k in ms if k != "halp-trt"), key=lambda k: ms[k]["acc_ft_mean"])
        gap = 100 * (ms["halp-trt"]["acc_ft_mean"] - ms[best]["acc_ft_mean"])
        lines.append(f"- level {lv['target']}: halp-trt {ms['halp-trt']['acc_ft_mean']:.4f} vs "
                     f"the best peer ({best}) {ms[best]['acc_ft_mean']:.4f} after fine-tuning: "
                     f"{gap:+.1f} points")
    for name, why in (results.get("excluded") or {}).items():
        lines.append(f"- {name} excluded: {why}")
    if results.get("png"):
        lines += ["", f"![accuracy vs measured latency]({results['png']})"]
    return "\n".join(lines + [""])


def plot(results: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharex=True)
    names = sorted({m for lv in results["levels"] for m in lv["methods"]})
    for ax, key, title in ((axes[0], "acc_bn", "BN recalibrated, no fine-tuning"),
                           (axes[1], "acc_ft", "after fine-tuning")):
        for name in names:
            es = [lv["methods"][name] for lv in results["levels"] if name in lv["methods"]]
            style = dict(fmt="s-", color="k", lw=2, ms=7) if name == "halp-trt" else \
                dict(fmt="o--" if "fastnas" in name else "o:", lw=0.8, ms=4)
            ax.errorbar([e["latency_ratio_mean"] for e in es], [e[f"{key}_mean"] for e in es],
                        xerr=[e["latency_ratio_std"] for e in es],
                        yerr=[e[f"{key}_std"] for e in es], label=name, capsize=2, **style)
        base = results.get("base", {}).get("accuracy")
        if base:
            ax.axhline(base, color="0.6", ls="--", lw=0.8)
        ax.set_title(title)
        ax.set_xlabel(f"measured latency / original (ORT CPU, batch "
                      f"{results.get('timing_batch', TIMING_BATCH)})")
        ax.set_ylabel("Fashion-MNIST test accuracy")
    axes[1].legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


# ---- main ---------------------------------------------------------------------------------------
def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--levels", default=",".join(map(str, LEVELS)),
                    help="measured latency / original, comma-separated")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--methods", default=",".join(METHODS),
                    help=f"comma-separated, from: {', '.join(METHODS)}")
    ap.add_argument("--ft-epochs", type=int, default=2,
                    help="fine-tuning budget in epochs of SGD steps after the base model")
    ap.add_argument("--base-epochs", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=ROUNDS, help="interleaved timing rounds")
    ap.add_argument("--modelopt-python", default=None,
                    help="python of a virtualenv with nvidia-modelopt (see the docstring)")
    ap.add_argument("--cache-dir", default=_default_cache())
    ap.add_argument("--timing-lock", default=None,
                    help="lock file taken exclusively (flock) around every timing session and "
                         "shared otherwise, for machines where others time and train too")
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: 1 level, 1 seed, 2 methods, 2,000 images, 1 epoch; "
                         "nothing written to tools/results")
    ap.add_argument("--json", dest="json_path", default=None)
    ap.add_argument("--png", dest="png_path", default=None)
    ap.add_argument("--rows", default=None,
                    help="JSON lines, one per finished (level, method, seed); a rerun resumes "
                         "(default tools/results/vs_peers_fashion_rows.jsonl)")
    a = ap.parse_args(argv)
    try:
        a.level_list = [float(v) for v in a.levels.split(",")]
    except ValueError:
        ap.error(f"--levels must be numbers separated by commas, got {a.levels!r}")
    if not all(0 < v < 1 for v in a.level_list):
        ap.error("--levels must each be between 0 and 1 (a fraction of the original's latency)")
    a.method_list = [m.strip() for m in a.methods.split(",") if m.strip()]
    unknown = [m for m in a.method_list if m not in METHODS]
    if unknown:
        ap.error(f"unknown method(s) {', '.join(unknown)}; choose from {', '.join(METHODS)}")
    if a.seeds < 1 or a.ft_epochs < 1 or a.base_epochs < 1 or a.rounds < 15:
        ap.error("--seeds, --ft-epochs and --base-epochs must be >= 1, --rounds >= 15")
    if a.quick:
        a.level_list = a.level_list[:1]
        a.seeds, a.ft_epochs = 1, 1
        if a.methods == ",".join(METHODS):
            a.method_list = list(QUICK_METHODS)
        a.method_list = a.method_list[:2]
        quick_dir = "/tmp/halp_vs_peers_quick"
        a.rows = a.rows or os.path.join(quick_dir, "rows.jsonl")
        a.json_path = os.path.join(quick_dir, "vs_peers_quick.json")
        a.png_path = os.path.join(quick_dir, "vs_peers_quick.png")
    else:
        a.rows = a.rows or os.path.join(RESULTS_DIR, "vs_peers_fashion_rows.jsonl")
    if "halp-trt" not in a.method_list:
        a.method_list.insert(0, "halp-trt")  # every peer is matched to its model
    return a


def main(argv=None):
    if argv is None and len(sys.argv) > 1 and sys.argv[1] == "--fastnas-worker":
        fastnas_worker(*sys.argv[2:6])
        return
    a = parse_args(argv)
    from halp_trt.errors import HalpError
    from halp_trt.runtime.machine import cpu_identity, machine_class

    t0 = time.perf_counter()
    try:
        s = Setup(a)
    except HalpError as exc:
        sys.exit(f"error: {exc}")
    rows = read_rows(a.rows, s.signature)
    done = {(r["level"], r["method"], r["seed"]) for r in rows}
    excluded = {}
    if "modelopt-fastnas" in a.method_list and not a.modelopt_python:
        excluded["modelopt-fastnas"] = MODELOPT_NOT_IMPORTABLE
    todo = [(lv, m, seed) for lv in a.level_list for seed in range(a.seeds)
            for m in a.method_list if (lv, m, seed) not in done]
    print(f"{len(done)} rows done in {a.rows}, {len(todo)} to run", flush=True)
    bar = _progress(todo, desc="rows", leave=True)
    for level, method, seed in bar:
        bar.set_postfix_str(f"{method} level {level} seed {seed}")
        if method in excluded:
            continue
        t_row = time.perf_counter()
        try:
            if method == "halp-trt":
                row = run_halp(s, level, seed)
            else:
                halp_row = next((r for r in rows if (r["level"], r["method"], r["seed"]) ==
                                 (level, "halp-trt", seed)), None)
                if halp_row is None:
                    continue  # halp-trt failed at this level and seed; said above
                row = run_peer(s, method, level, seed, halp_row)
        except (HalpError, RuntimeError) as exc:
            print(f"{method} level {level} seed {seed}: {exc}", flush=True)
            if method == "modelopt-fastnas":
                excluded[method] = str(exc)
            continue
        row.update(level=level, method=method, seed=seed, setup=s.signature,
                   base_sha256=s.base_info.get("sha256"),
                   wall_s=time.perf_counter() - t_row)
        append_row(a.rows, row)
        rows.append(row)
        print(f"level {level} seed {seed} {method:24s} latency {row['latency_ratio']:.3f} "
              f"(vs halp-trt {row['latency_vs_halp']:.3f}) acc BN {row['acc_bn']:.4f} "
              f"FT {row['acc_ft']:.4f} ({row['wall_s'] / 60:.1f} min)", flush=True)
    from halp_trt.runtime.protocol import measure_interleaved, model_protocol

    st = measure_interleaved(s.backend, {"original": s.original_onnx}, model_protocol(a.rounds))
    setup_info = {"command": COMMAND, "machine": machine_class(cpu_identity()) +
                  f", {os.cpu_count()} vCPUs", "timing_batch": TIMING_BATCH,
                  "input_size": INPUT_SIZE, "ft_epochs": a.ft_epochs, "seeds": a.seeds,
                  "original_ms": st["original"].min_ms,
                  "base": s.base_info, "rows_file": os.path.relpath(a.rows),
                  "png": os.path.relpath(a.png_path) if a.png_path else None,
                  "wall_s_this_run": time.perf_counter() - t0,
                  "wall_s_rows": sum(r["wall_s"] for r in rows), "quick": bool(a.quick)}
    results = summarize(rows, a.level_list, a.method_list, excluded, setup_info)
    print(markdown_section(results))
    if a.json_path:
        os.makedirs(os.path.dirname(os.path.abspath(a.json_path)), exist_ok=True)
        with open(a.json_path, "w") as f:
            json.dump(results, f, indent=1)
    if a.png_path and any(lv["methods"] for lv in results["levels"]):
        plot(results, a.png_path)


if __name__ == "__main__":
    main()
