"""Which model directories a command works on: model names or directories → ``OUT/MODEL`` directories.

``verify`` and ``bench`` share the rule: no target means every export under the output root; a directory
means the exports at or directly under it; a name means ``OUT/NAME``, or (where the command allows it) a
fresh export of that model into a scratch directory.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from .errors import DeployforgeError
from .manifest import MANIFEST
from .options import ExportSettings

Progress = Callable[[str], None]


def find_model_dirs(root: Path) -> list[Path]:
    """Every directory at or directly under ``root`` that holds a manifest, sorted."""
    root = Path(root)
    if (root / MANIFEST).is_file():
        return [root]
    return sorted(p.parent for p in root.glob(f"*/{MANIFEST}"))


def has_onnx_pair(directory: Path) -> bool:
    """Whether an export directory holds both the deployed and the multi-branch ONNX."""
    return any(directory.glob("*.multibranch.onnx"))


def resolve_model_dirs(
    targets: Sequence[str],
    out: Path,
    scratch: Path | None = None,
    export_settings: ExportSettings | None = None,
    usable: Callable[[Path], bool] = lambda _: True,
    progress: Progress = lambda _: None,
) -> list[Path]:
    """Map targets (model names or directories; none = everything under ``out``) to model directories.

    Args:
        targets: model names or export directories.
        out: the output root ``export`` writes to.
        scratch: where to export a named model that has no usable export under ``out``; ``None`` makes
            that an error.
        export_settings: how to export into ``scratch``.
        usable: whether an export directory has what the command needs.
        progress: called as each scratch export starts.

    Returns:
        The model directories, in target order.

    Raises:
        DeployforgeError: an unknown name, a directory without exports, or nothing usable found.
    """
    out = Path(out)
    if not targets:
        found = [d for d in find_model_dirs(out) if usable(d)]
        if not found:
            raise DeployforgeError(f"no usable exports (manifest.json) under {out}; run `deployforge export MODEL`")
        return found
    dirs: list[Path] = []
    for target in targets:
        path = Path(target)
        if path.is_dir():
            found = find_model_dirs(path)
            if not found:
                raise DeployforgeError(
                    f"no exported artifacts (manifest.json) under {path}; run `deployforge export MODEL`"
                )
            dirs += found
        elif (out / target / MANIFEST).is_file() and usable(out / target):
            dirs.append(out / target)
        else:
            dirs.append(_export_missing(target, out, scratch, export_settings, progress))
    return dirs


def _export_missing(
    name: str, out: Path, scratch: Path | None, settings: ExportSettings | None, progress: Progress
) -> Path:
    from .registry import get_spec

    spec = get_spec(name)  # unknown names get the close-match error
    if scratch is None:
        raise DeployforgeError(f"no artifacts for {name} under {out}; run `deployforge export {name}` first")
    from . import pipeline

    report = pipeline.export(spec, settings, out=scratch, progress=progress)
    if not report.ok:
        raise DeployforgeError(f"{name}: export failed parity ({'; '.join(report.breaches)})")
    return report.directory
