#!/usr/bin/env bash
# Export a training run to ONNX: bash launch/convert_model.sh RUN [key=value ...]
# e.g. bash launch/convert_model.sh outputs/2026-01-01/12-00-00 quantize=true
# Uses $PY when set (e.g. PY=.venv/bin/python), else `python`.
set -euo pipefail
if [[ $# -lt 1 || "$1" == -* || "$1" == *=* ]]; then
    echo "usage: bash launch/convert_model.sh RUN_DIR [key=value ...]" >&2
    exit 2
fi
run_dir="$1"
shift
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
exec "${PY:-python}" "${repo_root}/trainer/export.py" "run_dir=${run_dir}" "$@"
