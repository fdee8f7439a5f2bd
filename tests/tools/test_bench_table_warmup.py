"""The warm-up benchmark's bookkeeping: a check-table that writes no probe (a table it cannot
read) is a row saying so, not a traceback that loses the other rows."""
import json

import pytest
from tool_scripts import load_tool


@pytest.fixture(scope="module")
def bench():
    return load_tool("bench_table_warmup")


def test_a_check_that_writes_no_probe_is_an_error_row(bench, tmp_path):
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    (tmp_path / "broken.json.check.json").write_text(json.dumps({"probe": {"fits": True}}))
    got = bench.check(str(broken))  # the stale file of an earlier check is not read
    assert got["fits"] is None and got["error"]
    ok = {"fits": True, "shape_deviation": 0.04, "scale_ratio": 1.0,
          "signature_medians": {"conv_a": 1.01, "dw_b": 0.97}}
    md = bench.markdown_section({"command": "c", "machine": "m", "date": "d", "rows": [
        {"model": "mobilenet_v2", "warm_ms": 3.0, "build_s": 60.0, "checks": [ok, got]}]})
    assert "| mobilenet_v2 | 3 | 60 s | 4%, failed | 1.01 0.97 |" in md
    md = bench.markdown_section({"command": "c", "machine": "m", "date": "d", "rows": [
        {"model": "mobilenet_v2", "warm_ms": 0.0, "build_s": 15.0, "checks": [got, ok]}]})
    assert f"| failed, 4% | {got['error']} |" in md
