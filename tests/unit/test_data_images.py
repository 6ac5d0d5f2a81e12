"""images.read_image / image_size: colour modes, EXIF orientation, broken files, the pixel limit."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from trainer.data.images import ImageReadError, image_size, read_image


@pytest.fixture(scope="module")
def rgb() -> np.ndarray:
    """A 30x20 (WxH) image whose top-left quadrant is red, so orientation is testable."""
    array = np.full((20, 30, 3), 40, dtype=np.uint8)
    array[:10, :15] = (250, 10, 10)
    return array


def save(tmp_path, name, image: Image.Image, **kwargs):
    path = tmp_path / name
    image.save(path, **kwargs)
    return path


@pytest.mark.parametrize("name,mode", [("rgb.png", "RGB"), ("gray.png", "L"), ("palette.png", "P"),
                                       ("rgba.png", "RGBA"), ("gray_alpha.png", "LA"), ("cmyk.jpg", "CMYK"),
                                       ("gray.jpg", "L"), ("rgb.bmp", "RGB"), ("rgb.tiff", "RGB"),
                                       ("palette.gif", "P"), ("rgb.webp", "RGB")])
def test_every_colour_mode_decodes_to_rgb_uint8(tmp_path, rgb, name, mode):
    path = save(tmp_path, name, Image.fromarray(rgb).convert(mode))
    image = read_image(path)
    assert image.dtype == torch.uint8 and image.shape == (3, 20, 30)
    assert image_size(path) == (30, 20)
    expected = np.asarray(Image.open(path).convert("RGB"), dtype=np.int16)
    assert np.abs(image.permute(1, 2, 0).numpy().astype(np.int16) - expected).max() <= 2


def test_sixteen_bit_png_is_scaled_not_clipped(tmp_path):
    path = save(tmp_path, "g16.png", Image.fromarray(np.full((8, 12), 32896, dtype=np.uint16)))
    image = read_image(path)
    assert image.dtype == torch.uint8 and image.shape == (3, 8, 12)
    assert int(image.float().mean().round()) == 128


@pytest.mark.parametrize("fmt", ["jpg", "png"])
@pytest.mark.parametrize("orientation,expected_size,red_corner", [
    (1, (30, 20), (0, 0)),      # as stored: red at top-left
    (3, (30, 20), (-1, -1)),    # rotated 180: bottom-right
    (6, (20, 30), (0, -1)),     # rotate 90 clockwise to view: top-right, width and height swap
    (8, (20, 30), (-1, 0)),     # rotate 90 counter-clockwise: bottom-left
])
def test_exif_orientation_is_applied(tmp_path, rgb, fmt, orientation, expected_size, red_corner):
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = save(tmp_path, f"o{orientation}.{fmt}", Image.fromarray(rgb), exif=exif.tobytes())
    assert image_size(path) == expected_size
    image = read_image(path)
    assert tuple(image.shape[1:]) == (expected_size[1], expected_size[0])
    row, col = red_corner
    assert image[0, row, col] > 200 and image[1, row, col] < 60


@pytest.mark.parametrize("name", ["good.jpg", "good.png"])
def test_truncated_file_names_the_file(tmp_path, rgb, name):
    good = save(tmp_path, name, Image.fromarray(rgb))
    truncated = tmp_path / f"truncated_{name}"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(ImageReadError, match="truncated_") as info:
        read_image(truncated)
    assert info.value.path == truncated


def test_truncated_bmp_via_pil_names_the_file(tmp_path, rgb):
    good = save(tmp_path, "good.bmp", Image.fromarray(rgb))
    truncated = tmp_path / "cut.bmp"
    truncated.write_bytes(good.read_bytes()[:200])
    with pytest.raises(ImageReadError, match="cut.bmp"):
        read_image(truncated)


def test_corrupt_jpeg_body_names_the_file(tmp_path, rgb):
    data = bytearray(save(tmp_path, "a.jpg", Image.fromarray(rgb)).read_bytes())
    data[200:] = b"\x00" * (len(data) - 200)
    (tmp_path / "bad.jpg").write_bytes(bytes(data))
    with pytest.raises(ImageReadError, match="bad.jpg"):
        read_image(tmp_path / "bad.jpg")


def test_zero_byte_file(tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(ImageReadError, match=r"empty.png.*empty \(0 bytes\)"):
        image_size(tmp_path / "empty.png")
    with pytest.raises(ImageReadError, match="empty.png"):
        read_image(tmp_path / "empty.png")


def test_not_an_image(tmp_path):
    (tmp_path / "notes.jpg").write_text("these are not pixels")
    with pytest.raises(ImageReadError, match="notes.jpg.*not a readable image"):
        read_image(tmp_path / "notes.jpg")


def test_missing_file(tmp_path):
    with pytest.raises(ImageReadError, match="absent.png"):
        image_size(tmp_path / "absent.png")


def test_pixel_limit_is_checked_before_decoding(tmp_path, rgb):
    path = save(tmp_path, "big.png", Image.fromarray(rgb))
    with pytest.raises(ImageReadError, match=r"big.png.*600 pixels is above the limit of 599"):
        read_image(path, max_pixels=599)
    assert read_image(path, max_pixels=600).shape == (3, 20, 30)


def test_size_cache_notices_a_rewritten_file(tmp_path, rgb):
    path = save(tmp_path, "x.png", Image.fromarray(rgb))
    assert image_size(path) == (30, 20)
    Image.fromarray(rgb[:, :25]).save(path)
    assert image_size(path) == (25, 20)
