"""launch/ray/*.yaml pass Ray's own cluster-launcher checks (what `ray up` runs before touching any machine)."""
from __future__ import annotations

import copy
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

REPO = Path(__file__).resolve().parents[2]
CLOUD = REPO / "launch" / "ray" / "cluster.yaml"
ON_PREMISE = REPO / "launch" / "ray" / "cluster-onprem.yaml"


def prepared(path: Path) -> dict:
    """Defaults filled in and validated exactly as `ray up` does (ray.autoscaler._private.commands)."""
    config = prepare_config(yaml.safe_load(path.read_text()))
    validate_config(config)
    return config


@pytest.mark.parametrize("path", [CLOUD, ON_PREMISE], ids=lambda p: p.name)
def test_setup_installs_the_synced_project_with_the_same_ray(path):
    config = prepared(path)
    assert config["file_mounts"]["~/detection-trainer"] == "."
    setup = " && ".join(config["setup_commands"])
    assert 'pip install -q -e "$HOME/detection-trainer[all]"' in setup
    assert f'"ray[default,tune]=={ray.__version__}"' in setup
    assert {".git", ".venv", "outputs"} <= set(config["rsync_exclude"])


def test_cloud_cluster_has_a_head_and_gpu_worker_types():
    config = prepared(CLOUD)
    node_types = config["available_node_types"]
    assert config["head_node_type"] == "head"
    assert node_types["head"]["resources"] == {"CPU": 0}  # the driver only: trials go to GPU workers
    gpu_workers = {name: spec["resources"]["GPU"] for name, spec in node_types.items()
                   if spec.get("resources", {}).get("GPU", 0) > 0}
    assert gpu_workers == {"gpu_1x": 1, "gpu_4x": 4}
    assert all(node_types[name]["max_workers"] <= config["max_workers"] for name in gpu_workers)


def test_on_premise_cluster_lists_its_machines():
    config = prepared(ON_PREMISE)
    assert config["provider"]["type"] == "local"
    assert config["provider"]["head_ip"] not in config["provider"]["worker_ips"]
    worker_type = config["available_node_types"][config["head_node_type"]]
    assert worker_type["max_workers"] == len(config["provider"]["worker_ips"])


def test_the_validator_rejects_a_broken_config():
    config = yaml.safe_load(CLOUD.read_text())
    broken = copy.deepcopy(config)
    broken["available_node_types"]["gpu_1x"]["resources"] = "GPU"
    with pytest.raises(jsonschema.ValidationError):
        validate_config(prepare_config(broken))
    missing_head = copy.deepcopy(config)
    missing_head["head_node_type"] = "no_such_type"
    with pytest.raises(ValueError, match="head_node_type"):
        validate_config(prepare_config(missing_head))
