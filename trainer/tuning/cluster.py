"""Starting a local Ray instance or joining a running cluster.

Ray is imported lazily here: whether every Ray port binds to the loopback interface is decided by an environment
variable that Ray reads when it is first imported.
"""
from __future__ import annotations

import ipaddress
import logging
import os
import sys
from collections.abc import Mapping

logger = logging.getLogger(__name__)

# Ray's single-machine mode: node IP = loopback, so GCS, raylet, workers and agents listen on 127.0.0.1 only.
# Ray only reads it at import time (it is meant for Windows/macOS, where it is the default).
_SINGLE_MACHINE_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def cluster_address(ray_cfg: Mapping) -> str | None:
    """The cluster to join: ``ray.address``, else ``RAY_ADDRESS`` (set by ``ray job submit``); None starts one."""
    return ray_cfg.get("address") or os.environ.get("RAY_ADDRESS") or None


def prepare_environment(ray_cfg: Mapping) -> None:
    """Must run before ``import ray``: pins a locally started Ray to the loopback interface when ``ray.host`` is."""
    if cluster_address(ray_cfg) is None and _is_loopback(str(ray_cfg.get("host", "127.0.0.1"))):
        if "ray" in sys.modules and os.environ.get(_SINGLE_MACHINE_ENV) != "0":
            logger.warning("Ray was imported before the sweep configured it; its ports may bind to all interfaces")
        os.environ[_SINGLE_MACHINE_ENV] = "0"
    # Trials keep the driver's working directory (relative data paths) instead of Tune's per-trial scratch dir;
    # Tune forwards this variable to every trial.
    os.environ["RAY_CHDIR_TO_TRIAL_DIR"] = "0"


def connect(ray_cfg: Mapping) -> None:
    """Joins ``cluster_address`` or starts a local Ray with ``ray.num_cpus``/``num_gpus`` on ``ray.host``."""
    import ray

    address = cluster_address(ray_cfg)
    if address:
        logger.info("Joining the Ray cluster at %s", address)
        ray.init(address=address)
        return
    host = str(ray_cfg.get("host", "127.0.0.1"))
    kwargs = {} if _is_loopback(host) else {"_node_ip_address": host}
    ray.init(
        address="local",  # never attach silently to some other Ray already running on this machine
        num_cpus=ray_cfg.get("num_cpus"),
        num_gpus=ray_cfg.get("num_gpus"),
        include_dashboard=bool(ray_cfg.get("include_dashboard", True)),
        dashboard_host=host,
        dashboard_port=int(ray_cfg.get("dashboard_port", 8265)),
        **kwargs,
    )
    logger.info("Started a local Ray on %s: %s", host, ray.cluster_resources())


def shutdown() -> None:
    import ray

    ray.shutdown()
