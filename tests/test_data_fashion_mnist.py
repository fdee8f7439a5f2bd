"""``fashion-mnist[:DIR]``: tiny idx files written here (plain and gzip), read through torchvision's
idx reader; every user mistake is one HalpError that names the file or the Debian package."""
import gzip
import struct

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from halp_trt import data as data_mod
from halp_trt.cli import main
from halp_trt.data import _MEAN, _STD, check_sample, load_data, make_loader
from halp_trt.errors import ConfigError, HalpError
from fakes import ReachedHeavyWork

N_TRAIN, N_TEST = 12, 6
NAMES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
         "t10k-labels-idx1-ubyte")


def idx_images(images: np.ndarray) -> bytes:
    return struct.pack(">IIII", 0x00000803, *images.shape) + images.astype(np.uint8).tobytes()


def idx_labels(labels: np.ndarray) -> bytes:
    return struct.pack(">II", 0x00000801, len(labels)) + labels.astype(np.uint8).tobytes()


def make_set(n, seed):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    images[0] = 255  # an all-white image and an all-black one: known normalized values
    images[1] = 0
    return images, (np.arange(n) * 7 + seed) % 10


@pytest.fixture
def sets():
    return {"train": make_set(N_TRAIN, 1), "t10k": make_set(N_TEST, 2)}


def write_dir(root, sets, gz=False):
    root.mkdir(parents=True, exist_ok=True)
    for part, (images, labels) in sets.items():
        for name, payload in ((f"{part}-images-idx3-ubyte", idx_images(images)),
                              (f"{part}-labels-idx1-ubyte", idx_labels(labels))):
            if gz:
                (root / (name + ".gz")).write_bytes(gzip.compress(payload))
            else:
                (root / name).write_bytes(payload)
    return root


def expected(images, hw):
    """What the model should see: [0,1], bilinear resize, 3 channels, ImageNet statistics."""
    x = torch.from_numpy(images).float()[:, None] / 255.0
    x = torch.nn.functional.interpolate(x, size=hw, mode="bilinear", align_corners=False)
    x = x.repeat(1, 3, 1, 1)
    return (x - torch.tensor(_MEAN)[:, None, None]) / torch.tensor(_STD)[:, None, None]


@pytest.mark.parametrize("gz", [False, True])
def test_reads_both_splits(tmp_path, sets, gz):
    root = write_dir(tmp_path / "fm", sets, gz=gz)
    d = load_data(f"fashion-mnist:{root}", (40, 36))
    assert d.num_classes == 10 and d.name == f"fashion-mnist:{root}"
    assert (len(d.train), len(d.val)) == (N_TRAIN, N_TEST)  # validation = the t10k split
    for ds, part in ((d.train, "train"), (d.val, "t10k")):
        images, labels = sets[part]
        xs, ys = zip(*(ds[i] for i in range(len(ds))))
        x, y = torch.stack(xs), torch.stack(ys)
        assert x.shape == (len(labels), 3, 40, 36) and x.dtype == torch.float32
        assert y.dtype == torch.long and y.tolist() == labels.tolist()
        torch.testing.assert_close(x, expected(images, (40, 36)), rtol=0, atol=1e-6)
        white = (1 - torch.tensor(_MEAN)) / torch.tensor(_STD)
        black = -torch.tensor(_MEAN) / torch.tensor(_STD)
        torch.testing.assert_close(x[0].amin((1, 2)), white)
        torch.testing.assert_close(x[0].amax((1, 2)), white)
        torch.testing.assert_close(x[1].amax((1, 2)), black)
    # kept as the uint8 28x28 originals, converted per item (no pre-resized float copy)
    assert d.train.images.dtype == torch.uint8 and d.train.images.shape == (N_TRAIN, 28, 28)


def test_gzip_and_plain_give_identical_tensors(tmp_path, sets):
    plain = load_data(f"fashion-mnist:{write_dir(tmp_path / 'p', sets)}", (32, 32))
    gz = load_data(f"fashion-mnist:{write_dir(tmp_path / 'g', sets, gz=True)}", (32, 32))
    for a, b in ((plain.train, gz.train), (plain.val, gz.val)):
        assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
        assert all(torch.equal(a[i][0], b[i][0]) for i in range(len(a)))


def test_make_loader_and_check_sample(tmp_path, sets):
    root = write_dir(tmp_path / "fm", sets, gz=True)
    d = load_data("fashion-mnist:" + str(root), (32, 32))
    check_sample(d, (1, 3, 32, 32))
    x, y = next(iter(make_loader(d.train, 5, True, seed=3)))
    assert x.shape == (5, 3, 32, 32) and x.dtype == torch.float32 and y.shape == (5,)
    batches = list(make_loader(d.val, 4, False))
    assert [len(b[1]) for b in batches] == [4, 2]
    assert torch.cat([b[1] for b in batches]).tolist() == sets["t10k"][1].tolist()
    with pytest.raises(HalpError, match=r"shape \(3, 32, 32\).*expects \(3, 64, 64\)"):
        check_sample(d, (1, 3, 64, 64))


@pytest.mark.parametrize("subset", [False, True])
@pytest.mark.parametrize("shuffle", [False, True])
def test_in_memory_batches_equal_what_a_dataloader_collates(tmp_path, sets, subset, shuffle):
    """The same batches, in the same order for a seed, as DataLoader over the items."""
    from torch.utils.data import DataLoader, Subset, TensorDataset

    d = load_data(f"fashion-mnist:{write_dir(tmp_path / 'fm', sets)}", (24, 20))
    tensors = TensorDataset(torch.randn(N_TRAIN, 3, 4, 4), torch.arange(N_TRAIN))
    for ds in (d.train, tensors):
        if subset:
            ds = Subset(ds, list(range(1, N_TRAIN, 2)))
        fast = make_loader(ds, 3, shuffle, seed=5)
        assert type(fast).__name__ == "InMemoryBatches"
        g = torch.Generator()
        g.manual_seed(5)
        slow = DataLoader(ds, batch_size=3, shuffle=shuffle, generator=g)
        for epoch in range(2):  # re-seeded per epoch as the training loops do
            fast.generator.manual_seed(epoch)
            slow.generator.manual_seed(epoch)
            a, b = list(fast), list(slow)
            assert len(a) == len(b) == len(fast)
            for (xa, ya), (xb, yb) in zip(a, b):
                assert torch.equal(ya, yb)
                torch.testing.assert_close(xa, xb, rtol=0, atol=1e-6)
        if shuffle:  # a different seed is a different order
            fast.generator.manual_seed(99)
            assert [y.tolist() for _, y in fast] != [y.tolist() for y in (b[1] for b in a)]


def test_plain_spec_uses_the_debian_folder(tmp_path, sets, monkeypatch):
    monkeypatch.setattr(data_mod, "FASHION_MNIST_DIR", str(write_dir(tmp_path / "deb", sets)))
    d = load_data("fashion-mnist", (28, 28))
    assert d.name == f"fashion-mnist:{tmp_path / 'deb'}" and len(d.val) == N_TEST


def test_missing_folder_names_the_package(tmp_path, monkeypatch):
    monkeypatch.setattr(data_mod, "FASHION_MNIST_DIR", str(tmp_path / "no-debian"))
    for spec in (f"fashion-mnist:{tmp_path / 'nope'}", "fashion-mnist"):
        with pytest.raises(HalpError) as err:
            load_data(spec, (32, 32))
        msg = str(err.value)
        assert "does not exist" in msg and "apt-get install -y dataset-fashion-mnist" in msg
        assert all(name in msg for name in NAMES)
    assert "no-debian" in msg  # the plain spec names the default folder it looked in


def test_missing_files_are_named(tmp_path, sets):
    root = write_dir(tmp_path / "fm", sets, gz=True)
    (root / "t10k-labels-idx1-ubyte.gz").unlink()
    (root / "train-images-idx3-ubyte.gz").unlink()
    with pytest.raises(HalpError) as err:
        load_data(f"fashion-mnist:{root}", (32, 32))
    head = str(err.value).split(";")[0]  # the part that lists what is missing, before the hint
    assert "train-images-idx3-ubyte" in head and "t10k-labels-idx1-ubyte" in head
    assert "train-labels" not in head and "t10k-images" not in head


@pytest.mark.parametrize("gz", [False, True])
def test_wrong_magic_names_the_file(tmp_path, sets, gz):
    root = write_dir(tmp_path / "fm", sets, gz=gz)
    name = "t10k-images-idx3-ubyte" + (".gz" if gz else "")
    # a label file where the images should be: valid idx, wrong kind
    payload = idx_labels(np.zeros(N_TEST))
    (root / name).write_bytes(gzip.compress(payload) if gz else payload)
    with pytest.raises(HalpError, match=rf"{name} is not an idx image file \(magic number "
                                        r"0x00000801, expected magic number 0x00000803\)"):
        load_data(f"fashion-mnist:{root}", (32, 32))


@pytest.mark.parametrize("name, payload, fragment", [
    ("train-labels-idx1-ubyte", b"<html>404 Not Found</html>", "is not an idx label file"),
    ("train-labels-idx1-ubyte", b"", "is not an idx label file (only 0 bytes"),
    ("train-images-idx3-ubyte", "truncated", "is not an idx image file: it is corrupt or truncated"),
    ("train-images-idx3-ubyte.gz", b"\x1f\x8b not really gzip", "cannot read"),
    ("train-images-idx3-ubyte.gz", "truncated-gz", "cannot read"),
])
def test_corrupt_files_name_the_file(tmp_path, sets, name, payload, fragment):
    root = write_dir(tmp_path / "fm", sets, gz=name.endswith(".gz"))
    good = idx_images(sets["train"][0])
    if payload == "truncated":
        payload = good[:-100]
    elif payload == "truncated-gz":
        payload = gzip.compress(good)[:-50]
    (root / name).write_bytes(payload)
    with pytest.raises(HalpError) as err:
        load_data(f"fashion-mnist:{root}", (32, 32))
    assert str(root / name) in str(err.value) and fragment in str(err.value)


def test_mismatched_counts_and_bad_labels(tmp_path, sets):
    root = write_dir(tmp_path / "fm", sets)
    (root / "train-labels-idx1-ubyte").write_bytes(idx_labels(np.zeros(N_TRAIN - 1)))
    with pytest.raises(HalpError, match="12 images but train-labels 11 labels"):
        load_data(f"fashion-mnist:{root}", (32, 32))
    (root / "train-labels-idx1-ubyte").write_bytes(idx_labels(np.full(N_TRAIN, 10)))
    with pytest.raises(HalpError, match="labels outside 0..9"):
        load_data(f"fashion-mnist:{root}", (32, 32))


def test_unknown_spec_lists_fashion_mnist():
    with pytest.raises(ConfigError, match=r"fashion-mnist\[:DIR\]"):
        load_data("fashion", (32, 32))


def test_cli_accepts_the_spec_and_reports_errors_cleanly(tmp_path, sets, no_heavy_work):
    """Through prune-and-deploy: good data gets past every check (to the first heavy step, which
    the fixture stops); a bad folder is one clean error line, exit code 2, no traceback."""
    root = write_dir(tmp_path / "fm", sets, gz=True)
    args = ["prune-and-deploy", "--out", str(tmp_path / "out"), "--model",
            "tiny_models:ten_class_net", "--input-size", "16", "--pretrain-epochs", "0",
            "--max-batches", "1", "--allow-untrained", "--data"]
    res = CliRunner().invoke(main, args + [f"fashion-mnist:{root}"])
    assert isinstance(res.exception, ReachedHeavyWork), res.output
    res = CliRunner().invoke(main, args + [f"fashion-mnist:{tmp_path / 'nope'}"])
    assert res.exit_code == 2 and "Traceback" not in res.output, res.output
    assert "error: " in res.output and "dataset-fashion-mnist" in res.output
