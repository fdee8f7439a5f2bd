"""Whole-model ONNX export (halp_trt.runtime.export): ONNX Runtime computes what PyTorch does
in eval mode, the model's mode is restored, and failures name where they happened."""
import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch.nn as nn

import tiny_models
from fakes import randomise_bn
from halp_trt.errors import HalpError
from halp_trt.runtime.export import export_onnx


def _ort_run(onnx_bytes, x):
    sess = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    return sess.run(None, {"input": x.numpy()})[0]


def test_export_of_a_training_model_is_its_eval_graph_and_training_mode_is_restored():
    """Deployment runs BatchNorm on running statistics (the eval graph) whatever mode the
    model is in when exported; the caller's training run must continue in training mode."""
    torch.manual_seed(0)
    model = tiny_models.tiny_resnet().train()
    randomise_bn(model)
    x = torch.randn(1, 3, 16, 16)
    onnx_bytes = export_onnx(model, x)
    assert model.training and all(m.training for m in model.modules())
    got = _ort_run(onnx_bytes, x)
    with torch.no_grad():
        want = model.eval()(x).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


class SelfAttentionNet(nn.Module):
    """Patch embedding, one nn.MultiheadAttention (as in torchvision's ViT), a classifier."""

    def __init__(self, dim=32, heads=4):
        super().__init__()
        self.embed = nn.Conv2d(3, dim, 4, stride=4)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.fc = nn.Linear(dim, 10)

    def forward(self, x):
        tokens = self.embed(x).flatten(2).transpose(1, 2)
        y, _ = self.attn(tokens, tokens, tokens, need_weights=False)
        return self.fc((tokens + y).mean(1))


def test_multihead_attention_exports_even_when_the_caller_disabled_gradients():
    """In eval without gradients nn.MultiheadAttention takes a fused kernel the exporter cannot
    translate; export must still work from inside torch.no_grad() and match PyTorch."""
    torch.manual_seed(0)
    model = SelfAttentionNet().eval()
    x = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        onnx_bytes = export_onnx(model, x)
        want = model(x).numpy()
    np.testing.assert_allclose(_ort_run(onnx_bytes, x), want, rtol=1e-4, atol=1e-4)


class Bessel2d(nn.Module):
    """An op with no ONNX symbolic called in the model's own forward, not in a submodule."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        return torch.special.bessel_j0(self.conv(x))


def test_a_failure_in_the_models_own_forward_names_it_and_restores_the_mode():
    """No layer to blame: the error names the model's forward and the op; the model is left in
    the mode it was in."""
    model = Bessel2d().train()
    with pytest.raises(HalpError, match=r"failed in Bessel2d\.forward: .*special_bessel_j0.*"
                                        r"opset 17"):
        export_onnx(model, torch.randn(1, 3, 8, 8))
    assert model.training


def test_timm_fused_attention_that_the_exporter_cannot_trace_exports_unfused():
    timm = pytest.importorskip("timm")
    # DINOv3's fused attention fails the TorchScript exporter (is_causal traced as a tensor)
    model = timm.create_model("vit_tiny_patch16_dinov3_qkvb", pretrained=False, num_classes=10,
                              img_size=32, depth=2).eval()
    fused = [m for m in model.modules() if getattr(m, "fused_attn", False)]
    if not fused:
        pytest.skip("this timm build does not fuse attention here")
    x = torch.randn(1, 3, 32, 32)
    session = ort.InferenceSession(export_onnx(model, x), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():
        want = model(x).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-4)
    assert all(m.fused_attn for m in fused), "the model's own setting is restored"
