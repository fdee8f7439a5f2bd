"""Resolving models: torchvision names (built for the input size where the architecture
depends on it), timm:NAME, module:factory, auxiliary heads."""
import pytest
import torch

from halp_trt.errors import HalpError
from halp_trt.models import create_model, parse_input_shape, strip_aux_heads


def test_transformers_are_built_for_the_run_input_size():
    vit = create_model("vit_b_32", 10, 64)
    assert vit.image_size == 64 and vit(torch.randn(1, 3, 64, 64)).shape == (1, 10)


def test_sizes_the_architecture_cannot_take_are_one_error():
    with pytest.raises(HalpError, match="could not build vit_b_32"):
        create_model("vit_b_32", 10, 50)  # not a multiple of the patch size


def test_googlenet_aux_heads_are_stripped_for_the_eval_graph():
    net = create_model("googlenet", 10)
    assert net.aux_logits and net.aux1 is not None
    strip_aux_heads(net)
    assert net.aux1 is None and net.aux2 is None
    out = net.train()(torch.randn(2, 3, 64, 64))
    assert isinstance(out, torch.Tensor) and out.shape == (2, 10)


def test_input_shape_parsing():
    assert parse_input_shape("1,3,64,64") == (1, 3, 64, 64)
    assert parse_input_shape("1x3x8x8") == (1, 3, 8, 8)
    with pytest.raises(HalpError):
        parse_input_shape("1,3,64")


def test_timm_models_by_name_with_transformers_built_for_the_input_size():
    pytest.importorskip("timm")
    vit = create_model("timm:vit_tiny_patch16_224", 10, 64).eval()
    assert vit.patch_embed.grid_size == (4, 4) and vit(torch.randn(1, 3, 64, 64)).shape == (1, 10)
    cnn = create_model("timm:resnet18", 10, 64).eval()  # takes no image size: built without
    assert cnn(torch.randn(1, 3, 96, 96)).shape == (1, 10)
    with pytest.raises(HalpError, match="timm has no model 'resnet_nope'"):
        create_model("timm:resnet_nope", 10, 64)
