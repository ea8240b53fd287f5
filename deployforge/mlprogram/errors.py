"""What goes wrong reading or running an ML program; each message names the package part or op at fault."""

from __future__ import annotations

from deployforge.errors import DeployforgeError


class MLProgramError(DeployforgeError):
    """The package cannot be read or run as a Core ML ML program."""


class WeightFileError(MLProgramError):
    """The weight file is malformed: bad header, bad sentinel, an offset or size outside the file."""


class UnsupportedOpError(MLProgramError):
    """An operation type (or an op setting) the interpreter does not implement.

    Attributes:
        op_type: the MIL operation type (``conv``, ``einsum``).
        position: the op's index in the main block.
        output: the op's first output name.
    """

    def __init__(self, op_type: str, position: int, output: str, detail: str = "") -> None:
        where = f"op #{position} ({output!r})"
        what = f"unsupported Core ML op {op_type!r} at {where}"
        super().__init__(f"{what}: {detail}" if detail else what)
        self.op_type = op_type
        self.position = position
        self.output = output


class OpExecutionError(MLProgramError):
    """An op failed or produced a result that disagrees with the type the program declares for it."""
