"""The benchmark scripts in tools/ are not a package: each test file loads its script by
path through ``load_tool``."""
import importlib.util
import os

TOOLS = os.path.join(os.path.dirname(__file__), "..", "tools")


def load_tool(name: str):
    """``tools/<name>.py`` as a module."""
    spec = importlib.util.spec_from_file_location(name, os.path.join(TOOLS, f"{name}.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod
