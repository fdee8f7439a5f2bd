"""One forward pass of a model in eval mode with hooks attached, for reading shapes."""
from __future__ import annotations

from typing import Sequence

import torch


def forward_with_hooks(model: torch.nn.Module, example_input: torch.Tensor,
                       handles: Sequence) -> None:
    """Run ``model`` once on ``example_input`` (eval mode, no gradients; its training mode is
    restored), then remove the hook ``handles``."""
    try:
        was_training = model.training
        model.eval()
        with torch.no_grad():
            model(example_input)
        model.train(was_training)
    finally:
        for h in handles:
            h.remove()
