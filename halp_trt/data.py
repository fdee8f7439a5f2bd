"""Datasets for fine-tuning and accuracy checks.

``digits`` is the embedded default: scikit-learn's 8x8 handwritten digits (1,797 images, shipped
inside the package, nothing downloaded), upscaled to the model's input size and repeated to 3
channels. ``imagefolder:DIR`` and ``cifar10:DIR`` load the user's own files.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset

from halp_trt.errors import ConfigError, HalpError

_MEAN, _STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@dataclass
class DataSplits:
    train: Dataset
    val: Dataset
    num_classes: int
    name: str


def _digits(input_hw: tuple[int, int], seed: int) -> DataSplits:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32)[:, None] / 16.0  # N,1,8,8 in [0,1]
    x = torch.nn.functional.interpolate(x, size=input_hw, mode="bilinear", align_corners=False)
    x = x.repeat(1, 3, 1, 1)
    x = (x - torch.tensor(_MEAN)[:, None, None]) / torch.tensor(_STD)[:, None, None]
    y = torch.tensor(d.target, dtype=torch.long)
    # stratified 80/20 split, fixed by the seed
    rng = np.random.default_rng(seed)
    val_idx = np.concatenate([rng.permutation(np.flatnonzero(d.target == c))[: int(round(
        0.2 * np.sum(d.target == c)))] for c in range(10)])
    mask = np.zeros(len(y), bool)
    mask[val_idx] = True
    tr, va = torch.from_numpy(~mask), torch.from_numpy(mask)
    return DataSplits(TensorDataset(x[tr], y[tr]), TensorDataset(x[va], y[va]), 10, "digits")


def _image_transform(input_hw):
    from torchvision import transforms

    return transforms.Compose([transforms.Resize(input_hw), transforms.ToTensor(),
                               transforms.Normalize(_MEAN, _STD)])


def _load_image(path: str):
    """torchvision's PIL loader (RGB), with one clear error for files that are not images."""
    from PIL import Image

    try:
        with open(path, "rb") as f:
            return Image.open(f).convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise HalpError(f"cannot read image {path} ({exc}); remove or replace the file") from None


def _imagefolder(root: str, input_hw) -> DataSplits:
    from torchvision.datasets import ImageFolder

    if not os.path.isdir(root):
        raise HalpError(f"data folder {root} does not exist (imagefolder:DIR needs DIR/train and "
                        "DIR/val, each with one sub-folder per class)")
    splits = {}
    for part in ("train", "val"):
        path = os.path.join(root, part)
        if not os.path.isdir(path):
            raise HalpError(f"{root} has no {part}/ folder (imagefolder:DIR needs DIR/train and "
                            "DIR/val, each with one sub-folder per class)")
        try:
            splits[part] = ImageFolder(path, transform=_image_transform(input_hw),
                                       loader=_load_image)
        except (FileNotFoundError, RuntimeError) as exc:  # raised for empty folders
            raise HalpError(f"{path} holds no images: {exc}") from None
    if splits["train"].classes != splits["val"].classes:
        raise HalpError(f"{root}: train/ and val/ have different class folders")
    return DataSplits(splits["train"], splits["val"], len(splits["train"].classes),
                      f"imagefolder:{root}")


def _cifar10(root: str, input_hw) -> DataSplits:
    from torchvision.datasets import CIFAR10

    try:
        train = CIFAR10(root, train=True, download=False, transform=_image_transform(input_hw))
        val = CIFAR10(root, train=False, download=False, transform=_image_transform(input_hw))
    except RuntimeError as exc:
        raise HalpError(f"no CIFAR-10 data in {root} ({exc}); put the extracted "
                        "cifar-10-batches-py folder there") from None
    return DataSplits(train, val, 10, f"cifar10:{root}")


def load_data(spec: str, input_hw: tuple[int, int], seed: int = 0) -> DataSplits:
    """``digits`` | ``imagefolder:DIR`` | ``cifar10:DIR``."""
    kind, _, arg = spec.partition(":")
    if kind == "digits" and not arg:
        return _digits(tuple(input_hw), seed)
    if kind == "imagefolder" and arg:
        return _imagefolder(arg, tuple(input_hw))
    if kind == "cifar10" and arg:
        return _cifar10(arg, tuple(input_hw))
    raise ConfigError("data", f"unknown {{field}} {spec!r}: use digits, imagefolder:DIR or "
                      "cifar10:DIR")


def check_sample(splits: DataSplits, input_shape) -> None:
    """Fail early on images that do not match the model's input."""
    x, _ = splits.train[0]
    if tuple(x.shape) != tuple(input_shape[1:]):
        raise HalpError(f"{splits.name} gives images of shape {tuple(x.shape)}, the model "
                        f"expects {tuple(input_shape[1:])} (C,H,W); set --input-size or "
                        "convert the images")


def make_loader(dataset: Dataset, batch_size: int, shuffle: bool, seed: int = 0,
                distributed: bool = False) -> DataLoader:
    sampler = None
    if distributed:
        from torch.utils.data.distributed import DistributedSampler

        sampler = DistributedSampler(dataset, shuffle=shuffle, seed=seed)
    g = torch.Generator()
    g.manual_seed(seed)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle and sampler is None,
                      sampler=sampler, generator=g, num_workers=0, drop_last=False)
