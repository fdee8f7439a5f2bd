"""Resolving a model from the command line: a torchvision name (classification, segmentation
or detection: one-stage and Faster R-CNN), ``timm:NAME`` or ``module:factory``."""
from __future__ import annotations

import importlib

import torch.nn as nn

from halp_trt.errors import HalpError
from halp_trt.tasks.detection import create_detection_model, detection_model_names
from halp_trt.tasks.segmentation import create_segmentation_model, segmentation_model_names

# torchvision builders whose architecture depends on the input size: built for the run's size
_SIZE_KWARG = {"vit_": "image_size", "maxvit": "input_size"}


def create_model(name: str, num_classes: int | None = None,
                 input_size: int | None = None) -> nn.Module:
    """Build an untrained model. Weights are loaded separately (weights-only state dicts).
    ``input_size`` builds transformers whose position embeddings or windows depend on it
    (ViT: ``image_size``; MaxViT: ``input_size``) for that size."""
    kwargs = {} if num_classes is None else {"num_classes": num_classes}
    if name.startswith("timm:"):
        model = _timm_model(name[len("timm:"):], kwargs, input_size)
    elif ":" in name:
        module_name, factory_name = name.split(":", 1)
        try:
            module = importlib.import_module(module_name)
        except Exception as exc:
            raise HalpError(f"cannot import module {module_name!r} for model {name!r}: "
                            f"{type(exc).__name__}: {exc}") from exc
        factory = getattr(module, factory_name, None)
        if not callable(factory):
            raise HalpError(f"{module_name} has no callable {factory_name!r} (MODEL is "
                            "module:factory)")
        try:
            model = factory(**kwargs)
        except TypeError:
            model = factory()  # factories that take no num_classes
        except Exception as exc:
            raise HalpError(f"model factory {name} failed: {type(exc).__name__}: {exc}") from exc
    elif name in segmentation_model_names():
        model = create_segmentation_model(name, num_classes)
    elif name in detection_model_names() or name.startswith(("fasterrcnn", "maskrcnn",
                                                             "keypointrcnn")):
        if not input_size:
            raise HalpError(f"{name}: a detector is built for its input size; give one")
        model = create_detection_model(name, num_classes, input_size)
    else:
        import torchvision

        if name not in torchvision.models.list_models(module=torchvision.models):
            raise HalpError(f"unknown model {name!r}: give a torchvision classification model "
                            "name (e.g. resnet18, resnet50, mobilenet_v2) or module:factory")
        size_kw = next((kw for prefix, kw in _SIZE_KWARG.items() if name.startswith(prefix)),
                       None)
        if size_kw and input_size:
            kwargs[size_kw] = input_size if size_kw == "image_size" else (input_size, input_size)
        try:
            model = torchvision.models.get_model(name, weights=None, **kwargs)
        except Exception as exc:  # e.g. a size the architecture cannot be built for
            raise HalpError(f"torchvision could not build {name} with {kwargs}: "
                            f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}") from None
    if not isinstance(model, nn.Module):
        raise HalpError(f"model {name!r} is not a torch.nn.Module")
    return model


def _timm_model(name: str, kwargs: dict, input_size: int | None) -> nn.Module:
    """A timm model without pretrained weights; transformers whose position embeddings or
    windows depend on the input are built for ``input_size`` (timm's ``img_size``)."""
    try:
        import timm
    except ImportError:
        raise HalpError("timm models need timm: pip install 'halp-trt[timm]'") from None
    if not timm.is_model(name):
        raise HalpError(f"timm has no model {name!r} (timm.list_models() lists them)")
    try:
        try:
            return timm.create_model(name, pretrained=False, **kwargs,
                                     **({"img_size": input_size} if input_size else {}))
        except TypeError as exc:
            if "img_size" not in str(exc):
                raise
            return timm.create_model(name, pretrained=False, **kwargs)  # takes no image size
    except Exception as exc:  # noqa: BLE001 - e.g. a size the architecture cannot take
        last = exc
    raise HalpError(f"timm could not build {name} with {kwargs}"
                    + (f" at {input_size}x{input_size}" if input_size else "")
                    + f": {type(last).__name__}: {str(last).splitlines()[0][:200]}")


def parse_input_shape(text: str) -> tuple[int, int, int, int]:
    try:
        dims = tuple(int(x) for x in text.replace("x", ",").split(","))
    except ValueError:
        dims = ()
    if len(dims) != 4 or min(dims) < 1:
        raise HalpError(f"--input-shape must be N,C,H,W with positive integers, got {text!r}")
    return dims  # type: ignore[return-value]


def strip_aux_heads(model: nn.Module) -> nn.Module:
    """Drop auxiliary classifier heads (GoogLeNet's aux1/aux2, Inception v3's AuxLogits): they
    help training the original but are not part of the eval graph that is pruned, exported and
    deployed. Returns the model (changed in place)."""
    if getattr(model, "aux_logits", False):
        model.aux_logits = False
        for name in ("aux1", "aux2", "AuxLogits"):
            if isinstance(getattr(model, name, None), nn.Module):
                setattr(model, name, None)
    return model
