"""prune-and-deploy: the whole job as named stages over one validated config.

    report = prune_and_deploy(DeployConfig(out="run1"))

``config.py`` holds ``DeployConfig``; ``state.py`` the typed, resumable checkpoint; ``run.py``
the stages (load, original, table, calibrate, prune, fine-tune, deploy, verify, report).
"""
from halp_trt.pipeline.config import DeployConfig
from halp_trt.pipeline.run import DeployRun, prune_and_deploy

__all__ = ["DeployConfig", "DeployRun", "prune_and_deploy"]
