"""``effnet``: FCOS on an EfficientNet-B0 backbone with a feature pyramid over its stride 8/16/32 stages."""
from __future__ import annotations

from torchvision.models import EfficientNet_B0_Weights, efficientnet_b0
from torchvision.models.detection import FCOS
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.ops.feature_pyramid_network import LastLevelP6P7

from trainer.models.contract import DetectorContract
from trainer.models.registry import register_model
from trainer.models.weights import WeightsPlan, build_backbone_classifier, trainable_layers

# efficientnet_b0().features: 0 stem (s2), 1 (s2), 2 (s4), 3 (s8, 40 ch), 4 (s16), 5 (s16, 112 ch), 6 (s32),
# 7 (s32, 320 ch), 8 the 1x1 classifier expansion (unused: the pyramid stops at block 7).
PYRAMID_BLOCKS = {"3": "0", "5": "1", "7": "2"}
PYRAMID_CHANNELS = [40, 112, 320]
NUM_BLOCKS = 8


class EffNetFCOS(DetectorContract, FCOS):
    loss_terms = ("classification", "bbox_regression", "bbox_ctrness")
    head_prefixes = ("head.classification_head.cls_logits.",)
    label_offset = 1  # K sigmoid outputs for labels 1..K


@register_model("effnet")
def build_effnet(num_classes: int, plan: WeightsPlan, *, min_size: int = 512, max_size: int = 512,
                 fpn_channels: int = 128, freeze_backbone: bool = False, trainable_backbone_layers: int | None = None,
                 score_thresh: float = 0.2, nms_thresh: float = 0.6, detections_per_img: int = 100,
                 topk_candidates: int = 1000) -> EffNetFCOS:
    if fpn_channels % 32:
        raise ValueError(f"model.fpn_channels must be a multiple of 32 (FCOS head GroupNorm), got {fpn_channels}")
    classifier = build_backbone_classifier(efficientnet_b0, EfficientNet_B0_Weights, plan.backbone_to_load)
    blocks = classifier.features
    keep = trainable_layers(freeze_backbone, trainable_backbone_layers, plan.pretrained, NUM_BLOCKS, 3)
    for block in blocks[: NUM_BLOCKS - keep]:
        block.requires_grad_(False)
    backbone = BackboneWithFPN(blocks, PYRAMID_BLOCKS, PYRAMID_CHANNELS, fpn_channels,
                               extra_blocks=LastLevelP6P7(fpn_channels, fpn_channels))
    # One anchor per location sized like its stride (P3..P7): FCOS only uses it as the location's reference box.
    anchor_generator = AnchorGenerator(((8,), (16,), (32,), (64,), (128,)), ((1.0,),) * 5)
    return EffNetFCOS(backbone, num_classes, min_size=min_size, max_size=max_size,
                      anchor_generator=anchor_generator, score_thresh=score_thresh, nms_thresh=nms_thresh,
                      detections_per_img=detections_per_img, topk_candidates=topk_candidates)
