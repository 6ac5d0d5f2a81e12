"""``retinanet``: torchvision RetinaNet v2 (ResNet-50 FPN, GIoU box loss, GroupNorm head)."""
from __future__ import annotations

from functools import partial

from torch import nn
from torchvision.models import ResNet50_Weights, resnet50
from torchvision.models.detection import RetinaNet, RetinaNet_ResNet50_FPN_V2_Weights
from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
from torchvision.models.detection.retinanet import RetinaNetHead, _default_anchorgen
from torchvision.ops.feature_pyramid_network import LastLevelP6P7

from trainer.models.contract import DetectorContract
from trainer.models.registry import register_model
from trainer.models.weights import WeightsPlan, build_backbone_classifier, trainable_layers

RESNET_STAGES = 5  # conv1, layer1..layer4


class RetinaNetDetector(DetectorContract, RetinaNet):
    loss_terms = ("classification", "bbox_regression")
    head_prefixes = ("head.classification_head.cls_logits.",)
    label_offset = 1  # K sigmoid outputs for labels 1..K
    weights_enum = RetinaNet_ResNet50_FPN_V2_Weights


@register_model("retinanet")
def build_retinanet(num_classes: int, plan: WeightsPlan, *, min_size: int = 800, max_size: int = 1333,
                    freeze_backbone: bool = False, trainable_backbone_layers: int | None = None,
                    score_thresh: float = 0.05, nms_thresh: float = 0.5, detections_per_img: int = 300,
                    topk_candidates: int = 1000) -> RetinaNetDetector:
    """Mirrors ``torchvision.models.detection.retinanet_resnet50_fpn_v2`` (same keys as its COCO weights)."""
    classifier = build_backbone_classifier(resnet50, ResNet50_Weights, plan.backbone_to_load)
    keep = trainable_layers(freeze_backbone, trainable_backbone_layers, plan.pretrained, RESNET_STAGES, 3)
    backbone = _resnet_fpn_extractor(classifier, keep, returned_layers=[2, 3, 4],
                                     extra_blocks=LastLevelP6P7(2048, 256))
    anchor_generator = _default_anchorgen()
    head = RetinaNetHead(backbone.out_channels, anchor_generator.num_anchors_per_location()[0], num_classes,
                         norm_layer=partial(nn.GroupNorm, 32))
    head.regression_head._loss_type = "giou"
    return RetinaNetDetector(backbone, num_classes, anchor_generator=anchor_generator, head=head,
                             min_size=min_size, max_size=max_size, score_thresh=score_thresh,
                             nms_thresh=nms_thresh, detections_per_img=detections_per_img,
                             topk_candidates=topk_candidates)
