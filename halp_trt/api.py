"""``halp_trt.prune``: one-shot latency-constrained pruning in one call.

    pruned, result = halp_trt.prune(model, example_input, target=0.5,
                                    table="resnet18.json", data=train_loader)

The verb beside the training-loop API (``HALPPruner``): importance from a few batches of
``data`` (Taylor; weight magnitude without data), one knapsack solve at the target, channels
removed physically. Fine-tune the returned model as usual; progressive pruning during
training, measured feedback and deployment are ``HALPPruner`` and ``prune_and_deploy``.
"""
from __future__ import annotations

from typing import Callable, Iterable, Sequence

import torch
import torch.nn as nn

from halp_trt.errors import ConfigError, HalpError
from halp_trt.pruning.config import HALPConfig
from halp_trt.pruning.importance import make_importance
from halp_trt.pruning.pruner import HALPPruner
from halp_trt.pruning.result import PruningResult
from halp_trt.train import classification_loss


def _latency_model(table):
    if isinstance(table, str):
        from halp_trt.latency.table import LatencyTable

        return LatencyTable.load(table)
    if not (callable(getattr(table, "layer_ms", None)) and
            callable(getattr(table, "step_size", None))):
        raise ConfigError("table", "{field} must be a latency table path, a LatencyTable, or an "
                          "object with layer_ms() and step_size()")
    return table


def prune(model: nn.Module, example_input: torch.Tensor, target, table, data: Iterable | None
          = None, *, loss_fn: Callable = classification_loss, batches: int = 8,
          importance: str | Callable = "taylor_per_layer", contribution: str = "two_sided",
          exclude: Sequence[str] = ()) -> tuple[nn.Module, PruningResult]:
    """Prune ``model`` in place to ``target`` and return it with its ``PruningResult``.

    ``target``: a fraction of the table's predicted latency of the full model (0.5, "50%") or
    milliseconds ("12ms"). ``table``: a path, a ``LatencyTable`` or any latency model.
    ``data``: (input, label) batches for Taylor importance (``batches`` of them are used);
    without it importance is the weight magnitude. The parameters are new tensors afterwards:
    build the optimizer after this call.
    """
    if not isinstance(model, nn.Module):
        raise ConfigError("model", "{field} must be a torch.nn.Module")
    if not isinstance(batches, int) or batches < 1:
        raise ConfigError("batches", "{field} must be a positive integer")
    if data is None and isinstance(importance, str) and make_importance(importance).needs_grad:
        importance = "magnitude"  # a gradient rule (Taylor) needs data
    config = HALPConfig(target=target, steps=1, interval=1, importance=importance,
                        contribution=contribution, exclude=tuple(exclude))
    pruner = HALPPruner(model, example_input, _latency_model(table), config)
    if data is not None:
        was_training = model.training
        model.train()
        seen = 0
        for x, y in data:
            model.zero_grad(set_to_none=True)
            loss = loss_fn(model(x), y)
            if not torch.isfinite(loss):
                raise HalpError("the loss is NaN/inf on the importance batches: the model or "
                                "the data is broken; check them before pruning")
            loss.backward()
            pruner.accumulate()
            seen += 1
            if seen >= batches:
                break
        model.zero_grad(set_to_none=True)
        model.train(was_training)
        if seen == 0:
            raise ConfigError("data", "{field} yielded no batches")
    pruner.prune_step()
    result = pruner.result()
    return pruner.finalize(), result
