# camsam: the worker side (classifier, Grad-CAM, SAM2) and its command line.
FROM python:3.11-slim

# Every version comes from requirements/run.txt, hash-checked. TORCH_SPEC (with TORCHVISION_SPEC
# and, for another index, PIP_EXTRA_INDEX_URL) takes another torch build instead of the lock's,
# e.g. torch==2.14.1+cpu from https://download.pytorch.org/whl/cpu.
ARG TORCH_SPEC=""
ARG TORCHVISION_SPEC=""
ARG PIP_EXTRA_INDEX_URL=""
ENV PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1 MODEL_DIR=/models

RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential git \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /app
COPY requirements/run.txt ./requirements/
COPY scripts/locks.py ./scripts/
# sam2 ships no wheel: locks.py builds it against the lock's torch (scripts/locks.py says how).
RUN pip install setuptools wheel \
 && python scripts/locks.py install requirements/run.txt \
    ${TORCH_SPEC:+--torch "$TORCH_SPEC"} ${TORCHVISION_SPEC:+--torchvision "$TORCHVISION_SPEC"}
COPY pyproject.toml README.md label_config.xml ./
COPY worker ./worker
COPY ml_backend ./ml_backend
RUN pip install --no-deps .

VOLUME ["/data", "/models"]
ENTRYPOINT ["camsam"]
CMD ["--help"]
