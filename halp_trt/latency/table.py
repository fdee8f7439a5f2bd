"""The latency table: per-signature latency over (c_in, c_out), its identity, and lookup.

File format: versioned JSON (never pickle — loading a pickle runs code). The identity records
everything that makes numbers comparable: device and ISA, runtime and version, precision,
batch, optimization level, threads, input shape, and the timing protocol. Each measured entry
keeps its statistics (n, min, p25, median, CV).

Lookup answers any (c_in, c_out) in range: each count is rounded up to the signature's latency
step (a layer can always be padded up to the end of its step), then read from the *suffix
minimum* of the measured lattice — min over c' >= c — bilinearly interpolated between lattice
points when the lattice is coarser than the step. The suffix minimum also makes curves that are
not monotone (cheaper at exact multiples of 8 on some runtimes) safe to use.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from typing import Iterable

import numpy as np

from halp_trt.fileio import write_json_atomic
from halp_trt.errors import HalpError
from halp_trt.graph.layers import ATTENTION_OPS, LayerSpec, Signature
from halp_trt.latency.steps import round_up_to_step
from halp_trt.latency.identity import COMPATIBLE_KEYS, compare_identity
from halp_trt.runtime.protocol import Stats

FORMAT = "halp-trt-latency-table"
VERSION = 1



@dataclass
class StepInfo:
    """Detected latency step along one channel axis (see halp_trt.latency.steps)."""

    step: int = 1
    phase: int = 0
    accepted: bool = False
    residual_ratio: float | None = None
    jump_to_noise: float | None = None
    source: str = "own"  # "own": this signature's sweep; "consensus": the table's other layers

    def to_json(self) -> dict:
        return dict(self.__dict__)

    @classmethod
    def from_json(cls, d: dict | None) -> "StepInfo":
        st = cls(**d) if d else cls()
        if not (_is_int(st.step) and st.step >= 1 and _is_int(st.phase) and st.phase >= 0):
            raise ValueError(f"step {d} must have an integer step >= 1 and phase >= 0")
        return st


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


@dataclass
class SignatureTable:
    """Measurements of one signature (one op shape), shared by every layer that has it."""

    signature: Signature
    c_in_max: int
    c_out_max: int
    in_prunable: bool
    out_prunable: bool
    layers: list[str] = field(default_factory=list)
    step_in: StepInfo = field(default_factory=StepInfo)
    step_out: StepInfo = field(default_factory=StepInfo)
    grid_in: list[int] = field(default_factory=list)
    grid_out: list[int] = field(default_factory=list)
    entries: dict[tuple[int, int], Stats] = field(default_factory=dict)
    estimator: str = "min"
    _lut: tuple | None = field(default=None, repr=False, compare=False)

    @property
    def key(self) -> str:
        return self.signature.key

    @property
    def depthwise(self) -> bool:
        return self.signature.op == "dwconv"

    def add(self, c_in: int, c_out: int, stats: Stats) -> None:
        self.entries[(int(c_in), int(c_out))] = stats
        self._lut = None

    def ms(self, c_in: int, c_out: int) -> float | None:
        st = self.entries.get((c_in, c_out))
        return None if st is None else st.estimate(self.estimator)

    def lattice_points(self) -> list[tuple[int, int]]:
        if self.depthwise:
            return [(c, c) for c in self.grid_out]
        return [(ci, co) for ci in self.grid_in for co in self.grid_out]

    def missing(self) -> list[tuple[int, int]]:
        return [p for p in self.lattice_points() if p not in self.entries]

    def _build_lut(self):
        gi = self.grid_out if self.depthwise else self.grid_in
        go = self.grid_out
        if not gi or not go:
            raise HalpError(f"signature {self.key} has no measurement lattice; rebuild the table")
        m = np.empty((len(gi), len(go)))
        for i, ci in enumerate(gi):
            for j, co in enumerate(go):
                v = self.ms(co if self.depthwise else ci, co)
                if v is None:
                    raise HalpError(f"signature {self.key} lacks the measurement c_in={ci}, "
                                    f"c_out={co}; the table is incomplete — rerun build-table "
                                    "with the same --out to resume it")
                m[i, j] = v
        if self.depthwise:
            m = np.diag(m)[None, :]
            gi = [0]
        # suffix minimum over both axes: a layer can be padded up to any larger width
        s = np.minimum.accumulate(m[::-1, ::-1], axis=0)
        s = np.minimum.accumulate(s, axis=1)[::-1, ::-1]
        self._lut = (np.asarray(gi, float), np.asarray(go, float), s)
        return self._lut

    def lookup(self, c_in: int, c_out: int) -> float:
        """Predicted latency (ms) of this signature at (c_in, c_out)."""
        if c_in < 1 or c_out < 1 or c_in > self.c_in_max or c_out > self.c_out_max:
            raise ValueError(f"({c_in}, {c_out}) is outside the table's range for {self.key} "
                             f"(c_in <= {self.c_in_max}, c_out <= {self.c_out_max})")
        gi, go, s = self._lut or self._build_lut()
        co = round_up_to_step(c_out, self.step_out.step, self.step_out.phase, self.c_out_max)
        if self.depthwise:
            return float(np.interp(co, go, s[0]))
        ci = round_up_to_step(c_in, self.step_in.step, self.step_in.phase, self.c_in_max)
        # bilinear interpolation; below the first lattice point the first point holds
        ci, co = min(max(ci, gi[0]), gi[-1]), min(max(co, go[0]), go[-1])
        i = min(int(np.searchsorted(gi, ci, side="right")) - 1, len(gi) - 1)
        j = min(int(np.searchsorted(go, co, side="right")) - 1, len(go) - 1)
        i1, j1 = min(i + 1, len(gi) - 1), min(j + 1, len(go) - 1)
        ti = 0.0 if i1 == i else (ci - gi[i]) / (gi[i1] - gi[i])
        tj = 0.0 if j1 == j else (co - go[j]) / (go[j1] - go[j])
        top = s[i, j] * (1 - tj) + s[i, j1] * tj
        bot = s[i1, j] * (1 - tj) + s[i1, j1] * tj
        return float(top * (1 - ti) + bot * ti)

    def to_json(self) -> dict:
        rows = [[ci, co, st.n, round(st.min_ms, 6), round(st.p25_ms, 6), round(st.median_ms, 6),
                 round(st.cv, 5)] for (ci, co), st in sorted(self.entries.items())]
        return {"signature": self.signature.to_json(), "c_in_max": self.c_in_max,
                "c_out_max": self.c_out_max, "in_prunable": self.in_prunable,
                "out_prunable": self.out_prunable, "layers": self.layers,
                "step_in": self.step_in.to_json(), "step_out": self.step_out.to_json(),
                "grid_in": self.grid_in, "grid_out": self.grid_out,
                "entry_columns": ["c_in", "c_out", "n", "min_ms", "p25_ms", "median_ms", "cv"],
                "entries": rows}

    @classmethod
    def from_json(cls, d: dict, estimator: str = "min") -> "SignatureTable":
        sig = Signature.from_json(d["signature"])
        pairs = (sig.kernel, sig.stride, sig.padding, sig.dilation, sig.input_hw)
        if sig.op not in ("conv", "dwconv", "linear", *ATTENTION_OPS) or not all(
                len(p) == 2 and all(_is_int(x) for x in p) for p in pairs):
            raise ValueError(f"signature {d['signature']} is not a conv/dwconv/linear/attention "
                             "signature with integer pairs")
        if sig.is_attention and (sig.head_dim < 1 or sig.tokens < 1 or sig.windows < 1):
            raise ValueError(f"attention signature {d['signature']} needs head_dim, tokens and "
                             "windows >= 1")
        t = cls(signature=sig, c_in_max=int(d["c_in_max"]),
                c_out_max=int(d["c_out_max"]), in_prunable=bool(d["in_prunable"]),
                out_prunable=bool(d["out_prunable"]), layers=list(d.get("layers", [])),
                step_in=StepInfo.from_json(d.get("step_in")),
                step_out=StepInfo.from_json(d.get("step_out")),
                grid_in=[int(x) for x in d.get("grid_in", [])],
                grid_out=[int(x) for x in d.get("grid_out", [])], estimator=estimator)
        if t.c_in_max < 1 or t.c_out_max < 1 or min(t.grid_in + t.grid_out, default=1) < 1:
            raise ValueError(f"{t.key} has channel counts below 1")
        if (t.grid_in and max(t.grid_in) != t.c_in_max) or (t.grid_out and
                                                            max(t.grid_out) != t.c_out_max):
            raise ValueError(f"the lattice of {t.key} does not end at its full width")
        for row in d.get("entries", []):
            ci, co, n, mn, p25, med, cv = row
            vals = [float(mn), float(p25), float(med)]
            # n = 0: predicted, not measured (a transferred table's lattice, see transfer.py)
            if not all(math.isfinite(v) and v > 0 for v in vals) or int(n) < 0:
                raise ValueError(f"entry ({ci}, {co}) of {t.key} has invalid statistics {row}")
            t.entries[(int(ci), int(co))] = Stats(int(n), *vals, float(cv))
        return t


@dataclass
class LatencyTable:
    """All signatures of one model on one runtime/device/precision/batch."""

    identity: dict
    signatures: dict[str, SignatureTable] = field(default_factory=dict)
    layers: list[dict] = field(default_factory=list)
    model_stats: Stats | None = None  # the whole original model, measured with the protocol
    complete: bool = False
    extra: dict = field(default_factory=dict)  # validation results, provenance notes

    # ---- lookup (the LatencyModel protocol used by the pruner) -----------------------------
    def signature_for(self, spec: LayerSpec) -> SignatureTable:
        sig = self.signatures.get(spec.signature.key)
        if sig is None:
            shape = ",".join(map(str, self.identity.get("input_shape", []))) or "?"
            raise HalpError(
                f"layer {spec.name} ({spec.signature.key}) is not in the latency table (measured "
                f"for {self.identity.get('model', '?')} at input shape {shape}). Measure a table "
                "for your model and input shape with: halp-trt build-table MODEL --input-shape "
                "N,C,H,W --out NEW_TABLE.json")
        return sig

    def layer_ms(self, spec: LayerSpec, c_in: int, c_out: int) -> float:
        return self.signature_for(spec).lookup(c_in, c_out)

    def step_size(self, spec: LayerSpec) -> tuple[int, int]:
        sig = self.signature_for(spec)
        return sig.step_in.step, sig.step_out.step

    def layers_sum_ms(self, specs: Iterable[LayerSpec], widths: dict[str, tuple[int, int]] | None
                      = None) -> float:
        """Σ of per-layer predictions; ``widths`` maps layer name -> (c_in, c_out)."""
        total = 0.0
        for s in specs:
            ci, co = (widths or {}).get(s.name, (s.in_channels, s.out_channels))
            total += self.layer_ms(s, ci, co)
        return total

    def layer_predictions(self, specs: Iterable[LayerSpec], model) -> dict[str, float]:
        """Per-layer predictions at the widths a (pruned) torch model actually has."""
        mods = dict(model.named_modules())
        out = {}
        for s in specs:
            m = mods[s.name]
            if s.signature.is_attention:  # embedding width fixed, heads as pruned
                ci, co = s.in_channels, int(m.num_heads)
            elif s.signature.op == "linear":
                ci, co = m.in_features // s.signature.in_scale, m.out_features
            else:
                ci, co = m.in_channels, m.out_channels
            out[s.name] = self.layer_ms(s, ci, co)
        return out

    @property
    def model_measured_ms(self) -> float | None:
        return None if self.model_stats is None else self.model_stats.estimate(self.estimator)

    @property
    def estimator(self) -> str:
        return self.identity.get("protocol", {}).get("estimator", "min")

    # ---- identity --------------------------------------------------------------------------
    def check_compatible(self, expected: dict, allow_mismatch: bool = False):
        """Compare this table's identity with ``expected`` on the keys that make latencies
        comparable. Raises HalpError on a recorded difference unless ``allow_mismatch``; keys
        the table does not record come back as ``unknown`` for a probe to settle."""
        cmp = compare_identity(self.identity, expected, COMPATIBLE_KEYS)
        if cmp.differs and not allow_mismatch:
            raise HalpError("the latency table was measured on a different setup (" +
                            "; ".join(cmp.differs) + "). Build a table for this setup with "
                            "halp-trt build-table, or pass --allow-table-mismatch to use it "
                            "anyway.")
        return cmp

    # ---- persistence -----------------------------------------------------------------------
    def to_json(self) -> dict:
        return {"format": FORMAT, "version": VERSION, "complete": self.complete,
                "identity": self.identity, "layers": self.layers,
                "model": None if self.model_stats is None else self.model_stats.to_json(),
                "signatures": {k: s.to_json() for k, s in sorted(self.signatures.items())},
                "extra": self.extra}

    def save(self, path: str) -> None:
        """Atomic write: a crash mid-write leaves the previous file intact."""
        write_json_atomic(path, self.to_json())

    @classmethod
    def from_json(cls, d: dict) -> "LatencyTable":
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise ValueError(f"not a halp-trt latency table (expected format {FORMAT!r})")
        if d.get("version") != VERSION:
            raise ValueError(f"table format version {d.get('version')!r} is not supported by "
                             f"this halp-trt (reads version {VERSION}); rebuild the table")
        ident = d["identity"]
        if not isinstance(ident, dict):
            raise ValueError("identity must be an object")
        est = ident.get("protocol", {}).get("estimator", "min")
        if est not in ("min", "p25", "median"):
            raise ValueError(f"unknown estimator {est!r} in the identity's protocol")
        sigs = {k: SignatureTable.from_json(v, est) for k, v in d["signatures"].items()}
        m = d.get("model")
        stats = None
        if m:
            stats = Stats(int(m["n"]), float(m["min_ms"]), float(m["p25_ms"]),
                          float(m["median_ms"]), float(m["cv"]))
            if not all(math.isfinite(x) and x > 0 for x in
                       (stats.min_ms, stats.p25_ms, stats.median_ms)):
                raise ValueError("whole-model statistics are not positive finite numbers")
        layers = list(d.get("layers", []))
        for layer in layers:
            sig = sigs.get(layer.get("signature")) if isinstance(layer, dict) else None
            if sig is None:
                raise ValueError(f"layer {str(layer)[:80]} names no signature of the table")
            ci, co = layer["in_channels"], layer["out_channels"]
            if not (isinstance(layer["name"], str) and _is_int(ci) and _is_int(co)
                    and 1 <= ci <= sig.c_in_max and 1 <= co <= sig.c_out_max
                    and all(g is None or _is_int(g) for g in (layer["in_group"],
                                                              layer["out_group"]))):
                raise ValueError(f"layer {layer['name']!r} has invalid channel counts or groups")
        return cls(identity=ident, signatures=sigs, layers=layers,
                   model_stats=stats, complete=bool(d.get("complete", False)),
                   extra=dict(d.get("extra", {})))

    @classmethod
    def load(cls, path: str, require_complete: bool = True) -> "LatencyTable":
        """Load and validate; any problem is one HalpError naming the file."""
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except FileNotFoundError:
            raise HalpError(f"latency table {path} does not exist; build one with "
                            "halp-trt build-table") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise HalpError(f"cannot read latency table {path}: {exc}") from None
        if not text.strip():
            raise HalpError(f"latency table {path} is empty; rebuild it with halp-trt "
                            "build-table")
        try:
            table = cls.from_json(json.loads(text))
        except json.JSONDecodeError as exc:
            raise HalpError(f"latency table {path} is not valid JSON ({exc}); it may be "
                            "truncated — rebuild it with halp-trt build-table") from None
        except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as exc:
            what = f"missing field {exc}" if isinstance(exc, KeyError) else str(exc)
            raise HalpError(f"latency table {path} is malformed: {what}") from None
        if require_complete and not table.complete:
            raise HalpError(f"latency table {path} is incomplete (its build was interrupted); "
                            "rerun the same halp-trt build-table command to finish it")
        return table


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
