"""Building a latency table: which configurations to measure, measuring them, resuming.

Cheap and faithful: for each signature a dense sweep of the last ``sweep_window`` channel
counts (at the other axis's full width) detects the latency step; then a lattice aligned to the
step ends is measured over (c_in, c_out) — every step end for narrow layers, a coarser subset
with interpolation for wide ones. Lookup rounds queries up to the step (``halp_trt.latency.table``).

Every finished batch of measurements is written atomically, so an interrupted build (Ctrl-C,
kill -9) keeps its measurements and the same command resumes it. Under ``torchrun`` each rank
measures a share of every phase on its own device and rank 0 writes the merged table.
"""
from __future__ import annotations

import os
import random
import warnings
from dataclasses import dataclass, field, replace
from typing import Sequence

import numpy as np
import torch

from halp_trt.distributed import dist_context, finish_distributed, gather_dicts
from halp_trt.errors import HalpError
from halp_trt.version import __version__
from halp_trt.latency.identity import RESUME_KEYS, differences
from halp_trt.graph.groups import find_channel_groups
from halp_trt.latency.layer_onnx import layer_onnx, weight_bytes
from halp_trt.runtime.machine import cold_level_for
from halp_trt.graph.layers import LayerSpec, list_layers
from halp_trt.runtime.protocol import (Protocol, Stats, measure_interleaved, memory_chunks,
                                       model_protocol)
from halp_trt.latency.steps import detect_step, round_up_to_step, suffix_min
from halp_trt.latency.table import (LatencyTable, SignatureTable, StepInfo, now_iso,
                            write_json_atomic)



# Bytes a deployed weight takes at each precision (the cache-level decision sizes the model
# as the runtime holds it).
BYTES_PER_WEIGHT = {"fp32": 4, "fp16": 2, "int8": 1}


@dataclass
class BuildConfig:
    protocol: Protocol = field(default_factory=Protocol)
    sweep_window: int = 48  # channel counts per dense sweep (6 steps of 8)
    max_points_per_axis: int = 12  # lattice points per channel axis (coarser -> interpolation)
    measure_model: bool = True  # whole model too: the table's sum is not the model's latency
    validate: int = 0  # random unmeasured points to measure for a held-out error
    seed: int = 0
    progress: bool = True
    # Which cache layers larger than the protocol's ``cold_above_bytes`` are timed cold from:
    # "auto" decides by the model's weights and this machine's last-level cache
    # (``machine.cold_level_for``; CPU devices), "llc" or "l2" force it. The table's protocol
    # records the level used.
    cold_level: str = "auto"


# ---- planning --------------------------------------------------------------------------------

def signature_tables(specs: Sequence[LayerSpec]) -> dict[str, SignatureTable]:
    """One SignatureTable per distinct signature, covering every layer that has it."""
    out: dict[str, SignatureTable] = {}
    fixed_in: dict[str, set[int]] = {}
    fixed_out: dict[str, set[int]] = {}
    for s in specs:
        key = s.signature.key
        t = out.get(key)
        if t is None:
            t = out[key] = SignatureTable(signature=s.signature, c_in_max=0, c_out_max=0,
                                          in_prunable=False, out_prunable=False)
        t.layers.append(s.name)
        t.c_in_max = max(t.c_in_max, s.in_channels)
        t.c_out_max = max(t.c_out_max, s.out_channels)
        if s.in_group is None:
            fixed_in.setdefault(key, set()).add(s.in_channels)
        else:
            t.in_prunable = True
        if s.out_group is None:
            fixed_out.setdefault(key, set()).add(s.out_channels)
        else:
            t.out_prunable = True
    for key, t in out.items():
        t._fixed_in = sorted(fixed_in.get(key, ()))  # type: ignore[attr-defined]
        t._fixed_out = sorted(fixed_out.get(key, ()))  # type: ignore[attr-defined]
    return out


def sweep_points(t: SignatureTable, window: int) -> dict[str, list[tuple[int, int]]]:
    """Dense sweeps that reveal the step along each prunable axis. A grouped conv takes only
    multiples of its group count, one channel per conv group being its granularity: it gets
    no sweep (``grouped_step``)."""
    pts: dict[str, list[tuple[int, int]]] = {}
    if t.signature.groups > 1:
        return pts
    if t.out_prunable:
        lo = max(1, t.c_out_max - window + 1)
        if t.depthwise:
            pts["out"] = [(c, c) for c in range(lo, t.c_out_max + 1)]
        else:
            pts["out"] = [(t.c_in_max, c) for c in range(lo, t.c_out_max + 1)]
    if t.in_prunable and not t.depthwise:
        lo = max(1, t.c_in_max - window + 1)
        g = t.signature.groups
        pts["in"] = [(c, t.c_out_max) for c in range(lo, t.c_in_max + 1) if c % g == 0]
    return pts


def grouped_step(t: SignatureTable) -> StepInfo | None:
    """A grouped conv's step: its group count (pruning narrows every conv group by the same
    number of channels, so widths are multiples of it)."""
    g = t.signature.groups
    return StepInfo(g, 0, True, None, None, source="groups") if g > 1 else None


def plan_axis(max_c: int, step: StepInfo, max_points: int, fixed: Sequence[int] = (),
              prunable: bool = True, multiple_of: int = 1) -> list[int]:
    """Lattice values along one axis: step ends; for wide axes every (2^k · step)-th one, so
    that thinned points stay on cheap, aligned counts, plus the full width."""
    if not prunable:
        return sorted(set(fixed) | {max_c})
    s = max(step.step, multiple_of)
    stride = s
    while (max_c - step.phase) // stride + 1 > max_points - 1:
        stride *= 2
    first = step.phase + s if step.phase + s <= max_c else max_c
    pts = {c for c in range(step.phase + stride, max_c + 1, stride) if c % multiple_of == 0}
    return sorted(pts | {first, max_c} | set(fixed))


def plan_lattice(s: SignatureTable, cfg: BuildConfig) -> None:
    """Set ``s``'s lattice (``grid_out``, ``grid_in``) from its steps, which it settles for
    grouped and depthwise convs first."""
    if grouped_step(s) is not None:
        s.step_in = s.step_out = grouped_step(s)
    if s.depthwise:
        s.step_in = s.step_out
    g = s.signature.groups
    # heads: every count the sweep measured stays a lattice point (lookup reads the
    # landscape over heads as measured, not interpolated)
    points = (max(cfg.max_points_per_axis, min(s.c_out_max, cfg.sweep_window) + 2)
              if s.signature.is_attention else cfg.max_points_per_axis)
    s.grid_out = plan_axis(s.c_out_max, s.step_out, points,
                           s._fixed_out, s.out_prunable, g)  # type: ignore[attr-defined]
    s.grid_in = (s.grid_out if s.depthwise else
                 plan_axis(s.c_in_max, s.step_in, cfg.max_points_per_axis,
                           s._fixed_in, s.in_prunable, g))  # type: ignore[attr-defined]


def consensus_step(tables: dict[str, SignatureTable]) -> StepInfo | None:
    """The step most of this table's signature axes agree on, when any showed one.

    Small layers time at tens of microseconds, where jumps of a few percent drown in noise;
    steps come from the runtime's kernels (MLAS NCHWc blocks, tensor-core tiles), so a layer
    whose own sweep is inconclusive takes the step its larger siblings showed. Erring to the
    larger step costs only granularity; a too-small step makes predictions optimistic."""
    votes: dict[tuple[int, int], int] = {}
    for t in tables.values():
        if t.signature.is_attention:  # a step in heads, not channels
            continue
        for st in (t.step_out, t.step_in):
            if st.accepted and st.step > 1 and st.source == "own":
                votes[(st.step, st.phase)] = votes.get((st.step, st.phase), 0) + 1
    if not votes:
        return None
    (step, phase), _ = max(votes.items(), key=lambda kv: kv[1])
    return StepInfo(step, phase, True, None, None, source="consensus")


def steps_from_sweep(t: SignatureTable, axis: str, window: int) -> StepInfo:
    axis_idx = 1 if axis == "out" else 0
    pts = [(p[axis_idx], t.ms(*p)) for p in sweep_points(t, window)[axis]
           if t.ms(*p) is not None]
    if len(pts) < 8:
        return StepInfo()
    counts, lat = zip(*sorted(pts))
    # Detect on the suffix minimum: ORT is much cheaper at c_in multiples of 8 than just below
    # (no channel padding for NCHWc), a dip pattern whose suffix minimum is a clean staircase —
    # and the suffix minimum is what lookup answers anyway.
    fit = detect_step(counts, suffix_min(lat))
    if not fit.accepted:
        return StepInfo(1, 0, False, _f(fit.residual_ratio), _f(fit.jump_to_noise))
    return StepInfo(int(fit.step), int(fit.phase) % int(fit.step), True,
                    _f(fit.residual_ratio), _f(fit.jump_to_noise))


def _f(x) -> float | None:
    return None if x is None or not np.isfinite(x) else round(float(x), 4)


# ---- the builder -----------------------------------------------------------------------------

class TableBuilder:
    """Measures a model's latency table with one backend. Use ``build_table`` for one call."""

    def __init__(self, model: torch.nn.Module, input_shape: Sequence[int], backend, out_path: str,
                 model_name: str, config: BuildConfig | None = None, exclude: Sequence[str] = ()):
        self.model, self.input_shape = model, tuple(int(x) for x in input_shape)
        self.backend, self.out_path, self.model_name = backend, out_path, model_name
        self.config = self._resolve_cold_level(config or BuildConfig(), model, backend)
        self.rank, self.world = dist_context("gloo")  # the gathered entries are CPU objects
        example = torch.randn(*self.input_shape)
        groups, _ = find_channel_groups(model, example, exclude=exclude)
        self.specs = list_layers(model, example, groups)
        self.table = self._start_table()

    @staticmethod
    def _resolve_cold_level(config: BuildConfig, model: torch.nn.Module, backend) -> BuildConfig:
        level = config.cold_level
        if level == "auto":
            ident = backend.identity()
            # the deployed weights' size: an int8 engine holds a quarter of the fp32 bytes
            weight_bytes = BYTES_PER_WEIGHT.get(ident.get("precision"), 4) * sum(
                p.numel() for p in model.parameters())
            level = cold_level_for(weight_bytes) if ident.get("device") == "cpu" else "llc"
        return replace(config, protocol=replace(config.protocol, cold_level=level))

    @property
    def batch(self) -> int:
        return self.input_shape[0]

    def _identity(self) -> dict:
        ident = dict(self.backend.identity())
        ident.update({"batch": self.batch, "input_shape": list(self.input_shape),
                      "model": self.model_name, "protocol": self.config.protocol.to_json(),
                      "halp_trt_version": __version__,
                      "lattice": {"sweep_window": self.config.sweep_window,
                                  "max_points_per_axis": self.config.max_points_per_axis},
                      "created": now_iso()})
        return ident

    def _start_table(self) -> LatencyTable:
        ident = self._identity()
        table = LatencyTable(identity=ident, signatures=signature_tables(self.specs),
                             layers=[s.to_json() for s in self.specs])
        for path in [self.out_path] + [self._rank_path(r) for r in range(self.world)]:
            if os.path.exists(path):
                self._merge_previous(table, path)
        return table

    def _rank_path(self, rank: int) -> str:
        return f"{self.out_path}.rank{rank}.partial"

    def _merge_previous(self, table: LatencyTable, path: str) -> None:
        old = LatencyTable.load(path, require_complete=False)
        diffs = [d.split(':')[0] for d in differences(old.identity, table.identity, RESUME_KEYS)]
        if diffs:
            raise HalpError(
                f"{path} exists but was measured for a different setup ({', '.join(diffs)} "
                "differ); choose another --out or delete the file to start over")
        for key, sig in old.signatures.items():
            if key in table.signatures:
                for (ci, co), st in sig.entries.items():
                    table.signatures[key].add(ci, co, st)
                if sig.step_out.accepted or sig.step_out.residual_ratio is not None:
                    table.signatures[key].step_out = sig.step_out
                if sig.step_in.accepted or sig.step_in.residual_ratio is not None:
                    table.signatures[key].step_in = sig.step_in
        if old.model_stats is not None:
            table.model_stats = old.model_stats
        table.extra.update(old.extra)
        table.identity["created"] = old.identity.get("created", table.identity["created"])

    def _save(self) -> None:
        if self.world > 1:
            # each rank keeps its own progress; rank 0 writes the merged table at phase ends
            write_json_atomic(self._rank_path(self.rank), self.table.to_json())
        else:
            self.table.save(self.out_path)

    def _measure(self, todo: list[tuple[str, int, int]], what: str) -> None:
        """Measure (signature, c_in, c_out) configurations in batches, saving after each."""
        mine = todo[self.rank::self.world]
        proto = self.config.protocol
        bar = None
        if self.config.progress and mine:
            from tqdm.auto import tqdm
            bar = tqdm(total=len(mine) * proto.rounds, desc=f"{what} (rank {self.rank})"
                       if self.world > 1 else what, unit="run", leave=False, dynamic_ncols=True)
        try:
            for chunk in memory_chunks(mine, proto.batch_size, lambda c: weight_bytes(
                    self.table.signatures[c[0]].signature, c[1], c[2])):
                graphs = {}
                for key, ci, co in chunk:
                    sig = self.table.signatures[key].signature
                    graphs[(key, ci, co)] = (lambda s=sig, a=ci, b=co:
                                             layer_onnx(s, a, b, batch=self.batch))
                stats = measure_interleaved(self.backend, graphs, proto,
                                            on_round=(lambda n: bar.update(n)) if bar else None)
                for (key, ci, co), st in stats.items():
                    self.table.signatures[key].add(ci, co, st)
                self._save()
        finally:
            if bar:
                bar.close()
        if self.world > 1:
            local = {(k, ci, co): self.table.signatures[k].entries[(ci, co)]
                     for k, ci, co in mine}
            for (k, ci, co), st in gather_dicts(local, self.world).items():
                self.table.signatures[k].add(ci, co, st)
            if self.rank == 0:
                self.table.save(self.out_path)

    def run(self) -> LatencyTable:
        t = self.table
        cfg = self.config
        # 1. dense sweeps -> steps
        todo = [(k, ci, co) for k, s in t.signatures.items()
                for pts in sweep_points(s, cfg.sweep_window).values() for ci, co in pts
                if (ci, co) not in s.entries]
        self._measure(sorted(set(todo)), "step sweeps")
        for s in t.signatures.values():
            pts = sweep_points(s, cfg.sweep_window)
            if "out" in pts:
                s.step_out = steps_from_sweep(s, "out", cfg.sweep_window)
            if "in" in pts:
                s.step_in = steps_from_sweep(s, "in", cfg.sweep_window)
        fallback = consensus_step(t.signatures)
        for axis in ("out", "in"):
            for s in t.signatures.values():
                own = s.step_out if axis == "out" else s.step_in
                if fallback and not own.accepted and not s.signature.is_attention and (
                        s.out_prunable if axis == "out" else s.in_prunable):
                    setattr(s, f"step_{axis}", StepInfo(fallback.step, fallback.phase, True,
                                                        own.residual_ratio, own.jump_to_noise,
                                                        source="consensus"))
        for s in t.signatures.values():
            plan_lattice(s, cfg)
        # 2. the lattice
        todo = [(k, ci, co) for k, s in t.signatures.items() for ci, co in s.missing()]
        self._measure(sorted(todo), "lattice")
        # 3. the whole model, for calibrating the sum of layers against reality
        if cfg.measure_model and t.model_stats is None:
            t.model_stats = self.measure_whole_model()
        t.complete = True
        noisy = [f"{s.key} ({ci},{co})" for s in t.signatures.values()
                 for (ci, co), st in s.entries.items() if st.noisy]
        t.extra["noisy_entries"] = len(noisy)
        if noisy and self.rank == 0:
            warnings.warn(f"{len(noisy)} of {sum(len(s.entries) for s in t.signatures.values())}"
                          " entries had a high spread (median > 15% above minimum); the machine "
                          "was busy. The minimum filters most of it; re-run on a quiet machine "
                          "if the step curves look wrong (halp-trt inspect).")
        if self.rank == 0:
            t.save(self.out_path)
            for r in range(self.world):
                if os.path.exists(self._rank_path(r)):
                    os.unlink(self._rank_path(r))
        # 4. held-out validation
        if cfg.validate:
            t.extra["validation"] = self.validate(cfg.validate)
            if self.rank == 0:
                t.save(self.out_path)
        finish_distributed(self.world)
        return t

    def measure_whole_model(self) -> Stats | None:
        from halp_trt.runtime.export import export_onnx

        if self.world > 1 and self.rank != 0:
            return None
        onnx_bytes = export_onnx(self.model, torch.randn(*self.input_shape))
        stats = measure_interleaved(self.backend, {"model": onnx_bytes},
                                    model_protocol(self.config.protocol.rounds))
        return stats["model"]

    def validate(self, n: int) -> dict:
        """Measure ``n`` random unmeasured configurations; compare with the table's lookup.

        Points are step ends (counts rounded up to the detected step): a pruned layer's width
        is a whole number of neuron groups of the step size, and the table's answer for any
        count is the cost of the layer padded to its step end."""
        if self.world > 1 and self.rank != 0:
            return {}
        pts = random_step_ends(self.table, n, self.config.seed + 1)
        return compare_with_measurements({"table": self.table}, pts, self.backend,
                                         self.config.protocol, self.batch)["table"]


def random_step_ends(table: LatencyTable, n: int, seed: int = 0,
                     exclude: Sequence[LatencyTable] = ()) -> list[tuple[str, int, int]]:
    """``n`` random (signature, c_in, c_out) at ``table``'s step ends — the widths a pruner
    picks — that neither it nor any table in ``exclude`` measured."""
    rng = random.Random(seed)
    sigs = [s for s in table.signatures.values() if s.in_prunable or s.out_prunable]
    measured = {(key, p) for tab in (table, *exclude) for key, s in tab.signatures.items()
                for p, st in s.entries.items() if st.n > 0}
    pts: set[tuple[str, int, int]] = set()
    for _ in range(n * 100):
        if len(pts) >= n or not sigs:
            break
        s = rng.choice(sigs)
        g = s.signature.groups

        def pick(prunable, c_max, st):
            if not prunable:
                return c_max
            c = round_up_to_step(rng.randint(1, c_max), st.step, st.phase, c_max)
            return max(g, c // g * g) if g > 1 else c

        co = pick(s.out_prunable, s.c_out_max, s.step_out)
        ci = co if s.depthwise else pick(s.in_prunable, s.c_in_max, s.step_in)
        if (s.key, (ci, co)) not in measured:
            pts.add((s.key, ci, co))
    return sorted(pts)


def compare_with_measurements(tables: dict[str, LatencyTable], points, backend,
                              protocol: Protocol, batch: int = 1) -> dict[str, dict]:
    """Measure ``points`` (signature, c_in, c_out) once, interleaved, and score each table's
    prediction of them: median and max |predicted / measured - 1| per table."""
    any_table = next(iter(tables.values()))
    graphs = {p: (lambda p=p: layer_onnx(any_table.signatures[p[0]].signature, p[1], p[2],
                                         batch=batch)) for p in points}
    stats = measure_interleaved(backend, graphs, protocol) if graphs else {}
    out = {}
    for name, tab in tables.items():
        rows, errs = [], []
        for (key, ci, co), st in sorted(stats.items()):
            measured = st.estimate(protocol.estimator)
            predicted = tab.signatures[key].lookup(ci, co)
            err = predicted / measured - 1.0
            errs.append(abs(err))
            rows.append({"signature": key, "c_in": ci, "c_out": co,
                         "measured_ms": round(measured, 6), "predicted_ms": round(predicted, 6),
                         "rel_error": round(err, 5)})
        out[name] = {"n": len(rows),
                     "median_abs_rel_error": float(np.median(errs)) if errs else None,
                     "max_abs_rel_error": float(np.max(errs)) if errs else None,
                     "points": rows}
    return out


def build_table(model: torch.nn.Module, input_shape: Sequence[int], backend, out_path: str,
                model_name: str, config: BuildConfig | None = None,
                exclude: Sequence[str] = ()) -> LatencyTable:
    """Measure (or resume measuring) ``model``'s latency table into ``out_path``."""
    return TableBuilder(model, input_shape, backend, out_path, model_name, config, exclude).run()


def grid_size(table: LatencyTable) -> int:
    """Configurations in the full grid that the table answers (for cost reporting)."""
    total = 0
    for s in table.signatures.values():
        ni = s.c_in_max if s.in_prunable and not s.depthwise else 1
        no = s.c_out_max if s.out_prunable else 1
        total += ni * no
    return total
