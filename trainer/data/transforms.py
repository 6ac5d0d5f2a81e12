"""Box-aware augmentation policies (torchvision.transforms.v2), chosen by name in the config.

Nothing here stretches an image: flips, colour changes, zoom-out padding and crops keep objects'
aspect ratio, and the models resize internally. Every policy ends with
``ToDtype(float32, scale=True)``; those that can cut boxes away also end with
``SanitizeBoundingBoxes`` (which drops degenerate boxes together with their ``labels``).
"""
from __future__ import annotations

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2 as T

POLICIES = ("none", "flip", "default")
# Zoom-out fills the new canvas with the ImageNet mean, as torchvision's SSD recipe does.
_ZOOM_OUT_FILL = {tv_tensors.Image: (124, 116, 104), "others": 0}


class _WithBoxesOnly(torch.nn.Module):
    """Applies ``transform`` only when the sample has boxes: RandomIoUCrop needs boxes to measure IoU.

    Images too small to crop (a side under ``1 / min_scale`` pixels) are also left alone: RandomIoUCrop would
    divide by a crop side of ``int(side * scale) == 0``.
    """

    def __init__(self, transform: torch.nn.Module):
        super().__init__()
        self.transform = transform

    def forward(self, image, target):
        too_small = min(image.shape[-2:]) * getattr(self.transform, "min_scale", 0.0) < 1.0
        if len(target["boxes"]) == 0 or too_small:
            return image, target
        return self.transform(image, target)


def build_transforms(policy: str) -> T.Compose:
    """``none``: convert only (evaluation; never resizes). ``flip``: horizontal flip.
    ``default``: photometric distortion, zoom out, IoU crop, horizontal flip."""
    to_float = T.ToDtype(torch.float32, scale=True)
    if policy == "none":
        return T.Compose([T.ToImage(), to_float])
    if policy == "flip":
        return T.Compose([T.ToImage(), T.RandomHorizontalFlip(p=0.5), to_float])
    if policy == "default":
        return T.Compose([
            T.ToImage(),
            T.RandomPhotometricDistort(p=0.5),
            T.RandomZoomOut(fill=_ZOOM_OUT_FILL, side_range=(1.0, 2.0), p=0.3),
            _WithBoxesOnly(T.RandomIoUCrop()),
            T.RandomHorizontalFlip(p=0.5),
            to_float,
            T.SanitizeBoundingBoxes(),  # finds target["labels"] and drops it with its box
        ])
    raise ValueError(f"unknown augmentation policy {policy!r}; choose one of {', '.join(POLICIES)}")
