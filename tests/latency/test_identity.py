"""Identity comparison: differences, keys a table does not record, informational notes."""
from halp_trt.latency.identity import COMPATIBLE_KEYS, compare_identity

HERE = {"backend": "onnxruntime", "cpu_model": "AMD EPYC", "cpu_family": 26,
        "isa": ["avx512f", "avx2"], "threads": 1, "cpu_stepping": 0, "cpus_available": 2}


def test_a_table_from_before_the_machine_fields_is_unknown_never_a_silent_match():
    old = {"backend": "onnxruntime", "cpu_model": "AMD EPYC", "isa": ["avx512f", "avx2"],
           "threads": 1}
    cmp = compare_identity(old, HERE, COMPATIBLE_KEYS)
    assert not cmp.differs and not cmp.matches
    assert cmp.unknown == ["cpu_family: this setup has 26"]


def test_differences_name_the_key_and_both_values_and_info_keys_never_refuse():
    table = {**HERE, "isa": ["avx2"], "cpu_stepping": 1, "cpus_available": 8}
    cmp = compare_identity(table, HERE, COMPATIBLE_KEYS)
    assert cmp.differs == ["isa: table has ['avx2'], this setup has ['avx512f', 'avx2']"]
    assert [n.split(":")[0] for n in cmp.notes] == ["cpu_stepping", "cpus_available"]
    assert any(line.startswith("note: cpu_stepping") for line in cmp.lines())


def test_keys_this_setup_does_not_report_are_not_compared():
    gpu_here = {"backend": "tensorrt", "device": "NVIDIA L4", "compute_capability": "8.9"}
    cmp = compare_identity({"backend": "tensorrt", "device": "NVIDIA L4",
                            "compute_capability": "8.9", "cpu_family": 25}, gpu_here)
    assert cmp.matches
