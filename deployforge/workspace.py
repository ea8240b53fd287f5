"""Which model directories a command works on: model names or directories → ``OUT/MODEL`` directories.

``verify`` and ``bench`` share the rule: no target means every export under the output root; a directory
means the exports at or directly under it; a name means ``OUT/NAME``. Where the command allows it (bench),
a model with no export is exported into a scratch directory, and an export that lacks what the command
needs (an ONNX pair, after ``export --to coreml``) is exported again there from its manifest: same
weights, input size, batch and opset.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path

from .errors import DeployforgeError
from .manifest import MANIFEST, read_manifest
from .options import ExportSettings

Progress = Callable[[str], None]


def find_model_dirs(root: Path) -> list[Path]:
    """Every directory at or directly under ``root`` that holds a manifest, sorted."""
    root = Path(root)
    if (root / MANIFEST).is_file():
        return [root]
    return sorted(p.parent for p in root.glob(f"*/{MANIFEST}"))


def has_onnx_pair(directory: Path) -> bool:
    """Whether an export directory holds both the deployed and the multi-branch ONNX of its model."""
    model = read_manifest(directory).model
    return all((directory / name).is_file() for name in (f"{model}.onnx", f"{model}.multibranch.onnx"))


@dataclasses.dataclass(frozen=True)
class Scratch:
    """Where and how a command may export what it needs.

    Attributes:
        directory: the scratch output root.
        settings: the export settings (input size, batch and opset are taken from an existing manifest).
        usable: whether an export directory already has what the command needs.
        needs: what that is, for the note that an export was rebuilt.
    """

    directory: Path
    settings: ExportSettings
    usable: Callable[[Path], bool]
    needs: str = "ONNX pair (deployed + multi-branch)"


def resolve_model_dirs(
    targets: Sequence[str],
    out: Path,
    scratch: Scratch | None = None,
    progress: Progress = lambda _: None,
    notify: Progress = lambda _: None,
) -> list[Path]:
    """Map targets (model names or directories; none = everything under ``out``) to model directories.

    Args:
        targets: model names or export directories.
        out: the output root ``export`` writes to.
        scratch: where to export a model whose export is missing or unusable; ``None`` makes a missing
            export an error and takes every export as it is.
        progress: called as each scratch export starts.
        notify: told, in one line, of every export made in the scratch directory and why.

    Returns:
        The model directories, in target order.

    Raises:
        DeployforgeError: an unknown name, a directory without exports, or nothing found.
    """
    out = Path(out)
    dirs: list[Path] = []
    for target in targets or [out]:
        path = Path(target)
        if path.is_dir() or not targets:
            found = find_model_dirs(path) if path.is_dir() else []
            if not found:
                raise DeployforgeError(
                    f"no exported artifacts (manifest.json) under {path}; run `deployforge export MODEL`"
                )
        elif (out / target.removeprefix("timm:") / MANIFEST).is_file():  # timm:NAME is exported as NAME
            found = [out / target.removeprefix("timm:")]
        else:
            found = [_export_new(target, out, scratch, progress, notify)]
        dirs += [_usable(d, scratch, progress, notify) for d in found]
    return dirs


def _export_new(name: str, out: Path, scratch: Scratch | None, progress: Progress, notify: Progress) -> Path:
    from .registry import get_spec
    from .timm_models import is_timm_name, timm_spec

    spec = timm_spec(name) if is_timm_name(name) else get_spec(name)  # unknown names get the close-match error
    if scratch is None:
        raise DeployforgeError(f"no artifacts for {name} under {out}; run `deployforge export {name}` first")
    notify(f"{name}: no export under {out}; exporting it (seeded random weights) to a scratch directory")
    return _export(spec, scratch, scratch.settings, None, progress)


def _usable(directory: Path, scratch: Scratch | None, progress: Progress, notify: Progress) -> Path:
    if scratch is None or scratch.usable(directory):
        return directory
    from .registry import rebuildable_spec

    manifest = read_manifest(directory)
    used = manifest.settings
    settings = dataclasses.replace(scratch.settings, opset=used.opset, batch=used.batch, input_size=used.input_size)
    weights = manifest.weights.checkpoint()
    notify(
        f"{manifest.model}: {directory} has no {scratch.needs}; building it in a scratch "
        "directory from the weights, input size and opset its manifest records"
    )
    spec = rebuildable_spec(manifest.model, manifest.origin, manifest.output.classes)
    return _export(spec, scratch, settings, weights, progress)


def _export(spec, scratch: Scratch, settings: ExportSettings, weights: Path | None, progress: Progress) -> Path:
    from . import pipeline

    report = pipeline.export(spec, settings, out=scratch.directory, weights=weights, progress=progress)
    if not report.ok:
        raise DeployforgeError(f"{spec.name}: export failed parity ({'; '.join(report.breaches)})")
    return report.directory
