"""Write-then-rename: a failed or interrupted run never leaves a half-written artifact behind."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from .errors import DeployforgeError


class Staged:
    """A temporary path beside its final place; :meth:`commit` moves it there.

    Attributes:
        path: where to write (a file or a directory, not yet created).
        final: where it goes on commit.
    """

    def __init__(self, path: Path, final: Path) -> None:
        self.path = path
        self.final = final

    def commit(self) -> None:
        """Move the staged file or directory into place, replacing what was there as a whole.

        A directory is replaced in two renames (the old one is set aside first); if the second fails, the
        old one is put back.

        Raises:
            DeployforgeError: ``final`` exists and is not of the staged kind (a file where a directory goes).
        """
        if self.final.exists() and self.final.is_dir() != self.path.is_dir():
            kind = "a directory" if self.path.is_dir() else "a file"
            raise DeployforgeError(f"{self.final} is in the way: it should be {kind}; move it or choose another place")
        if not self.final.is_dir():
            os.replace(self.path, self.final)
            return
        previous = self.path.parent / ".previous"
        os.replace(self.final, previous)
        try:
            os.replace(self.path, self.final)
        except BaseException:
            os.replace(previous, self.final)
            raise


@contextlib.contextmanager
def staged(final: Path) -> Iterator[Staged]:
    """Stage ``final`` in a temporary directory beside it; whatever was not committed is removed on exit.

    Errors and interrupts (Ctrl-C) clean up too. The parent of ``final`` is created if needed.

    Args:
        final: the file or directory to produce.

    Yields:
        The staging handle; write to ``handle.path``, then call ``handle.commit()``.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    try:
        yield Staged(tmp_dir / final.name, final)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
