"""Export a detector to ONNX: trace one image, then add a dynamic batch dimension with an ONNX Loop.

The graph contract (every model): input ``image`` uint8 [batch, 3, H, W] RGB 0..255; outputs ``location`` float
[batch, N, 4] (x1, y1, x2, y2 in input pixels), ``score`` float [batch, N] and ``category`` int64 [batch, N]
(class ids 1..K), N = ``max_detections``, padded with score 0 and category 0.
"""
from __future__ import annotations

import contextlib
import tempfile
import warnings
from collections.abc import Mapping
from pathlib import Path

import onnx
import torch
from onnx import TensorProto, helper
from torch import nn

from trainer.deploy.wrapper import SingleImageExport

INPUT_NAME = "image"
OUTPUT_NAMES = ("location", "score", "category")
# The batch Loop passes Squeeze/Unsqueeze axes as inputs, which needs opset 13.
MIN_OPSET = 13


def trace_single_image_graph(detector: nn.Module, path: str | Path, example_image: torch.Tensor,
                             max_detections: int, opset: int) -> Path:
    """Traces ``detector`` (eval mode) on ``example_image`` (uint8 [3, H, W]) into a batch-1 graph with dynamic
    H and W.

    ``dynamo=False`` selects the TorchScript-based exporter: the dynamo exporter fails on torchvision's batched NMS
    in this torch version, while torchvision's detectors are written to trace (``torchvision._is_tracing`` branches,
    NMS scripted inside the trace). Tracing records one execution, so the caller must compare the result with
    PyTorch on inputs of other sizes (``parity.py``) to catch a size or a branch frozen into the graph.
    """
    if opset < MIN_OPSET:
        raise ValueError(f"opset must be >= {MIN_OPSET} (got {opset})")
    if example_image.dtype != torch.uint8 or example_image.dim() != 3 or example_image.shape[0] != 3:
        raise ValueError(f"example_image must be uint8 [3, H, W], got {example_image.dtype} "
                         f"{list(example_image.shape)}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    module = SingleImageExport(detector, max_detections).eval()
    with torch.no_grad(), warnings.catch_warnings(), roi_levels_merged_by_gather():
        # Tracer warnings flag Python values frozen into the trace; the parity check is what verifies them.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        # The exporter's and torchvision's tracing-time notes (tensor copies, advanced indexing) likewise.
        for category in (UserWarning, DeprecationWarning, FutureWarning):
            warnings.simplefilter("ignore", category)
        torch.onnx.export(module, (example_image[None],), str(path), dynamo=False, opset_version=opset,
                          input_names=[INPUT_NAME], output_names=list(OUTPUT_NAMES),
                          dynamic_axes={INPUT_NAME: {2: "height", 3: "width"}})
    return path


@contextlib.contextmanager
def roi_levels_merged_by_gather():
    """While tracing, merge ``MultiScaleRoIAlign``'s per-level results with one Gather instead of torchvision's one
    full-size ScatterElements per FPN level (RoIs x channels x 7 x 7 elements each): the same values, and a large
    share of Faster R-CNN's onnxruntime CPU time saved. A torchvision without that hook exports unchanged."""
    from torchvision.ops import poolers

    original = getattr(poolers, "_onnx_merge_levels", None)
    if original is None:
        yield
        return
    poolers._onnx_merge_levels = _merge_levels_by_gather
    try:
        yield
    finally:
        poolers._onnx_merge_levels = original


def _merge_levels_by_gather(levels: torch.Tensor, unmerged_results: list[torch.Tensor]) -> torch.Tensor:
    """``unmerged_results[k]`` holds the RoIs with ``levels == k`` in index order; returns all RoIs in index order."""
    order = torch.cat([torch.where(levels == level)[0] for level in range(len(unmerged_results))])
    return torch.cat(unmerged_results)[torch.argsort(order)]


def _rename_values(graph: onnx.GraphProto, mapping: Mapping[str, str]) -> None:
    """Renames value names in ``graph`` and every nested subgraph (If/Loop bodies read outer names)."""
    for node in graph.node:
        node.input[:] = [mapping.get(name, name) for name in node.input]
        node.output[:] = [mapping.get(name, name) for name in node.output]
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.GRAPH:
                _rename_values(attribute.g, mapping)
            elif attribute.type == onnx.AttributeProto.GRAPHS:
                for subgraph in attribute.graphs:
                    _rename_values(subgraph, mapping)
    for value in (*graph.input, *graph.output, *graph.value_info):
        value.name = mapping.get(value.name, value.name)


def batch_over_images(single: onnx.ModelProto, max_detections: int) -> onnx.ModelProto:
    """Wraps a batch-1 graph from ``trace_single_image_graph`` in a Loop over the batch dimension.

    The Loop body gathers image i ([1, 3, H, W]) and runs the traced nodes; the Loop stacks the per-image outputs
    into [batch, ...]. The weights are initializers of the body itself: onnxruntime only treats a subgraph's own
    initializers as constants, so weights read from the outer scope miss its graph optimizations (Conv + BatchNorm
    folding, prepacked convolution weights) and cost about 40% more time per image (custom_detector, CPU).
    """
    graph = onnx.GraphProto()
    graph.CopyFrom(single.graph)
    if [i.name for i in graph.input] != [INPUT_NAME] or [o.name for o in graph.output] != list(OUTPUT_NAMES):
        raise ValueError(f"expected a graph {INPUT_NAME} -> {list(OUTPUT_NAMES)}, got "
                         f"{[i.name for i in graph.input]} -> {[o.name for o in graph.output]}")
    per_image = {INPUT_NAME: "loop_image", **{name: f"{name}_single" for name in OUTPUT_NAMES}}
    _rename_values(graph, per_image)

    axis0 = helper.make_tensor("loop_axis0", TensorProto.INT64, [1], [0])
    body_nodes = [
        helper.make_node("Unsqueeze", ["loop_iteration", "loop_axis0"], ["loop_index"]),
        helper.make_node("Gather", [INPUT_NAME, "loop_index"], ["loop_image"], axis=0),
        *graph.node,
        helper.make_node("Identity", ["loop_condition_in"], ["loop_condition_out"]),
    ]
    element_types = {"location": TensorProto.FLOAT, "score": TensorProto.FLOAT, "category": TensorProto.INT64}
    item_shapes = {"location": [max_detections, 4], "score": [max_detections], "category": [max_detections]}
    body_outputs = [helper.make_tensor_value_info("loop_condition_out", TensorProto.BOOL, [])]
    for name in OUTPUT_NAMES:
        body_nodes.append(helper.make_node("Squeeze", [f"{name}_single", "loop_axis0"], [f"{name}_item"]))
        body_outputs.append(helper.make_tensor_value_info(f"{name}_item", element_types[name], item_shapes[name]))
    body = helper.make_graph(
        body_nodes, "detect_one_image",
        [helper.make_tensor_value_info("loop_iteration", TensorProto.INT64, []),
         helper.make_tensor_value_info("loop_condition_in", TensorProto.BOOL, [])],
        body_outputs, initializer=[*graph.initializer, axis0], value_info=list(graph.value_info))

    outer_nodes = [
        helper.make_node("Shape", [INPUT_NAME], ["image_shape"]),
        helper.make_node("Gather", ["image_shape", "batch_axis"], ["batch_size"], axis=0),
        helper.make_node("Loop", ["batch_size", ""], list(OUTPUT_NAMES), body=body),
    ]
    outer = helper.make_graph(
        outer_nodes, "detector",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.UINT8, ["batch", 3, "height", "width"])],
        [helper.make_tensor_value_info(name, element_types[name], ["batch", *item_shapes[name]])
         for name in OUTPUT_NAMES],
        initializer=[helper.make_tensor("batch_axis", TensorProto.INT64, [], [0])])
    model = helper.make_model(outer, opset_imports=single.opset_import, producer_name=single.producer_name,
                              producer_version=single.producer_version)
    model.ir_version = single.ir_version
    return model


def finish_model(single_path: str | Path, out_path: str | Path, max_detections: int,
                 metadata: Mapping[str, str]) -> Path:
    """Batch-wraps the single-image graph at ``single_path``, stores ``metadata``, checks and saves it."""
    model = batch_over_images(onnx.load(str(single_path)), max_detections)
    helper.set_model_props(model, {str(k): str(v) for k, v in metadata.items()})
    onnx.checker.check_model(model, full_check=True)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(out_path))
    return out_path


def export_onnx(detector: nn.Module, out_path: str | Path, example_image: torch.Tensor, max_detections: int = 100,
                opset: int = 17, metadata: Mapping[str, str] | None = None) -> Path:
    """Trace + batch-wrap + metadata in one call (``convert.py`` keeps the single-image graph for quantization)."""
    with tempfile.TemporaryDirectory() as tmp:
        single = trace_single_image_graph(detector, Path(tmp) / "single_image.onnx", example_image,
                                          max_detections, opset)
        return finish_model(single, out_path, max_detections, metadata or {})
