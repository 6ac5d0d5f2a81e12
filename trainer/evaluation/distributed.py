"""Predict an evaluation set across processes and merge the results by image id.

Each process takes a contiguous, unpadded shard of the image indices (so no image is predicted
twice), and every process receives every prediction through ``gather_object``. The merge is keyed
by image id and checks that each image arrived exactly once, so metrics are identical for any
number of processes.
"""
from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Subset
from tqdm.auto import tqdm

from trainer.data.images import image_size
from trainer.evaluation.coco import build_coco_ground_truth, to_coco_results
from trainer.evaluation.metrics import compute_metrics

Predictions = dict[int, dict[str, np.ndarray]]  # image id -> {"boxes" [M,4] xyxy px, "scores" [M], "labels" [M]}


def build_accelerator(cpu: bool = False):
    """An ``Accelerator`` that joins the launcher's processes, on the CPU too.

    Under ``torchrun``/``accelerate launch`` on a machine without a GPU, Accelerate only sets up gloo when
    told to use the CPU; otherwise every process would silently evaluate everything alone.
    """
    from accelerate import Accelerator

    launched = int(os.environ.get("WORLD_SIZE", "1"))
    accelerator = Accelerator(cpu=cpu or (launched > 1 and not torch.cuda.is_available()))
    if accelerator.num_processes != launched:
        raise RuntimeError(f"the launcher started {launched} processes (WORLD_SIZE) but Accelerate set up "
                           f"{accelerator.num_processes}; check the accelerate config / launch flags")
    return accelerator


def _collate(batch):
    return tuple(zip(*batch))


def to_numpy_prediction(output: Mapping, scale_x: float = 1.0, scale_y: float = 1.0) -> dict[str, np.ndarray]:
    """One model output on the CPU as numpy, boxes rescaled by (scale_x, scale_y)."""
    boxes = torch.as_tensor(output["boxes"]).detach().float().cpu().reshape(-1, 4)
    if scale_x != 1.0 or scale_y != 1.0:
        boxes = boxes * torch.tensor([scale_x, scale_y, scale_x, scale_y])
    return {
        "boxes": boxes.numpy(),
        "scores": torch.as_tensor(output["scores"]).detach().float().cpu().reshape(-1).numpy(),
        "labels": torch.as_tensor(output["labels"]).detach().cpu().reshape(-1).to(torch.int64).numpy(),
    }


@contextlib.contextmanager
def prediction_mode(model: Callable, accelerator):
    """Yields a callable ``images -> outputs``: an ``nn.Module`` unwrapped, in eval mode, under no_grad and
    the accelerator's autocast (train mode restored afterwards); any other callable (an ONNX predictor)
    as it is."""
    if not isinstance(model, nn.Module):
        yield model
        return
    module = accelerator.unwrap_model(model)
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad(), accelerator.autocast():
            yield module
    finally:
        module.train(was_training)


def predict_shard(
    predictor: Callable,
    dataset,
    indices: Sequence[int],
    image_paths: Sequence,
    batch_size: int,
    device: torch.device | str = "cpu",
    num_workers: int = 0,
    progress: bool = False,
) -> Predictions:
    """Predictions for ``dataset[i]`` for ``i`` in ``indices``, in the original image's pixels.

    ``predictor(list_of_images)`` returns one ``{"boxes", "scores", "labels"}`` per image. Boxes are
    scaled back to the size in the header of ``image_paths[i]`` when the dataset returns another size.
    """
    loader = DataLoader(Subset(dataset, list(indices)), batch_size=batch_size, shuffle=False,
                        num_workers=num_workers, collate_fn=_collate)
    predictions: Predictions = {}
    positions = iter(indices)
    for images, targets in tqdm(loader, desc="predict", disable=not progress, leave=False):
        outputs = predictor([image.to(device, non_blocking=True) for image in images])
        for image, target, output in zip(images, targets, outputs):
            image_id = next(positions)
            if "image_id" in target and int(target["image_id"]) != image_id:
                raise ValueError(f"dataset item {image_id} reports image_id {int(target['image_id'])}; "
                                 "image ids must be dataset indices")
            width, height = image_size(image_paths[image_id])
            scale_x, scale_y = width / image.shape[-1], height / image.shape[-2]
            predictions[image_id] = to_numpy_prediction(output, scale_x, scale_y)
    return predictions


def merge_predictions(shards: Sequence[tuple[int, dict]], num_images: int) -> Predictions:
    """Merge gathered ``(image_id, prediction)`` pairs; every image id in 0..num_images-1 exactly once."""
    merged: Predictions = {}
    for image_id, prediction in shards:
        if image_id in merged:
            raise RuntimeError(f"image {image_id} was predicted by more than one process")
        merged[image_id] = prediction
    missing = set(range(num_images)) - merged.keys()
    if missing:
        raise RuntimeError(f"{len(missing)} image(s) have no prediction, e.g. {sorted(missing)[:5]}")
    return dict(sorted(merged.items()))


def predict_distributed(
    predictor: Callable,
    dataset,
    accelerator,
    batch_size: int,
    num_workers: int = 0,
    progress: bool = False,
    image_paths: Sequence | None = None,
) -> Predictions:
    """Predict the whole ``dataset`` with every process doing its shard; all processes get all predictions.

    ``image_paths[i]`` is the file of ``dataset[i]`` (default: ``dataset.records[i].image_path``).
    """
    from accelerate.utils import gather_object

    if image_paths is None:
        image_paths = [record.image_path for record in dataset.records]
    all_indices = list(range(len(dataset)))
    # apply_padding=False: shards may differ in length by one, but no image is duplicated.
    with accelerator.split_between_processes(all_indices, apply_padding=False) as shard:
        with prediction_mode(predictor, accelerator) as model:
            device = accelerator.device if isinstance(predictor, nn.Module) else "cpu"
            local = predict_shard(model, dataset, shard, image_paths, batch_size, device, num_workers,
                                  progress and accelerator.is_main_process)
    return merge_predictions(gather_object(list(local.items())), len(dataset))


def evaluate_model(
    model: Callable,
    dataset,
    accelerator,
    batch_size: int,
    num_workers: int = 0,
    score_threshold: float = 0.5,
    iou_threshold: float = 0.5,
    progress: bool = False,
) -> tuple[dict, Predictions]:
    """COCO metrics of ``model`` on ``dataset`` (a DetectionDataset: ``.records``, ``.class_map``).

    Runs on every process of ``accelerator`` (all must call it); the metrics are computed once, on
    the main process, and broadcast, so every process returns the same metrics and predictions.
    """
    from accelerate.utils import broadcast_object_list

    predictions = predict_distributed(model, dataset, accelerator, batch_size, num_workers, progress)
    metrics = [None]
    if accelerator.is_main_process:
        gt = build_coco_ground_truth(dataset.records, dataset.class_map)
        metrics[0] = compute_metrics(gt, to_coco_results(predictions), dataset.class_map,
                                     score_threshold=score_threshold, iou_threshold=iou_threshold)
    broadcast_object_list(metrics, from_process=0)
    return metrics[0], predictions
