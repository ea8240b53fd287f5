"""Errors the CLI turns into a one-line message and an exit code."""

from __future__ import annotations


class DeployforgeError(Exception):
    """Bad usage or input: the message names the problem and the fix; the CLI exits 2."""

    exit_code = 2


class ParityError(DeployforgeError):
    """A stage or artifact is outside its parity tolerance, or an artifact was altered; exit 1."""

    exit_code = 1
