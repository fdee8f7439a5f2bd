import os
import sys

# tests import helpers (tiny_models) from this folder, and subprocesses use module:factory
HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)
os.environ["PYTHONPATH"] = HERE + os.pathsep + os.environ.get("PYTHONPATH", "")


import pytest  # noqa: E402


class ReachedHeavyWork(Exception):
    """Raised in place of training, evaluating or measuring: the command got past its checks."""


HEAVY_WORK = ("halp_trt.train.train_epoch", "halp_trt.train.evaluate",
              "halp_trt.measure.measure_interleaved", "halp_trt.build.TableBuilder.run",
              "halp_trt.deploy.compare_onnx")


@pytest.fixture
def no_heavy_work(monkeypatch):
    """Make every heavy step raise ReachedHeavyWork (for tests of option checking)."""
    import halp_trt.deploy  # noqa: F401  (bind their imports before patching)
    import halp_trt.feedback  # noqa: F401

    def stop(*args, **kwargs):
        raise ReachedHeavyWork

    for target in HEAVY_WORK:
        monkeypatch.setattr(target, stop)


@pytest.fixture(scope="session")
def tiny_table(tmp_path_factory):
    """A real ONNX Runtime table of tests/tiny_models.py's model at 16x16 (few rounds)."""
    from halp_trt.backends import get_backend
    from halp_trt.build import BuildConfig, build_table
    from halp_trt.measure import Protocol
    from tiny_models import tiny_resnet

    path = tmp_path_factory.mktemp("table") / "tiny.json"
    cfg = BuildConfig(protocol=Protocol(rounds=3), sweep_window=16, max_points_per_axis=5,
                      progress=False)
    build_table(tiny_resnet(), (1, 3, 16, 16), get_backend("onnxruntime"), str(path),
                "tiny_models:tiny_resnet", cfg)
    return str(path)


def free_port() -> int:
    """A TCP port nothing listens on now: fixed torchrun ports collide with any other job
    (or a parallel test run) on the same machine."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
