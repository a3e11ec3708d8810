"""No Docker engine reachable: one clear error that says how to start one."""
from __future__ import annotations

import subprocess
import sys

import pytest

from portable_ep.images.engine import EngineUnavailable, candidate_hosts, connect


def test_docker_host_wins_else_the_system_then_the_projects_socket():
    assert candidate_hosts({"DOCKER_HOST": "tcp://10.0.0.2:2375"}) == ["tcp://10.0.0.2:2375"]
    assert candidate_hosts({}) == ["unix:///var/run/docker.sock", "unix:///run/portable-ep-docker/docker.sock"]


def test_no_engine_says_where_it_looked_and_how_to_start_one(tmp_path):
    host = f"unix://{tmp_path}/docker.sock"
    with pytest.raises(EngineUnavailable) as error:
        connect({"DOCKER_HOST": host}, timeout=5)
    message = str(error.value)
    assert message.startswith(f"no Docker engine reachable at {host} (")
    assert "ci/start_docker.sh" in message and "dockerd --storage-driver=vfs" in message
    assert "or set DOCKER_HOST to a running engine" in message


def test_the_cli_exits_2_with_that_message(tmp_path):
    result = subprocess.run([sys.executable, "-m", "portable_ep.cli", "images", "build", "--targets", "cpu",
                             "--out", str(tmp_path / "out"), "--cache", str(tmp_path / "cache")],
                            capture_output=True, text=True, env={"DOCKER_HOST": f"unix://{tmp_path}/none.sock", "PATH": "/usr/bin:/bin"})
    assert result.returncode == 2
    assert "portable-ep images: error: no Docker engine reachable at unix://" in result.stderr
    assert "Traceback" not in result.stderr
