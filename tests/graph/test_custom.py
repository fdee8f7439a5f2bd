"""A user-defined layer pruned through ``register_surgery``: its channel tensors are coupled with
its neighbours', masked while pruning and cut physically, and the pruned model computes what the
masked one did and exports to ONNX."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from fakes import StaircaseLatencyModel
from halp_trt.errors import HalpError
from halp_trt.graph.custom import register_surgery, unregister_surgery
from halp_trt.pruning.config import HALPConfig
from halp_trt.pruning.pruner import HALPPruner


class GainConv(nn.Module):
    """A conv of the user's own, called through F.conv2d with a learned gain. (Standardising
    its weights over the input channels would couple them: trial surgery holds such a group,
    pruned differing from masked.)"""

    def __init__(self, c_in, c_out):
        super().__init__()
        self.in_channels, self.out_channels = c_in, c_out
        self.weight = nn.Parameter(torch.randn(c_out, c_in, 3, 3) * 0.3)
        self.bias = nn.Parameter(torch.randn(c_out) * 0.1)
        self.gain = nn.Parameter(torch.tensor(1.5))

    def forward(self, x):
        return F.conv2d(x, self.weight * self.gain, self.bias, padding=1)


class ChannelScale(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.channels = c
        self.gamma = nn.Parameter(torch.linspace(0.5, 1.5, c))
        self.register_buffer("shift", torch.linspace(-0.1, 0.1, c))

    def forward(self, x):
        return x * self.gamma.view(1, -1, 1, 1) + self.shift.view(1, -1, 1, 1)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 32, 3, padding=1)
        self.bn0 = nn.BatchNorm2d(32)
        self.scale = ChannelScale(32)
        self.custom = GainConv(32, 24)
        self.bn1 = nn.BatchNorm2d(24)
        self.conv2 = nn.Conv2d(24, 32, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(32)
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        x = self.scale(torch.relu(self.bn0(self.stem(x))))
        x = torch.relu(self.bn1(self.custom(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.fc(x.mean((2, 3)))


@pytest.fixture
def registered():
    register_surgery(GainConv, out={"weight": 0, "bias": 0}, in_={"weight": 1},
                     widths=("out_channels", "in_channels"))
    register_surgery(ChannelScale, out={"gamma": 0, "shift": 0}, elementwise=True,
                     widths=("channels",))
    yield
    unregister_surgery(GainConv)
    unregister_surgery(ChannelScale)


def test_a_user_defined_layer_is_pruned_through_its_registered_surgery(registered, tmp_path):
    torch.manual_seed(0)
    model = Net().eval()
    x = torch.randn(2, 3, 12, 12)
    def stem_matters_least(model, group):
        return torch.linspace(1.0, 2.0, group.size) * (0.01 if group.root == "stem" else 1.0)

    stem_matters_least.needs_grad = False
    pruner = HALPPruner(model, x, StaircaseLatencyModel(step=4),
                        HALPConfig(target=0.5, steps=1, interval=1,
                                   importance=stem_matters_least))
    stem = next(g for g in pruner.prunable if g.root == "stem")
    assert {"scale", "custom"} <= {m.module_name for m in stem.members}
    pruner.accumulate()
    pruner.step()
    kept = int(pruner.keep[stem.id].sum())
    assert kept < 32  # the group through the custom layers was cut
    with torch.no_grad():
        masked = model(x)
    pruned = pruner.finalize().eval()  # checks masked == pruned itself
    with torch.no_grad():
        torch.testing.assert_close(pruned(x), masked, rtol=1e-4, atol=1e-5)
    assert pruned.custom.weight.shape[1] == pruned.custom.in_channels == kept
    assert pruned.scale.gamma.shape == pruned.scale.shift.shape == (kept,)
    assert pruned.scale.channels == kept
    from halp_trt.runtime.export import export_onnx

    assert len(export_onnx(pruned, x)) > 0


def test_register_surgery_refuses_incomplete_specs():
    with pytest.raises(HalpError, match="input channels"):
        register_surgery(GainConv, out={"weight": 0})
    with pytest.raises(HalpError, match="elementwise"):
        register_surgery(ChannelScale, out={"gamma": 0}, in_={"gamma": 0}, elementwise=True)
    with pytest.raises(HalpError, match="nn.Module"):
        register_surgery(int, out={"x": 0}, elementwise=True)
