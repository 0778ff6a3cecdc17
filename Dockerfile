# rl in a container. CPU image (the default):
#   docker build -t rl .
#   docker run --rm -v "$PWD/runs:/home/rl/app/runs" rl algo=trpo env=Hopper-v4
# GPU image: PyPI's Linux wheel of torch 2.13.0 is a CUDA 13.0 build (its metadata requires cuda-toolkit
# 13.0.3, cuDNN and NCCL for cu13), so only the index changes; the host needs an NVIDIA driver for CUDA 13
# and the NVIDIA container toolkit:
#   docker build --build-arg TORCH_INDEX=https://pypi.org/simple -t rl:gpu .
#   docker run --rm --gpus all -v "$PWD/runs:/home/rl/app/runs" rl:gpu algo=ppo env=Hopper-v4 device=cuda
ARG PYTHON_VERSION=3.11
FROM python:${PYTHON_VERSION}-slim

ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1 \
    MUJOCO_GL=egl

# EGL and GL for headless MuJoCo rendering (python -m rl.evaluate ... video=true). Unpinned: the slim
# base image's Debian release fixes their versions.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends libegl1 libgl1 libglib2.0-0 \
 && rm -rf /var/lib/apt/lists/*

RUN useradd --create-home --uid 1000 rl
WORKDIR /home/rl/app

# Dependencies in their own layers, before the source: editing the code does not reinstall torch.
# torch first, from the chosen index, so no open range pulls another build.
RUN pip install "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX}"
COPY pyproject.toml README.md ./
RUN python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
print('\n'.join(p['dependencies'] + p['optional-dependencies']['video']))" > /tmp/requirements.txt \
 && pip install -r /tmp/requirements.txt "torch==${TORCH_VERSION}"

COPY configs ./configs
COPY rl ./rl
COPY scripts ./scripts
COPY tests ./tests
RUN pip install --no-deps -e . \
 && mkdir runs && chown rl:rl runs

USER 1000:1000
VOLUME ["/home/rl/app/runs"]
ENTRYPOINT ["python", "-m", "rl.train"]
CMD []
