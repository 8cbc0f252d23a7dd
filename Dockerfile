# camsam: the worker side (classifier, Grad-CAM, SAM2) and its command line.
FROM python:3.11-slim

ARG TORCH_SPEC="torch torchvision"
ENV PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1 MODEL_DIR=/models

RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential git \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /app
RUN pip install ${TORCH_SPEC} setuptools wheel \
 && SAM2_BUILD_CUDA=0 pip install --no-build-isolation "sam2>=1.1"
COPY pyproject.toml README.md label_config.xml ./
COPY worker ./worker
COPY ml_backend ./ml_backend
RUN pip install .

VOLUME ["/data", "/models"]
ENTRYPOINT ["camsam"]
CMD ["--help"]
