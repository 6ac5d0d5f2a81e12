"""``faster_rcnn``: torchvision Faster R-CNN with a MobileNetV3-Large FPN backbone."""
from __future__ import annotations

from torch import nn
from torchvision.models import MobileNet_V3_Large_Weights, mobilenet_v3_large
from torchvision.models.detection import FasterRCNN, FasterRCNN_MobileNet_V3_Large_FPN_Weights
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import _mobilenet_extractor
from torchvision.ops.misc import FrozenBatchNorm2d

from trainer.models.contract import DetectorContract
from trainer.models.registry import register_model
from trainer.models.weights import WeightsPlan, build_backbone_classifier, trainable_layers

MOBILENET_STAGES = 6  # stem + the five strided stages torchvision counts for trainable_backbone_layers


class FasterRCNNDetector(DetectorContract, FasterRCNN):
    loss_terms = ("loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg")
    head_prefixes = ("roi_heads.box_predictor.",)
    weights_enum = FasterRCNN_MobileNet_V3_Large_FPN_Weights


@register_model("faster_rcnn")
def build_faster_rcnn(num_classes: int, plan: WeightsPlan, *, min_size: int = 600, max_size: int = 800,
                      freeze_backbone: bool = False, trainable_backbone_layers: int | None = None,
                      score_thresh: float = 0.05, nms_thresh: float = 0.5, detections_per_img: int = 100,
                      rpn_score_thresh: float = 0.05, rpn_pre_nms_top_n_test: int = 1000,
                      rpn_post_nms_top_n_test: int = 1000) -> FasterRCNNDetector:
    """Mirrors ``torchvision.models.detection.fasterrcnn_mobilenet_v3_large_fpn`` (same keys as its COCO weights)."""
    norm_layer = FrozenBatchNorm2d if plan.pretrained else nn.BatchNorm2d
    classifier = build_backbone_classifier(mobilenet_v3_large, MobileNet_V3_Large_Weights, plan.backbone_to_load,
                                           norm_layer=norm_layer)
    keep = trainable_layers(freeze_backbone, trainable_backbone_layers, plan.pretrained, MOBILENET_STAGES, 3)
    backbone = _mobilenet_extractor(classifier, True, keep)
    anchor_sizes = ((32, 64, 128, 256, 512),) * 3
    anchor_generator = AnchorGenerator(anchor_sizes, ((0.5, 1.0, 2.0),) * len(anchor_sizes))
    # torchvision counts the background class: K + 1 outputs, labels 1..K.
    return FasterRCNNDetector(backbone, num_classes + 1, min_size=min_size, max_size=max_size,
                              rpn_anchor_generator=anchor_generator, rpn_score_thresh=rpn_score_thresh,
                              rpn_pre_nms_top_n_test=rpn_pre_nms_top_n_test,
                              rpn_post_nms_top_n_test=rpn_post_nms_top_n_test,
                              box_score_thresh=score_thresh, box_nms_thresh=nms_thresh,
                              box_detections_per_img=detections_per_img)
