"""The calibration's extra whole models: a uniform slim and the table's floor, cut from fresh
copies of the original by one sizing pruner."""
import copy

import pytest
import torch

from fakes import StaircaseLatencyModel
from halp_trt.pruning.calibration_models import floor_copy, slimmed_copy
from halp_trt.pruning.config import HALPConfig
from halp_trt.pruning.pruner import HALPPruner
from tiny_models import TinyResNet


def test_slimmed_copy_cuts_every_group_to_the_factor_in_whole_steps():
    torch.manual_seed(0)
    x = torch.randn(1, 3, 16, 16)
    model = TinyResNet(width=32)
    pr = HALPPruner(model, x, StaircaseLatencyModel(step=4), HALPConfig(target=1 - 1e-9,
                                                                       steps=1, interval=1))
    full_ms = pr.predict_ms()
    sizes = {g.root: (g.size, pr.group_sizes[g.id]) for g in pr.prunable}
    slim, layers_ms = slimmed_copy(pr, copy.deepcopy(model), x, 0.5)
    assert layers_ms < full_ms
    mods = dict(slim.named_modules())
    for root, (size, step) in sizes.items():
        kept = mods[root].out_channels
        assert kept % step == 0 or kept == size
        assert abs(kept - 0.5 * size) <= step
    assert slim(x).shape == (1, 10)


def test_floor_copy_is_the_smallest_model_the_pruner_allows():
    torch.manual_seed(0)
    x = torch.randn(1, 3, 16, 16)
    model = TinyResNet(width=32)
    pr = HALPPruner(copy.deepcopy(model), x, StaircaseLatencyModel(step=4),
                    HALPConfig(target=1 - 1e-9, steps=1, interval=1))
    widths = pr.min_widths()
    sizes = {g.root: widths[g.id] for g in pr.prunable}
    floor, layers_ms = floor_copy(pr, copy.deepcopy(model), x)
    assert layers_ms == pytest.approx(pr.min_ms)
    mods = dict(floor.named_modules())
    assert all(mods[root].out_channels == k for root, k in sizes.items())
    assert floor(x).shape == (1, 10)


def test_one_sizing_pruner_cuts_both_models_from_fresh_copies_with_the_original_weights():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 16, 16)
    model = TinyResNet(width=32).eval()
    pr = HALPPruner(copy.deepcopy(model), x, StaircaseLatencyModel(step=4),
                    HALPConfig(target=1 - 1e-9, steps=1, interval=1))
    slim, slim_ms = slimmed_copy(pr, copy.deepcopy(model), x, 0.5)
    floor, floor_ms = floor_copy(pr, copy.deepcopy(model), x)
    assert floor_ms == pytest.approx(pr.min_ms) and floor_ms < slim_ms < pr.full_ms
    # a kept channel keeps its original weights: the stem's kept filters are the original's
    kept, original = slim.stem.weight.flatten(1), model.stem.weight.flatten(1)
    assert len(kept) < len(original)
    assert all(any(torch.equal(k, o) for o in original) for k in kept)
    assert torch.isfinite(slim(x)).all() and torch.isfinite(floor(x)).all()
