"""Table transfer: another machine's table of the same model, runtime and input as a prior.

Across machines of one runtime the *shape* of a signature's latency over (c_in, c_out) carries
over much better than its level: the kernels are the same code, the vector width changes the
step (MLAS blocks by 8 on AVX2, 16 on AVX-512) and the speed the scale. So a transfer measures
only what re-anchors the prior — a few step sweeps, a grid of anchors per signature, the whole
model — and fills the rest of a full build's lattice from the source through a fitted map
(``TransferBuilder.run`` has the steps). Unmeasured entries carry ``n = 0``, so nobody mistakes
them for measurements; ``extra["transfer"]`` records the source, the steps found, each
signature's fit and how many configurations were measured."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch

from halp_trt.errors import HalpError
from halp_trt.latency.build import (BuildConfig, TableBuilder, grouped_step, plan_lattice,
                                    steps_from_sweep, sweep_points)
from halp_trt.latency.identity import compare_identity
from halp_trt.latency.table import LatencyTable, SignatureTable, StepInfo
from halp_trt.runtime.protocol import Protocol, Stats

# What must agree between the source table and this build for its shape to carry over: the
# same runtime on the same model graph. Machine keys and runtime versions may differ.
SAME_GRAPH_KEYS = ("backend", "precision", "batch", "input_shape", "model", "optimization_level")
# Signatures swept per try on each axis, and tries until one shows a step here.
SWEEP_SIGNATURES = 2
MAX_SWEEP_TRIES = 2
# Layers slower than this at full width come last: their sweeps are slow and often timed cold,
# where steps drown in the cache eviction's noise.
SWEEP_MAX_MS = 2.0
MIN_SWEEP_WIDTH = 8  # the step detector needs at least this many counts


@dataclass
class TransferConfig:
    protocol: Protocol = field(default_factory=Protocol)
    sweep_window: int = 48  # counts per dense sweep, as in a full build
    sweep_signatures: int = SWEEP_SIGNATURES
    max_points_per_axis: int | None = None  # None: the source table's lattice density
    measure_model: bool = True
    validate: int = 0  # held-out points, as BuildConfig.validate
    seed: int = 0
    progress: bool = True


@dataclass
class SignatureFit:
    """``local_ms = a * source_ms + b`` for one signature, and how well it fits its anchors."""

    a: float
    b: float
    points: int
    max_rel_residual: float

    def predict(self, source_ms: float) -> float:
        return self.a * source_ms + self.b

    def to_json(self) -> dict:
        return {"a": round(self.a, 6), "b_ms": round(self.b, 6), "points": self.points,
                "max_rel_residual": round(self.max_rel_residual, 4)}


def fit_signature(source_ms: Sequence[float], local_ms: Sequence[float]) -> SignatureFit:
    """Affine fit minimising relative error; a pure scale when there are too few distinct
    points, or when the affine fit would be implausible (non-positive slope, an offset that
    would make the smallest anchor negative or mostly overhead that the source lacks)."""
    x, y = np.asarray(source_ms, float), np.asarray(local_ms, float)
    if len(x) == 0:
        raise ValueError("no anchor points to fit")
    scale = float(np.median(y / x))
    a, b = scale, 0.0
    if len(np.unique(np.round(x, 9))) >= 3:
        w = 1.0 / y  # relative least squares
        A = np.stack([x * w, w], axis=1)
        (fa, fb), *_ = np.linalg.lstsq(A, y * w, rcond=None)
        if fa > 0 and -0.5 * y.min() < fb < 0.5 * y.min():
            a, b = float(fa), float(fb)
    resid = np.abs((a * x + b) / y - 1.0)
    return SignatureFit(a, b, len(x), float(resid.max()))


def _majority_step(steps: Sequence[tuple[int, int]]) -> tuple[int, int] | None:
    steps = [s for s in steps if s[0] > 1]
    return Counter(steps).most_common(1)[0][0] if steps else None


# Anchor widths per axis, as fractions of the full width. An eighth as well was tried on
# resnet50 @ 224 (Zen 3 table to Zen 4): 411 instead of 319 measurements and a held-out median
# of 7.1% instead of 5.3% on the same 80 points (full builds: 3.7-4.9%) — eighth-width layers
# are short and noisy, and the ratio field spreads their noise.
ANCHOR_FRACTIONS = (0.5, 0.25)


# A signature whose anchors the affine map misses by more than this gets a denser grid.
REFINE_RESIDUAL = 0.10
REFINED_FRACTIONS = (0.75, 0.5, 0.25, 0.125)


def _anchor_values(grid: Sequence[int], fractions: Sequence[float]) -> list[int]:
    """Full width and ``fractions`` of it, on the lattice."""
    hi = grid[-1]
    picks = {hi}
    for frac in fractions:
        picks.add(min(grid, key=lambda c: abs(c - frac * hi)))
    return sorted(picks)


def anchor_points(s: SignatureTable, fractions: Sequence[float] = ANCHOR_FRACTIONS
                  ) -> list[tuple[int, int]]:
    """A grid (full width and ``fractions`` of each prunable axis) on ``s``'s lattice: the
    corners that matter, without measuring the lattice. A signature with one prunable axis
    (a stem, a classifier, a depthwise conv) is cheap to measure whole: its lattice."""
    one_axis = s.depthwise or not (s.out_prunable and s.in_prunable)
    outs = (s.grid_out if one_axis else _anchor_values(s.grid_out, fractions)) \
        if s.out_prunable else [s.c_out_max]
    if s.depthwise:
        return [(c, c) for c in outs]
    ins = (s.grid_in if one_axis else _anchor_values(s.grid_in, fractions)) \
        if s.in_prunable else [s.c_in_max]
    return [(ci, co) for ci in ins for co in outs]


class RatioField:
    """What the affine map leaves at the anchors, spread over the lattice: the measured /
    fitted ratio at each anchor, bilinear in log channel counts between them (constant beyond
    the outermost). The map carries the source's detail between anchors; this corrects the
    broad shape where the two machines differ (a 1x1 conv that gained less from AVX-512 at
    narrow inputs than at wide ones, say)."""

    def __init__(self, ratios: dict[tuple[int, int], float], depthwise: bool = False):
        if depthwise:  # one axis: c_in = c_out; the input side is a single row
            ratios = {(1, co): r for (_, co), r in ratios.items()}
        self.depthwise = depthwise
        self.ins = sorted({p[0] for p in ratios})
        self.outs = sorted({p[1] for p in ratios})
        self.grid = np.array([[ratios.get((ci, co), np.nan) for co in self.outs]
                              for ci in self.ins])
        if np.isnan(self.grid).any():  # anchors are a full grid; a hole would be a bug
            raise ValueError("ratio field needs every anchor of its grid")

    @staticmethod
    def _weights(v: int, axis: list[int]) -> tuple[int, int, float]:
        xs = np.log(np.asarray(axis, float))
        x = float(np.clip(np.log(v), xs[0], xs[-1]))
        i = max(0, min(int(np.searchsorted(xs, x, side="right")) - 1, len(xs) - 1))
        j = min(i + 1, len(xs) - 1)
        return i, j, (0.0 if i == j else (x - xs[i]) / (xs[j] - xs[i]))

    def __call__(self, c_in: int, c_out: int) -> float:
        i, i1, t = self._weights(1 if self.depthwise else c_in, self.ins)
        j, j1, u = self._weights(c_out, self.outs)
        g = self.grid
        return float((g[i, j] * (1 - u) + g[i, j1] * u) * (1 - t) +
                     (g[i1, j] * (1 - u) + g[i1, j1] * u) * t)


class TransferBuilder(TableBuilder):
    """A local table for ``model`` from ``source`` (another machine's table of it) and a few
    measurements here. Use ``transfer_table`` for one call."""

    def __init__(self, source: LatencyTable, model: torch.nn.Module, input_shape: Sequence[int],
                 backend, out_path: str, model_name: str, config: TransferConfig | None = None,
                 exclude: Sequence[str] = ()):
        self.transfer_config = config or TransferConfig()
        tc = self.transfer_config
        lattice = source.identity.get("lattice", {})
        max_points = tc.max_points_per_axis or int(lattice.get("max_points_per_axis", 12))
        build_cfg = BuildConfig(protocol=tc.protocol, sweep_window=tc.sweep_window,
                                max_points_per_axis=max_points, measure_model=tc.measure_model,
                                validate=tc.validate, seed=tc.seed, progress=tc.progress)
        super().__init__(model, input_shape, backend, out_path, model_name, build_cfg, exclude)
        if self.world > 1:
            raise HalpError("table transfer runs in one process; run it without torchrun")
        self.source = source
        self._check_source()
        # entries predicted by an earlier transfer into the same file are predicted again
        for s in self.table.signatures.values():
            for p in [p for p, st in s.entries.items() if st.n == 0]:
                del s.entries[p]
            s._lut = None

    def _check_source(self) -> None:
        cmp = compare_identity(self.source.identity, self.table.identity, SAME_GRAPH_KEYS)
        problems = cmp.differs + [f"{k}: not recorded by the source" for k in cmp.unknown]
        if problems:
            raise HalpError("the source table cannot be transferred to this build: it must be of "
                            "the same model, input, batch, backend, precision and optimization "
                            "level (" + "; ".join(problems) + "). Build a table from scratch "
                            "with halp-trt build-table (without --transfer-from)")
        missing = sorted(set(self.table.signatures) - set(self.source.signatures))
        if missing:
            raise HalpError(f"the source table lacks {len(missing)} of this model's layer "
                            f"signatures ({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''}"
                            "); build the table from scratch with halp-trt build-table")
        for key, s in self.table.signatures.items():
            src = self.source.signatures[key]
            if (src.c_in_max, src.c_out_max) != (s.c_in_max, s.c_out_max):
                raise HalpError(f"signature {key} spans ({src.c_in_max}, {src.c_out_max}) "
                                f"channels in the source table and ({s.c_in_max}, {s.c_out_max})"
                                " in this model; build the table from scratch")

    # ---- which sweeps --------------------------------------------------------------------
    def _sweep_candidates(self, axis: str) -> tuple[list[str], list[str]]:
        """(typical, atypical) signature keys that can be swept on ``axis``. Typical ones had
        the source's usual step, ranked so that the likeliest to show a step here come first:
        a clear step on the source machine, else a layer slow enough to rise above noise and
        fast enough to be timed warm. Atypical ones had a step of their own (a stem whose c_in
        is 3, say): each is swept, since the usual step says nothing about it."""
        cands = []
        for key, s in self.table.signatures.items():
            src = self.source.signatures[key]
            st = src.step_out if axis == "out" else src.step_in
            prunable = s.out_prunable if axis == "out" else (s.in_prunable and not s.depthwise)
            width = s.c_out_max if axis == "out" else s.c_in_max
            # attention signatures step in heads: no part of the channel steps' consensus
            if prunable and grouped_step(s) is None and width >= MIN_SWEEP_WIDTH and \
                    not s.signature.is_attention:
                cands.append((key, st, src.lookup(src.c_in_max, src.c_out_max)))
        usual = _majority_step([(st.step, st.phase % st.step) for _, st, _ in cands
                                if st.accepted])
        typical = [c for c in cands if not c[1].accepted or
                   (c[1].step, c[1].phase % c[1].step) == usual]
        atypical = [c[0] for c in cands if c not in typical and c[1].source == "own"]

        def rank(c):
            # the source sweep's staircase fit (residual / total variation; low = clean steps)
            # is kept even where the step came from the consensus
            _, st, full_ms = c
            fit = st.residual_ratio if st.residual_ratio is not None else 9.0
            return (0 if st.accepted and st.source == "own" else 1, full_ms > SWEEP_MAX_MS, fit)
        return [c[0] for c in sorted(typical, key=rank)], atypical

    def _fit(self, s: SignatureTable) -> SignatureFit:
        """The affine map through every measured point on ``s``'s lattice (sweep points
        between lattice points would fit the dips below step ends, which lookup never
        answers)."""
        src = self.source.signatures[s.key]
        lattice = set(s.lattice_points())
        pts = [p for p, st in s.entries.items() if st.n > 0 and p in lattice]
        return fit_signature([src.lookup(*p) for p in pts], [s.ms(*p) for p in pts])

    # ---- the transfer --------------------------------------------------------------------
    def run(self) -> LatencyTable:
        """1. **steps**: dense sweeps on the few signatures whose sweeps showed the clearest
        steps on the source machine, plus any whose source step was not the source's usual one
        (a stem whose c_in is 3); the others take the step most swept ones agree on here.
        2. **anchors**: a 3x3 grid per signature on the local lattice (full width, about a half
        and a quarter of each axis) through which ``local_ms = a * source_ms + b`` is fitted
        (``b``: the per-call overhead that differs between machines); what the map leaves at
        the anchors is spread over the lattice as a ratio field. A signature the map misses by
        more than 10% gets a denser 5x5 grid; one with a single prunable axis is measured whole.
        3. **the whole model**, for the calibration, as in a full build."""
        t, src_table = self.table, self.source
        found, local_usual = self._sweep_steps()
        steps_report = self._assign_steps(found, local_usual)
        fits = self._anchor_and_fill()
        measured = measured_configurations(t)
        t.extra["transfer"] = {
            "source": {k: src_table.identity.get(k) for k in
                       ("cpu_vendor", "cpu_family", "cpu_model", "cpu_model_number", "isa",
                        "runtime_version", "created")},
            "configurations_measured": measured,
            "steps": steps_report,
            "fits": {k: f.to_json() for k, f in fits.items()},
        }
        self._save()
        if self.config.measure_model and t.model_stats is None:
            t.model_stats = self.measure_whole_model()
        t.complete = True
        t.extra["noisy_entries"] = sum(st.noisy for s in t.signatures.values()
                                       for st in s.entries.values() if st.n > 0)
        self._save()
        if self.config.validate:
            t.extra["validation"] = self.validate(self.config.validate)
            self._save()
        return t

    def _sweep_steps(self) -> tuple[dict, dict]:
        """Step sweeps here: every signature whose source step is atypical, and typical ones in
        small batches until one shows this machine's usual step per axis. Returns the sweeps'
        steps ((key, axis) -> StepInfo) and the usual step per axis (None: inconclusive)."""
        t = self.table
        found: dict[tuple[str, str], StepInfo] = {}

        def sweep(keys_axes):
            window = self.config.sweep_window
            todo = {(k, ci, co) for k, axis in keys_axes
                    for ci, co in sweep_points(t.signatures[k], window)[axis]
                    if (ci, co) not in t.signatures[k].entries}
            self._measure(sorted(todo), "step sweeps")
            for k, axis in keys_axes:
                found[(k, axis)] = steps_from_sweep(t.signatures[k], axis, window)

        local_usual: dict[str, tuple[int, int] | None] = {}
        for axis in ("out", "in"):
            typical, atypical = self._sweep_candidates(axis)
            sweep([(k, axis) for k in atypical])
            # typical ones in small batches until one shows a step here; the input axis gets
            # one try (an inconclusive one takes the output axis's step)
            n_per_try = self.transfer_config.sweep_signatures if axis == "out" else 1
            tries = MAX_SWEEP_TRIES if axis == "out" else 1
            for i in range(0, min(len(typical), tries * n_per_try), n_per_try):
                sweep([(k, axis) for k in typical[i:i + n_per_try]])
                local_usual[axis] = _majority_step(
                    [(st.step, st.phase) for (k, a), st in found.items()
                     if a == axis and k in typical and st.accepted])
                if local_usual[axis]:
                    break
        # an axis whose sweeps were all inconclusive takes the other axis's usual step (the
        # kernels block both by the same vector width), as a full build's consensus does
        for axis, other in (("out", "in"), ("in", "out")):
            if not local_usual.get(axis):
                local_usual[axis] = local_usual.get(other)
        return found, local_usual

    def _assign_steps(self, found: dict, local_usual: dict) -> dict:
        """Each signature's steps: its own sweep's, else this machine's usual step where the
        source had one, else the source's; and its lattice planned on them."""
        t, src_table = self.table, self.source
        steps_report = {}
        for key, s in t.signatures.items():
            src = src_table.signatures[key]
            for axis in ("out", "in"):
                own = found.get((key, axis))
                src_st = src.step_out if axis == "out" else src.step_in
                if own is not None and own.accepted:
                    st = own
                elif local_usual[axis] and src_st.accepted and src_st.step > 1 and \
                        not s.signature.is_attention:  # a step in heads, not channels
                    st = StepInfo(*local_usual[axis], True, source="consensus")
                else:  # nothing here says otherwise: the source's step
                    st = StepInfo(src_st.step, src_st.phase, src_st.accepted, source="source")
                setattr(s, f"step_{axis}", st)
            plan_lattice(s, self.config)
            steps_report[key] = {"source": [src.step_out.step, src.step_in.step],
                                 "here": [s.step_out.step, s.step_in.step],
                                 "swept": [a for a in ("out", "in") if (key, a) in found]}
        return steps_report

    def _anchor_and_fill(self) -> dict:
        """Anchor measurements on each lattice, a fit of local vs source latency through them
        and the rest of the lattice filled from the source through that fit (and a ratio field
        of the residuals). Returns the fits by signature key."""
        t, src_table = self.table, self.source
        # anchors on the local lattice; a second, denser grid where the map misses the first
        grids = {k: anchor_points(s) for k, s in t.signatures.items()}
        for round_ in ("anchors", "refined anchors"):
            todo = {(k, ci, co) for k, s in t.signatures.items() for ci, co in grids[k]
                    if (ci, co) not in s.entries}
            self._measure(sorted(todo), round_)
            fits = {k: self._fit(s) for k, s in t.signatures.items()}
            if round_ == "anchors":
                grids = {k: anchor_points(s, REFINED_FRACTIONS)
                         if fits[k].max_rel_residual > REFINE_RESIDUAL else grids[k]
                         for k, s in t.signatures.items()}
        for key, s in t.signatures.items():
            src, fit = src_table.signatures[key], fits[key]
            field_ = RatioField({p: s.ms(*p) / fit.predict(src.lookup(*p))
                                 for p in grids[key]}, s.depthwise)
            for p in s.lattice_points():
                if p not in s.entries:
                    ms = max(fit.predict(src.lookup(*p)) * field_(*p), 1e-6)
                    s.add(p[0], p[1], Stats(0, ms, ms, ms, 0.0))
        return fits


def transfer_table(source: LatencyTable, model: torch.nn.Module, input_shape: Sequence[int],
                   backend, out_path: str, model_name: str, config: TransferConfig | None = None,
                   exclude: Sequence[str] = ()) -> LatencyTable:
    """A local latency table for ``model`` re-anchored from ``source`` (see module docstring)."""
    return TransferBuilder(source, model, input_shape, backend, out_path, model_name, config,
                           exclude).run()


def measured_configurations(table: LatencyTable) -> int:
    """Entries measured on the table's machine (a transferred table's predictions excluded)."""
    return sum(st.n > 0 for s in table.signatures.values() for st in s.entries.values())
