"""Shared fixtures. Helper modules (tiny_models, fakes, fake_tensorrt) are importable by name:
pyproject.toml puts tests/ on the path."""
import os

import pytest

from fakes import ReachedHeavyWork

HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.fixture(autouse=True, scope="session")
def _children_find_test_models():
    """CLI subprocesses (torchrun, kill -9 tests) load ``tiny_models:...`` like the tests do."""
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = HERE + (os.pathsep + old if old else "")
    yield
    if old is None:
        os.environ.pop("PYTHONPATH", None)
    else:
        os.environ["PYTHONPATH"] = old


@pytest.fixture(autouse=True, scope="session")
def _own_timing_lock(tmp_path_factory):
    """The suite times on its own lock file: run beside a benchmark as ``flock -s
    ~/.cache/halp-trt/timing.lock make test``, it would otherwise wait for its own shared
    hold. Tests of the lock set their own."""
    from halp_trt.runtime.timing_lock import LOCK_ENV

    old = os.environ.get(LOCK_ENV)
    os.environ[LOCK_ENV] = str(tmp_path_factory.mktemp("lock") / "timing.lock")
    yield
    if old is None:
        os.environ.pop(LOCK_ENV, None)
    else:
        os.environ[LOCK_ENV] = old


HEAVY_WORK = ("halp_trt.train.train_epoch", "halp_trt.train.evaluate",
              "halp_trt.runtime.protocol.measure_interleaved", "halp_trt.latency.build.TableBuilder.run",
              "halp_trt.runtime.deploy.compare_onnx")


@pytest.fixture
def no_heavy_work(monkeypatch):
    """Make every heavy step raise ReachedHeavyWork (for tests of option checking)."""
    import halp_trt.runtime.deploy  # noqa: F401  (bind their imports before patching)
    import halp_trt.pruning.feedback  # noqa: F401

    def stop(*args, **kwargs):
        raise ReachedHeavyWork

    for target in HEAVY_WORK:
        monkeypatch.setattr(target, stop)


@pytest.fixture(scope="session")
def tiny_table(tmp_path_factory):
    """A real ONNX Runtime table of tests/tiny_models.py's model at 16x16 (few rounds)."""
    from halp_trt.runtime import get_backend
    from halp_trt.latency.build import BuildConfig, build_table
    from halp_trt.runtime.protocol import Protocol
    from tiny_models import tiny_resnet

    path = tmp_path_factory.mktemp("table") / "tiny.json"
    cfg = BuildConfig(protocol=Protocol(rounds=3), sweep_window=16, max_points_per_axis=5,
                      progress=False)
    build_table(tiny_resnet(), (1, 3, 16, 16), get_backend("onnxruntime"), str(path),
                "tiny_models:tiny_resnet", cfg)
    return str(path)
