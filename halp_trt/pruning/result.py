"""The outcome of a pruning run as a small JSON file, and re-applying it to a fresh model.

The file names the channels each coupled group keeps (keyed by the group's root module), so the
pruned architecture can be rebuilt from the original model definition and a weights-only state
dict loaded into it — no pickled modules, nothing that runs code on load:

    pruned = apply_result(make_model(), example_input, PruningResult.load("prune.json"))
    pruned.load_state_dict(torch.load("pruned_weights.pt", weights_only=True))
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from halp_trt.errors import HalpError

if TYPE_CHECKING:  # reading and writing results needs no torch; only apply_result does
    import torch
    import torch.nn as nn

FORMAT = "halp-trt-pruning-result"
VERSION = 1


@dataclass
class PruningResult:
    kept: dict[str, list[int]]  # group root module -> kept channel indices (ascending)
    original_widths: dict[str, int]  # group root module -> channels before pruning
    table_identity: dict = field(default_factory=dict)
    config: dict = field(default_factory=dict)
    input_shape: list[int] | None = None  # the example input the groups were traced with
    full_predicted_ms: float | None = None
    predicted_ms: float | None = None
    history: list[dict] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"format": FORMAT, "version": VERSION,
                "kept": {k: [int(i) for i in v] for k, v in self.kept.items()},
                "original_widths": {k: int(v) for k, v in self.original_widths.items()},
                "table_identity": self.table_identity, "config": self.config,
                "input_shape": self.input_shape,
                "full_predicted_ms": self.full_predicted_ms, "predicted_ms": self.predicted_ms,
                "history": self.history}

    @classmethod
    def from_json(cls, d, source: str = "pruning result") -> "PruningResult":
        def bad(why: str) -> HalpError:
            return HalpError(f"{source} is not a valid halp-trt pruning result: {why}")

        if not isinstance(d, dict):
            raise bad("the top level must be a JSON object")
        if d.get("format") != FORMAT:
            raise bad(f"format is {d.get('format')!r}, expected {FORMAT!r}")
        if d.get("version") != VERSION:
            raise bad(f"version {d.get('version')!r} is not supported (this halp-trt reads "
                      f"version {VERSION})")
        kept, widths = d.get("kept"), d.get("original_widths")
        if not isinstance(kept, dict) or not isinstance(widths, dict):
            raise bad("'kept' and 'original_widths' must be objects keyed by module name")
        if set(kept) != set(widths):
            raise bad("'kept' and 'original_widths' name different groups")
        for name, n in widths.items():
            if not isinstance(n, int) or isinstance(n, bool) or n < 1:
                raise bad(f"original width of {name} must be a positive integer, got {n!r}")
            idxs = kept[name]
            if not isinstance(idxs, list) or not all(
                    isinstance(i, int) and not isinstance(i, bool) for i in idxs):
                raise bad(f"kept channels of {name} must be a list of integers")
            if not idxs:
                raise bad(f"group {name} keeps no channels")
            if idxs != sorted(set(idxs)) or idxs[0] < 0 or idxs[-1] >= n:
                raise bad(f"kept channels of {name} must be ascending, unique and in [0, {n})")
        for key in ("table_identity", "config"):
            if not isinstance(d.get(key, {}), dict):
                raise bad(f"'{key}' must be an object")
        for key in ("full_predicted_ms", "predicted_ms"):
            v = d.get(key)
            if v is not None and not (isinstance(v, (int, float)) and math.isfinite(v)):
                raise bad(f"'{key}' must be a number or null")
        shape = d.get("input_shape")
        if shape is not None and not (isinstance(shape, list) and shape and all(
                isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in shape)):
            raise bad("'input_shape' must be a list of positive integers or null")
        history = d.get("history", [])
        if not isinstance(history, list):
            raise bad("'history' must be a list")
        return cls(kept={k: list(v) for k, v in kept.items()}, original_widths=dict(widths),
                   table_identity=d.get("table_identity", {}), config=d.get("config", {}),
                   input_shape=shape,
                   full_predicted_ms=d.get("full_predicted_ms"),
                   predicted_ms=d.get("predicted_ms"), history=history)

    def save(self, path: str) -> None:
        """Write atomically: a crash never leaves a half-written file under ``path``."""
        from halp_trt.fileio import write_json_atomic

        write_json_atomic(path, self.to_json())

    @classmethod
    def load(cls, path: str) -> "PruningResult":
        try:
            with open(path) as f:
                d = json.load(f)
        except FileNotFoundError:
            raise HalpError(f"pruning result {path} does not exist") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise HalpError(f"pruning result {path} is not valid JSON ({e})") from None
        return cls.from_json(d, source=str(path))


def apply_result(model: nn.Module, example_input: torch.Tensor,
                 result: PruningResult) -> nn.Module:
    """Prune ``model`` (a fresh instance of the original architecture) to ``result``'s widths, in
    place, and return it; then load the pruned weights with ``load_state_dict``."""
    from halp_trt.graph.groups import find_channel_groups
    from halp_trt.pruning.surgery import remove_channels

    exclude = [n for n in result.config.get("exclude", []) if isinstance(n, str)]
    modules = dict(model.named_modules())
    exclude = [n for n in exclude if n in modules]
    groups, graph = find_channel_groups(model, example_input, exclude)
    by_root = {g.root: g for g in groups}
    drop = {}
    for root, idxs in result.kept.items():
        g = by_root.get(root)
        if g is None:
            raise HalpError(f"the model has no prunable channel group rooted at {root!r}: it is "
                            "not the architecture this result was made for")
        if g.size != result.original_widths[root]:
            raise HalpError(f"group {root} has {g.size} channels in this model but "
                            f"{result.original_widths[root]} in the result: not the architecture "
                            "this result was made for")
        keep = set(idxs)
        drop[g.id] = [i for i in range(g.size) if i not in keep]
    return remove_channels(model, graph, groups, drop)
