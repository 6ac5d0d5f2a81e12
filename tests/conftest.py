"""Shared fixtures: a small synthetic dataset and the BCCD dataset shipped beside the repo."""
from __future__ import annotations

from pathlib import Path

import pytest

from trainer.data.sample import generate_sample_dataset

REPO_ROOT = Path(__file__).resolve().parents[1]
BCCD_DIR = REPO_ROOT.parent / "shared" / "datasets" / "bccd"


@pytest.fixture(scope="session")
def sample_dataset_dir(tmp_path_factory) -> Path:
    """24 images of 128x96 (train.jsonl, val.jsonl, dataset.jsonl, data/). Treat as read-only: it is shared."""
    return generate_sample_dataset(tmp_path_factory.mktemp("sample_data"), num_images=24, seed=0,
                                   image_size=(128, 96), val_fraction=0.25)


@pytest.fixture(scope="session")
def bccd_dir() -> Path:
    """The BCCD dataset (read-only: copy it before writing anything)."""
    if not (BCCD_DIR / "dataset.jsonl").is_file():
        pytest.skip(f"BCCD dataset not found at {BCCD_DIR} (expected ../shared/datasets/bccd next to the repo)")
    return BCCD_DIR
