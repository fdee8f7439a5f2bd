"""Finding the table to prune with (halp_trt.latency.resolve), on the shipped resnet18 profiles
of three machines and a backend that only reports an identity: ``auto`` picks the profile of
this machine, an explicit table of another machine is refused naming the difference, and a
model the table does not cover is refused with the command that measures it."""
import json
import os
import shutil

import pytest
import torch
import torch.nn as nn

from halp_trt.errors import ConfigError, HalpError
from halp_trt.graph.layers import list_layers
from halp_trt.latency import resolve
from halp_trt.latency.resolve import cache_name, resolve_table
from halp_trt.runtime.base import Backend

PROFILES = os.path.join(os.path.dirname(__file__), "..", "..", "profiles")
MACHINES = ("xeon-emr-avx512", "zen3-avx2", "zen4-avx512")
SHAPE = (1, 3, 64, 64)
NOT_BACKEND = ("backend", "batch", "input_shape", "model", "protocol", "lattice", "created",
               "halp_trt_version")


def _profile(machine):
    return os.path.join(PROFILES, f"resnet18_1x3x64x64_ort-cpu_{machine}.json")


class IdentityOnly(Backend):
    """The runtime of the machine a profile was measured on, as far as its identity goes; it
    cannot build or time anything (probing is off, and no table may be measured here)."""

    name = "onnxruntime"

    def __init__(self, machine):
        with open(_profile(machine)) as f:
            ident = json.load(f)["identity"]
        self.ident = {k: v for k, v in ident.items() if k not in NOT_BACKEND}

    def _identity_impl(self):
        return self.ident

    def _prepare_impl(self, onnx_bytes, label):
        raise AssertionError("resolve measured something")

    _time_runs_impl = _infer_impl = _prepare_impl


def _specs(width=64, kernel=7):
    """A stem and a classifier whose signatures the resnet18 tables at 64x64 hold."""
    model = nn.Sequential(nn.Conv2d(3, width, kernel, 2, kernel // 2, bias=False), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, 10))
    return model, list_layers(model, torch.randn(*SHAPE), [])


@pytest.mark.parametrize("machine", MACHINES)
def test_auto_picks_the_profile_of_this_machine(machine, tmp_path, monkeypatch):
    """The other machines' profiles of the same model and input come first (shipped folder) and
    are skipped with the keys that differ; this machine's (in the cache) is used."""
    shipped, cache = tmp_path / "profiles", tmp_path / "tables"
    shipped.mkdir()
    cache.mkdir()
    for m in MACHINES:
        shutil.copy(_profile(m), cache if m == machine else shipped)
    monkeypatch.setattr(resolve, "profile_dirs", lambda: [str(shipped), str(cache)])
    model, specs = _specs()
    logs = []
    got = resolve_table("auto", model, "resnet18", SHAPE, specs, IdentityOnly(machine),
                        probe=False, log=logs.append)
    assert got.path == str(cache / os.path.basename(_profile(machine)))
    assert got.reason.startswith("auto: identity matches") and got.probe is None
    skipped = [m for m in logs if m.startswith("not using")]
    assert len(skipped) == 2 and all("measured on another setup (" in m and "isa: table has" in m
                                     for m in skipped)


def test_an_explicit_table_of_another_machine_is_refused_naming_the_difference():
    """Zen 3 latencies (AVX2 kernels) would mislead a pruning run on Zen 4 (AVX-512): refused
    unless overridden, and then the reason the report shows names the difference."""
    model, specs = _specs()
    zen3 = _profile("zen3-avx2")
    with pytest.raises(HalpError, match=r"different setup \(isa: table has \['avx2', 'fma', "
                                        r"'avx', 'sse4_2'\], this setup has \['avx512f'"):
        resolve_table(zen3, model, "resnet18", SHAPE, specs, IdentityOnly("zen4-avx512"),
                      probe=False, log=lambda m: None)
    got = resolve_table(zen3, model, "resnet18", SHAPE, specs, IdentityOnly("zen4-avx512"),
                        allow_mismatch=True, probe=False, log=lambda m: None)
    assert got.path == zen3 and "identity: isa: table has ['avx2'" in got.reason
    # the Zen 3 table does not record the CPU's vendor: unknown, not a match
    assert "cpu_vendor: this setup has 'AuthenticAMD' (not recorded in the table" in got.reason


@pytest.mark.parametrize("width,kernel,why", [
    (64, 5, r"layer 0 \(conv_k5x5_s2x2_p2x2_d1x1_g1_hw64x64\) is not in it"),
    (96, 7, r"layer 0 \(conv_k7x7_s2x2_p3x3_d1x1_g1_hw64x64\) is 3->96 channels, the table "
            r"covers up to 3->64\."),
])
def test_layers_the_table_cannot_answer_are_refused_with_the_command_to_measure(width, kernel,
                                                                                why):
    """A layer missing from the table, or wider than it was measured, has no latency to prune
    with: one error naming the layer and the build-table command for this model and input."""
    model, specs = _specs(width, kernel)
    with pytest.raises(ConfigError, match=why + r".*halp-trt build-table resnet18 "
                                                r"--input-shape 1,3,64,64 --out NEW_TABLE.json"):
        resolve_table(_profile("zen4-avx512"), model, "resnet18", SHAPE, specs,
                      IdentityOnly("zen4-avx512"), probe=False)


def test_cached_tables_of_two_machines_get_different_file_names():
    """Hosts sharing a cache folder must not resume or overwrite each other's tables; the
    name is also safe as a file name whatever the model spec."""
    names = {m: cache_name("tiny_models:tiny_resnet", SHAPE, IdentityOnly(m).identity())
             for m in MACHINES}
    assert len(set(names.values())) == 3
    assert names["zen4-avx512"] == cache_name("tiny_models:tiny_resnet", SHAPE,
                                              IdentityOnly("zen4-avx512").identity())
    assert all(n.startswith("tiny_models_tiny_resnet_1x3x64x64_onnxruntime_fp32_")
               and n.endswith(".json") for n in names.values())
