#!/usr/bin/env bash
# The image stage: a Docker engine (started here when none answers), then every target's image
# built, started on the example repository, checked with `portable-ep check`, and merged.
#
#   TARGETS   targets to build and check (default: all five)
#   REQUIRE   targets that must be built and checked here, else exit 1 (default: cpu,openvino,npu,cuda)
#   VENV      the project's virtual environment (default: .venv)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"
# debootstrap makes the local bookworm base image when the engine lacks it (a new machine).
if ! command -v debootstrap >/dev/null && [ "$(id -u)" = 0 ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap
fi
eval "$(ci/start_docker.sh)"
# Stop the engine only when this run started it; its data root keeps the images for the next run.
# Untagged images left by earlier runs (replaced versions, their build stages) are removed at the
# end: on vfs each is a full copy (the cuda build stage alone is ~6 GB). This run's are kept, so
# an immediate rerun still builds from cache.
run_started="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
prune_earlier() { docker image prune -f --filter "until=$run_started" | tail -1 >&2 || true; }
trap 'prune_earlier' EXIT
if [ "${PORTABLE_EP_STARTED_DOCKERD:-}" = 1 ]; then trap 'prune_earlier; ci/start_docker.sh --stop' EXIT; fi
"$VENV/bin/portable-ep" images matrix --targets "${TARGETS:-cpu,openvino,npu,cuda,rocm}" --require "${REQUIRE:-cpu,openvino,npu,cuda}" "$@"
echo "docker images:"
docker images --format '  {{.Repository}}:{{.Tag}}  {{.Size}}' | grep portable-ep || true
