"""A pruning step's widths: the knapsack, repaired until the table's prediction meets the
target, on a real traced model and a synthetic staircase latency model."""
import pytest
import torch

from fakes import StaircaseLatencyModel
from halp_trt.pruning.config import HALPConfig
from halp_trt.pruning.pruner import HALPPruner
from halp_trt.pruning.selection import select_widths
from tiny_models import TinyResNet


def _problem(seed=0):
    torch.manual_seed(seed)
    x = torch.randn(1, 3, 16, 16)
    pr = HALPPruner(TinyResNet(width=32), x, StaircaseLatencyModel(step=4),
                    HALPConfig(target=1 - 1e-9, steps=1, interval=1))
    scores = [torch.rand(g.size) for g in pr.prunable]
    _, items = pr.options.knapsack_items(pr.prunable, pr.keep, scores)
    return pr, items


def _select(pr, items, target_ms, rules=("two_sided", "one_sided")):
    return select_widths(items, list(rules), target_ms, pr.widths, pr.layers,
                         pr.groups, pr.latency_model, pr.predict_ms, 1e-3)


@pytest.mark.parametrize("fraction", [0.8, 0.5, 0.3])
def test_the_chosen_widths_are_predicted_within_the_target(fraction):
    pr, items = _problem()
    target = fraction * pr.full_ms
    sel = _select(pr, items, target)
    assert sel.widths is not None and sel.rule in ("two_sided", "one_sided")
    assert sel.predicted_ms == pytest.approx(pr.predict_ms(sel.widths)) and \
        sel.predicted_ms <= target
    for g, counts, _ in items:  # every width is one of the group's options
        assert sel.widths[g.id] in counts.tolist()
    # more budget never keeps less importance
    looser = _select(pr, items, min(pr.full_ms, 1.2 * target))
    assert looser.solution.objective >= sel.solution.objective - 1e-9


def test_a_target_under_every_option_gives_no_widths():
    pr, items = _problem()
    sel = _select(pr, items, 0.5 * pr.min_ms)
    assert sel.widths is None and sel.solution is None
