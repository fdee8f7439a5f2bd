"""Finding the latency table to prune with: an explicit path (checked against this runtime and
model), or ``auto`` — a shipped profile or a cached table whose identity matches, else a new
one measured into the cache."""
from __future__ import annotations

import glob
import os
import re
from typing import Callable, Sequence

from halp_trt.errors import ConfigError, HalpError
from halp_trt.graph.layers import LayerSpec
from halp_trt.latency.identity import AUTO_MATCH_KEYS, differences


def profile_dirs() -> list[str]:
    """Where ``auto`` looks: the shipped ``profiles/`` and the user's table cache
    (``$HALP_TRT_CACHE/tables``, default ``~/.cache/halp-trt/tables``)."""
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    cache = os.environ.get("HALP_TRT_CACHE", os.path.join(os.path.expanduser("~"), ".cache",
                                                           "halp-trt"))
    return [os.path.join(os.path.dirname(package), "profiles"), os.path.join(cache, "tables")]


def table_fits(table, specs: Sequence[LayerSpec], expected_identity: dict) -> bool:
    """Whether ``auto`` may use ``table``: identity matches on every auto-match key and every
    layer's signature is answered."""
    if differences(table.identity, expected_identity, AUTO_MATCH_KEYS):
        return False
    try:
        table.layers_sum_ms(specs)
    except (HalpError, ValueError):
        return False
    return True


def check_table_covers(table, specs: Sequence[LayerSpec], table_path: str, model_name: str,
                       input_shape) -> None:
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
        raise ConfigError("table", f"the latency table {table_path} does not fit this model: "
                          f"layer {bad[0]}{more}. Measure a table for it with: halp-trt "
                          f"build-table {model_name} --input-shape "
                          f"{','.join(map(str, input_shape))} --out NEW_TABLE.json")


def resolve_table(table_spec: str, model, model_name: str, input_shape, specs, backend,
                  allow_mismatch: bool = False, progress: bool = True,
                  log: Callable[[str], None] = print) -> tuple[object, str]:
    """(table, path). ``table_spec`` is a path or ``auto``."""
    from halp_trt.latency.build import BuildConfig, build_table
    from halp_trt.latency.table import LatencyTable

    expected = {**backend.identity(), "batch": int(input_shape[0]), "model": model_name,
                "input_shape": list(input_shape)}
    if table_spec != "auto":
        table = LatencyTable.load(table_spec)
        table.check_compatible(expected, allow_mismatch)
        check_table_covers(table, specs, table_spec, model_name, input_shape)
        return table, table_spec
    for d in profile_dirs():
        for path in sorted(glob.glob(os.path.join(d, "*.json"))):
            try:
                table = LatencyTable.load(path)
            except HalpError:
                continue
            if table_fits(table, specs, expected):
                log(f"using latency table {path}")
                return table, path
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", f"{model_name}_{'x'.join(map(str, input_shape))}"
                  f"_{expected['backend']}_{expected.get('precision')}.json")
    path = os.path.join(profile_dirs()[1], name)
    log(f"no matching latency table; measuring one into {path} (resumable)")
    table = build_table(model, input_shape, backend, path, model_name,
                        BuildConfig(progress=progress))
    return table, path
