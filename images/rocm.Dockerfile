# portable-ep serving image, target "rocm": ONNX Runtime's MIGraphX execution provider
# (onnxruntime-migraphx; ORT >= 1.23 has no ROCm EP) on AMD's ROCm base image.
#
# The build context is a wheelhouse made by `portable-ep images build --targets rocm` for the base's
# Python (3.10 on Ubuntu 22.04): deps/ (third-party wheels, requirements.txt, server.txt) and dist/.
# Python wheels are never fetched while building; MIGraphX and libpython come from the base's own
# ROCm and Ubuntu package repositories (a mirror of them for an air-gapped build).
# Run with --device /dev/kfd --device /dev/dri and the render/video groups (the build matrix does
# when the host has them). onnxruntime-migraphx must match the base's ROCm release: pin both here.
ARG BASE_IMAGE=rocm/dev-ubuntu-22.04:6.4.1

FROM ${BASE_IMAGE} AS build
ARG PIP_FLAGS="--no-index --find-links /wheels/deps --find-links /wheels/dist"
# hadolint ignore=DL3008
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3.10-venv \
 && rm -rf /var/lib/apt/lists/*
COPY . /wheels
RUN python3.10 -m venv /opt/portable_ep/venv \
 && /opt/portable_ep/venv/bin/pip install --no-cache-dir ${PIP_FLAGS} --no-deps -r /wheels/deps/server.txt \
 && /opt/portable_ep/venv/bin/pip install --no-cache-dir ${PIP_FLAGS} -r /wheels/deps/requirements.txt -r /wheels/dist/requirements.txt \
 && /opt/portable_ep/venv/bin/portable-ep backend install /opt/portable_ep/backends

FROM ${BASE_IMAGE}
# The versions are those of the ROCm release the base image pins (its apt sources name it).
# hadolint ignore=DL3008
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends migraphx python3.10 libpython3.10 \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --gid 10001 portable-ep \
 && useradd --uid 10001 --gid 10001 --create-home --shell /usr/sbin/nologin portable-ep
USER 10001:10001
HEALTHCHECK --interval=10s --timeout=5s --start-period=120s --retries=3 CMD ["python3", "-m", "portable_ep.images.healthcheck"]
ENTRYPOINT ["/bin/sh", "-c", "exec portable-ep serve \"$MODEL_REPOSITORY\" --host \"$HOST\" --http-port \"$HTTP_PORT\" --grpc-port \"$GRPC_PORT\" --metrics-port \"$METRICS_PORT\" --backend-directory /opt/portable_ep/backends \"$@\"", "portable-ep"]
ENV PATH=/opt/portable_ep/venv/bin:$PATH \
    PORTABLE_EP_PROVIDERS=rocm,cpu \
    OPENBLAS_NUM_THREADS=1 \
    MODEL_REPOSITORY=/models \
    HOST=0.0.0.0 HTTP_PORT=8000 GRPC_PORT=8001 METRICS_PORT=8002
COPY --from=build /opt/portable_ep /opt/portable_ep
