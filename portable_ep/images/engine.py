"""Connect to a Docker engine through the Docker SDK, or say exactly how to start one."""
from __future__ import annotations

import os
from typing import List, Optional

# ci/start_docker.sh puts its engine here (a socket of its own, beside any system engine).
PROJECT_SOCKET = "unix:///run/portable-ep-docker/docker.sock"
SYSTEM_SOCKET = "unix:///var/run/docker.sock"
START_HINT = (
    "start one with: eval \"$(ci/start_docker.sh)\" (as root: dockerd --storage-driver=vfs "
    "--data-root /var/lib/portable-ep-docker/data --exec-root /var/lib/portable-ep-docker/exec "
    f"-H {PROJECT_SOCKET} &, then export DOCKER_HOST={PROJECT_SOCKET}), or set DOCKER_HOST to a running engine"
)


class EngineUnavailable(RuntimeError):
    pass


def candidate_hosts(environ: Optional[dict] = None) -> List[str]:
    """DOCKER_HOST when set (only it), else the system socket, then ci/start_docker.sh's."""
    environ = os.environ if environ is None else environ
    if environ.get("DOCKER_HOST"):
        return [environ["DOCKER_HOST"]]
    return [SYSTEM_SOCKET, PROJECT_SOCKET]


def connect(environ: Optional[dict] = None, timeout: int = 900):
    """A ``docker.DockerClient`` that answered a ping; EngineUnavailable otherwise."""
    try:
        import docker
    except ImportError:
        raise EngineUnavailable("the Docker SDK is missing: pip install 'portable-ep[images]'") from None
    hosts = candidate_hosts(environ)
    errors = []
    for host in hosts:
        try:
            client = docker.DockerClient(base_url=host, timeout=timeout)
            client.ping()
            return client
        except Exception as exc:  # DockerException, connection errors: all mean "not here"
            errors.append(f"{host} ({str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__})")
    raise EngineUnavailable(f"no Docker engine reachable at {' or '.join(errors)}; {START_HINT}")
