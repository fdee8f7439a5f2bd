import json
import errno
import os

import pytest
import torch
import torch.nn as nn
import torchvision

from fakes import StaircaseLatencyModel
from halp_trt.errors import HalpError
from halp_trt.pruning.pruner import HALPConfig, HALPPruner
from halp_trt.pruning.result import FORMAT, VERSION, PruningResult, apply_result

X = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def make_model(seed=0):
    torch.manual_seed(seed)
    return torchvision.models.resnet18(num_classes=10)


@pytest.fixture(scope="module")
def pruned_run(tmp_path_factory):
    """resnet18 pruned by one HALP step (magnitude importance), saved as result + weights."""
    d = tmp_path_factory.mktemp("run")
    model = make_model()
    table = StaircaseLatencyModel(step=8)
    pruner = HALPPruner(model, X, table, HALPConfig(target=0.5, steps=1, interval=1,
                                                    importance="magnitude", exclude=["conv1"]))
    pruner.step()
    result = pruner.result()
    pruned = pruner.finalize().eval()
    result.save(str(d / "result.json"))
    torch.save(pruned.state_dict(), d / "weights.pt")
    with torch.no_grad():
        out = pruned(X)
    return d, result, pruned, out, table


def test_round_trip_rebuilds_architecture_and_outputs(pruned_run):
    d, result, pruned, out, table = pruned_run
    loaded = PruningResult.load(str(d / "result.json"))
    assert loaded.to_json() == result.to_json()
    fresh = make_model(seed=123)  # different initial weights: they must come from the file
    rebuilt = apply_result(fresh, X, loaded)
    rebuilt.load_state_dict(torch.load(d / "weights.pt", weights_only=True), strict=True)
    rebuilt.eval()
    shapes = {k: v.shape for k, v in rebuilt.state_dict().items()}
    assert shapes == {k: v.shape for k, v in pruned.state_dict().items()}
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(X), out, rtol=1e-6, atol=1e-7)
    # something was really pruned, and the excluded stem kept its width
    assert sum(p.numel() for p in rebuilt.parameters()) < sum(
        p.numel() for p in make_model().parameters())
    assert rebuilt.conv1.out_channels == 64


def test_file_contents(pruned_run):
    d, result, _, _, table = pruned_run
    raw = json.loads((d / "result.json").read_text())
    assert raw["format"] == FORMAT and raw["version"] == VERSION
    assert raw["table_identity"] == table.identity
    assert raw["config"]["target"] == "0.5" and raw["config"]["importance"] == "magnitude"
    assert raw["config"]["exclude"] == ["conv1"]
    assert set(raw["kept"]) == set(raw["original_widths"])
    assert any(len(v) < raw["original_widths"][k] for k, v in raw["kept"].items())
    assert raw["predicted_ms"] <= 0.5 * raw["full_predicted_ms"] + 1e-9
    assert len(raw["history"]) == 1
    assert raw["input_shape"] == list(X.shape)


def test_save_is_atomic(tmp_path, monkeypatch, pruned_run):
    _, result, _, _, _ = pruned_run
    path = tmp_path / "r.json"
    path.write_text("previous")
    result.save(str(path))  # overwrites
    assert PruningResult.load(str(path)).kept == result.kept
    assert os.listdir(tmp_path) == ["r.json"]  # no temporary file left behind

    def fail(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "replace", fail)
    before = path.read_text()
    with pytest.raises(HalpError, match="No space left"):  # one clear error naming the path
        result.save(str(path))
    assert path.read_text() == before and os.listdir(tmp_path) == ["r.json"]


def _valid():
    return {"format": FORMAT, "version": VERSION, "kept": {"a": [0, 2], "b": [1]},
            "original_widths": {"a": 4, "b": 2}, "table_identity": {}, "config": {},
            "full_predicted_ms": 2.0, "predicted_ms": 1.0, "history": []}


@pytest.mark.parametrize("mutate", [
    lambda d: d.update(format="something-else"),
    lambda d: d.update(version=99),
    lambda d: d.pop("kept"),
    lambda d: d.update(kept=[[0, 2]]),
    lambda d: d["kept"].update(a=[0, 4]),  # out of range
    lambda d: d["kept"].update(a=[2, 0]),  # not ascending
    lambda d: d["kept"].update(a=[0, 0]),  # duplicate
    lambda d: d["kept"].update(a=[]),  # empty group
    lambda d: d["kept"].update(a=[0, True]),
    lambda d: d["kept"].update(a=[0.5]),
    lambda d: d["kept"].pop("b"),  # groups differ from original_widths
    lambda d: d["original_widths"].update(a="4"),
    lambda d: d["original_widths"].update(a=0),
    lambda d: d.update(table_identity=[]),
    lambda d: d.update(predicted_ms="fast"),
    lambda d: d.update(history={}),
    lambda d: d.update(input_shape=[1, 3, "32", 32]),
])
def test_load_rejects_bad_files(tmp_path, mutate):
    d = _valid()
    PruningResult.from_json(d)  # the unmutated one is fine
    mutate(d)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(d))
    with pytest.raises(HalpError, match="not a valid halp-trt pruning result"):
        PruningResult.load(str(path))


def test_load_rejects_non_json_and_missing(tmp_path):
    (tmp_path / "x.json").write_text("{not json")
    with pytest.raises(HalpError, match="not valid JSON"):
        PruningResult.load(str(tmp_path / "x.json"))
    (tmp_path / "y.json").write_bytes(b"\x80\x04\x95")  # a pickle is not a result
    with pytest.raises(HalpError):
        PruningResult.load(str(tmp_path / "y.json"))
    (tmp_path / "z.json").write_text("[1, 2]")
    with pytest.raises(HalpError, match="JSON object"):
        PruningResult.load(str(tmp_path / "z.json"))
    with pytest.raises(HalpError, match="does not exist"):
        PruningResult.load(str(tmp_path / "missing.json"))


def test_apply_to_the_wrong_architecture(pruned_run):
    _, result, _, _, _ = pruned_run
    wrong = torchvision.models.resnet18(num_classes=10, width_per_group=64)
    # same names, different widths
    wrong.layer1[0].conv1 = nn.Conv2d(64, 32, 3, padding=1, bias=False)
    wrong.layer1[0].bn1 = nn.BatchNorm2d(32)
    wrong.layer1[0].conv2 = nn.Conv2d(32, 64, 3, padding=1, bias=False)
    with pytest.raises(HalpError, match="not the architecture"):
        apply_result(wrong, X, result)
    other = torchvision.models.mobilenet_v2(num_classes=10)
    with pytest.raises(HalpError, match="not the architecture"):
        apply_result(other, X, result)
