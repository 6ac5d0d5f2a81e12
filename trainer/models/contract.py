"""The one interface every detector in the registry satisfies.

Train mode: ``model(images, targets) -> {loss_name: weighted loss}`` (the total is their sum).
Eval mode: ``model(images) -> [{"boxes": [M, 4] xyxy pixels of the input image, "scores": [M],
"labels": int64 [M] in 1..K}]``. Normalisation and resizing happen inside ``forward`` so an exported
graph carries the same preprocessing.
"""
from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor


class DetectorContract:
    """Mixin placed before a detector class (``class X(DetectorContract, FasterRCNN)``).

    Class attributes describe the architecture for the rest of the trainer:
    ``loss_terms`` (names the detector returns in train mode), ``backbone_prefix`` (parameters that get the
    backbone learning rate), ``head_prefixes`` (class-count dependent layers that are re-initialised when
    pretrained weights were trained on another class set), ``fixed_input_size`` ((H, W) or None when the
    model accepts any size), ``weights_enum`` (torchvision weights for ``weights: DEFAULT``) and ``label_offset``
    (1 for heads with K sigmoid outputs indexed 0..K-1, such as torchvision's RetinaNet and FCOS; 0 for heads
    that reserve index 0 for the background).
    """

    loss_terms: tuple[str, ...] = ()
    backbone_prefix: str = "backbone.body."
    head_prefixes: tuple[str, ...] = ()
    fixed_input_size: tuple[int, int] | None = None
    weights_enum = None
    label_offset: int = 0

    def set_loss_weights(self, loss_weights: Mapping[str, float] | None) -> None:
        loss_weights = dict(loss_weights or {})
        unknown = sorted(set(loss_weights) - set(self.loss_terms))
        if unknown:
            raise ValueError(f"model.loss_weights has unknown term(s) {unknown} for {type(self).__name__}; "
                             f"its loss terms are {list(self.loss_terms)}")
        # A plain dict, not a buffer: loss weights are a training setting, not part of the state dict.
        self.loss_weights = {term: float(loss_weights.get(term, 1.0)) for term in self.loss_terms}

    def forward(self, images: list[Tensor], targets: list[dict[str, Tensor]] | None = None):
        if self.label_offset and targets is not None:
            targets = [{**target, "labels": target["labels"] - self.label_offset} for target in targets]
        output = super().forward(images, targets)
        if self.training:
            weights = getattr(self, "loss_weights", {})
            return {name: loss * weights.get(name, 1.0) for name, loss in output.items()}
        if self.label_offset:
            output = [{**detections, "labels": detections["labels"] + self.label_offset} for detections in output]
        return output
