"""The one training loop (epochs seeded so a resumed run sees the same batches) and the one
pre-training recipe, on real small models and the embedded digits data."""
import copy

import pytest
import torch
import torch.nn as nn

from halp_trt.data import load_data, make_loader
from halp_trt.train import capped, evaluate, pretrain, train_epochs


def _small_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Flatten(), nn.Linear(8 * 8 * 8, 10))


def test_a_run_resumed_after_an_epoch_sees_the_same_batches_and_ends_equal():
    data = load_data("digits", (8, 8))
    loader = make_loader(data.train, 64, True, seed=3)
    full, resumed = _small_net(), _small_net()
    opt_full = torch.optim.SGD(full.parameters(), lr=0.05)
    train_epochs(full, loader, opt_full, 2, seed=3, progress=False, max_batches=5)
    opt_res = torch.optim.SGD(resumed.parameters(), lr=0.05)
    train_epochs(resumed, loader, opt_res, 1, seed=3, progress=False, max_batches=5)
    train_epochs(resumed, loader, opt_res, 1, seed=3, first_epoch=1, progress=False,
                 max_batches=5)
    for a, b in zip(full.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(a, b)
    other = _small_net()  # another seed is another data order, hence other weights
    train_epochs(other, loader, torch.optim.SGD(other.parameters(), lr=0.05), 2, seed=4,
                 progress=False, max_batches=5)
    assert not torch.equal(other[0].weight, full[0].weight)


def test_until_stops_after_the_epoch_that_satisfies_it_and_on_epoch_counts():
    data = load_data("digits", (8, 8))
    loader = make_loader(data.train, 64, True)
    net, seen = _small_net(), []
    train_epochs(net, loader, torch.optim.SGD(net.parameters(), lr=0.05), seed=0,
                 until=lambda: len(seen) >= 2, on_epoch=seen.append, progress=False,
                 max_batches=2)
    assert seen == [1, 2]
    assert len(list(capped(loader, 3))) == 3 and len(list(capped(loader, None))) == len(loader)


def test_pretrain_learns_digits_and_leaves_settled_batchnorm_statistics():
    data = load_data("digits", (8, 8))
    net = _small_net()
    before = evaluate(copy.deepcopy(net), make_loader(data.val, 256, False))
    epochs_seen = []
    pretrain(net, make_loader(data.train, 32, True), 3, 2e-2, on_epoch=epochs_seen.append,
             progress=False)
    after = evaluate(net, make_loader(data.val, 256, False))
    assert epochs_seen == [1, 2, 3]
    assert after > max(0.5, before + 0.3), (before, after)
    bn = net[1]
    assert bn.momentum == 0.1 and int(bn.num_batches_tracked) == 20  # re-estimated: 20 batches


def test_distillation_pulls_the_student_towards_the_teacher():
    """weight 0 is the classification loss alone; a student equal to its teacher pays no soft
    term; training on the soft term alone moves a different student's outputs to the
    teacher's."""
    import torch.nn as nn

    from halp_trt.train import classification_loss, distillation_loss_fn

    torch.manual_seed(0)
    x, y = torch.randn(64, 8), torch.randint(0, 4, (64,))
    teacher, student = nn.Linear(8, 4), nn.Linear(8, 4)
    assert distillation_loss_fn(teacher, 0.0)(student, x, y).item() == pytest.approx(
        classification_loss(student(x), y).item())
    twin = nn.Linear(8, 4)
    twin.load_state_dict(teacher.state_dict())
    assert distillation_loss_fn(teacher, 0.5)(twin, x, y).item() == pytest.approx(
        0.5 * classification_loss(twin(x), y).item(), rel=1e-5)
    soft_only = distillation_loss_fn(teacher, 0.999, temperature=2.0)
    opt = torch.optim.SGD(student.parameters(), lr=0.5)
    gap = [(student(x).softmax(1) - teacher(x).softmax(1)).abs().mean().item()]
    for _ in range(200):
        opt.zero_grad()
        soft_only(student, x, y).backward()
        opt.step()
    gap.append((student(x).softmax(1) - teacher(x).softmax(1)).abs().mean().item())
    assert gap[1] < 0.2 * gap[0]
