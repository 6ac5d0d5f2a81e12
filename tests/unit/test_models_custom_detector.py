"""custom_detector internals: FCOS-style target assignment, and a traceable eval path (ONNX export parity)."""
from __future__ import annotations

import pytest
import torch

from test_models_contract import model_config, synthetic_batch
from trainer.models import build_model
from trainer.models.custom_detector import location_grid


def test_assignment_picks_points_inside_the_box_centre_at_the_matching_level():
    model = build_model(model_config("custom_detector"), 3)
    features = [torch.zeros(1, 1, 16, 16), torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 4, 4)]  # a 128x128 input
    points, strides, ranges = location_grid(features)
    small = torch.tensor([[8.0, 8.0, 40.0, 40.0]])   # largest side distance <= 64: stride-8 level
    large = torch.tensor([[0.0, 0.0, 128.0, 128.0]])  # distance 64..128: stride-16 level
    boxes = torch.cat([small, large])
    positive, labels, matched = model.assign_targets(boxes, torch.tensor([2, 3]), points, strides, ranges)
    small_hits = positive & (labels == 2)
    assert small_hits.any() and (strides[small_hits] == 8).all()
    assert ((points[small_hits] > small[0, :2]) & (points[small_hits] < small[0, 2:])).all()
    # Points inside the small box go to the small box (the smaller area wins), never to the one around it.
    assert (matched[small_hits] == small).all()
    large_hits = positive & (labels == 3)
    assert large_hits.any() and (strides[large_hits] == 16).all()
    centre_distance = (points[large_hits] - 64.0).abs().max(dim=1).values
    assert (centre_distance < 1.5 * 16).all()

    positive, _, _ = model.assign_targets(torch.zeros(0, 4), torch.zeros(0, dtype=torch.long), points, strides, ranges)
    assert not positive.any()


class _ExportWrapper(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, image):
        output = self.model([image[0]])[0]
        return output["boxes"], output["scores"], output["labels"]


# The TorchScript exporter (dynamo=False, what the deploy step uses) warns about itself and about tracing
# torchvision's resize and box clipping; those warnings are torch's and torchvision's, not this model's.
@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning", "ignore::DeprecationWarning", "ignore::UserWarning")
@pytest.mark.parametrize("config_name", ["custom_detector", pytest.param("effnet", marks=pytest.mark.slow)])
def test_exported_onnx_matches_eager_for_other_input_sizes(config_name, tmp_path):
    onnxruntime = pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    wrapper = _ExportWrapper(build_model(model_config(config_name, score_thresh=0.0), 3)).eval()
    images, _ = synthetic_batch()
    torch.onnx.export(wrapper, (images[0][None],), tmp_path / "model.onnx", dynamo=False, opset_version=17,
                      input_names=["image"], output_names=["boxes", "scores", "labels"],
                      dynamic_axes={"image": {2: "height", 3: "width"}})
    session = onnxruntime.InferenceSession(str(tmp_path / "model.onnx"))
    for image in images:  # the second size differs from the traced one
        with torch.no_grad():
            expected = wrapper(image[None])
        got = session.run(None, {"image": image[None].numpy()})
        assert len(expected[0]) > 0
        for want, have in zip(expected, got):
            torch.testing.assert_close(torch.from_numpy(have), want, rtol=1e-4, atol=1e-3)
