"""Datasets for fine-tuning and accuracy checks.

``digits`` is the embedded default: scikit-learn's 8x8 handwritten digits (1,797 images, shipped
inside the package, nothing downloaded), upscaled to the model's input size and repeated to 3
channels. ``imagefolder:DIR`` and ``cifar10:DIR`` load the user's own files.
``fashion-mnist[:DIR]`` reads the four standard idx files (plain or .gz) from DIR, by default
from Debian's ``dataset-fashion-mnist`` package; the official t10k split is the validation split.
``shapes[:N]`` is the built-in synthetic segmentation task (``halp_trt.tasks.shapes``).
"""
from __future__ import annotations

import gzip
import math
import os
import tempfile
import zlib
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

from halp_trt.errors import ConfigError, HalpError

_MEAN, _STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
SHAPES_TRAIN_IMAGES = 2000
# the datasets of the dense tasks and the tasks each serves (every other kind: classification)
DENSE_DATA = {"shapes": ("segmentation", "detection"), "coco": ("segmentation", "detection")}
DENSE_SPECS = {"shapes": "shapes[:N] (built in)", "coco": "coco:DIR (COCO-format annotations)"}


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


FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
_FASHION_FILES = {  # name -> idx magic (0x08 = uint8, then the number of dimensions)
    "train-images-idx3-ubyte": 0x00000803, "train-labels-idx1-ubyte": 0x00000801,
    "t10k-images-idx3-ubyte": 0x00000803, "t10k-labels-idx1-ubyte": 0x00000801,
}
_FASHION_HINT = ("fashion-mnist:DIR needs " + ", ".join(_FASHION_FILES) + " (each plain or .gz) in "
                 f"DIR; without DIR they are read from {FASHION_MNIST_DIR} "
                 "(Debian package dataset-fashion-mnist: apt-get install -y dataset-fashion-mnist)")


class GrayImageDataset(Dataset):
    """uint8 N,H,W images kept as they are and converted per item: 60k Fashion-MNIST images
    resized ahead of time to 64x64x3 float32 would take ~3 GB."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, input_hw):
        self.images, self.labels, self.input_hw = images, labels, tuple(input_hw)
        self.mean = torch.tensor(_MEAN)[:, None, None]
        self.std = torch.tensor(_STD)[:, None, None]
        self._resized = None  # resized gray images, made by the first ``batch`` call

    def __len__(self):
        return len(self.labels)

    def _resize(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float().div(255.0)[:, None]  # N,1,H,W in [0,1]
        # the same resize as _digits, so both datasets reach the model alike
        return torch.nn.functional.interpolate(x, size=self.input_hw, mode="bilinear",
                                               align_corners=False)

    def _finish(self, gray: torch.Tensor) -> torch.Tensor:
        return (gray.expand(-1, 3, -1, -1) - self.mean) / self.std

    def __getitem__(self, i):
        return self._finish(self._resize(self.images[i][None]))[0], self.labels[i]

    def batch(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Items ``indices`` as one batch, equal to stacking ``self[i]``: the resized gray
        images are kept in memory (1 channel: 245 MB for 60k images at 32x32), the 3-channel
        normalisation is done per batch."""
        if self._resized is None:
            self._resized = torch.cat([self._resize(c) for c in self.images.split(4096)])
        return self._finish(self._resized[indices]), self.labels[indices]


def _read_idx(path: str, magic: int) -> torch.Tensor:
    """One idx file through torchvision's reader, which opens plain files only: a .gz is
    decompressed to a temporary file first. Anything unreadable becomes a HalpError."""
    from torchvision.datasets.mnist import read_image_file, read_label_file

    what = "image" if magic == 0x00000803 else "label"
    gz = path.endswith(".gz")
    try:
        with (gzip.open if gz else open)(path, "rb") as f:
            data = f.read() if gz else f.read(4)  # a plain file is read by torchvision itself
    except (OSError, EOFError, zlib.error) as exc:  # BadGzipFile is an OSError
        raise HalpError(f"cannot read {path} ({exc})") from None
    # checked here because torchvision's own checks are bare asserts (no message, gone under -O)
    found = int.from_bytes(data[:4], "big")
    if len(data) < 4 or found != magic:
        got = f"magic number 0x{found:08x}" if len(data) >= 4 else f"only {len(data)} bytes"
        raise HalpError(f"{path} is not an idx {what} file ({got}, expected magic number "
                        f"0x{magic:08x}); replace it with the Fashion-MNIST original")
    reader = read_image_file if magic == 0x00000803 else read_label_file
    try:
        if gz:
            with tempfile.TemporaryDirectory() as tmp:
                plain = os.path.join(tmp, "idx")
                with open(plain, "wb") as f:
                    f.write(data)
                return reader(plain)
        return reader(path)
    except (AssertionError, KeyError, TypeError, ValueError, RuntimeError) as exc:
        # truncated or padded data fails torchvision's reshape to the header's dimensions
        raise HalpError(f"{path} is not an idx {what} file: it is corrupt or truncated "
                        f"({str(exc) or type(exc).__name__})") from None


def _fashion_mnist(root: str, input_hw) -> DataSplits:
    if not os.path.isdir(root):
        raise HalpError(f"Fashion-MNIST folder {root} does not exist; {_FASHION_HINT}")
    paths, missing = {}, []
    for name in _FASHION_FILES:
        found = [p for p in (os.path.join(root, name), os.path.join(root, name + ".gz"))
                 if os.path.isfile(p)]
        if found:
            paths[name] = found[0]  # the plain file, if someone has gunzipped it next to the .gz
        else:
            missing.append(name)
    if missing:
        raise HalpError(f"{root} has no {', '.join(missing)} (plain or .gz); {_FASHION_HINT}")
    t = {name: _read_idx(paths[name], magic) for name, magic in _FASHION_FILES.items()}
    splits = []
    for part in ("train", "t10k"):
        images, labels = t[f"{part}-images-idx3-ubyte"], t[f"{part}-labels-idx1-ubyte"]
        if len(images) != len(labels):
            raise HalpError(f"{root}: {part}-images holds {len(images)} images but {part}-labels "
                            f"{len(labels)} labels")
        if not len(labels):
            raise HalpError(f"{paths[f'{part}-images-idx3-ubyte']} holds no images")
        if int(labels.max()) > 9:
            raise HalpError(f"{paths[f'{part}-labels-idx1-ubyte']} has labels outside 0..9; it is "
                            "not a Fashion-MNIST label file")
        splits.append(GrayImageDataset(images, labels, input_hw))
    return DataSplits(splits[0], splits[1], 10, f"fashion-mnist:{root}")


def load_data(spec: str, input_hw: tuple[int, int], seed: int = 0,
              task: str = "classification") -> DataSplits:
    """``digits`` | ``imagefolder:DIR`` | ``cifar10:DIR`` | ``fashion-mnist[:DIR]`` |
    ``shapes[:N]`` | ``coco:DIR`` (both for ``task`` segmentation or detection)."""
    kind, _, arg = spec.partition(":")
    serves = DENSE_DATA.get(kind, ("classification",))
    if task not in serves:
        if task == "classification":
            raise ConfigError("data", f"{{field}} {kind} is {' and '.join(serves)} data; give a "
                              f"{' or '.join(serves)} model (or --task)")
        raise ConfigError("data", f"{{field}} {spec!r} is not {task} data; {task} takes "
                          + " or ".join(DENSE_SPECS[k] for k, ts in DENSE_DATA.items()
                                        if task in ts))
    if kind == "digits" and not arg:
        return _digits(tuple(input_hw), seed)
    if kind == "imagefolder" and arg:
        return _imagefolder(arg, tuple(input_hw))
    if kind == "cifar10" and arg:
        return _cifar10(arg, tuple(input_hw))
    if kind == "fashion-mnist":
        return _fashion_mnist(arg or FASHION_MNIST_DIR, tuple(input_hw))
    if kind == "shapes":
        return _shapes(arg, tuple(input_hw), seed, task)
    if kind == "coco" and arg:
        return _coco(arg, tuple(input_hw), task)
    raise ConfigError("data", f"unknown {{field}} {spec!r}: use digits, imagefolder:DIR, "
                      "cifar10:DIR, fashion-mnist[:DIR], shapes[:N_TRAIN] (segmentation, "
                      "detection) or coco:DIR (segmentation, detection)")


def _shapes(arg: str, input_hw: tuple[int, int], seed: int,
            task: str = "segmentation") -> DataSplits:
    """The built-in synthetic shapes task (segmentation pairs, or detection images with boxes),
    generated from the seed; the validation images come from another seed."""
    from halp_trt.tasks.detection import ShapesDetection
    from halp_trt.tasks.segmentation import ShapesSegmentation

    kind = ShapesDetection if task == "detection" else ShapesSegmentation

    if input_hw[0] != input_hw[1]:
        raise ConfigError("data", "{field} shapes makes square images; use a square input")
    try:
        n_train = int(arg) if arg else SHAPES_TRAIN_IMAGES
    except ValueError:
        n_train = 0
    if n_train < 1:
        raise ConfigError("data", f"{{field}} shapes:N takes a positive image count, got {arg!r}")
    train = kind(n_train, input_hw[0], seed)
    val = kind(max(64, n_train // 4), input_hw[0], seed + 10_000)
    return DataSplits(train, val, train.num_classes, f"shapes ({n_train} images)")


def _coco(root: str, input_hw: tuple[int, int], task: str = "detection") -> DataSplits:
    from halp_trt.tasks.coco import coco_splits

    if input_hw[0] != input_hw[1]:
        raise ConfigError("data", "{field} coco:DIR resizes images to a square input; use one")
    train, val = coco_splits(root, input_hw[0], task)
    return DataSplits(train, val, train.num_classes, f"coco:{root}")


def check_sample(splits: DataSplits, input_shape) -> None:
    """Fail early on images that do not match the model's input."""
    x, _ = splits.train[0]
    if tuple(x.shape) != tuple(input_shape[1:]):
        raise HalpError(f"{splits.name} gives images of shape {tuple(x.shape)}, the model "
                        f"expects {tuple(input_shape[1:])} (C,H,W); set --input-size or "
                        "convert the images")


class InMemoryBatches:
    """What ``DataLoader(dataset, batch_size, shuffle, generator=...)`` yields, batch for batch
    (the same generator draws, so the same order for a seed), made by indexing tensors in memory
    instead of collating items one by one (no per-item Python calls). For resnet18 at 32x32 the
    model's compute dominates: 9.65 vs 9.86 training steps/s through ``DataLoader`` on a quiet
    Zen 4 (tools/bench_train_speed.py), the same within its noise."""

    sampler = None

    def __init__(self, dataset: Dataset, batch_size: int, shuffle: bool, generator):
        self.dataset, self.batch_size, self.shuffle = dataset, batch_size, shuffle
        self.generator = generator
        base, indices = _unwrap(dataset)
        if isinstance(base, TensorDataset):
            tensors = base.tensors

            def fetch(i):
                return tuple(t[i] for t in tensors)
        else:
            fetch = base.batch
        if indices is None:
            self._fetch = fetch
        else:
            index = torch.as_tensor(indices)
            self._fetch = lambda i: fetch(index[i])

    def __len__(self):
        return math.ceil(len(self.dataset) / self.batch_size)

    def __iter__(self):
        n = len(self.dataset)
        # DataLoader draws its workers' base seed, then RandomSampler one permutation and a
        # second (empty remainder) one, from the same generator
        torch.empty((), dtype=torch.int64).random_(generator=self.generator)
        if self.shuffle:
            order = torch.randperm(n, generator=self.generator)
            torch.randperm(n, generator=self.generator)
        else:
            order = torch.arange(n)
        for start in range(0, n, self.batch_size):
            yield self._fetch(order[start:start + self.batch_size])


def _unwrap(dataset: Dataset) -> tuple[Dataset, list | None]:
    """(the dataset under a ``Subset``, the subset's indices), or (``dataset``, None)."""
    if isinstance(dataset, Subset):
        return dataset.dataset, dataset.indices
    return dataset, None


def _in_memory(dataset: Dataset) -> bool:
    return isinstance(_unwrap(dataset)[0], (TensorDataset, GrayImageDataset))


def make_loader(dataset: Dataset, batch_size: int, shuffle: bool, seed: int = 0,
                distributed: bool = False) -> DataLoader | InMemoryBatches:
    if not distributed and _in_memory(dataset):
        g = torch.Generator()
        g.manual_seed(seed)
        return InMemoryBatches(dataset, batch_size, shuffle, g)
    sampler = None
    if distributed:
        from torch.utils.data.distributed import DistributedSampler

        sampler = DistributedSampler(dataset, shuffle=shuffle, seed=seed)
    g = torch.Generator()
    g.manual_seed(seed)
    # a dataset whose targets cannot be stacked (detection boxes) says how to batch them
    collate = getattr(_unwrap(dataset)[0], "collate_fn", None)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle and sampler is None,
                      sampler=sampler, generator=g, num_workers=0, drop_last=False,
                      collate_fn=collate)
