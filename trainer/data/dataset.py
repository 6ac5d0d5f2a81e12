"""The detection ``Dataset``: decoded RGB images and targets in pixel coordinates."""
from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence

import torch
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as F

from trainer.data.classes import ClassMap
from trainer.data.images import image_size, read_image
from trainer.data.records import Record


class DetectionDataset(Dataset):
    """``dataset[i] -> (image float32 [3, H, W] in [0, 1], target)``.

    ``target = {"boxes": BoundingBoxes XYXY float32 in pixels of the returned image,
    "labels": int64 [N] in 1..K, "image_id": i}``. Labels missing from ``class_map`` are dropped and
    counted in ``dropped_labels``; images left without boxes are kept as negatives.
    ``transforms`` is a torchvision.transforms.v2 callable ``(image, target) -> (image, target)``
    that ends with ``ToDtype(torch.float32, scale=True)``; without one the image is only converted.
    """

    def __init__(self, records: Sequence[Record], class_map: ClassMap, transforms: Callable | None = None):
        self.records = list(records)
        self.class_map = class_map
        self.transforms = transforms
        self.dropped_labels: Counter = Counter()
        # Label ids and normalized boxes are fixed per record: compute them once, not per epoch.
        self._labels: list[torch.Tensor] = []
        self._normalized_boxes: list[torch.Tensor] = []
        for record in self.records:
            kept = [box for box in record.boxes if box.label in class_map]
            self.dropped_labels.update(box.label for box in record.boxes if box.label not in class_map)
            self._labels.append(torch.tensor([class_map.id_of(b.label) for b in kept], dtype=torch.int64))
            self._normalized_boxes.append(torch.tensor([b.xyxy for b in kept], dtype=torch.float32).reshape(-1, 4))

    def __len__(self) -> int:
        return len(self.records)

    def image_sizes(self) -> list[tuple[int, int]]:
        """(width, height) of every image, from the (cached) headers; no decoding."""
        return [image_size(record.image_path) for record in self.records]

    def num_boxes(self) -> int:
        return sum(len(labels) for labels in self._labels)

    def __getitem__(self, index: int):
        image = tv_tensors.Image(read_image(self.records[index].image_path))
        height, width = image.shape[-2:]
        scale = torch.tensor([width, height, width, height], dtype=torch.float32)
        target = {
            "boxes": tv_tensors.BoundingBoxes(self._normalized_boxes[index] * scale,
                                              format=tv_tensors.BoundingBoxFormat.XYXY,
                                              canvas_size=(height, width)),
            "labels": self._labels[index].clone(),
            "image_id": index,
        }
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        else:
            image = F.to_dtype(image, torch.float32, scale=True)
        return image, target


def collate_fn(batch):
    """Detection batches stay lists: images differ in size and targets in box count."""
    images, targets = zip(*batch)
    return list(images), list(targets)
