"""Real images as parity inputs (``export --images DIR``): read, resized and centre-cropped as the manifest says.

Random inputs prove the algebra; photos put the waterfall where a deployed model works (FP16 judged on realistic
activations, top-1 on classes the model is confident about). Each file is decoded with Pillow, converted to RGB,
its shorter side resized to ``resize`` (bilinear), centre-cropped to ``crop`` and kept as 8-bit pixels; the model
sees them scaled to [0, 1] and normalized (:func:`deployforge.golden.normalize`), as a trained model's evaluation
transform does. A file that cannot be used is reported in one line and skipped; with none left, the run stops.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import InvalidSetting

SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
MAX_IMAGES = 64  # the first 64 usable files in name order: enough for the top-1 check, bounded in memory
CROP_FRACTION = 0.875  # the usual ImageNet evaluation crop: shorter side 256 for a 224 crop


@dataclass(frozen=True)
class Preprocessing:
    """How a photo becomes an input.

    Attributes:
        resize: the shorter side after resizing (bilinear).
        crop: the side of the centre crop: the model's input size.
    """

    resize: int
    crop: int

    @classmethod
    def for_size(cls, size: int) -> Preprocessing:
        """The usual evaluation transform for inputs of ``size``: shorter side ``size / 0.875``, centre crop."""
        return cls(resize=round(size / CROP_FRACTION), crop=size)

    def describe(self) -> str:
        """One line for the manifest and the report."""
        return f"RGB, shorter side resized to {self.resize} (bilinear), centre crop {self.crop}, scaled to [0, 1]"


@dataclass(frozen=True)
class Photo:
    """One image used as a parity input.

    Attributes:
        name: its file name.
        sha256: the file's digest.
    """

    name: str
    sha256: str


def _prepare(path: Path, preprocessing: Preprocessing) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as image:
        image = image.convert("RGB")
        width, height = image.size
        scale = preprocessing.resize / min(width, height)
        size = (max(preprocessing.crop, round(width * scale)), max(preprocessing.crop, round(height * scale)))
        image = image.resize(size, Image.Resampling.BILINEAR)
        left, top = (size[0] - preprocessing.crop) // 2, (size[1] - preprocessing.crop) // 2
        image = image.crop((left, top, left + preprocessing.crop, top + preprocessing.crop))
        return np.asarray(image, dtype=np.uint8).transpose(2, 0, 1)


def load_photos(
    directory: Path, preprocessing: Preprocessing, limit: int = MAX_IMAGES
) -> tuple[np.ndarray, list[Photo], list[str]]:
    """Read the images in ``directory`` (not recursive, in name order) as 8-bit ``(N, 3, crop, crop)`` pixels.

    Args:
        directory: a folder of photos.
        preprocessing: resize and crop.
        limit: at most this many images are used.

    Returns:
        The pixels, the photos used (name and sha256), and one line per file that could not be used.

    Raises:
        InvalidSetting: ``directory`` is not a folder, or holds no usable image.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise InvalidSetting("images", f"{directory} is not a directory; pass a folder of photos (JPEG, PNG, ...)")
    files = sorted(p for p in directory.iterdir() if p.is_file() and p.suffix.lower() in SUFFIXES)
    pixels, used, problems = [], [], []
    for path in files:
        if len(used) == limit:
            break
        try:
            pixels.append(_prepare(path, preprocessing))
        except Exception as error:  # noqa: BLE001 - Pillow raises many kinds; each means "not a usable image"
            detail = str(error).strip().splitlines()[0][:120] if str(error).strip() else ""
            problems.append(f"{path}: not a usable image ({type(error).__name__}{': ' + detail if detail else ''})")
            continue
        used.append(Photo(path.name, hashlib.sha256(path.read_bytes()).hexdigest()))
    if not used:
        found = f"{len(files)} image file(s), none readable" if files else f"no {'/'.join(sorted(SUFFIXES))} files"
        raise InvalidSetting("images", f"no usable image in {directory} ({found}); pass a folder of photos")
    return np.stack(pixels), used, problems
