# syntax=docker/dockerfile:1
#
# The slim image: cluster mode and sidecars. It runs as UID 65532, carries no compiler, and
# writes nothing outside /tmp and mounted volumes (/var/lib/pressured), so it works with
# readOnlyRootFilesystem: true.
#
#   docker build -t ghcr.io/pressured/pressured:0.1.0 .
#
# Node mode uses Dockerfile.privileged (bcc).

FROM python:3.11-slim AS builder
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc libc6-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# .dockerignore lets in only what the wheel needs (pyproject.toml, setup.py, csrc/, pressured/).
COPY . .
# One wheel per requirement of pressured[all]: ours with its cffi extension compiled here, the
# rest from the index (or built here when no binary wheel fits the platform).
RUN pip wheel --no-cache-dir --wheel-dir /wheels ".[all]"

FROM python:3.11-slim
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
# The wheels are bind-mounted from the builder, so they add no layer to this image. pip
# compiles the .pyc files now: at run time the root filesystem is read-only.
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    pip install --no-index --find-links=/wheels "pressured[all]" \
 && python -c "import pressured.native" \
 && install -d -o 65532 -g 65532 -m 0750 /var/lib/pressured \
 && install -d -m 0755 /etc/pressured
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp
USER 65532:65532
WORKDIR /tmp
EXPOSE 9000
ENTRYPOINT ["pressured"]
CMD ["run"]
