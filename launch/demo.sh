#!/usr/bin/env bash
# End-to-end demo on the built-in synthetic dataset (run by `make demo`):
# sample data -> data check -> training -> COCO evaluation -> ONNX export (checked against PyTorch).
#   PY:       the python to use (default .venv/bin/python)
#   DEMO_DIR: where everything is written (default outputs/demo)
#   EPOCHS:   training epochs (default 8)
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PY:-.venv/bin/python}"
DEMO_DIR="${DEMO_DIR:-outputs/demo}"
EPOCHS="${EPOCHS:-8}"
DATA_DIR="$DEMO_DIR/sample_data"
RUN_DIR="$DEMO_DIR/run"

echo "== 1. sample data -> $DATA_DIR"
"$PY" trainer/make_sample_data.py out_dir="$DATA_DIR" num_images=200 seed=0

echo "== 2. check the training and validation files"
"$PY" trainer/check_data.py jsonl="$DATA_DIR/train.jsonl" summary_json="$DEMO_DIR/check_train.json"
"$PY" trainer/check_data.py jsonl="$DATA_DIR/val.jsonl" summary_json="$DEMO_DIR/check_val.json"

echo "== 3. train custom_detector for $EPOCHS epochs -> $RUN_DIR"
rm -rf "$RUN_DIR"  # a fresh run each time (resume=auto would otherwise continue the previous demo)
"$PY" trainer/train.py model=custom_detector model.min_size=192 model.max_size=256 \
    dataset.train_jsonl="$DATA_DIR/train.jsonl" dataset.val_jsonl="$DATA_DIR/val.jsonl" \
    training.num_epochs="$EPOCHS" training.batch_size=8 training.learning_rate=0.04 \
    training.warmup_iters=40 "training.lr_milestones=[$((EPOCHS - 2))]" training.eval_every=2 \
    training.num_workers=0 seed=0 hydra.run.dir="$RUN_DIR"

echo "== 4. evaluate best_model.pth on the validation split"
"$PY" trainer/evaluate.py dataset_dir="$DATA_DIR" run_dir="$RUN_DIR"

echo "== 5. export to ONNX and check it against PyTorch"
"$PY" trainer/export.py run_dir="$RUN_DIR"

echo
echo "demo outputs:"
echo "  sample data:   $DATA_DIR (train.jsonl, val.jsonl, dataset.jsonl, data/)"
echo "  data checks:   $DEMO_DIR/check_train.json, $DEMO_DIR/check_val.json"
echo "  training run:  $RUN_DIR (train.log, metrics.csv, best_model.pth, tensorboard/: tensorboard --logdir $RUN_DIR/tensorboard)"
echo "  evaluation:    $(ls -d "$RUN_DIR"/eval_* | head -n 1)"
echo "  ONNX model:    $RUN_DIR/onnx_model (model.onnx, labels.txt, conversion_summary.txt, test_results/)"
