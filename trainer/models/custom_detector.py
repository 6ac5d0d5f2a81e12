"""``custom_detector``: a small anchor-free detector written here, trainable from scratch on a CPU.

A plain conv-BN-ReLU backbone striding to 8/16/32, torchvision's FPN as neck, and an FCOS-style head (per location:
class scores, left/top/right/bottom distances, centerness). Loss: sigmoid focal loss for classes, GIoU for boxes
(weighted by centerness), BCE for centerness. Resize and normalisation use torchvision's GeneralizedRCNNTransform
(aspect-preserving, boxes mapped back to input pixels), so the model takes and returns input-image pixels.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection._utils import _topk_min
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops import FeaturePyramidNetwork, batched_nms, clip_boxes_to_image, \
    generalized_box_iou_loss, sigmoid_focal_loss
from torchvision.ops.misc import Conv2dNormActivation

from trainer.models.contract import DetectorContract
from trainer.models.registry import register_model
from trainer.models.weights import WeightsPlan, trainable_layers

STRIDES = (8, 16, 32)
# FCOS assigns each object to the level whose range holds its largest box side distance.
SIZE_RANGES = ((0.0, 64.0), (64.0, 128.0), (128.0, math.inf))
CENTER_SAMPLING_RADIUS = 1.5
MAX_LOG_DISTANCE = math.log(4096.0)


class SmallBackbone(nn.Module):
    """Stem to stride 4, then three stages (stride 8, 16, 32), each a strided conv plus a conv."""

    def __init__(self, base_channels: int):
        super().__init__()
        c = base_channels
        self.stem = nn.Sequential(Conv2dNormActivation(3, c, stride=2), Conv2dNormActivation(c, 2 * c, stride=2))
        widths = (4 * c, 8 * c, 16 * c)
        stages, previous = [], 2 * c
        for width in widths:
            stages.append(nn.Sequential(Conv2dNormActivation(previous, width, stride=2),
                                        Conv2dNormActivation(width, width)))
            previous = width
        self.stages = nn.ModuleList(stages)
        self.out_channels = widths

    def forward(self, x: Tensor) -> list[Tensor]:
        x = self.stem(x)
        features = []
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        return features


class AnchorFreeHead(nn.Module):
    """Shared across pyramid levels: a classification tower and a box tower with GroupNorm (batch independent)."""

    def __init__(self, channels: int, num_classes: int, num_convs: int = 2, prior_probability: float = 0.01):
        super().__init__()

        def tower() -> nn.Sequential:
            return nn.Sequential(*[Conv2dNormActivation(channels, channels, norm_layer=lambda ch: nn.GroupNorm(8, ch))
                                   for _ in range(num_convs)])

        self.cls_tower, self.box_tower = tower(), tower()
        self.cls_logits = nn.Conv2d(channels, num_classes, 3, padding=1)
        self.bbox_reg = nn.Conv2d(channels, 4, 3, padding=1)
        self.bbox_ctrness = nn.Conv2d(channels, 1, 3, padding=1)
        for layer in (self.cls_logits, self.bbox_reg, self.bbox_ctrness):
            nn.init.normal_(layer.weight, std=0.01)
            nn.init.zeros_(layer.bias)
        # Start with a low foreground probability so the focal loss is not swamped by easy negatives.
        nn.init.constant_(self.cls_logits.bias, -math.log((1 - prior_probability) / prior_probability))

    def forward(self, features: list[Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        """Returns logits [B, P, K], log-distances [B, P, 4] (in strides), centerness logits [B, P] over all levels."""
        logits, distances, ctrness = [], [], []
        for feature in features:
            cls_feature, box_feature = self.cls_tower(feature), self.box_tower(feature)
            logits.append(flatten_locations(self.cls_logits(cls_feature)))
            distances.append(flatten_locations(self.bbox_reg(box_feature)))
            ctrness.append(flatten_locations(self.bbox_ctrness(box_feature)))
        return torch.cat(logits, 1), torch.cat(distances, 1), torch.cat(ctrness, 1).squeeze(-1)


def flatten_locations(x: Tensor) -> Tensor:
    """[B, C, H, W] -> [B, H*W, C] in row-major location order (matches ``location_grid``)."""
    return x.flatten(2).permute(0, 2, 1)


def location_grid(features: list[Tensor]) -> tuple[Tensor, Tensor, Tensor]:
    """Centres of every feature-map cell in padded-image pixels [P, 2], their stride [P] and size range [P, 2]."""
    points, strides, ranges = [], [], []
    for feature, stride, size_range in zip(features, STRIDES, SIZE_RANGES):
        height, width = feature.shape[-2:]
        ys = (torch.arange(height, device=feature.device, dtype=torch.float32) + 0.5) * stride
        xs = (torch.arange(width, device=feature.device, dtype=torch.float32) + 0.5) * stride
        grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
        level_points = torch.stack([grid_x.reshape(-1), grid_y.reshape(-1)], dim=1)
        points.append(level_points)
        strides.append(torch.full_like(level_points[:, 0], stride))
        ranges.append(torch.tensor(size_range, device=feature.device).expand(level_points.shape[0], 2))
    return torch.cat(points), torch.cat(strides), torch.cat(ranges)


class CustomDetectorNet(nn.Module):
    def __init__(self, num_classes: int, *, min_size: int, max_size: int, base_channels: int, fpn_channels: int,
                 head_convs: int, score_thresh: float, nms_thresh: float, detections_per_img: int,
                 topk_candidates: int, focal_alpha: float, focal_gamma: float):
        super().__init__()
        self.num_classes = num_classes
        self.transform = GeneralizedRCNNTransform(min_size, max_size, image_mean=[0.485, 0.456, 0.406],
                                                  image_std=[0.229, 0.224, 0.225], size_divisible=32)
        self.backbone = SmallBackbone(base_channels)
        self.neck = FeaturePyramidNetwork(list(self.backbone.out_channels), fpn_channels)
        self.head = AnchorFreeHead(fpn_channels, num_classes, num_convs=head_convs)
        self.score_thresh, self.nms_thresh = score_thresh, nms_thresh
        self.detections_per_img, self.topk_candidates = detections_per_img, topk_candidates
        self.focal_alpha, self.focal_gamma = focal_alpha, focal_gamma

    def forward(self, images: list[Tensor], targets: list[dict[str, Tensor]] | None = None):
        if self.training and targets is None:
            raise ValueError("custom_detector: targets are required in train mode")
        # Shapes stay symbolic (no int()) so a traced export maps boxes back for any input size.
        original_sizes: list[tuple[int, int]] = [(img.shape[-2], img.shape[-1]) for img in images]
        image_list, targets = self.transform(images, targets)
        features = self.backbone(image_list.tensors)
        features = list(self.neck({str(i): f for i, f in enumerate(features)}).values())
        # Losses and decoding in float32, also under autocast (exp and GIoU lose too much in half precision).
        logits, log_distances, ctrness = (t.float() for t in self.head(features))
        points, strides, ranges = location_grid(features)
        # Distances are predicted in units of the level's stride, as log so they stay positive.
        distances = torch.exp(log_distances.clamp(max=MAX_LOG_DISTANCE)) * strides[None, :, None]
        if self.training:
            return self.compute_loss(logits, distances, ctrness, points, strides, ranges, targets)
        detections = self.decode(logits, distances, ctrness, points, image_list.image_sizes)
        return self.transform.postprocess(detections, image_list.image_sizes, original_sizes)

    def assign_targets(self, boxes: Tensor, labels: Tensor, points: Tensor, strides: Tensor, ranges: Tensor):
        """FCOS assignment with center sampling: a location is positive for the smallest box whose centre region
        (radius 1.5 strides) holds it and whose size falls in the location's level range."""
        num_points = points.shape[0]
        if boxes.numel() == 0:
            return (torch.zeros(num_points, dtype=torch.bool, device=points.device),
                    torch.zeros(num_points, dtype=torch.long, device=points.device),
                    torch.zeros(num_points, 4, device=points.device))
        x, y = points[:, 0, None], points[:, 1, None]
        ltrb = torch.stack([x - boxes[:, 0], y - boxes[:, 1], boxes[:, 2] - x, boxes[:, 3] - y], dim=2)  # [P, G, 4]
        centers = (boxes[:, :2] + boxes[:, 2:]) / 2
        radius = strides[:, None] * CENTER_SAMPLING_RADIUS
        in_center = ((x - centers[:, 0]).abs() < radius) & ((y - centers[:, 1]).abs() < radius)
        max_side = ltrb.max(dim=2).values
        candidate = (ltrb.min(dim=2).values > 0) & in_center
        candidate &= (max_side >= ranges[:, 0, None]) & (max_side <= ranges[:, 1, None])
        areas = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))[None].expand_as(candidate)
        areas = torch.where(candidate, areas, torch.full_like(areas, math.inf))
        min_area, matched = areas.min(dim=1)
        positive = torch.isfinite(min_area)
        return positive, labels[matched], boxes[matched]

    def compute_loss(self, logits: Tensor, distances: Tensor, ctrness: Tensor, points: Tensor, strides: Tensor,
                     ranges: Tensor, targets: list[dict[str, Tensor]]) -> dict[str, Tensor]:
        assigned = [self.assign_targets(t["boxes"], t["labels"], points, strides, ranges) for t in targets]
        positive = torch.stack([a[0] for a in assigned])                      # [B, P]
        matched_labels = torch.stack([a[1] for a in assigned])               # [B, P]
        matched_boxes = torch.stack([a[2] for a in assigned])                # [B, P, 4]
        num_positive = max(1.0, float(positive.sum()))

        class_targets = torch.zeros_like(logits)
        class_targets[positive, matched_labels[positive] - 1] = 1.0
        loss_cls = sigmoid_focal_loss(logits, class_targets, alpha=self.focal_alpha, gamma=self.focal_gamma,
                                      reduction="sum") / num_positive

        pos_points = points[None].expand_as(matched_boxes[..., :2])[positive]
        pos_distances = distances[positive]
        pred_boxes = torch.cat([pos_points - pos_distances[:, :2], pos_points + pos_distances[:, 2:]], dim=1)
        gt_boxes = matched_boxes[positive]
        gt_ltrb = torch.cat([pos_points - gt_boxes[:, :2], gt_boxes[:, 2:] - pos_points], dim=1)
        left_right, top_bottom = gt_ltrb[:, [0, 2]], gt_ltrb[:, [1, 3]]
        ctr_targets = torch.sqrt((left_right.min(1).values / left_right.max(1).values)
                                 * (top_bottom.min(1).values / top_bottom.max(1).values))
        if gt_boxes.shape[0] > 0:
            giou = generalized_box_iou_loss(pred_boxes, gt_boxes, reduction="none")
            loss_box = (giou * ctr_targets).sum() / ctr_targets.sum().clamp(min=1e-6)
            loss_ctr = F.binary_cross_entropy_with_logits(ctrness[positive], ctr_targets, reduction="sum")
            loss_ctr = loss_ctr / num_positive
        else:
            # Keep the graph connected (DDP needs every parameter to receive a gradient).
            loss_box = distances.sum() * 0.0
            loss_ctr = ctrness.sum() * 0.0
        return {"classification": loss_cls, "bbox_regression": loss_box, "bbox_ctrness": loss_ctr}

    def decode(self, logits: Tensor, distances: Tensor, ctrness: Tensor, points: Tensor,
               image_sizes: list[tuple[int, int]]) -> list[dict[str, Tensor]]:
        scores = torch.sqrt(torch.sigmoid(logits) * torch.sigmoid(ctrness)[..., None])  # [B, P, K]
        boxes = torch.cat([points[None] - distances[..., :2], points[None] + distances[..., 2:]], dim=2)
        detections = []
        for image_scores, image_boxes, size in zip(scores, boxes, image_sizes):
            flat = image_scores.flatten()
            top_scores, top_index = flat.topk(_topk_min(flat, self.topk_candidates, 0))
            keep = top_scores > self.score_thresh
            top_scores, top_index = top_scores[keep], top_index[keep]
            point_index = torch.div(top_index, self.num_classes, rounding_mode="floor")
            labels = top_index % self.num_classes + 1
            selected = clip_boxes_to_image(image_boxes[point_index], size)
            kept = batched_nms(selected, top_scores, labels, self.nms_thresh)[: self.detections_per_img]
            detections.append({"boxes": selected[kept], "scores": top_scores[kept], "labels": labels[kept]})
        return detections


class CustomDetector(DetectorContract, CustomDetectorNet):
    loss_terms = ("classification", "bbox_regression", "bbox_ctrness")
    backbone_prefix = "backbone."
    head_prefixes = ("head.cls_logits.",)


@register_model("custom_detector")
def build_custom_detector(num_classes: int, plan: WeightsPlan, *, min_size: int = 512, max_size: int = 640,
                          base_channels: int = 16, fpn_channels: int = 64, head_convs: int = 2,
                          freeze_backbone: bool = False, trainable_backbone_layers: int | None = None,
                          score_thresh: float = 0.05, nms_thresh: float = 0.5, detections_per_img: int = 100,
                          topk_candidates: int = 1000, focal_alpha: float = 0.25, focal_gamma: float = 2.0
                          ) -> CustomDetector:
    if plan.backbone is not None:
        raise ValueError("custom_detector has no separately pretrained backbone: set model.weights_backbone=null "
                         "(model.weights may point at a state dict of a trained custom_detector)")
    model = CustomDetector(num_classes, min_size=min_size, max_size=max_size, base_channels=base_channels,
                           fpn_channels=fpn_channels, head_convs=head_convs, score_thresh=score_thresh,
                           nms_thresh=nms_thresh, detections_per_img=detections_per_img,
                           topk_candidates=topk_candidates, focal_alpha=focal_alpha, focal_gamma=focal_gamma)
    stages = [model.backbone.stem, *model.backbone.stages]
    keep = trainable_layers(freeze_backbone, trainable_backbone_layers, plan.pretrained, len(stages), len(stages))
    for stage in stages[: len(stages) - keep]:
        stage.requires_grad_(False)
    return model
