"""timm's layer classes, looked up only where timm is already loaded.

A model holding a timm layer has imported timm, so a lookup in ``sys.modules`` finds it; one
that does not never pays for importing timm (or for retrying a missing one) on each of its
modules."""
from __future__ import annotations

import sys


def loaded_timm_class(module: str, name: str) -> type | None:
    """``timm.<module>.<name>`` if that module is loaded, else None."""
    return getattr(sys.modules.get(f"timm.{module}"), name, None)
