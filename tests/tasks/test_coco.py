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


def test_coco_segmentation_paints_each_objects_mask_smaller_objects_on_top(tmp_path):
    """coco:DIR for segmentation: polygons become a class-per-pixel mask resized with the
    image (nearest); an object without a polygon fills its box; where objects overlap the
    smaller one, drawn last, stays visible; crowds and unlisted categories stay background."""
    for split in ("train", "val"):
        folder = tmp_path / split
        folder.mkdir()
        Image.new("RGB", (40, 20), (0, 100, 200)).save(folder / "im0.png")
        annotations = [
            # the small dog (box only, no polygon) listed first, over the big cat
            {"id": 1, "image_id": 1, "category_id": 9, "bbox": [4, 4, 8, 8], "area": 64,
             "iscrowd": 0},
            {"id": 2, "image_id": 1, "category_id": 7, "bbox": [0, 0, 20, 20], "area": 400,
             "iscrowd": 0, "segmentation": [[0, 0, 20, 0, 20, 20, 0, 20]]},
            {"id": 3, "image_id": 1, "category_id": 7, "bbox": [30, 0, 10, 20], "area": 200,
             "iscrowd": 1, "segmentation": [[30, 0, 40, 0, 40, 20, 30, 20]]}]
        (tmp_path / "annotations").mkdir(exist_ok=True)
        (tmp_path / "annotations" / f"instances_{split}.json").write_text(json.dumps({
            "images": [{"id": 1, "file_name": "im0.png", "width": 40, "height": 20}],
            "annotations": annotations,
            "categories": [{"id": 7, "name": "cat"}, {"id": 9, "name": "dog"}]}))
    data = load_data(f"coco:{tmp_path}", (20, 20), task="segmentation")
    assert data.num_classes == 3
    x, mask = data.train[0]
    assert x.shape == (3, 20, 20) and mask.shape == (20, 20) and mask.dtype == torch.int64
    # x halves (40 -> 20), y stays: the cat's polygon covers columns 0-9, the dog's box
    # columns 2-5 of rows 4-11, the crowd (columns 15-19) is background
    assert int(mask[0, 0]) == 1 and int(mask[19, 9]) == 1
    assert int(mask[6, 3]) == 2 and int(mask[10, 4]) == 2
    assert int(mask[10, 17]) == 0 and int(mask[0, 12]) == 0
    images, masks = next(iter(make_loader(data.train, 1, False)))
    assert images.shape == (1, 3, 20, 20) and masks.shape == (1, 20, 20)


def _write_squares(tmp_path, n_per_split=(8, 4)):
    """Images 32x32 with one filled square per image of category 3, 5 or 8, its polygon and
    box in COCO's format, both splits in COCO's own layout."""
    from PIL import ImageDraw

    colours = {3: (220, 40, 40), 5: (40, 220, 40), 8: (40, 40, 220)}
    for split, n in zip(("train", "val"), n_per_split):
        folder = tmp_path / split
        folder.mkdir(parents=True)
        images, annotations = [], []
        for i in range(n):
            cat = (3, 5, 8)[i % 3]
            left, top, side = 2 + 3 * (i % 4), 4 + 2 * (i % 5), 12 + i % 3 * 4
            image = Image.new("RGB", (32, 32), (90, 90, 90))
            ImageDraw.Draw(image).rectangle([left, top, left + side - 1, top + side - 1],
                                            fill=colours[cat])
            image.save(folder / f"im{i}.png")
            images.append({"id": i + 1, "file_name": f"im{i}.png", "width": 32, "height": 32})
            annotations.append({
                "id": i + 1, "image_id": i + 1, "category_id": cat, "iscrowd": 0,
                "bbox": [left, top, side, side], "area": side * side,
                "segmentation": [[left, top, left + side, top, left + side, top + side, left,
                                  top + side]]})
        (tmp_path / "annotations").mkdir(exist_ok=True)
        (tmp_path / "annotations" / f"instances_{split}.json").write_text(json.dumps({
            "images": images, "annotations": annotations,
            "categories": [{"id": c, "name": f"c{c}"} for c in (3, 5, 8)]}))


def test_the_pipeline_prunes_a_segmentation_model_on_coco_data(tmp_path, monkeypatch):
    """prune-and-deploy --task segmentation --data coco:DIR: trained on the masks painted from
    the polygons, pruned, exported, checked, mean IoU before and after in the report."""
    from halp_trt.pipeline import prune_and_deploy
    from halp_trt.pipeline.config import DeployConfig

    monkeypatch.setenv("HALP_TRT_CACHE", str(tmp_path / "cache"))
    _write_squares(tmp_path / "data")
    report = prune_and_deploy(DeployConfig(
        out=str(tmp_path / "out"), model="pattern_models:ASPPHead", task="segmentation",
        data=f"coco:{tmp_path / 'data'}", input_size=32, pretrain_epochs=1, train_batch_size=4,
        epochs=1, steps=2, interval=2, target="0.75", rounds=15, allow_untrained=True,
        progress=False))
    assert report["accuracy"]["metric"] == "mean IoU"
    assert 0.0 <= report["accuracy"]["pruned"] <= 1.0
    assert "coco:" in json.dumps(report)
    assert report["numeric_check"]["n_inputs"] >= 1
    assert any(w["kept"] < w["original"] for w in report["widths"].values())
