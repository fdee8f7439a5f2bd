"""Finding the latency table to prune with: an explicit path (checked against this runtime,
machine and model), or ``auto`` — a shipped profile or a cached table whose identity matches
and whose probe on this machine agrees, else a new one measured into the cache."""
from __future__ import annotations

import glob
import hashlib
import json
import os
import re
from dataclasses import dataclass
from typing import Callable, Sequence

from halp_trt.errors import ConfigError, HalpError
from halp_trt.fileio import cache_root
from halp_trt.graph.layers import LayerSpec
from halp_trt.latency.identity import AUTO_MATCH_KEYS, MACHINE_KEYS, compare_identity
from halp_trt.latency.probe import ProbeResult, probe_table


def profile_dirs() -> list[str]:
    """Where ``auto`` looks: the shipped ``profiles/`` and the user's table cache
    (``$HALP_TRT_CACHE/tables``, default ``~/.cache/halp-trt/tables``)."""
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return [os.path.join(os.path.dirname(package), "profiles"),
            os.path.join(cache_root(), "tables")]


def table_fits(table, specs: Sequence[LayerSpec], expected_identity: dict) -> bool:
    """Whether ``auto`` may consider ``table`` before probing it: no recorded difference on the
    auto-match keys (unknown keys are left to the probe) and every layer's signature answered."""
    if compare_identity(table.identity, expected_identity, AUTO_MATCH_KEYS).differs:
        return False
    try:
        table.layers_sum_ms(specs)
    except (HalpError, ValueError):
        return False
    return True


@dataclass
class ResolvedTable:
    """The table a run prunes with, and why it was chosen (the report shows both)."""

    table: object
    path: str
    reason: str
    probe: ProbeResult | None = None


def uncovered_layers(table, specs: Sequence[LayerSpec]) -> list[tuple[str, str]]:
    """(layer name, why) for each layer whose signature the table lacks or whose widths exceed
    the table's range."""
    out = []
    for s in specs:
        sig = table.signatures.get(s.signature.key)
        if sig is None:
            out.append((s.name, f"{s.name} ({s.signature.key}) is not in it"))
        elif s.in_channels > sig.c_in_max or s.out_channels > sig.c_out_max:
            out.append((s.name, f"{s.name} ({s.signature.key}) is {s.in_channels}->"
                        f"{s.out_channels} channels, the table covers up to "
                        f"{sig.c_in_max}->{sig.c_out_max}"))
    return out


def check_table_covers(table, specs: Sequence[LayerSpec], table_path: str, model_name: str,
                       input_shape) -> None:
    """Every layer's signature must be in the table, at widths within its range."""
    bad = [why for _, why in uncovered_layers(table, specs)]
    if bad:
        more = f" (and {len(bad) - 1} more layer(s))" if len(bad) > 1 else ""
        raise ConfigError("table", f"the latency table {table_path} does not fit this model: "
                          f"layer {bad[0]}{more}. Measure a table for it with: halp-trt "
                          f"build-table {model_name} --input-shape "
                          f"{','.join(map(str, input_shape))} --out NEW_TABLE.json")


def cache_name(model_name: str, input_shape, identity: dict) -> str:
    """File name of an auto-built table: model, input, backend, precision and a short tag of
    the machine fields, so hosts sharing a cache folder do not resume each other's tables."""
    machine = hashlib.sha1(json.dumps([identity.get(k) for k in MACHINE_KEYS],
                                      default=str).encode()).hexdigest()[:8]
    return re.sub(r"[^A-Za-z0-9_.-]", "_", f"{model_name}_{'x'.join(map(str, input_shape))}_"
                  f"{identity['backend']}_{identity.get('precision')}_{machine}.json")


def _rebuild_hint(model_name: str, input_shape) -> str:
    return (f"halp-trt build-table {model_name} --input-shape "
            f"{','.join(map(str, input_shape))} --out NEW_TABLE.json")


def resolve_table(table_spec: str, model, model_name: str, input_shape, specs, backend,
                  allow_mismatch: bool = False, progress: bool = True,
                  log: Callable[[str], None] = print, probe: bool = True,
                  transfer: bool = True) -> ResolvedTable:
    """The table to prune with. ``table_spec`` is a path or ``auto``.

    Every table not measured in this call is probed on this machine first
    (``halp_trt.latency.probe``): an explicit table that does not fit is refused (or used with a
    loud warning under ``allow_mismatch``); ``auto`` skips it and, when no table fits, makes a
    new one in the cache — transferred from another machine's table of the same model, input
    and runtime when there is one and ``transfer`` (``halp_trt.latency.transfer``: a fraction of
    the measurements), else measured in full."""
    from halp_trt.latency.build import BuildConfig, build_table
    from halp_trt.latency.transfer import TransferConfig, transfer_table

    expected = {**backend.identity(), "batch": int(input_shape[0]), "model": model_name,
                "input_shape": list(input_shape)}
    if table_spec != "auto":
        return _explicit_table(table_spec, expected, specs, model_name, input_shape, backend,
                               allow_mismatch, log, probe)
    found, skipped, priors = _search_profiles(specs, expected, model_name, input_shape, backend,
                                              log, probe)
    if found is not None:
        return found
    path = os.path.join(profile_dirs()[1], cache_name(model_name, input_shape, expected))
    if os.path.exists(path):  # measured elsewhere under the same name and refused: set aside
        os.replace(path, path + ".rejected")
    why_none = (f" ({'; '.join(skipped)})" if skipped else
                " (none matches its identity and layers)")
    prior = _closest_prior(priors, expected) if transfer else None
    if prior is not None:
        log(f"no latency table fits this machine; transferring {prior[0]} (another machine's "
            f"table of {model_name}) into {path}")
        table = transfer_table(prior[1], model, input_shape, backend, path, model_name,
                               TransferConfig(progress=progress))
        return ResolvedTable(table, path, f"auto: transferred here from {prior[0]} (step sweeps "
                             "and anchors measured on this machine), no shipped or cached table "
                             "fits this machine" + why_none, None)
    log(f"no latency table fits this machine; measuring one into {path} (resumable)")
    table = build_table(model, input_shape, backend, path, model_name,
                        BuildConfig(progress=progress))
    return ResolvedTable(table, path, "auto: measured here, no shipped or cached table fits "
                         "this machine" + why_none, None)


def _explicit_table(table_spec: str, expected: dict, specs, model_name: str, input_shape,
                    backend, allow_mismatch: bool, log, probe: bool) -> ResolvedTable:
    """A table given by path: it must cover the model and (probed) fit this machine."""
    from halp_trt.latency.table import LatencyTable

    table = LatencyTable.load(table_spec)
    cmp = table.check_compatible(expected, allow_mismatch)
    check_table_covers(table, specs, table_spec, model_name, input_shape)
    notes = [f"identity: {line}" for line in cmp.lines()]
    result = probe_table(table, backend) if probe else None
    if result is not None and not result.fits:
        if not allow_mismatch:
            raise ConfigError("table", f"the latency table {table_spec} does not describe "
                              f"this machine: {'; '.join(result.reasons)} ({result.summary()}"
                              f"). Measure a table here with: "
                              f"{_rebuild_hint(model_name, input_shape)}, or pass "
                              "--allow-table-mismatch to prune with it anyway")
        log(f"WARNING: using {table_spec} although it does not describe this machine "
            f"(--allow-table-mismatch): {'; '.join(result.reasons)}")
    for line in notes:
        log(f"{table_spec}: {line}")
    if result is not None:
        log(f"{table_spec}: {result.summary()}")
    why = "given with --table" + (f"; {result.summary()}" if result else "; not probed") + (
        f"; identity: {', '.join(cmp.lines())}" if cmp.lines() else "")
    return ResolvedTable(table, table_spec, why, result)


def _search_profiles(specs, expected: dict, model_name: str, input_shape, backend, log,
                     probe: bool) -> tuple[ResolvedTable | None, list[str], list]:
    """The first shipped or cached table that fits this model and machine (None if none), why
    each near miss was skipped, and the complete tables of this model and input from other
    machines (transfer candidates)."""
    from halp_trt.latency.table import LatencyTable
    from halp_trt.latency.transfer import SAME_GRAPH_KEYS

    skipped = []
    priors = []  # (path, table) of this model and input on this runtime, from another machine
    for d in profile_dirs():
        for path in sorted(glob.glob(os.path.join(d, "*.json"))):
            try:
                table = LatencyTable.load(path)
            except HalpError:
                continue
            if not table_fits(table, specs, expected):
                # a table of this very model and input that another setup measured: say why
                # it is not used (tables of other models are not candidates at all)
                ident = table.identity
                if ident.get("model") == model_name and \
                        list(ident.get("input_shape") or []) == list(input_shape):
                    diffs = compare_identity(ident, expected, AUTO_MATCH_KEYS).differs
                    graph = compare_identity(ident, expected, SAME_GRAPH_KEYS)
                    if not graph.differs and not graph.unknown and table.complete:
                        priors.append((path, table))
                    if diffs:
                        skipped.append(f"{os.path.basename(path)}: {'; '.join(diffs)}")
                        log(f"not using {path}: measured on another setup "
                            f"({'; '.join(diffs)})")
                continue
            cmp = compare_identity(table.identity, expected, AUTO_MATCH_KEYS)
            result = probe_table(table, backend) if probe else None
            if result is not None and not result.fits:
                skipped.append(f"{path}: {'; '.join(result.reasons)}")
                log(f"not using {path}: {result.summary()}")
                priors.append((path, table))
                continue
            log(f"using latency table {path}" + (f" ({result.summary()})" if result else ""))
            why = "auto: identity matches" + (
                f" except keys it does not record ({', '.join(u.split(':')[0] for u in cmp.unknown)})"
                if cmp.unknown else "") + (f"; {result.summary()}" if result else "")
            return ResolvedTable(table, path, why, result), skipped, priors
    return None, skipped, priors


def _closest_prior(priors, expected: dict):
    """The prior to transfer from: one measured with this machine's kernel ISA if any (its
    steps are likelier to be ours), else the newest."""
    if not priors:
        return None
    return max(priors, key=lambda pt: (pt[1].identity.get("isa") == expected.get("isa"),
                                       str(pt[1].identity.get("created", ""))))


@dataclass
class TableCheck:
    """``halp-trt check-table``: does a table fit this machine (and a model)?"""

    path: str
    identity: list[str]  # one line per difference, unknown key or note
    identity_differs: bool
    probe: ProbeResult | None
    uncovered: list[str]  # the model's layers the table cannot answer
    layers: int = 0

    @property
    def fits(self) -> bool:
        return not self.identity_differs and (self.probe is None or self.probe.fits) \
            and not self.uncovered

    def lines(self) -> list[str]:
        out = [f"table: {self.path}"]
        out += [f"identity: {line}" for line in self.identity] or ["identity: matches"]
        if self.probe is not None:
            out.append(self.probe.summary())
            out += [f"  - {r}" for r in self.probe.reasons]
            out += [f"  - warning: {w}" for w in self.probe.warnings]
        if self.layers:
            out.append(f"coverage: {self.layers - len(self.uncovered)} of {self.layers} layers"
                       + (f"; missing: {', '.join(self.uncovered[:5])}" +
                          (" ..." if len(self.uncovered) > 5 else "") if self.uncovered else ""))
        out.append("verdict: fits this machine" if self.fits else "verdict: does NOT fit")
        return out


def check_table(path: str, backend, specs: Sequence[LayerSpec] | None = None,
                input_shape=None, probe: bool = True) -> TableCheck:
    """Identity differences, a probe on this machine, and (given a model's layers) coverage."""
    from halp_trt.latency.table import LatencyTable

    table = LatencyTable.load(path)
    expected = dict(backend.identity())
    if input_shape is not None:
        expected["batch"] = int(input_shape[0])
    cmp = table.check_compatible(expected, allow_mismatch=True)
    uncovered = [name for name, _ in uncovered_layers(table, specs or ())]
    return TableCheck(path, cmp.lines(), bool(cmp.differs),
                      probe_table(table, backend) if probe else None, uncovered,
                      len(specs or ()))
