"""User-facing errors.

Anything a user can cause (bad option, bad file, missing optional backend) raises
``HalpError``; the CLI prints its message and exits non-zero without a traceback.
"""


class HalpError(Exception):
    """An error caused by input or environment, with a message that says what to do."""

    exit_code = 2


class MissingBackendError(HalpError):
    """An optional runtime (TensorRT, CUDA, ONNX Runtime) is not installed."""

    def __init__(self, what: str, extra: str, detail: str = ""):
        msg = f"{what} is not installed. Install it with: pip install 'halp-trt[{extra}]'"
        if detail:
            msg += f" ({detail})"
        super().__init__(msg)
        self.extra = extra


class ConfigError(HalpError):
    """A bad value of one configuration field. The message is a template in which ``{field}``
    stands for the field's name, so each caller names it in its own language: the Python API
    says ``target``, the CLI says ``--target``."""

    def __init__(self, field: str, template: str):
        self.field, self.template = field, template
        super().__init__(self.render(field))

    def render(self, name: str) -> str:
        return self.template.replace("{field}", name)

    def render_for_cli(self) -> str:
        return self.render("--" + self.field.replace("_", "-"))
