"""``export --images DIR``: photos as the parity inputs of every stage and artifact; bad files reported, not fatal."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

import deployforge
from deployforge.cli.app import app
from deployforge.golden import GOLDEN
from deployforge.photos import Preprocessing, load_photos

MODEL = "mobileone_s0"
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def _scene(width: int, height: int, seed: int) -> Image.Image:
    """A smooth colour image with an edge: gradients per channel and a bright disc."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:height, 0:width] / max(width, height)
    channels = [np.clip(0.5 + rng.uniform(-0.5, 0.5) * xs + rng.uniform(-0.5, 0.5) * ys, 0, 1) for _ in range(3)]
    image = np.stack(channels, axis=-1)
    image[(xs - 0.5) ** 2 + (ys - 0.4) ** 2 < 0.04] = rng.uniform(0, 1, 3)
    return Image.fromarray((image * 255).astype(np.uint8))


@pytest.fixture
def photos(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    _scene(120, 90, seed=1).save(folder / "a_landscape.png")
    _scene(70, 110, seed=2).save(folder / "b_portrait.jpg", quality=90)
    (folder / "c_broken.jpg").write_bytes(b"\xff\xd8 this is not a JPEG")
    (folder / "notes.txt").write_text("not an image, not even looked at")
    return folder


def test_photos_are_resized_and_centre_cropped(photos):
    pixels, used, problems = load_photos(photos, Preprocessing.for_size(64))

    assert pixels.shape == (2, 3, 64, 64) and pixels.dtype == np.uint8
    assert [p.name for p in used] == ["a_landscape.png", "b_portrait.jpg"]
    (problem,) = problems
    assert problem.startswith(f"{photos / 'c_broken.jpg'}: not a usable image (")
    # the landscape: shorter side 90 -> 73 (64 / 0.875), so 120 -> 97, then the centre 64x64
    expected = _scene(120, 90, seed=1).resize((97, 73), Image.Resampling.BILINEAR).crop((16, 4, 80, 68))
    assert np.array_equal(pixels[0], np.asarray(expected).transpose(2, 0, 1))


def test_export_and_verify_on_photos(photos, tmp_path):
    result = CliRunner().invoke(
        app,
        [
            "export",
            MODEL,
            "--images",
            photos,
            "--input-size",
            "64",
            "--to",
            "all",
            "--precision",
            "fp32",
            "--out",
            tmp_path,
        ],
    )
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "c_broken.jpg: not a usable image" in warnings[0]

    directory = tmp_path / MODEL
    manifest = json.loads((directory / "manifest.json").read_text())
    parity = manifest["parity_inputs"]
    assert parity["count"] == 2 and parity["distribution"].startswith(f"photos from {photos}")
    assert [p["name"] for p in parity["photos"]] == ["a_landscape.png", "b_portrait.jpg"]
    assert all(len(p["sha256"]) == 64 for p in parity["photos"])
    with np.load(directory / GOLDEN) as golden:  # stored as the photos' pixels, for the stages and Core ML alike
        assert golden["inputs_pixels"].shape == (2, 3, 64, 64) and golden["images_pixels"].shape == (2, 3, 64, 64)
        assert "inputs" not in golden.files

    verified = deployforge.verify(directory)
    assert verified.ok, verified.reports[0].breaches


def test_a_folder_without_usable_images_stops_the_run(tmp_path):
    folder = tmp_path / "broken"
    folder.mkdir()
    (folder / "one.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    (folder / "two.jpeg").write_bytes(b"")
    result = CliRunner().invoke(app, ["export", MODEL, "--images", folder, "--out", tmp_path / "out"])
    assert result.exit_code == 2
    (line,) = result.stderr.strip().splitlines()
    assert (
        line
        == f"error: --images: no usable image in {folder} (2 image file(s), none readable); pass a folder of photos"
    )
    assert not (tmp_path / "out").exists()


def test_images_must_be_a_folder(tmp_path):
    result = CliRunner().invoke(app, ["export", MODEL, "--images", tmp_path / "nope", "--out", tmp_path])
    assert result.exit_code == 2
    assert "is not a directory; pass a folder of photos" in result.stderr
