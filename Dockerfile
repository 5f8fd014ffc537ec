# rmserve serving image: ONNX Runtime (CUDA), tokenizers and the web stack; no torch.
#   docker build -t rmserve .                                  # GPU image, bundle mounted at run time
#   docker build --build-arg BUNDLE=artifacts/default-bundle -t rmserve .   # bundle baked in
#   docker build --build-arg RUNTIME_BASE=python:3.12-slim --build-arg ORT=onnxruntime -t rmserve:cpu .
#   docker run --gpus all -p 8000:8000 -p 50051:50051 -v $PWD/artifacts/default-bundle:/bundle:ro rmserve
# onnxruntime-gpu 1.31 needs CUDA 13.x and cuDNN 9.x: the runtime base below provides both.
ARG RUNTIME_BASE=nvidia/cuda:13.0.1-cudnn-runtime-ubuntu24.04

FROM python:3.12-slim AS build
ARG ORT=onnxruntime-gpu
WORKDIR /src
COPY pyproject.toml README.md ./
COPY service ./service
COPY training ./training
# A serving install only: the base dependencies, never the `train` extra.
RUN pip wheel --no-cache-dir --wheel-dir /wheels . \
 && if [ "$ORT" != "onnxruntime-gpu" ]; then pip wheel --no-cache-dir --wheel-dir /wheels "$ORT"; fi

FROM ${RUNTIME_BASE} AS runtime
ARG ORT=onnxruntime-gpu
ARG BUNDLE=
RUN if command -v apt-get >/dev/null && ! command -v python3 >/dev/null; then \
      apt-get update && apt-get install -y --no-install-recommends python3 python3-venv curl \
      && rm -rf /var/lib/apt/lists/*; \
    fi
RUN python3 -m venv /opt/rmserve
ENV PATH=/opt/rmserve/bin:$PATH PYTHONUNBUFFERED=1
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index --find-links /wheels rmserve \
 && if [ "$ORT" != "onnxruntime-gpu" ]; then pip uninstall -y onnxruntime-gpu && pip install --no-cache-dir --find-links /wheels "$ORT"; fi \
 && rm -rf /wheels
RUN useradd --system --uid 10001 --create-home rmserve && mkdir -p /bundle && chown rmserve /bundle
# Empty BUNDLE bakes nothing: mount a bundle at /bundle instead.
COPY --chown=rmserve ${BUNDLE:-README.md} /tmp/bundle-src
RUN if [ -d /tmp/bundle-src ]; then cp -r /tmp/bundle-src/. /bundle/; fi && rm -rf /tmp/bundle-src
USER rmserve
ENV RMSERVE_BUNDLE=/bundle RMSERVE_HOST=0.0.0.0 RMSERVE_PORT=8000
EXPOSE 8000 50051
HEALTHCHECK --interval=15s --timeout=3s --start-period=60s --retries=3 \
  CMD python3 -c "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2).status == 200 else 1)"
ENTRYPOINT ["rmserve", "serve"]
