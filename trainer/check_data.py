"""Validate a JSONL dataset and print a summary: python trainer/check_data.py jsonl=PATH [data_dir=...]

Exit code 0: usable; 1: not usable (every problem listed with file, line and field); 2: bad arguments.
"""
import json
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from trainer.data.check import check_dataset, format_result


@hydra.main(version_base=None, config_path="../configs", config_name="check_data")
def main(cfg: DictConfig) -> None:
    if not cfg.jsonl:
        print("error: give the file to check: python trainer/check_data.py jsonl=PATH", file=sys.stderr)
        sys.exit(2)
    classes = OmegaConf.to_container(cfg.classes) if cfg.classes is not None else None
    result = check_dataset(cfg.jsonl, cfg.data_dir, classes, strict=cfg.strict, clip_tolerance=cfg.clip_tolerance,
                           decode_images=cfg.decode_images, max_image_pixels=cfg.max_image_pixels)
    print(format_result(result, cfg.jsonl))
    if cfg.summary_json:
        payload = {"usable": result.usable, **result.summary, "warnings": dict(result.report.counts),
                   "errors": [str(e) for e in result.errors]}
        Path(cfg.summary_json).write_text(json.dumps(payload, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    sys.exit(0 if result.usable else 1)


if __name__ == "__main__":
    main()
