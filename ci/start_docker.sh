#!/usr/bin/env bash
# Start a Docker engine for the image stage when none answers, and print its DOCKER_HOST.
#
#   eval "$(ci/start_docker.sh)"      # exports DOCKER_HOST (and PORTABLE_EP_STARTED_DOCKERD=1 when
#                                     # this call started the engine) for the shell
#   ci/start_docker.sh --stop         # stop the engine this script started
#
# The vfs storage driver works everywhere (no overlayfs or kernel modules needed,
# e.g. inside a CI container); it copies whole layers, so the images keep few layers.
# The data root is outside the checkout so a rerun reuses the base image and build cache.
set -euo pipefail
ROOT="${PORTABLE_EP_DOCKER_ROOT:-/var/lib/portable-ep-docker}"
RUN="${PORTABLE_EP_DOCKER_RUN:-/run/portable-ep-docker}"
SOCK="$RUN/docker.sock"
PIDFILE="$RUN/dockerd.pid"
HOST="unix://$SOCK"

if [ "${1:-}" = "--stop" ]; then
  if [ -f "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; then
    pid="$(cat "$PIDFILE")"
    kill "$pid"
    for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    # dockerd leaves its network namespace mounted under the exec root; release it so the
    # folder can be removed.
    awk -v root="$ROOT/" 'index($2, root) == 1 {print $2}' /proc/mounts | xargs -r umount 2>/dev/null || true
    echo "stopped dockerd (pid $pid)" >&2
  else
    echo "no dockerd started by this script is running" >&2
  fi
  exit 0
fi

answers() { DOCKER_HOST="$1" timeout 5 docker version --format '{{.Server.Version}}' >/dev/null 2>&1; }

if [ -n "${DOCKER_HOST:-}" ] && answers "$DOCKER_HOST"; then echo "export DOCKER_HOST=$DOCKER_HOST"; exit 0; fi
if answers "$HOST"; then echo "export DOCKER_HOST=$HOST"; exit 0; fi

if ! command -v dockerd >/dev/null || ! command -v docker >/dev/null; then
  echo "start_docker: installing docker.io (dockerd)" >&2
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq docker.io >&2
fi

mkdir -p "$ROOT/data" "$ROOT/exec" "$RUN"
# setsid + nohup: the engine outlives this script (and the make target that ran it).
setsid nohup dockerd --storage-driver=vfs --data-root "$ROOT/data" --exec-root "$ROOT/exec" \
  --pidfile "$PIDFILE" -H "$HOST" >"$RUN/dockerd.log" 2>&1 < /dev/null &
for _ in $(seq 1 60); do
  if answers "$HOST"; then
    echo "start_docker: dockerd $(DOCKER_HOST=$HOST docker version --format '{{.Server.Version}}') at $HOST (vfs, data in $ROOT; log $RUN/dockerd.log)" >&2
    echo "export DOCKER_HOST=$HOST PORTABLE_EP_STARTED_DOCKERD=1"
    exit 0
  fi
  sleep 0.5
done
echo "start_docker: dockerd did not answer at $HOST within 30 s; its log:" >&2
tail -20 "$RUN/dockerd.log" >&2
exit 1
