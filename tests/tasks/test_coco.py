"""``--data coco:DIR``: users' COCO-format detection data, in both layouts, resized to the run's
input with the boxes scaled and category ids mapped to labels 1..K."""
import json

import pytest
import torch
from PIL import Image

from halp_trt.data import load_data, make_loader
from halp_trt.errors import ConfigError, HalpError


def _write_split(folder, ann_path, boxes_per_image):
    """Images 40 wide, 20 high; categories 7 ("cat") and 9 ("dog"), not contiguous."""
    folder.mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for i, boxes in enumerate(boxes_per_image):
        Image.new("RGB", (40, 20), (10 * i, 100, 200)).save(folder / f"im{i}.png")
        images.append({"id": i + 1, "file_name": f"im{i}.png", "width": 40, "height": 20})
        for cat, bbox in boxes:
            annotations.append({"id": len(annotations) + 1, "image_id": i + 1,
                                "category_id": cat, "bbox": bbox, "area": bbox[2] * bbox[3],
                                "iscrowd": 0})
    ann_path.parent.mkdir(parents=True, exist_ok=True)
    ann_path.write_text(json.dumps({"images": images, "annotations": annotations,
                                    "categories": [{"id": 7, "name": "cat"},
                                                   {"id": 9, "name": "dog"}]}))


TRAIN = [[(9, [4, 2, 10, 8])], [(7, [0, 0, 20, 10]), (9, [20, 10, 20, 10])], []]


@pytest.mark.parametrize("layout", ["coco", "exported"])
def test_coco_data_is_resized_with_its_boxes_and_labels_count_from_one(tmp_path, layout):
    for split in ("train", "val"):
        ann = (tmp_path / "annotations" / f"instances_{split}.json" if layout == "coco"
               else tmp_path / split / "_annotations.coco.json")
        _write_split(tmp_path / split, ann, TRAIN if split == "train" else TRAIN[:2])
    data = load_data(f"coco:{tmp_path}", (32, 32), task="detection")
    assert data.num_classes == 3 and len(data.train) == 3 and len(data.val) == 2
    x, target = data.train[0]
    assert x.shape == (3, 32, 32) and 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    # x scaled by 32/40, y by 32/20; category 9 is the second: label 2
    assert torch.allclose(target["boxes"], torch.tensor([[3.2, 3.2, 11.2, 16.0]]))
    assert target["labels"].tolist() == [2]
    assert data.train[2][1]["boxes"].shape == (0, 4)  # an image without objects stays
    images, targets = next(iter(make_loader(data.train, 2, False)))
    assert images.shape == (2, 3, 32, 32) and [t["labels"].tolist() for t in targets] == [[2],
                                                                                          [1, 2]]


def test_missing_or_wrong_coco_data_is_one_clear_error(tmp_path):
    with pytest.raises(HalpError, match="does not exist"):
        load_data(f"coco:{tmp_path / 'nowhere'}", (32, 32), task="detection")
    (tmp_path / "train").mkdir()
    with pytest.raises(HalpError, match="has no train split: expected"):
        load_data(f"coco:{tmp_path}", (32, 32), task="detection")
    with pytest.raises(ConfigError, match="detection data"):
        load_data(f"coco:{tmp_path}", (32, 32))
    with pytest.raises(ConfigError, match="not segmentation data"):
        load_data("digits", (32, 32), task="segmentation")
