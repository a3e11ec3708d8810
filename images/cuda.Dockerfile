# portable-ep serving image, target "cuda": ONNX Runtime's CUDA execution provider (onnxruntime-gpu)
# on NVIDIA's Triton image, whose tritonserver 2.51 (24.10) is the release the bundled one matches.
#
# The build context is a wheelhouse made by `portable-ep images build --targets cuda` for the base's
# Python (3.10 on Ubuntu 22.04): deps/ (third-party wheels, requirements.txt) and dist/ (portable-ep).
# Nothing is fetched while building; the base image itself must be pullable or already loaded.
# Run with --gpus all (the build matrix does when the host has an NVIDIA GPU).
ARG BASE_IMAGE=nvcr.io/nvidia/tritonserver:24.10-py3
FROM ${BASE_IMAGE}
ARG PIP_FLAGS="--no-index --find-links /wheels/deps --find-links /wheels/dist"
COPY . /wheels
# The NGC image already has Triton's python backend in /opt/tritonserver/backends/python: the
# install only adds portable_ep/model.py beside it. Its python3 is the one the stub embeds, so the
# packages go into that interpreter (no venv).
RUN python3 -m pip install --no-cache-dir ${PIP_FLAGS} -r /wheels/deps/requirements.txt -r /wheels/dist/requirements.txt \
 && portable-ep backend install /opt/tritonserver/backends \
 && rm -rf /wheels \
 && groupadd --gid 10001 portable-ep \
 && useradd --uid 10001 --gid 10001 --create-home --shell /usr/sbin/nologin portable-ep
ENV PORTABLE_EP_PROVIDERS=cuda,cpu \
    MODEL_REPOSITORY=/models \
    HOST=0.0.0.0 HTTP_PORT=8000 GRPC_PORT=8001 METRICS_PORT=8002
USER 10001:10001
HEALTHCHECK --interval=10s --timeout=5s --start-period=120s --retries=3 CMD ["python3", "-m", "portable_ep.images.healthcheck"]
ENTRYPOINT ["/bin/sh", "-c", "exec portable-ep serve \"$MODEL_REPOSITORY\" --host \"$HOST\" --http-port \"$HTTP_PORT\" --grpc-port \"$GRPC_PORT\" --metrics-port \"$METRICS_PORT\" --tritonserver /opt/tritonserver/bin/tritonserver --backend-directory /opt/tritonserver/backends \"$@\"", "portable-ep"]
