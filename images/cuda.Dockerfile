# portable-ep serving image, target "cuda": ONNX Runtime's CUDA execution provider (onnxruntime-gpu).
#
# The build context is a wheelhouse made by `portable-ep images build` (see images/targets.toml):
#   deps/   every third-party wheel, requirements.txt (the pinned closure), server.txt (tritonserver)
#   dist/   the portable-ep wheel built from this checkout, requirements.txt (it, with its extras)
# Nothing is fetched while building (pip --no-index), so the same context builds air-gapped.
# No registry base: the local Debian bookworm base (Python 3.11 + libpython3.11, which Triton's
# python stub embeds), tritonserver 2.51 from the nvidia-pytriton wheel, and CUDA 12 + cuDNN 9
# from the nvidia-*-cu12 wheels (the cuda-runtime extra = onnxruntime-gpu[cuda,cudnn]). The CUDA
# provider calls onnxruntime.preload_dlls(), which loads those libraries from site-packages, so
# no LD_LIBRARY_PATH is set; `python -m portable_ep.backends.cuda_libraries` proves they resolve
# (the image stage runs it). The host supplies only the NVIDIA driver (container toolkit, --gpus).
# Headers in the wheels are dropped: nothing compiles against them here.
# Few instructions on purpose: on the vfs storage driver every layer is a full copy.
ARG BASE_IMAGE=portable-ep/base:bookworm

FROM ${BASE_IMAGE} AS build
COPY . /wheels
RUN python3.11 -m venv /opt/portable_ep/venv \
 && /opt/portable_ep/venv/bin/pip install --no-cache-dir --no-index --find-links /wheels/deps --no-deps -r /wheels/deps/server.txt \
 && /opt/portable_ep/venv/bin/pip install --no-cache-dir --no-index --find-links /wheels/deps --find-links /wheels/dist \
      -r /wheels/deps/requirements.txt -r /wheels/dist/requirements.txt \
 && /opt/portable_ep/venv/bin/portable-ep backend install /opt/portable_ep/backends \
 && rm -rf /opt/portable_ep/venv/lib/python3.11/site-packages/nvidia/*/include \
 && find /opt/portable_ep -name __pycache__ -prune -exec rm -rf {} +

FROM ${BASE_IMAGE}
# The same in every bookworm target (so shared by the build cache); HOST and the ports are
# environment so that a container on the host network can take free ports.
RUN groupadd --gid 10001 portable-ep \
 && useradd --uid 10001 --gid 10001 --create-home --shell /usr/sbin/nologin portable-ep
USER 10001:10001
HEALTHCHECK --interval=10s --timeout=5s --start-period=120s --retries=3 CMD ["python3", "-m", "portable_ep.images.healthcheck"]
ENTRYPOINT ["/bin/sh", "-c", "exec portable-ep serve \"$MODEL_REPOSITORY\" --host \"$HOST\" --http-port \"$HTTP_PORT\" --grpc-port \"$GRPC_PORT\" --metrics-port \"$METRICS_PORT\" --backend-directory /opt/portable_ep/backends \"$@\"", "portable-ep"]
# PORTABLE_EP_PROVIDERS: the provider chain for models whose config.pbtxt names none.
# NVIDIA_*: what the NVIDIA container toolkit mounts into the container (driver's compute libraries).
ENV PATH=/opt/portable_ep/venv/bin:$PATH \
    PORTABLE_EP_PROVIDERS=cuda,cpu \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    OPENBLAS_NUM_THREADS=1 \
    MODEL_REPOSITORY=/models \
    HOST=0.0.0.0 HTTP_PORT=8000 GRPC_PORT=8001 METRICS_PORT=8002
COPY --from=build /opt/portable_ep /opt/portable_ep
