#!/usr/bin/env bash
# End-to-end demo on the built-in synthetic dataset (run by `make demo`).
#   PY:       the python to use (default .venv/bin/python)
#   DEMO_DIR: where everything is written (default outputs/demo)
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PY:-.venv/bin/python}"
DEMO_DIR="${DEMO_DIR:-outputs/demo}"
DATA_DIR="$DEMO_DIR/sample_data"

echo "== 1. sample data -> $DATA_DIR"
"$PY" trainer/make_sample_data.py out_dir="$DATA_DIR" num_images=200 seed=0

echo "== 2. check the training and validation files"
"$PY" trainer/check_data.py jsonl="$DATA_DIR/train.jsonl" summary_json="$DEMO_DIR/check_train.json"
"$PY" trainer/check_data.py jsonl="$DATA_DIR/val.jsonl" summary_json="$DEMO_DIR/check_val.json"

echo
echo "demo outputs:"
echo "  sample data:   $DATA_DIR (train.jsonl, val.jsonl, dataset.jsonl, data/)"
echo "  data checks:   $DEMO_DIR/check_train.json, $DEMO_DIR/check_val.json"
