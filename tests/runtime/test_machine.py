"""The CPU identity: fields that tell machine classes apart even under a masked name."""
import pytest

from halp_trt.latency.identity import compare_identity
from halp_trt.runtime.machine import CpuCacheEvictor, cold_level_for, cpu_identity, \
    machine_class

ZEN3 = """processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 25
model\t\t: 1
model name\t: AMD EPYC
stepping\t: 1
flags\t\t: fpu sse4_2 avx fma avx2 bmi2 sha_ni

processor\t: 1
vendor_id\t: SomethingElse
"""
ZEN5 = ZEN3.replace("cpu family\t: 25", "cpu family\t: 26").replace(
    "model\t\t: 1", "model\t\t: 2").replace("sha_ni", "avx512f avx512bw avx512_vnni avx512_bf16")


def test_two_hosts_with_the_same_masked_name_differ_by_family_model_and_isa(tmp_path):
    (tmp_path / "zen3").write_text(ZEN3)
    (tmp_path / "zen5").write_text(ZEN5)
    zen3, zen5 = cpu_identity(str(tmp_path / "zen3")), cpu_identity(str(tmp_path / "zen5"))
    assert zen3["cpu_model"] == zen5["cpu_model"] == "AMD EPYC"
    assert zen3["cpu_vendor"] == "AuthenticAMD"  # the first processor's block only
    assert (zen3["cpu_family"], zen3["cpu_model_number"], zen3["cpu_stepping"]) == (25, 1, 1)
    assert zen3["isa"] == ["avx2", "fma", "avx", "sse4_2"]  # kernel flags only, fixed order
    assert zen5["isa"][:4] == ["avx512f", "avx512bw", "avx512_vnni", "avx512_bf16"]
    lines = compare_identity(zen3, zen5).differs
    assert [line.split(":")[0] for line in lines] == ["cpu_family", "cpu_model_number", "isa"]
    assert "family 26 model 2" in machine_class(zen5) and "avx512f" in machine_class(zen5)


XEON = """processor\t: 0
vendor_id\t: GenuineIntel
cpu family\t: 6
model\t\t: 207
model name\t: Intel(R) Xeon(R) Processor
stepping\t: 2
flags\t\t: fpu sse4_2 avx fma avx2 avx512f avx512bw avx512_vnni avx512_bf16 avx512_fp16 avx_vnni
"""
ZEN4 = ZEN3.replace("model\t\t: 1", "model\t\t: 17").replace(
    "sha_ni", "avx512f avx512bw avx512_vnni avx512_bf16")
# Arm servers: no model name, the part number tells cores apart, flags are "Features"
NEOVERSE_N1 = """processor\t: 0
BogoMIPS\t: 50.00
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm \
lrcpc dcpop asimddp ssbs
CPU implementer\t: 0x41
CPU architecture: 8
CPU variant\t: 0x3
CPU part\t: 0xd0c
CPU revision\t: 1
"""
NEOVERSE_V1 = NEOVERSE_N1.replace("0xd0c", "0xd40").replace("asimddp ssbs",
                                                            "asimddp ssbs sve svebf16")


def test_intel_and_amd_with_the_same_vector_width_differ_by_vendor_family_model(tmp_path):
    (tmp_path / "xeon").write_text(XEON)
    (tmp_path / "zen4").write_text(ZEN4)
    xeon, zen4 = cpu_identity(str(tmp_path / "xeon")), cpu_identity(str(tmp_path / "zen4"))
    assert (xeon["cpu_vendor"], xeon["cpu_family"], xeon["cpu_model_number"]) == \
        ("GenuineIntel", 6, 207)
    assert "avx512_fp16" in xeon["isa"] and "avx_vnni" in xeon["isa"]
    assert "avx512f" in zen4["isa"] and "avx512_fp16" not in zen4["isa"]
    keys = [line.split(":")[0] for line in compare_identity(zen4, xeon).differs]
    assert {"cpu_model", "cpu_vendor", "cpu_family", "cpu_model_number", "isa"} <= set(keys)


def test_arm_cores_differ_by_part_and_features(tmp_path):
    # cpu_model (no "model name" on Arm), caches and cores come from the host running the
    # test, the same for both: only what the files say can differ
    (tmp_path / "n1").write_text(NEOVERSE_N1)
    (tmp_path / "v1").write_text(NEOVERSE_V1)
    n1, v1 = cpu_identity(str(tmp_path / "n1")), cpu_identity(str(tmp_path / "v1"))
    assert (n1["cpu_vendor"], n1["cpu_family"], n1["cpu_model_number"]) == ("0x41", 8, 0xd0c)
    assert n1["isa"] == ["asimd", "asimddp", "neon"]
    assert v1["isa"] == ["asimd", "asimddp", "sve", "neon"]
    lines = compare_identity(n1, v1).differs
    assert [line.split(":")[0] for line in lines] == ["cpu_model_number", "isa"]
    assert "sve" in machine_class(v1) and "neon" in machine_class(n1)


def test_this_machine_reports_its_cores_and_caches():
    ident = cpu_identity()
    assert ident["cpus_available"] >= 1
    assert ident["cache_l2_bytes"] is None or ident["cache_l2_bytes"] >= 64 << 10
    assert isinstance(ident["isa"], list)


def test_a_missing_cpuinfo_gives_unknown_fields_not_an_error(tmp_path):
    ident = cpu_identity(str(tmp_path / "absent"))
    assert ident["cpu_family"] is None and ident["isa"] == []


def test_weights_that_fit_the_last_level_cache_are_timed_from_it():
    mb = 1 << 20
    assert cold_level_for(45 * mb, llc_bytes=260 * mb) == "l2"  # resnet18 on the Xeon
    assert cold_level_for(45 * mb, llc_bytes=32 * mb) == "llc"  # on Zen 4
    assert cold_level_for(20 * mb, llc_bytes=32 * mb) == "llc", "half the cache is others'"
    ev = CpuCacheEvictor()
    ev.evict("l2")
    ev.evict("llc")
    with pytest.raises(ValueError, match="cache level"):
        ev.evict("l3")
    ev.release()
