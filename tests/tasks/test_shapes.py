import time

import pytest
import torch

from halp_trt.tasks.shapes import CLASSES, ShapesDataset, make_sample


def test_an_image_depends_on_its_seed_and_index_only():
    a_img, a_t = make_sample(5, size=64, seed=1)
    ds = ShapesDataset(10, size=64, seed=1)
    b_img, b_t = ds[5]
    assert torch.equal(a_img, b_img)
    assert all(torch.equal(a_t[k], b_t[k]) for k in a_t)
    other, _ = make_sample(5, size=64, seed=2)
    assert not torch.equal(a_img, other)
    assert not torch.equal(a_img, make_sample(6, size=64, seed=1)[0])


def test_targets_describe_the_visible_shapes():
    labels_seen = set()
    for i in range(40):
        img, t = make_sample(i, size=64, seed=0)
        assert img.shape == (3, 64, 64) and 0 <= img.min() and img.max() <= 1
        k = len(t["labels"])
        assert t["boxes"].shape == (k, 4) and t["masks"].shape == (k, 64, 64)
        assert ((t["labels"] >= 1) & (t["labels"] < len(CLASSES))).all()
        labels_seen |= set(t["labels"].tolist())
        for box, mask, label in zip(t["boxes"], t["masks"], t["labels"]):
            ys, xs = torch.nonzero(mask, as_tuple=True)
            # the box is the tightest one around the visible pixels
            assert box.tolist() == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
            assert (t["mask"][mask.bool()] == label).all()
        # masks do not overlap (occluded pixels belong to the shape in front) and the semantic
        # mask is background exactly where no instance is
        assert t["masks"].sum(0).max() <= 1
        assert torch.equal(t["mask"] > 0, t["masks"].sum(0) > 0)
    assert labels_seen == {1, 2, 3}


def test_a_few_thousand_images_take_seconds():
    ds = ShapesDataset(300, size=128, seed=0)
    t0 = time.perf_counter()
    for i in range(len(ds)):
        ds[i]
    assert time.perf_counter() - t0 < 10  # 300 at 128 px: a few thousand in well under a minute


def test_bad_sizes_are_refused():
    with pytest.raises(ValueError, match="size >= 16"):
        ShapesDataset(10, size=8)
