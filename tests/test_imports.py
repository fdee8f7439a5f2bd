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
                         "halp_trt.latency.inspection, halp_trt.cli, halp_trt.runtime.tensorrt, "
                         "halp_trt.pruning.result") == ""


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

    try:  # before the build: with TensorRT installed this would build a real table
        import tensorrt  # noqa: F401
        pytest.skip("tensorrt is installed here")
    except ImportError:
        pass
    res = CliRunner().invoke(main, ["build-table", "resnet18", "--gpu", "--out",
                                    str(tmp_path / "t.json")])
    assert res.exit_code == 2 and "halp-trt[trt]" in res.output
    assert res.exception is None or isinstance(res.exception, SystemExit)


def test_unknown_backend_and_cpu_fp16():
    with pytest.raises(HalpError, match="unknown backend"):
        get_backend("coreml")
    with pytest.raises(HalpError, match="--gpu"):
        backend_for(gpu=False, precision="fp16")


# ---- the package's import graph -----------------------------------------------------------------

PACKAGE_DIR = __import__("pathlib").Path(__file__).resolve().parents[1] / "halp_trt"

# Lower layers never import upper ones. Same-rank packages may not import each other either.
LAYERS = [
    ("core", ("halp_trt.errors", "halp_trt.fileio", "halp_trt.distributed", "halp_trt.version")),
    ("graph", ("halp_trt.graph",)),
    ("runtime", ("halp_trt.runtime",)),
    ("latency", ("halp_trt.latency",)),
    ("pruning", ("halp_trt.pruning",)),
]
RANK = {"core": 0, "graph": 1, "runtime": 1, "latency": 2, "pruning": 3}


def _modules():
    mods = {}
    for path in PACKAGE_DIR.rglob("*.py"):
        rel = path.relative_to(PACKAGE_DIR.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods[".".join(parts)] = path
    return mods


def _import_graph():
    """module -> modules it imports, counting imports inside functions, and the __init__ of a
    subpackage entered from outside it (importing halp_trt.x.y runs halp_trt/x/__init__)."""
    import ast

    mods = _modules()
    graph = {}
    for name, path in mods.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets.add(node.module)
                targets.update(f"{node.module}.{a.name}" for a in node.names)
        edges = set()
        for t in targets:
            if t not in mods or t == name or t == "halp_trt":
                continue
            edges.add(t)
            parts = t.split(".")
            for i in range(2, len(parts)):  # subpackage inits on the way, if entered from out
                pkg = ".".join(parts[:i])
                if pkg in mods and not name.startswith(pkg + ".") and pkg != name:
                    edges.add(pkg)
        graph[name] = edges
    return graph


def _layer(module):
    for layer, prefixes in LAYERS:
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return layer
    return "app"


def test_no_import_cycle_among_halp_trt_modules():
    graph = _import_graph()
    assert len(graph) > 30, "the walk found the package's modules"
    state, stack, cycles = {}, [], []

    def visit(m):
        state[m] = 1
        stack.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                cycles.append(stack[stack.index(n):] + [n])
            elif n not in state:
                visit(n)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles[:5])


def test_lower_layers_never_import_upper_ones():
    bad = []
    for m, edges in _import_graph().items():
        lm = _layer(m)
        for n in edges:
            ln = _layer(n)
            if lm == "app" or lm == ln:
                continue
            if ln == "app" or RANK[ln] >= RANK[lm]:
                bad.append(f"{m} ({lm}) imports {n} ({ln})")
    assert not bad, "\n".join(sorted(bad))


def test_the_cycle_check_sees_function_level_imports(tmp_path, monkeypatch):
    """The walk must not miss an import inside a function (pruner <-> result was one)."""
    import ast

    src = "def f():\n    from halp_trt.pruning.pruner import HALPPruner\n"
    found = {n.module for n in ast.walk(ast.parse(src)) if isinstance(n, ast.ImportFrom)}
    assert found == {"halp_trt.pruning.pruner"}
    graph = _import_graph()
    assert "halp_trt.pruning.surgery" in graph["halp_trt.pruning.result"], \
        "apply_result's function-level import is an edge"
