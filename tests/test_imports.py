"""`import halp_trt` and `halp-trt --help` load no runtime; a missing backend names its extra."""
import builtins
import subprocess
import sys

import pytest

from halp_trt.runtime import backend_for, get_backend
from halp_trt.errors import HalpError, MissingBackendError

HEAVY = ("tensorrt", "pycuda", "cuda", "onnxruntime")


def _loaded_after(code):
    out = subprocess.run([sys.executable, "-c", code + "\nimport sys\nprint(','.join(sorted("
                          "m for m in sys.modules if m.split('.')[0] in %r)))" % (HEAVY,)],
                         capture_output=True, text=True, check=True)
    return out.stdout.strip()


def test_import_loads_no_runtime():
    # table and inspection also stay free of torch (whose CUDA build pulls in cuda.bindings)
    assert _loaded_after("import halp_trt, halp_trt.runtime, halp_trt.latency.table, "
                         "halp_trt.latency.inspection, halp_trt.cli, halp_trt.runtime.tensorrt") == ""


def test_cli_help_loads_no_runtime():
    assert _loaded_after("from click.testing import CliRunner\nfrom halp_trt.cli import main\n"
                         "r = CliRunner().invoke(main, ['--help'])\nassert r.exit_code == 0\n"
                         "r = CliRunner().invoke(main, ['build-table', '--help'])\n"
                         "assert r.exit_code == 0") == ""


def _hide(monkeypatch, name):
    real_import = builtins.__import__

    def fake_import(mod, *args, **kwargs):
        if mod == name or mod.startswith(name + "."):
            raise ImportError(f"No module named {name!r}")
        return real_import(mod, *args, **kwargs)

    monkeypatch.delitem(sys.modules, name, raising=False)
    monkeypatch.setattr(builtins, "__import__", fake_import)


def test_missing_onnxruntime_names_the_extra(monkeypatch):
    _hide(monkeypatch, "onnxruntime")
    with pytest.raises(MissingBackendError, match=r"halp-trt\[ort\]"):
        get_backend("onnxruntime")


def test_missing_tensorrt_names_the_extra(monkeypatch):
    _hide(monkeypatch, "tensorrt")
    with pytest.raises(MissingBackendError, match=r"halp-trt\[trt\]"):
        backend_for(gpu=True)


def test_cli_gpu_without_tensorrt_exits_cleanly(tmp_path):
    from click.testing import CliRunner

    from halp_trt.cli import main

    res = CliRunner().invoke(main, ["build-table", "resnet18", "--gpu", "--out",
                                    str(tmp_path / "t.json")])
    try:
        import tensorrt  # noqa: F401
        pytest.skip("tensorrt is installed here")
    except ImportError:
        pass
    assert res.exit_code == 2 and "halp-trt[trt]" in res.output
    assert res.exception is None or isinstance(res.exception, SystemExit)


def test_unknown_backend_and_cpu_fp16():
    with pytest.raises(HalpError, match="unknown backend"):
        get_backend("openvino")
    with pytest.raises(HalpError, match="--gpu"):
        backend_for(gpu=False, precision="fp16")
