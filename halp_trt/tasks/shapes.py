"""A seeded synthetic *shapes* task for detection and segmentation, generated in memory.

Each image: a textured background (two random low-frequency sine gratings plus noise) and one
to ``max_shapes`` filled shapes — circle, square, triangle — of random colour, size and place;
later shapes occlude earlier ones. Targets follow torchvision's detection references: per
image a dict of ``boxes`` (x1, y1, x2, y2 of the *visible* pixels, float), ``labels`` (1 =
circle, 2 = square, 3 = triangle; 0 is background) and ``masks`` (K, H, W uint8), plus a
semantic ``mask`` (H, W int64, class per pixel) for segmentation. Image ``i`` of seed ``s``
depends on (s, i) alone: the same everywhere, in any order, a few thousand in seconds.
"""
from __future__ import annotations

import math

import torch
from torch.utils.data import Dataset

CLASSES = ("background", "circle", "square", "triangle")
MIN_VISIBLE_PIXELS = 12  # a shape occluded below this is dropped from the targets


def _background(size: int, g: torch.Generator) -> torch.Tensor:
    ys, xs = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    img = torch.empty(3, size, size)
    base = torch.rand(3, generator=g) * 0.6 + 0.2
    for c in range(3):
        angle, freq, phase = (torch.rand(3, generator=g) * torch.tensor(
            [math.pi, 0.25, 2 * math.pi])).tolist()
        wave = torch.sin((xs * math.cos(angle) + ys * math.sin(angle)) * (freq + 0.03) + phase)
        img[c] = base[c] + 0.15 * wave
    return img + 0.05 * torch.randn(3, size, size, generator=g)


def _shape_mask(kind: int, size: int, g: torch.Generator) -> torch.Tensor:
    """A bool (size, size) mask of one shape, 1/8 to 1/3 of the image across."""
    ys, xs = torch.meshgrid(torch.arange(size, dtype=torch.float32),
                            torch.arange(size, dtype=torch.float32), indexing="ij")
    r = float(torch.empty(()).uniform_(size / 16, size / 6, generator=g))
    cx, cy = (torch.rand(2, generator=g) * (size - 2 * r) + r).tolist()
    if kind == 1:  # circle
        return (xs - cx) ** 2 + (ys - cy) ** 2 <= r * r
    if kind == 2:  # square
        return ((xs - cx).abs() <= r) & ((ys - cy).abs() <= r)
    # triangle, apex up: inside the three half-planes
    top, bottom = cy - r, cy + r
    half_width = (ys - top) / (2 * r) * r
    return (ys >= top) & (ys <= bottom) & ((xs - cx).abs() <= half_width)


def make_sample(index: int, size: int = 128, seed: int = 0, max_shapes: int = 3):
    """Image ``index`` of the task: ``(image (3, size, size) float in about [0, 1], target)``."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + index)
    img = _background(size, g)
    n = int(torch.randint(1, max_shapes + 1, (1,), generator=g))
    owner = torch.full((size, size), -1, dtype=torch.long)  # which shape a pixel shows
    kinds = []
    for k in range(n):
        kind = int(torch.randint(1, len(CLASSES), (1,), generator=g))
        mask = _shape_mask(kind, size, g)
        colour = torch.rand(3, generator=g)
        img[:, mask] = colour[:, None]
        owner[mask] = k
        kinds.append(kind)
    masks, labels, boxes = [], [], []
    for k, kind in enumerate(kinds):
        visible = owner == k
        if int(visible.sum()) < MIN_VISIBLE_PIXELS:
            continue
        ys, xs = torch.nonzero(visible, as_tuple=True)
        boxes.append([float(xs.min()), float(ys.min()), float(xs.max()) + 1, float(ys.max()) + 1])
        masks.append(visible.to(torch.uint8))
        labels.append(kind)
    semantic = torch.zeros(size, size, dtype=torch.long)
    for m, label in zip(masks, labels):
        semantic[m.bool()] = label
    target = {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
              "labels": torch.tensor(labels, dtype=torch.int64),
              "masks": torch.stack(masks) if masks else torch.zeros(0, size, size,
                                                                    dtype=torch.uint8),
              "mask": semantic}
    return img.clamp(0, 1), target


class ShapesPairs(Dataset):
    """The shapes task as (image, what a task trains on) pairs: ``target_of`` picks it from the
    full target (a subclass per task)."""

    def __init__(self, n: int, size: int, seed: int):
        self.shapes = ShapesDataset(n, size, seed)
        self.num_classes = ShapesDataset.num_classes

    def __len__(self) -> int:
        return len(self.shapes)

    def __getitem__(self, index: int):
        image, target = self.shapes[index]
        return image, self.target_of(target)

    def target_of(self, target: dict):
        raise NotImplementedError


class ShapesDataset(Dataset):
    """``n`` images of the shapes task (``make_sample``), generated on first use and kept."""

    num_classes = len(CLASSES)

    def __init__(self, n: int, size: int = 128, seed: int = 0, max_shapes: int = 3):
        if n < 1 or size < 16 or max_shapes < 1:
            raise ValueError("ShapesDataset needs n >= 1, size >= 16 and max_shapes >= 1")
        self.n, self.size, self.seed, self.max_shapes = n, size, seed, max_shapes
        self._cache: dict[int, tuple] = {}

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int):
        if not 0 <= index < self.n:
            raise IndexError(index)
        if index not in self._cache:
            self._cache[index] = make_sample(index, self.size, self.seed, self.max_shapes)
        return self._cache[index]
