import sys

import pytest

from halp_trt.graph.timm_layers import loaded_timm_class


def test_finds_a_loaded_timm_class_and_nothing_for_a_module_not_loaded():
    timm_attention = pytest.importorskip("timm.layers.attention")
    assert loaded_timm_class("layers.attention", "Attention") is timm_attention.Attention
    assert loaded_timm_class("layers.attention", "NoSuchClass") is None
    assert "timm.no_such_module" not in sys.modules
    assert loaded_timm_class("no_such_module", "Attention") is None
