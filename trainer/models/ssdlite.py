"""``ssdlite``: torchvision SSDLite320 with a MobileNetV3-Large backbone (fixed 320x320 input)."""
from __future__ import annotations

from functools import partial

from torch import nn
from torchvision.models import MobileNet_V3_Large_Weights, mobilenet_v3_large
from torchvision.models.detection import SSDLite320_MobileNet_V3_Large_Weights
from torchvision.models.detection.ssd import SSD
from torchvision.models.detection import _utils as det_utils
from torchvision.models.detection.anchor_utils import DefaultBoxGenerator
from torchvision.models.detection.ssdlite import SSDLiteHead, _mobilenet_extractor, _normal_init

from trainer.models.contract import DetectorContract
from trainer.models.registry import register_model
from trainer.models.weights import WeightsPlan, build_backbone_classifier, trainable_layers

SIZE = (320, 320)
MOBILENET_STAGES = 6


class SSDLiteDetector(DetectorContract, SSD):
    loss_terms = ("bbox_regression", "classification")
    backbone_prefix = "backbone.features."
    head_prefixes = ("head.classification_head.",)
    fixed_input_size = SIZE
    weights_enum = SSDLite320_MobileNet_V3_Large_Weights


@register_model("ssdlite")
def build_ssdlite(num_classes: int, plan: WeightsPlan, *, freeze_backbone: bool = False,
                  trainable_backbone_layers: int | None = None, score_thresh: float = 0.001,
                  nms_thresh: float = 0.55, detections_per_img: int = 300, topk_candidates: int = 300
                  ) -> SSDLiteDetector:
    """Mirrors ``torchvision.models.detection.ssdlite320_mobilenet_v3_large`` but never downloads for ``null``
    (torchvision's builder fetches an ImageNet backbone by default)."""
    norm_layer = partial(nn.BatchNorm2d, eps=0.001, momentum=0.03)
    imagenet_backbone = plan.detector is None and plan.backbone is not None
    # The COCO weights and random init use MobileNetV3's reduced tail (paper, Table 6); ImageNet weights do not.
    classifier = build_backbone_classifier(mobilenet_v3_large, MobileNet_V3_Large_Weights, plan.backbone_to_load,
                                           norm_layer=norm_layer, reduced_tail=not imagenet_backbone)
    if not imagenet_backbone:
        _normal_init(classifier)
    keep = trainable_layers(freeze_backbone, trainable_backbone_layers, plan.pretrained, MOBILENET_STAGES, 6)
    backbone = _mobilenet_extractor(classifier, keep, norm_layer)
    anchor_generator = DefaultBoxGenerator([[2, 3] for _ in range(6)], min_ratio=0.2, max_ratio=0.95)
    out_channels = det_utils.retrieve_out_channels(backbone, SIZE)
    num_anchors = anchor_generator.num_anchors_per_location()
    head = SSDLiteHead(out_channels, num_anchors, num_classes + 1, norm_layer)
    # Mean/std map [0, 1] to [-1, 1] as the backbone expects.
    return SSDLiteDetector(backbone, anchor_generator, SIZE, num_classes + 1, head=head, score_thresh=score_thresh,
                           nms_thresh=nms_thresh, detections_per_img=detections_per_img,
                           topk_candidates=topk_candidates, image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5])
