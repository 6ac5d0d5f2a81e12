"""``fcos``: torchvision FCOS with a ResNet-50 FPN backbone."""
from __future__ import annotations

from torch import nn
from torchvision.models import ResNet50_Weights, resnet50
from torchvision.models.detection import FCOS, FCOS_ResNet50_FPN_Weights
from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
from torchvision.ops.feature_pyramid_network import LastLevelP6P7
from torchvision.ops.misc import FrozenBatchNorm2d

from trainer.models.contract import DetectorContract
from trainer.models.registry import register_model
from trainer.models.weights import WeightsPlan, build_backbone_classifier, trainable_layers

RESNET_STAGES = 5  # conv1, layer1..layer4


class FCOSDetector(DetectorContract, FCOS):
    loss_terms = ("classification", "bbox_regression", "bbox_ctrness")
    head_prefixes = ("head.classification_head.cls_logits.",)
    label_offset = 1  # K sigmoid outputs for labels 1..K
    weights_enum = FCOS_ResNet50_FPN_Weights


@register_model("fcos")
def build_fcos(num_classes: int, plan: WeightsPlan, *, min_size: int = 800, max_size: int = 1333,
               freeze_backbone: bool = False, trainable_backbone_layers: int | None = None,
               score_thresh: float = 0.2, nms_thresh: float = 0.6, detections_per_img: int = 100,
               topk_candidates: int = 1000) -> FCOSDetector:
    """Mirrors ``torchvision.models.detection.fcos_resnet50_fpn`` (same keys as its COCO weights)."""
    norm_layer = FrozenBatchNorm2d if plan.pretrained else nn.BatchNorm2d
    classifier = build_backbone_classifier(resnet50, ResNet50_Weights, plan.backbone_to_load, norm_layer=norm_layer)
    keep = trainable_layers(freeze_backbone, trainable_backbone_layers, plan.pretrained, RESNET_STAGES, 3)
    backbone = _resnet_fpn_extractor(classifier, keep, returned_layers=[2, 3, 4], extra_blocks=LastLevelP6P7(256, 256))
    return FCOSDetector(backbone, num_classes, min_size=min_size, max_size=max_size, score_thresh=score_thresh,
                        nms_thresh=nms_thresh, detections_per_img=detections_per_img, topk_candidates=topk_candidates)
