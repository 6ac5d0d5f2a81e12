"""COCO evaluation: ground truth from records, exact multi-process prediction merging, metrics, plots."""
from trainer.evaluation.coco import build_coco_ground_truth, to_coco_results
from trainer.evaluation.distributed import evaluate_model, predict_distributed
from trainer.evaluation.metrics import STAT_NAMES, compute_metrics, scalar_metrics

__all__ = ["STAT_NAMES", "build_coco_ground_truth", "compute_metrics", "evaluate_model", "predict_distributed",
           "scalar_metrics", "to_coco_results"]
