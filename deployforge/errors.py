"""Errors the CLI turns into a one-line message and an exit code.

Library errors speak of the domain (``Core ML precision``, ``input size``); only the CLI knows flag names.
"""

from __future__ import annotations


class DeployforgeError(Exception):
    """Bad usage or input: the message names the problem and the fix; the CLI exits 2."""

    exit_code = 2


class InvalidSetting(DeployforgeError):
    """A setting outside its allowed values.

    Attributes:
        setting: the setting's domain name (``precision``, ``input_size``, ``threads``); the CLI maps it to
            its flag.
    """

    def __init__(self, setting: str, message: str) -> None:
        super().__init__(message)
        self.setting = setting


class StageFailed(DeployforgeError):
    """A pipeline stage raised: the model cannot be fused, merged, traced or converted. The CLI exits 1.

    Attributes:
        stage: the stage that failed (``build``, ``fuse``, ``reparameterize``, ``trace``, ``onnx``, ``coreml``).
    """

    exit_code = 1

    def __init__(self, model: str, stage: str, error: BaseException) -> None:
        text = str(error).strip()
        first = text.splitlines()[0][:200] if text else ""
        super().__init__(f"{model}: the {stage} stage failed ({type(error).__name__}{': ' + first if first else ''})")
        self.stage = stage
