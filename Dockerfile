# syntax=docker/dockerfile:1
# One image for the wattgate processes that need no GPU: `wattgate gateway`, `wattgate planner`,
# `wattgate plan`, `wattgate demo`. The node agent, which launches vLLM, is built from
# Dockerfile.agent on top of the official vLLM image.
#   docker build -t wattgate:0.1.0 .
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
FROM ${PYTHON_IMAGE}

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    # litellm (token counting) must not fetch its price map from the network at import time
    LITELLM_LOCAL_MODEL_COST_MAP=True

WORKDIR /src
COPY pyproject.toml README.md ./
COPY wattgate ./wattgate
# `pip install .` installs the exact pins of pyproject.toml's [project.dependencies]; every one of
# them has a manylinux wheel for CPython 3.11, so no compiler is needed.
RUN pip install . && rm -rf /src

# Gateway and planner run unprivileged; nothing they do needs root.
RUN useradd --system --uid 10001 --user-group --home-dir /var/lib/wattgate --create-home wattgate
USER 10001:10001
WORKDIR /var/lib/wattgate

EXPOSE 8080
ENTRYPOINT ["wattgate"]
CMD ["--help"]
