"""A reference interpreter for Core ML ML programs (``.mlpackage``), in numpy, with FP16 emulation.

coremltools converts on Linux but predicts only on macOS; this runs an exported package's program here:
:func:`load_program` reads the spec (coremltools' proto classes) and the weight file (parsed in
:mod:`.blob`), and :meth:`Program.run` executes the main function op by op (:mod:`.ops`).
"""

from .blob import WeightFile
from .errors import MLProgramError, OpExecutionError, UnsupportedOpError, WeightFileError
from .interpret import Program, load_program
from .ops import OPS

SUPPORTED_OPS = frozenset(OPS)

__all__ = [
    "SUPPORTED_OPS",
    "MLProgramError",
    "OpExecutionError",
    "Program",
    "UnsupportedOpError",
    "WeightFile",
    "WeightFileError",
    "load_program",
]
