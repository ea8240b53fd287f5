"""What every command shares: error reporting, progress display, lazy heavy imports."""

from __future__ import annotations

import functools
import json
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape

from deployforge.errors import DeployforgeError, InvalidSetting

# coremltools draws tqdm bars for every pass pipeline; tqdm reads this when it is first imported.
os.environ.setdefault("TQDM_DISABLE", "1")

DEFAULT_OUT = Path("deployforge-out")
# The library names settings in the domain's words; the CLI speaks of its flags.
FLAGS = {
    "target": "--to",
    "precision": "--precision",
    "opset": "--opset",
    "batch": "--batch",
    "input_size": "--input-size",
    "multibranch": "--multibranch",
    "num_classes": "--num-classes",
    "images": "--images",
    "weights": "--weights",
    "out": "--out",
    "threads": "--threads",
    "runs": "--runs",
    "warmup_s": "--warmup-s",
    "min_time_s": "--min-time-s",
    "against": "--against",
    "runtimes": "--runtimes",
    "rewrites": "--rewrite",
}
stderr = Console(stderr=True)
# Piped or redirected output is not limited to rich's 80-column fallback: tables stay whole in logs.
stdout = Console(width=None if sys.stdout.isatty() else 140)


def quiet_converters() -> None:
    """Silence progress bars and import chatter of the converters (they write to the terminal)."""
    import logging
    import warnings

    for name in ("coremltools", "torch.onnx", "onnxscript", "torch._dynamo", "torch.export"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")


def handles_errors(command: Callable[..., Any]) -> Callable[..., Any]:
    """Turn ``DeployforgeError`` into a one-line ``error: ...`` on stderr and its exit code; Ctrl-C into 130."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except DeployforgeError as error:
            message = str(error)
            if isinstance(error, InvalidSetting):
                message = f"{FLAGS.get(error.setting, error.setting)}: {message}"
            stderr.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
            raise typer.Exit(error.exit_code) from None
        except KeyboardInterrupt:
            stderr.print("interrupted; no partial artifact was left behind", highlight=False)
            raise typer.Exit(130) from None

    return wrapper


@contextmanager
def progress_status(enabled: bool = True) -> Iterator[Callable[[str], None]]:
    """Yield a callback that shows the current stage on a rich spinner (stderr)."""
    if not enabled or not stderr.is_terminal:
        yield lambda message: None
        return
    with stderr.status("starting") as status:
        yield lambda message: status.update(message)


def print_json(payload: Any) -> None:
    """Write ``payload`` as JSON on stdout and nothing else."""
    sys.stdout.write(json.dumps(payload, indent=2, default=str) + "\n")


def fmt(value: float | None, spec: str = ".3g") -> str:
    """Format a number for a table, ``-`` when absent."""
    return "-" if value is None else format(value, spec)
