"""The ONNX graph contract, the onnxruntime predictor and the parity helpers, on a tiny custom_detector."""
from __future__ import annotations

from pathlib import Path
import json

import numpy as np
import onnx
import pytest
import torch
import yaml
from onnx import TensorProto, helper

from trainer.data.builder import build_datasets
from trainer.data.classes import ClassMap
from trainer.data.images import read_image
from trainer.deploy.convert import write_labels
from trainer.deploy.onnx_export import INPUT_NAME, OUTPUT_NAMES, export_onnx
from trainer.deploy.onnx_runtime import OnnxPredictor, to_uint8, unpad
from trainer.deploy.parity import compare_image
from trainer.deploy.wrapper import PIXEL_SCALE
from trainer.models import build_model

REPO_ROOT = Path(__file__).resolve().parents[2]
CLASSES = ("circle", "square", "triangle")
MAX_DETECTIONS = 20


def tiny_detector(**overrides) -> torch.nn.Module:
    config = yaml.safe_load((REPO_ROOT / "configs" / "model" / "custom_detector.yaml").read_text())
    config.update({"min_size": 96, "max_size": 128, "base_channels": 8, "fpn_channels": 16, "score_thresh": 0.01,
                   **overrides})
    torch.manual_seed(0)
    return build_model(config, len(CLASSES)).eval()


@pytest.fixture(scope="module")
def images(sample_dataset_dir) -> list[torch.Tensor]:
    data = build_datasets({"dataset_dir": str(sample_dataset_dir), "val_split": 0.0})
    return [read_image(record.image_path) for record in data.train.records[:3]]


@pytest.fixture(scope="module")
def exported(tmp_path_factory, images):
    model = tiny_detector()
    path = export_onnx(model, tmp_path_factory.mktemp("onnx") / "model.onnx", images[0][:, :70, :90],
                       max_detections=MAX_DETECTIONS, metadata={"class_names": json.dumps(CLASSES)})
    return model, path


def _dims(value: onnx.ValueInfoProto) -> list:
    return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]


def test_graph_has_the_documented_inputs_outputs_and_metadata(exported):
    _, path = exported
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    (image,) = model.graph.input
    assert image.name == INPUT_NAME and image.type.tensor_type.elem_type == TensorProto.UINT8
    assert _dims(image) == ["batch", 3, "height", "width"]
    outputs = {o.name: o for o in model.graph.output}
    assert list(outputs) == list(OUTPUT_NAMES)
    assert _dims(outputs["location"]) == ["batch", MAX_DETECTIONS, 4]
    assert _dims(outputs["score"]) == ["batch", MAX_DETECTIONS]
    assert outputs["category"].type.tensor_type.elem_type == TensorProto.INT64
    assert {p.key: p.value for p in model.metadata_props}["class_names"] == json.dumps(CLASSES)


@pytest.mark.parametrize("batch_size", [0, 1, 3])
def test_batch_and_size_are_dynamic_and_each_image_is_independent(exported, images, batch_size):
    _, path = exported
    predictor = OnnxPredictor(path)
    # 112x80: neither the traced 90x70 crop nor the 128x96 images.
    batch = np.zeros((batch_size, 3, 80, 112), np.uint8)
    for i in range(batch_size):
        batch[i] = images[i % len(images)][:, :80, :112].numpy()
    location, score, category = predictor.run(batch)
    assert location.shape == (batch_size, MAX_DETECTIONS, 4) and location.dtype == np.float32
    assert score.shape == category.shape == (batch_size, MAX_DETECTIONS) and category.dtype == np.int64
    for i in range(batch_size):
        alone = predictor.run(batch[i:i + 1])
        np.testing.assert_array_equal(category[i], alone[2][0])
        np.testing.assert_allclose(location[i], alone[0][0], atol=1e-4)


def test_outputs_match_pytorch_at_a_size_the_trace_did_not_see(exported, images):
    model, path = exported
    predictor = OnnxPredictor(path)
    image = images[1]
    with torch.no_grad():
        (reference,) = model([image.float().mul(PIXEL_SCALE)])
    location, score, category = predictor.run(image[None].numpy())
    n = min(len(reference["scores"]), MAX_DETECTIONS)
    assert n > 0
    np.testing.assert_array_equal(category[0, :n], reference["labels"][:n].numpy())
    np.testing.assert_allclose(score[0, :n], reference["scores"][:n].numpy(), atol=1e-5)
    np.testing.assert_allclose(location[0, :n], reference["boxes"][:n].numpy(), atol=1e-2)


def test_rows_past_the_detections_are_zero_padding(tmp_path, images):
    # A score threshold no random model reaches: every row is padding.
    path = export_onnx(tiny_detector(score_thresh=0.999), tmp_path / "m.onnx", images[0], max_detections=5)
    location, score, category = OnnxPredictor(path).run(images[0][None].numpy())
    assert not location.any() and not score.any() and not category.any()
    assert OnnxPredictor(path)([images[0].float() / 255])[0]["boxes"].shape == (0, 4)


def test_predictor_is_called_like_an_eval_model_on_mixed_sizes(exported, images):
    model, path = exported
    predictor = OnnxPredictor(path)
    inputs = [images[0].float().mul(PIXEL_SCALE), images[1][:, :64, :100].float().mul(PIXEL_SCALE)]
    outputs = predictor(inputs)
    assert len(outputs) == 2
    for output, image in zip(outputs, inputs):
        assert set(output) == {"boxes", "scores", "labels"}
        assert output["labels"].dtype == torch.int64 and (output["labels"] >= 1).all()
        with torch.no_grad():
            (reference,) = model([image])
        assert torch.equal(output["labels"], reference["labels"][:MAX_DETECTIONS])
    assert predictor.class_map == ClassMap(CLASSES)


def test_to_uint8_rounds_instead_of_truncating():
    pixels = torch.arange(256, dtype=torch.uint8).reshape(1, 16, 16).expand(3, 16, 16)
    assert torch.equal(to_uint8(pixels.float().mul(PIXEL_SCALE)), pixels)
    assert to_uint8(torch.full((3, 1, 1), 0.99999)).unique().tolist() == [255]  # truncation would give 254
    assert to_uint8(torch.tensor([[[-0.1, 1.2]]]).expand(3, 1, 2)).tolist()[0] == [[0, 255]]


def test_unpad_drops_category_zero_rows():
    location = np.arange(12, dtype=np.float32).reshape(3, 4)
    result = unpad(location, np.array([0.9, 0.4, 0.0], np.float32), np.array([2, 1, 0]))
    assert result["labels"].tolist() == [2, 1] and result["boxes"].shape == (2, 4)


def test_predictor_rejects_files_that_are_not_exported_detectors(tmp_path):
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    onnx.save(helper.make_model(graph), str(tmp_path / "other.onnx"))
    with pytest.raises(ValueError, match="not an exported detector"):
        OnnxPredictor(tmp_path / "other.onnx")
    with pytest.raises(FileNotFoundError, match="missing.onnx"):
        OnnxPredictor(tmp_path / "missing.onnx")


def test_export_refuses_opsets_without_the_loop_inputs_it_needs(tmp_path, images):
    with pytest.raises(ValueError, match="opset must be >= 13"):
        export_onnx(tiny_detector(), tmp_path / "m.onnx", images[0], opset=12)


def test_labels_file_line_i_is_class_id_i(tmp_path):
    class_map = ClassMap(["cat", "dog"])
    lines = write_labels(class_map, tmp_path / "labels.txt").read_text().splitlines()
    assert lines == ["__background__", "cat", "dog"]
    assert all(lines[class_map.id_of(name)] == name for name in class_map.names)


def test_parity_matching_tolerates_reordered_ties_but_not_changed_labels():
    boxes = torch.tensor([[0.0, 0, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50]])
    reference = {"boxes": boxes, "scores": torch.tensor([0.5, 0.5, 0.4]), "labels": torch.tensor([1, 2, 1])}
    reordered = {"boxes": boxes[[1, 0, 2]] + 0.001, "scores": torch.tensor([0.5, 0.5, 0.4]),
                 "labels": torch.tensor([2, 1, 1])}
    report = compare_image(reference, reordered)
    assert report.category_agreement == 1.0 and report.max_box_diff_px == pytest.approx(0.001, abs=1e-6)
    relabelled = {**reference, "labels": torch.tensor([1, 2, 3])}
    assert compare_image(reference, relabelled).category_agreement == pytest.approx(2 / 3)
    missing = {key: value[:2] for key, value in reference.items()}
    report = compare_image(reference, missing)
    assert (report.matched, report.category_agreement) == (2, pytest.approx(2 / 3))


def test_roi_level_merge_by_gather_equals_torchvision_scatter_merge():
    from torchvision.ops import poolers

    from trainer.deploy.onnx_export import _merge_levels_by_gather

    generator = torch.Generator().manual_seed(0)
    levels = torch.randint(0, 4, (37,), generator=generator)
    levels[:4] = torch.arange(4)  # every level holds at least one RoI
    unmerged = [torch.randn(int((levels == k).sum()), 8, 7, 7, generator=generator) for k in range(4)]
    expected = poolers._onnx_merge_levels(levels, unmerged)
    assert torch.equal(_merge_levels_by_gather(levels, unmerged), expected)
