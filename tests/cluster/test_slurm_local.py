"""launch/slurm_local.sh brings up a usable single-host cluster: 2 nodes of 2 CPUs, a debug partition, requeue."""
from __future__ import annotations

import pytest

pytestmark = [pytest.mark.cluster]


def test_status_reports_every_daemon(local_slurm):
    status = local_slurm.script("status", timeout=30)
    assert status.returncode == 0, status.stdout + status.stderr
    pids = local_slurm.daemon_pids()
    assert sorted(pids) == ["munged", "slurmctld", "slurmd-node1", "slurmd-node2"]
    for daemon, pid in pids.items():
        assert f"{daemon}: running (pid {pid})" in status.stdout


def test_node_partition_and_requeue_are_configured(local_slurm):
    nodes = local_slurm.command("sinfo", "--noheader", "--Node", "--format=%P %N %o %c %t").splitlines()
    assert [line.split() for line in nodes] == [["debug*", "node1", "127.0.0.1", "2", "idle"],
                                                ["debug*", "node2", "127.0.0.1", "2", "idle"]]
    config = local_slurm.command("scontrol", "show", "config")
    assert any(line.split() == ["JobRequeue", "=", "1"] for line in config.splitlines())


@pytest.mark.parametrize("layout, expected", [
    (["--nodes=1", "--ntasks=2"], ["task 0 of 2 on node1", "task 1 of 2 on node1"]),
    (["--nodes=2", "--ntasks-per-node=1"], ["task 0 of 2 on node1", "task 1 of 2 on node2"]),
], ids=["two-tasks-one-node", "one-task-per-node"])
def test_tasks_are_placed_as_requested(local_slurm, layout, expected):
    output = local_slurm.command("srun", *layout, "--time=00:01:00", "bash", "-c",
                                 'echo "task $SLURM_PROCID of $SLURM_NTASKS on $SLURMD_NODENAME"', timeout=60)
    assert sorted(output.splitlines()) == expected
