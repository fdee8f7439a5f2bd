"""The resumable state of a prune-and-deploy run: one typed object, saved as a weights-only
checkpoint (tensors and plain containers; nothing that runs code on load).

Phases, in order: ``start`` → ``original`` (weights fixed, original measured) → ``pruning``
(masks, pruner and feedback state after each epoch) → ``pruned`` (channels removed) →
``finetune`` (after each fine-tuning epoch). The same command resumes from the saved phase.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, fields

import torch

from halp_trt.errors import HalpError
from halp_trt.fileio import write_atomic_with

PHASES = ("start", "original", "pruning", "pruned", "finetune")


@dataclass
class RunState:
    run: dict  # what identifies the run (model, data, input size, batch)
    phase: str = "start"
    original: dict | None = None  # the original's state dict
    original_ms: float | None = None  # the original, measured whole
    calibration: dict | None = None  # layer sums and measurements of original + slim copy
    model: dict | None = None  # masked model (pruning) or fine-tuned pruned model (finetune)
    pruner: dict | None = None  # HALPPruner.state_dict()
    feedback: dict | None = None  # LatencyFeedback.state_dict()
    pruned: dict | None = None  # the pruned model right after channel removal
    result: dict | None = None  # PruningResult.to_json()
    optimizer: dict | None = None  # the optimizer's state (momentum) of the current phase
    rng: object | None = None  # torch's RNG state at the checkpoint
    prune_epochs_done: int = 0
    finetune_epochs_done: int = 0

    def save(self, path: str) -> None:
        # shallow: asdict would rebuild the state dicts without their _metadata (versions that
        # modules such as MNASNet check when loading)
        state = {f.name: getattr(self, f.name) for f in fields(self)
                 if getattr(self, f.name) is not None}
        write_atomic_with(path, lambda f: torch.save(state, f))

    @classmethod
    def load(cls, path: str) -> "RunState":
        try:
            d = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            # torch's weights-only refusal spans many lines with terminal colour codes
            first = re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).strip().splitlines()
            reason = f"{type(exc).__name__}: {first[0][:200]}" if first else type(exc).__name__
            raise HalpError(f"cannot resume from {path} ({reason}): it is not a checkpoint "
                            "halp-trt can load safely. Delete it to start over.") from None
        known = {f.name for f in fields(cls)}
        if not isinstance(d, dict) or "run" not in d or d.get("phase") not in PHASES or \
                set(d) - known:
            raise HalpError(f"cannot resume from {path}: it is not a halp-trt checkpoint of this "
                            "version. Delete it to start over.")
        return cls(**d)

    def reached(self, phase: str) -> bool:
        """Whether the run got to ``phase`` (or past it)."""
        return PHASES.index(self.phase) >= PHASES.index(phase)
