"""Architecture patterns of timm families, one tiny model each: pruned one step on a synthetic
staircase latency model, channels removed, exported; the pruned model computes what the masked
one did, in PyTorch and in ONNX Runtime. A group channel surgery cannot handle keeps its width
with the reason listed, never a failure."""
import numpy as np
import onnxruntime as ort
import pytest
import torch

from fakes import prune_one_step
from halp_trt.runtime.export import export_onnx
from pattern_models import PATTERNS


@pytest.mark.parametrize("pattern", list(PATTERNS))
def test_pattern_prunes_and_the_pruned_model_computes_what_the_masked_one_did(pattern):
    if pattern.startswith("timm"):
        pytest.importorskip("timm")
    torch.manual_seed(0)
    model = PATTERNS[pattern]().eval()
    x = torch.randn(2, 3, 16, 16)
    pruner, record = prune_one_step(model, x[:1])
    assert any(record.kept[g.root] < g.size for g in pruner.prunable), "nothing was pruned"
    assert all(why for why in pruner.fixed.values()), "every held group says why"
    with torch.no_grad():
        masked = model(x)
    pruned = pruner.finalize().eval()
    with torch.no_grad():
        out = pruned(x)
    assert out.shape == masked.shape, "the output's channels (classes) must not change"
    assert (out - masked).abs().max() <= 1e-5 * masked.abs().max()
    session = ort.InferenceSession(export_onnx(pruned, x[:1]),
                                   providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x[:1].numpy()})[0]
    np.testing.assert_allclose(got, out[:1].numpy(), rtol=1e-4, atol=1e-5)
