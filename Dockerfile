# rmserve serving image: ONNX Runtime, tokenizers and the web stack; a serving install only (no torch).
#   docker build -t rmserve .                                               # CUDA image, bundle mounted at run time
#   docker build --build-arg BUNDLE=artifacts/default-bundle -t rmserve .   # bundle baked in at /bundle
#   docker build --build-arg VARIANT=cpu -t rmserve:cpu .                   # CPU image (no CUDA base)
#   docker run --gpus all -p 8000:8000 -p 50051:50051 -v $PWD/artifacts/default-bundle:/bundle:ro rmserve
# onnxruntime-gpu 1.31 is built against CUDA 13.0 and cuDNN 9 (its build info says cuda_version 13.0 and
# its `cudnn` extra asks for nvidia-cudnn-cu13 9.x): the CUDA base below provides both.
ARG VARIANT=gpu
ARG CUDA_BASE=nvidia/cuda:13.0.1-cudnn-runtime-ubuntu24.04
ARG ORT_VERSION=1.31.*

# Wheels of the base and `serve` dependencies (never the `train` extra), with the ONNX Runtime build of the variant.
FROM python:3.12-slim AS build
ARG VARIANT
ARG ORT_VERSION
WORKDIR /src
COPY pyproject.toml README.md ./
COPY rmserve ./rmserve
COPY proto ./proto
COPY service ./service
COPY training ./training
RUN ort=$([ "$VARIANT" = cpu ] && echo onnxruntime || echo onnxruntime-gpu) \
 && python -c "import sys, tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; deps = p['dependencies'] + p['optional-dependencies']['serve']; print('\n'.join([d for d in deps if not d.startswith('onnxruntime')] + [sys.argv[1]]))" "$ort==$ORT_VERSION" > requirements.txt \
 && pip wheel --no-cache-dir --wheel-dir /wheels -r requirements.txt \
 && pip wheel --no-cache-dir --no-deps --wheel-dir /wheels . \
 && cp requirements.txt /wheels/

# Runtime bases: only the one VARIANT names is built.
FROM ${CUDA_BASE} AS base-gpu
RUN apt-get update && apt-get install -y --no-install-recommends python3 python3-venv \
 && rm -rf /var/lib/apt/lists/*

FROM python:3.12-slim AS base-cpu

FROM base-${VARIANT} AS runtime
ARG BUNDLE=
RUN python3 -m venv /opt/rmserve
ENV PATH=/opt/rmserve/bin:$PATH PYTHONUNBUFFERED=1
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index --find-links /wheels -r /wheels/requirements.txt \
 && pip install --no-cache-dir --no-index --no-deps /wheels/rmserve-*.whl \
 && rm -rf /wheels
RUN useradd --system --uid 10001 --create-home rmserve && mkdir -p /bundle && chown rmserve /bundle
# An empty BUNDLE bakes nothing (README.md is copied and thrown away): mount a bundle at /bundle instead.
COPY --chown=rmserve ${BUNDLE:-README.md} /tmp/bundle-src
RUN if [ -d /tmp/bundle-src ]; then cp -r /tmp/bundle-src/. /bundle/; fi && rm -rf /tmp/bundle-src
USER rmserve
ENV RMSERVE_BUNDLE=/bundle RMSERVE_HOST=0.0.0.0 RMSERVE_PORT=8000 RMSERVE_GRPC_PORT=50051
EXPOSE 8000 50051
HEALTHCHECK --interval=15s --timeout=3s --start-period=60s --retries=3 \
  CMD python3 -c "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2).status == 200 else 1)"
ENTRYPOINT ["rmserve", "serve"]
