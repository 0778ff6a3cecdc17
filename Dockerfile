# CPU image by default; for a GPU image build with
#   docker build --build-arg BASE=nvidia/cuda:12.4.1-runtime-ubuntu22.04 --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu124 .
ARG BASE=python:3.11-slim
FROM ${BASE}
ARG TORCH_SPEC=torch==2.13.0
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
RUN if ! command -v python3 >/dev/null; then apt-get update && apt-get install -y --no-install-recommends python3 python3-pip python3-venv && rm -rf /var/lib/apt/lists/*; fi
WORKDIR /opt/rl
COPY pyproject.toml README.md ./
COPY rl ./rl
COPY configs ./configs
COPY scripts ./scripts
COPY tests ./tests
# The same two steps as README's set-up: torch first (so no open range pulls another build), then the package.
RUN python3 -m pip install --no-cache-dir ${TORCH_SPEC} --extra-index-url ${TORCH_INDEX} \
 && python3 -m pip install --no-cache-dir -e .
ENV MUJOCO_GL=egl
ENTRYPOINT ["python3", "-m", "rl.train"]
