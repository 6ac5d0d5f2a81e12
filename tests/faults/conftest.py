"""Fixtures of the fault-injection suite."""
from __future__ import annotations

from pathlib import Path

import pytest

from fault_tools import write_image


@pytest.fixture
def image_dir(tmp_path) -> Path:
    """``tmp_path/data`` with four readable 32x24 PNGs ``ok0.png`` .. ``ok3.png``."""
    data = tmp_path / "data"
    data.mkdir()
    for i in range(4):
        write_image(data / f"ok{i}.png", seed=i)
    return data
