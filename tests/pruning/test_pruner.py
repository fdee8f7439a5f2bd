import copy
import math

import numpy as np
import pytest
import torch
import torch.nn as nn
import torchvision

from fakes import StaircaseLatencyModel, randomise_bn
from tiny_models import tiny_resnet
from halp_trt.pruning.contributions import predict_model_ms
from halp_trt.errors import HalpError
from halp_trt.graph.groups import find_channel_groups
from halp_trt.graph.layers import list_layers
from halp_trt.pruning.pruner import HALPConfig, HALPPruner
from halp_trt.pruning.schedule import schedule_targets_ms

_CONV_LINEAR = (nn.Conv2d, nn.Linear)


class Tiny(nn.Module):
    """Residual block, depthwise conv and a classifier: every kind of coupling in a few ms."""

    def __init__(self, width=24):
        super().__init__()
        self.stem = nn.Conv2d(3, width, 3, padding=1, bias=False)
        self.bn0 = nn.BatchNorm2d(width)
        self.conv1 = nn.Conv2d(width, 2 * width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(2 * width)
        self.conv2 = nn.Conv2d(2 * width, width, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.dw = nn.Conv2d(width, width, 3, padding=1, groups=width, bias=False)
        self.bn3 = nn.BatchNorm2d(width)
        self.pw = nn.Conv2d(width, 40, 1, stride=2)
        self.bn4 = nn.BatchNorm2d(40)
        self.fc = nn.Linear(40, 10)

    def forward(self, x):
        x = torch.relu(self.bn0(self.stem(x)))
        x = torch.relu(x + self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x))))))
        x = torch.relu(self.bn3(self.dw(x)))
        x = torch.relu(self.bn4(self.pw(x)))
        return self.fc(x.mean((2, 3)))


def _batch(seed, hw=16, n=4):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, hw, hw, generator=g), torch.randint(0, 10, (n,), generator=g)


def _masked_entries_are_zero(pruner) -> list[str]:
    """Independent check of the masking contract; returns what is not zero."""
    bad = []
    modules = dict(pruner.model.named_modules())
    for g in pruner.prunable:
        keep = pruner.keep[g.id]
        for m in g.members:
            pos = [i for i, r in zip(m.idxs, m.root_idxs) if not keep[r]]
            if not pos:
                continue
            mod = modules[m.module_name]
            if isinstance(mod, nn.BatchNorm2d):
                tensors = [mod.weight, mod.bias, mod.running_mean, mod.running_var]
                slices = [t[pos] for t in tensors]
            elif isinstance(mod, _CONV_LINEAR):
                grouped = isinstance(mod, nn.Conv2d) and mod.groups > 1
                dw = grouped and mod.groups == mod.in_channels == mod.out_channels
                if m.side == "out" or dw:
                    slices = [mod.weight[pos]] + ([mod.bias[pos]] if mod.bias is not None else [])
                elif grouped:  # input c: column c % in_pg of conv group c // in_pg's filters
                    in_pg = mod.in_channels // mod.groups
                    out_pg = mod.out_channels // mod.groups
                    slices = [mod.weight[(c // in_pg) * out_pg:(c // in_pg + 1) * out_pg,
                                         c % in_pg] for c in pos]
                else:
                    slices = [mod.weight[:, pos]]
            else:
                continue
            if any(bool(s.detach().abs().sum() != 0) for s in slices):
                bad.append(f"{m.module_name}:{m.side}")
    return bad


# --- masked model == physically pruned model, on real architectures -----------------------

ARCHS = ["resnet18", "mobilenet_v2", "mobilenet_v3_small", "efficientnet_b0", "regnet_x_400mf",
         # the slowest to trace / build (each 4-8 s here)
         "resnet50", "vgg11_bn", "densenet121"]


@pytest.mark.parametrize("name", ARCHS)
def test_masked_equals_pruned(name):
    torch.manual_seed(0)
    model = getattr(torchvision.models, name)(num_classes=10)
    randomise_bn(model)
    x = torch.randn(2, 3, 32, 32)
    pruner = HALPPruner(model, x, StaircaseLatencyModel(), HALPConfig(target=0.5))
    assert pruner.prunable
    rng = np.random.default_rng(1)
    masks = {}
    for g in pruner.prunable:
        keep = rng.random(g.size) >= 0.3  # remove a random ~30%
        keep[rng.integers(g.size)] = True
        if g.id in pruner.slices:  # grouped conv: a random ~70% of each conv group, same count
            per = len(pruner.slices[g.id][0])
            k = max(1, int(round(0.7 * per)))
            keep[:] = False
            for s in pruner.slices[g.id]:
                keep[rng.choice(s, size=k, replace=False)] = True
        masks[g.root] = torch.as_tensor(keep)
    model.eval()
    with torch.no_grad():
        before = model(x)
        pruner.set_masks(masks)
        masked = model(x)
    assert not torch.allclose(before, masked)  # the masks did change the function
    assert _masked_entries_are_zero(pruner) == []
    n_params = sum(p.numel() for p in model.parameters())
    pruned = pruner.finalize()
    with torch.no_grad():
        out = pruned(x)
    rel = ((out - masked).abs().max() / masked.abs().max()).item()
    assert rel <= 1e-5, f"{name}: masked vs pruned relative difference {rel:.2e}"
    assert sum(p.numel() for p in pruned.parameters()) < n_params
    modules = dict(pruned.named_modules())
    for g in pruner.prunable:
        root = modules[g.root]
        width = root.out_channels if isinstance(root, nn.Conv2d) else root.out_features
        assert width == int(masks[g.root].sum()), g.root


def test_a_model_torch_pruning_cannot_trace_is_refused_with_a_clear_error(monkeypatch):
    """Tracing failures inside torch-pruning (ShuffleNetV2 raised ZeroDivisionError before
    halp-trt read its saved shapes itself) become one HalpError naming the cause."""
    from halp_trt.graph import groups

    class Untraceable:
        def __init__(self, concat_sizes=None):
            pass

        def build_dependency(self, *args, **kwargs):
            raise ZeroDivisionError("integer division or modulo by zero")

    monkeypatch.setattr(groups, "_torch2_dependency_graph", Untraceable)
    with pytest.raises(HalpError, match="could not trace.*ZeroDivisionError"):
        HALPPruner(tiny_resnet(), torch.randn(1, 3, 16, 16), StaircaseLatencyModel(),
                   HALPConfig(target=0.5))


def test_grouped_convs_are_pruned_evenly_keeping_their_group_count():
    """Grouped convs were held at full width (torch-pruning 1.6.1 cuts their input weights
    wrongly); now every conv group narrows by the same count and the surgery is ours."""
    torch.manual_seed(0)
    model = torchvision.models.regnet_x_400mf(num_classes=10)
    randomise_bn(model)
    x = torch.randn(2, 3, 32, 32)
    before = {n: (m.groups, m.in_channels) for n, m in model.named_modules()
              if isinstance(m, nn.Conv2d) and 1 < m.groups < m.out_channels}
    pruner = HALPPruner(model, x[:1], StaircaseLatencyModel(),
                        HALPConfig(target=0.3, importance="magnitude"))
    assert not any("grouped" in why for why in pruner.fixed.values()), pruner.fixed
    assert pruner.slices, "groups that feed or leave a grouped conv are split by conv group"
    for gid, slices in pruner.slices.items():
        assert pruner.group_sizes[gid] % len(slices) == 0
    model.eval()
    pruner.prune_step()
    with torch.no_grad():
        masked = model(x)
    pruned = pruner.finalize()
    with torch.no_grad():
        out = pruned(x)
    assert ((out - masked).abs().max() / masked.abs().max()).item() <= 1e-5
    modules = dict(pruned.named_modules())
    for name, (groups, _) in before.items():
        conv = modules[name]
        assert conv.groups == groups
        assert conv.in_channels % groups == 0 and conv.out_channels % groups == 0
    # the knapsack prunes the cheap residual trunk first; at 0.3 grouped convs narrow too
    assert sum(modules[n].in_channels < c_in for n, (_, c_in) in before.items()) >= 1


def test_grouped_surgery_with_nothing_removed_is_the_unpruned_model():
    torch.manual_seed(0)
    model = torchvision.models.resnext50_32x4d(num_classes=10)
    randomise_bn(model)
    x = torch.randn(1, 3, 32, 32)
    model.eval()
    with torch.no_grad():
        before = model(x)
    pruner = HALPPruner(model, x, StaircaseLatencyModel(),
                        HALPConfig(target=0.5, importance="magnitude"))
    # one channel per conv group removed from one grouped group: only that changes
    g = next(g for g in pruner.prunable if g.id in pruner.slices)
    keep = torch.ones(g.size, dtype=torch.bool)
    for s in pruner.slices[g.id]:
        keep[s[0]] = False
    pruner.set_masks({g.root: keep})
    with torch.no_grad():
        masked = model(x)
    pruned = pruner.finalize()
    with torch.no_grad():
        out = pruned(x)
    torch.testing.assert_close(out, masked, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(before, masked)


# --- masks under optimizers ----------------------------------------------------------------

@pytest.mark.parametrize("make_opt,attach", [
    (lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=1e-3), False),
    (lambda p: torch.optim.Adam(p, lr=1e-2, weight_decay=1e-2), False),
    (lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=1e-2), True),
])
def test_masks_survive_optimizer_steps(make_opt, attach):
    torch.manual_seed(0)
    model = Tiny()
    x0, _ = _batch(0)
    pruner = HALPPruner(model, x0, StaircaseLatencyModel(step=4),
                        HALPConfig(target=0.6, steps=2, interval=3))
    opt = make_opt(model.parameters())
    if attach:
        pruner.attach_optimizer(opt)
    model.train()
    for it in range(12):
        x, y = _batch(it + 1)
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        if pruner.history:
            # gradients of masked entries are zeroed by hooks before the optimizer sees them
            for g in pruner.prunable:
                dropped = torch.nonzero(~pruner.keep[g.id]).flatten()
                for m in g.members:
                    if m.module_name == "bn0" or m.module_name == "bn1":
                        grad = getattr(model, m.module_name).weight.grad
                        pos = [i for i, r in zip(m.idxs, m.root_idxs) if r in set(dropped.tolist())]
                        assert bool((grad[pos] == 0).all())
        pruner.accumulate()
        opt.step()
        if attach and pruner.history:
            assert _masked_entries_are_zero(pruner) == []  # even before pruner.step()
        pruner.step()
        if pruner.history:
            assert _masked_entries_are_zero(pruner) == [], f"iteration {it}"
    assert len(pruner.history) == 2
    assert sum(int((~k).sum()) for k in pruner.keep.values()) > 0
    # after training with momentum/moments, masked and pruned still agree
    model.eval()
    with torch.no_grad():
        x, _ = _batch(99)
        masked = model(x)
        out = pruner.finalize()(x)
    assert ((out - masked).abs().max() / masked.abs().max()).item() <= 1e-5


# --- the pruning loop ----------------------------------------------------------------------

def _run(config, table=None, iters=None, seed=0):
    torch.manual_seed(seed)
    model = Tiny()
    randomise_bn(model, seed)
    x0, _ = _batch(0)
    table = table or StaircaseLatencyModel(step=4)
    pruner = HALPPruner(model, x0, table, config)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    records = []
    for it in range(iters or config.steps * config.interval):
        x, y = _batch(it + 1)
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        pruner.accumulate()
        opt.step()
        rec = pruner.step()
        if rec is not None:
            records.append((it, rec))
    return pruner, records


@pytest.mark.parametrize("rule", ["one_sided", "two_sided"])
@pytest.mark.parametrize("kind", ["exp", "linear"])
def test_pruning_steps_meet_scheduled_targets(rule, kind):
    cfg = HALPConfig(target=0.4, steps=3, interval=2, schedule=kind, contribution=rule)
    pruner, records = _run(cfg)
    assert [it for it, _ in records] == [1, 3, 5]  # every `interval` calls, `steps` times
    assert pruner.done and len(pruner.history) == 3
    want = schedule_targets_ms(pruner.full_ms, 0.4 * pruner.full_ms, 3, kind)
    assert [r.target_ms for r in pruner.history] == pytest.approx(want)
    prev = {g.root: g.size for g in pruner.prunable}
    for r in pruner.history:
        assert r.predicted_ms <= r.target_ms + 1e-9
        for g in pruner.prunable:
            k = r.kept[g.root]
            assert 4 <= k <= prev[g.root]  # at least one neuron group; monotone
            assert k % 4 == 0 or k == prev[g.root]  # whole steps, or everything still kept
            prev[g.root] = k
    assert pruner.predict_ms() == pytest.approx(pruner.history[-1].predicted_ms)
    assert pruner.predict_ms() <= 0.4 * pruner.full_ms + 1e-9
    # the table's prediction of the final widths, computed independently of the pruner
    widths = {g.id: int(pruner.keep[g.id].sum()) for g in pruner.prunable}
    assert predict_model_ms(pruner.layers, widths, pruner.latency_model, pruner.groups) \
        == pytest.approx(pruner.predict_ms())
    assert pruner.step() is None  # no more pruning after `steps`


class Bilinear:
    """T = c_in·c_out: strongly non-separable, so the two-sided linearisation is optimistic when
    neighbouring groups shrink together and the pruner has to tighten its budget."""

    identity = {"backend": "test-bilinear"}

    def layer_ms(self, spec, c_in, c_out):
        return 1e-3 * c_in * c_out * spec.signature.kernel[0] ** 2

    def step_size(self, spec):
        return 1, 1


@pytest.mark.parametrize("rule", ["one_sided", "two_sided"])
def test_target_met_on_a_non_separable_table(rule):
    cfg = HALPConfig(target=0.3, steps=1, interval=1, contribution=rule)
    pruner, _ = _run(cfg, table=Bilinear())
    rec = pruner.history[0]
    assert rec.predicted_ms <= rec.target_ms
    assert rec.predicted_ms == pytest.approx(pruner.predict_ms())
    assert rec.rule in ("one_sided", "two_sided", "min_widths")
    if rule == "two_sided":
        assert rec.repairs > 0 or rec.rule != "two_sided"  # the linearisation alone undershoots


def test_kept_channels_are_the_most_important_prefix():
    perms = {}

    def fixed_random(model, group):
        if group.root not in perms:
            perms[group.root] = torch.randperm(group.size, generator=torch.Generator()
                                               .manual_seed(group.size)).double()
        return perms[group.root]

    cfg = HALPConfig(target=0.5, steps=1, interval=1, importance=fixed_random)
    pruner, _ = _run(cfg)
    total = 0.0
    for g in pruner.prunable:
        keep = pruner.keep[g.id]
        k = int(keep.sum())
        top = torch.argsort(perms[g.root], descending=True)[:k]
        assert set(top.tolist()) == set(torch.nonzero(keep).flatten().tolist())
        total += float(perms[g.root][keep].sum())
    assert pruner.history[0].objective == pytest.approx(total)


def test_limits_min_groups_and_max_ratio():
    cfg = HALPConfig(target=0.3, steps=1, interval=1, min_groups_kept=2, max_prune_ratio=0.75)
    pruner, _ = _run(cfg)
    for g in pruner.prunable:
        k = int(pruner.keep[g.id].sum())
        assert k >= min(g.size, 8) and k >= math.ceil(0.25 * g.size)


def test_infeasible_target_states_the_minimum():
    torch.manual_seed(0)
    model = Tiny()
    x = torch.randn(1, 3, 16, 16)
    table = StaircaseLatencyModel(step=4)
    groups, _ = find_channel_groups(model, x)
    layers = list_layers(model, x, groups)
    modules = dict(model.named_modules())
    # classifier outputs are not in any group; every group here is prunable (no grouped conv)
    assert all(not (isinstance(modules[m.module_name], nn.Conv2d) and
                    1 < modules[m.module_name].groups < modules[m.module_name].out_channels)
               for g in groups for m in g.members)
    min_ms = predict_model_ms(layers, {g.id: min(4, g.size) for g in groups}, table, groups)
    with pytest.raises(HalpError) as err:
        HALPPruner(model, x, table, HALPConfig(target=f"{min_ms * 0.9:.6f}ms"))
    assert f"{min_ms:.4f} ms" in str(err.value) and "minimum" in str(err.value)
    full_ms = predict_model_ms(layers, {}, table, groups)
    with pytest.raises(HalpError, match="nothing to prune"):
        HALPPruner(model, x, table, HALPConfig(target=f"{full_ms * 1.1:.6f}ms"))
    # just above the minimum is feasible, and reached
    cfg = HALPConfig(target=f"{min_ms * 1.001:.6f}ms", steps=1, interval=1)
    pruner = HALPPruner(model, x, table, cfg)
    model(x).sum().backward()
    pruner.accumulate()
    rec = pruner.step()
    assert rec.predicted_ms <= rec.target_ms


@pytest.mark.parametrize("bad", [
    dict(target="fast"), dict(target=1.5), dict(steps=0), dict(interval=-1),
    dict(schedule="cosine"), dict(importance="random"), dict(contribution="both"),
    dict(group_size=0), dict(group_size={"conv": -2}), dict(min_groups_kept=0),
    dict(max_prune_ratio=0.0), dict(max_prune_ratio=1.5), dict(resolution_ms=0),
])
def test_config_validation(bad):
    args = dict(target=0.5)
    args.update(bad)
    with pytest.raises(HalpError):
        HALPConfig(**args)


def test_group_size_override_and_history_fields():
    cfg = HALPConfig(target=0.5, steps=1, interval=1, group_size=6)
    pruner, _ = _run(cfg)
    rec = pruner.history[0]
    for g in pruner.prunable:
        k = rec.kept[g.root]
        assert k % 6 == 0 or k == g.size
    d = rec.to_json()
    assert set(d) >= {"target_ms", "predicted_ms", "kept", "objective", "error_bound_ms"}
    assert d["error_bound_ms"] >= 0


def test_step_without_accumulate_is_an_error():
    torch.manual_seed(0)
    model = Tiny()
    pruner = HALPPruner(model, torch.randn(1, 3, 16, 16), StaircaseLatencyModel(step=4),
                        HALPConfig(target=0.5, steps=1, interval=1))
    with pytest.raises(HalpError, match="accumulate"):
        pruner.step()


def test_finalize_twice_and_step_after_finalize():
    cfg = HALPConfig(target=0.5, steps=1, interval=1)
    pruner, _ = _run(cfg)
    m1 = pruner.finalize()
    assert pruner.finalize() is m1
    with pytest.raises(HalpError):
        pruner.step()
    # new parameters carry no hooks: training the pruned model works and changes nothing masked
    opt = torch.optim.SGD(m1.parameters(), lr=0.1)
    x, y = _batch(5)
    nn.functional.cross_entropy(m1(x), y).backward()
    opt.step()
    assert copy.deepcopy(m1)(x).shape == (4, 10)


def test_all_zero_importance_keeps_the_widest_model_within_the_budget():
    """A zero-initialised classifier (torchvision's ViT) makes every Taylor score 0: the
    knapsack must still use the budget, not drop every group to its minimum width."""
    torch.manual_seed(0)
    model = Tiny()
    randomise_bn(model, 0)
    with torch.no_grad():
        model.fc.weight.zero_()
    x0, _ = _batch(0)
    pruner = HALPPruner(model, x0, StaircaseLatencyModel(step=4),
                        HALPConfig(target=0.5, steps=1, interval=1))
    x, y = _batch(1)
    nn.functional.cross_entropy(model(x), y).backward()
    pruner.accumulate()
    assert all(float(s.abs().sum()) == 0 for s in pruner.accumulator.scores())
    plan = pruner.plan(0.5 * pruner.full_ms)
    floor_ms = pruner.predict_ms(pruner.min_widths())
    assert plan.predicted_ms <= 0.5 * pruner.full_ms + 1e-9
    # within one 4-channel step of the budget, far above the floor
    assert plan.predicted_ms > 0.45 * pruner.full_ms > 2 * floor_ms


def test_mean_normalised_importance_counts_groups_by_rank_not_scale():
    """conv1's scores 1000x the other groups': raw values let it keep everything and thin the
    rest; over each group's mean, every group is worth its channel count and conv1, the most
    expensive group, is cut too."""

    def scaled(model, group):
        base = torch.linspace(1.0, 2.0, group.size, dtype=torch.float64)
        return base * (1000.0 if group.root == "conv1" else 1.0)

    kept = {}
    for how in ("none", "mean"):
        pruner, _ = _run(HALPConfig(target=0.5, steps=1, interval=1, importance=scaled,
                                    importance_normalizer=how))
        kept[how] = {g.root: int(pruner.keep[g.id].sum()) / g.size for g in pruner.prunable}
    quiet = [r for r in kept["none"] if r != "conv1"]
    assert kept["none"]["conv1"] == 1.0  # raw: the loud group is never cut
    assert kept["mean"]["conv1"] < 1.0
    assert sum(kept["mean"][r] for r in quiet) > sum(kept["none"][r] for r in quiet)
    with pytest.raises(HalpError, match="importance_normalizer"):
        HALPConfig(target=0.5, importance_normalizer="max")


def test_a_model_with_every_group_held_says_why_nothing_can_be_pruned():
    class NormedEverywhere(nn.Module):
        def __init__(self):
            super().__init__()
            self.convs = nn.ModuleList(nn.Conv2d(3 if i == 0 else 8, 8, 3, padding=1)
                                       for i in range(3))
            self.norms = nn.ModuleList(nn.GroupNorm(2, 8) for _ in range(3))
            self.fc = nn.Linear(8, 10)

        def forward(self, x):
            for conv, norm in zip(self.convs, self.norms):
                x = torch.relu(norm(conv(x)))
            return self.fc(x.mean((2, 3)))

    with pytest.raises(HalpError) as err:
        HALPPruner(NormedEverywhere(), torch.randn(1, 3, 16, 16), StaircaseLatencyModel(step=4),
                   HALPConfig(target=0.5))
    message = str(err.value)
    assert message.startswith("nothing in NormedEverywhere can be pruned")
    assert "3 like: norms." in message and "(GroupNorm) normalises across channels" in message
