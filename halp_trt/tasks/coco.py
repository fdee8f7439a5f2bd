"""Users' detection and segmentation data in COCO format (``--data coco:DIR``), read with
torchvision's ``CocoDetection`` (pycocotools underneath).

Two layouts are found, per split (``train``, ``val``):

- ``DIR/annotations/instances_{split}.json`` with the images in ``DIR/{split}/`` (COCO's own);
- ``DIR/{split}/_annotations.coco.json`` beside the images (what labelling tools export).

Each image is resized to the run's square input (boxes scaled with it) and given as a float
tensor in [0, 1] — the detector's transform normalises it. COCO's category ids (any integers)
become labels 1..K in id order, 0 being the background, as torchvision's detectors count. For
segmentation the objects' masks (polygons or RLE; a box where an object has none) are painted
into one class-per-pixel mask, larger objects first so that a smaller one on top stays
visible, and resized with the image (nearest neighbour)."""
from __future__ import annotations

import os

import torch
from torch.utils.data import Dataset

from halp_trt.errors import HalpError
from halp_trt.tasks.detection import collate_detection

LAYOUTS = ("DIR/annotations/instances_{split}.json with images in DIR/{split}/, or "
           "DIR/{split}/_annotations.coco.json beside the images")


def _split_files(root: str, split: str) -> tuple[str, str]:
    """(annotation file, image folder) of ``split``; one clear error when neither layout is
    there."""
    candidates = [(os.path.join(root, "annotations", f"instances_{split}.json"),
                   os.path.join(root, split)),
                  (os.path.join(root, split, "_annotations.coco.json"),
                   os.path.join(root, split))]
    for ann, images in candidates:
        if os.path.isfile(ann) and os.path.isdir(images):
            return ann, images
    raise HalpError(f"coco:{root} has no {split} split: expected {LAYOUTS}")


class CocoPairs(Dataset):
    """One split as (image (3, size, size) in [0, 1], {boxes (x1, y1, x2, y2), labels})."""

    collate_fn = staticmethod(collate_detection)

    def __init__(self, annotation_file: str, image_dir: str, size: int,
                 label_of: dict[int, int] | None = None):
        import contextlib
        import io

        from torchvision.datasets import CocoDetection

        try:
            with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
                self.coco = CocoDetection(image_dir, annotation_file)
        except (ValueError, KeyError, TypeError) as exc:  # json that is not COCO's format
            raise HalpError(f"{annotation_file} is not a COCO annotation file ({type(exc).__name__}"
                            f": {exc})") from None
        if not len(self.coco):
            raise HalpError(f"{annotation_file} lists no images")
        categories = sorted(self.coco.coco.getCatIds())
        self.label_of = label_of or {cat: i + 1 for i, cat in enumerate(categories)}
        self.num_classes = len(self.label_of) + 1
        self.size = size

    def __len__(self) -> int:
        return len(self.coco)

    def __getitem__(self, index: int):
        import torchvision.transforms.functional as F

        image, annotations = self.coco[index]
        width, height = image.size
        x = F.to_tensor(F.resize(image.convert("RGB"), [self.size, self.size]))
        sx, sy = self.size / width, self.size / height
        boxes, labels = [], []
        for a in annotations:
            left, top, w, h = a["bbox"]
            if a.get("iscrowd", 0) or w <= 0 or h <= 0 or a["category_id"] not in self.label_of:
                continue
            boxes.append([left * sx, top * sy, (left + w) * sx, (top + h) * sy])
            labels.append(self.label_of[a["category_id"]])
        return x, {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                   "labels": torch.tensor(labels, dtype=torch.int64)}


class CocoSegmentation(CocoPairs):
    """One split as (image (3, size, size) in [0, 1], class-per-pixel mask (size, size))."""

    collate_fn = None  # (image, mask) pairs stack as they are

    def __getitem__(self, index: int):
        import numpy as np
        import torchvision.transforms.functional as F

        image, annotations = self.coco[index]
        width, height = image.size
        x = F.to_tensor(F.resize(image.convert("RGB"), [self.size, self.size]))
        mask = np.zeros((height, width), dtype=np.int64)
        objects = [a for a in annotations if not a.get("iscrowd", 0) and
                   a["category_id"] in self.label_of]
        for a in sorted(objects, key=lambda a: -float(a.get("area") or
                                                       a["bbox"][2] * a["bbox"][3])):
            if a.get("segmentation"):
                painted = self.coco.coco.annToMask(a).astype(bool)
            else:  # boxes only: the box is the object
                left, top, w, h = (int(round(v)) for v in a["bbox"])
                painted = np.zeros_like(mask, dtype=bool)
                painted[max(top, 0):top + h, max(left, 0):left + w] = True
            mask[painted] = self.label_of[a["category_id"]]
        mask = torch.from_numpy(mask)[None, None].float()
        mask = torch.nn.functional.interpolate(mask, size=(self.size, self.size),
                                               mode="nearest")
        return x, mask[0, 0].long()


def coco_splits(root: str, size: int, task: str = "detection") -> tuple[CocoPairs, CocoPairs]:
    """(train, val) of ``coco:root`` at ``size`` (boxes for ``task`` detection, class masks
    for segmentation); the validation split is labelled with the training split's categories
    (a category only in val has nothing to learn from)."""
    if not os.path.isdir(root):
        raise HalpError(f"data folder {root} does not exist (coco:DIR needs {LAYOUTS})")
    try:
        import pycocotools  # noqa: F401
    except ImportError:
        raise HalpError("coco:DIR needs pycocotools: pip install 'halp-trt[dense]'") from None
    kind = CocoSegmentation if task == "segmentation" else CocoPairs
    train = kind(*_split_files(root, "train"), size)
    val = kind(*_split_files(root, "val"), size, label_of=train.label_of)
    return train, val
