"""Read images as RGB uint8 tensors with EXIF orientation applied, and image sizes from file headers.

JPEG, PNG and WebP are decoded by ``torchvision.io`` (libjpeg/libpng, fast); everything else
(BMP, TIFF, GIF, ...) and 16-bit data go through PIL. Both paths apply EXIF orientation and convert
grayscale, palette, RGBA and CMYK to RGB, so a file's decoded size always equals :func:`image_size`.
"""
from __future__ import annotations

import functools
import os
import re
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torchvision.io import ImageReadMode, decode_image
from torchvision.transforms.v2 import functional as F

# Refuse anything larger before decoding: a corrupt or hostile header must not allocate gigabytes.
MAX_IMAGE_PIXELS = 100_000_000
_EXIF_ORIENTATION_TAG = 0x0112
_TRANSPOSED_ORIENTATIONS = (5, 6, 7, 8)  # rotated by 90 degrees: width and height swap
_PIL_ERRORS = (OSError, SyntaxError, ValueError, UnidentifiedImageError, Image.DecompressionBombError)


class ImageReadError(ValueError):
    """An image file that cannot be used; the message names the file."""

    def __init__(self, path: str | Path, reason: str):
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"cannot read image {self.path}: {reason}")


def _torchvision_decodes(head: bytes) -> bool:
    return head.startswith(b"\xff\xd8\xff") or head.startswith(b"\x89PNG\r\n\x1a\n") or (
        head[:4] == b"RIFF" and head[8:12] == b"WEBP")


@functools.lru_cache(maxsize=1 << 16)
def _header_size(path: str, mtime_ns: int, file_size: int, max_pixels: int) -> tuple[int, int]:
    # mtime and size are part of the key so a rewritten file is read again.
    if file_size == 0:
        raise ImageReadError(path, "file is empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # max_pixels is the limit here
            with Image.open(path) as im:  # lazy: reads the header, not the pixels
                width, height = im.size
                orientation = im.getexif().get(_EXIF_ORIENTATION_TAG, 1)
    except _PIL_ERRORS as exc:
        raise ImageReadError(path, f"not a readable image ({exc})") from None
    if width <= 0 or height <= 0:
        raise ImageReadError(path, f"invalid size {width}x{height} in header")
    if width * height > max_pixels:
        raise ImageReadError(path, f"{width}x{height} = {width * height} pixels is above the limit of "
                                   f"{max_pixels} (MAX_IMAGE_PIXELS)")
    if orientation in _TRANSPOSED_ORIENTATIONS:
        width, height = height, width
    return width, height


def image_size(path: str | Path, max_pixels: int | None = None) -> tuple[int, int]:
    """(width, height) after EXIF orientation, read from the header only and cached."""
    path = os.fspath(path)
    try:
        stat = os.stat(path)
    except OSError as exc:
        raise ImageReadError(path, exc.strerror or str(exc)) from None
    return _header_size(path, stat.st_mtime_ns, stat.st_size, max_pixels or MAX_IMAGE_PIXELS)


def read_image(path: str | Path, max_pixels: int | None = None) -> torch.Tensor:
    """Decodes ``path`` to a uint8 tensor [3, H, W] (RGB, EXIF orientation applied).

    Raises :class:`ImageReadError` naming the file for empty, truncated, corrupt, oversized or
    non-image files.
    """
    path = os.fspath(path)
    width, height = image_size(path, max_pixels)  # validates the header and the pixel limit first
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        raise ImageReadError(path, exc.strerror or str(exc)) from None
    if _torchvision_decodes(data[:12]):
        try:
            with warnings.catch_warnings():
                # torchvision 0.29 deprecates its decoders for TorchCodec (not a dependency here); they
                # remain the fast JPEG/PNG path while they exist, with PIL as the fallback.
                warnings.simplefilter("ignore", DeprecationWarning)
                image = decode_image(torch.frombuffer(bytearray(data), dtype=torch.uint8),
                                     mode=ImageReadMode.RGB, apply_exif_orientation=True)
        except RuntimeError as exc:
            raise ImageReadError(path, f"corrupt or truncated image ({_decoder_message(exc)})") from None
        if image.dtype != torch.uint8:  # 16-bit PNG
            image = F.to_dtype(image, torch.uint8, scale=True)
    else:
        image = _read_with_pil(path)
    if tuple(image.shape[-2:]) != (height, width):
        raise ImageReadError(path, f"decoded size {image.shape[-1]}x{image.shape[-2]} differs from the "
                                   f"header's {width}x{height}")
    return image


def _decoder_message(exc: RuntimeError) -> str:
    # torchvision prefixes "function, /path/to/file.cpp:line, "; the user needs only the reason.
    return re.sub(r"^[\w()]+, \S+:\d+, ", "", str(exc).strip().splitlines()[-1])


def _read_with_pil(path: str) -> torch.Tensor:
    try:
        with warnings.catch_warnings(), Image.open(path) as im:
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # checked against max_pixels already
            im.load()  # raises on truncated data (LOAD_TRUNCATED_IMAGES stays False)
            im = ImageOps.exif_transpose(im)
            if im.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16/32-bit gray: scale, don't clip, to 8 bits
                gray = np.asarray(im, dtype=np.float64)
                top = 65535.0 if im.mode.startswith("I;16") else float(max(gray.max(), 1.0))
                im = Image.fromarray(np.clip(gray / top * 255.0 + 0.5, 0, 255).astype(np.uint8))
            array = np.asarray(im.convert("RGB"))
    except _PIL_ERRORS as exc:
        raise ImageReadError(path, f"corrupt or truncated image ({exc})") from None
    return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()
