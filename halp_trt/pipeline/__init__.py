"""prune-and-deploy: the whole job as named stages over one validated config.

    report = prune_and_deploy(DeployConfig(out="run1"))
    front = prune_and_deploy(DeployConfig(out="run2", target="0.7,0.5,0.3"))

``config.py`` holds ``DeployConfig``; ``state.py`` the typed, resumable checkpoint; ``run.py``
the stages (load, original, table, calibrate, prune, fine-tune, deploy, verify, report);
``front.py`` several targets from one run and their Pareto front.
"""
from halp_trt.pipeline.config import DeployConfig


def prune_and_deploy(cfg: DeployConfig) -> dict:
    """Run the whole job; returns the report (also written to ``cfg.out``). With several
    targets, one pruned model per target and their Pareto front."""
    from halp_trt.pipeline.front import prune_and_deploy_front
    from halp_trt.pipeline.run import DeployRun

    if len(cfg.parsed_targets) > 1:
        return prune_and_deploy_front(cfg)
    return DeployRun(cfg).run()


def __getattr__(name: str):
    # the stages import torch: loaded on first use, so the CLI's option table (DeployConfig)
    # stays light
    if name == "DeployRun":
        from halp_trt.pipeline.run import DeployRun

        return DeployRun
    if name == "prune_and_deploy_front":
        from halp_trt.pipeline.front import prune_and_deploy_front

        return prune_and_deploy_front
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["DeployConfig", "DeployRun", "prune_and_deploy", "prune_and_deploy_front"]
