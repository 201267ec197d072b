# Build the wheel and sdist in one stage and install only the wheel in the image, so the image runs the
# installed package and carries no source tree.
FROM python:3.11-slim AS build
WORKDIR /src
COPY . .
RUN pip install --no-cache-dir build && python -m build --outdir /dist .

FROM python:3.11-slim
# torch pinned and first, from PyTorch's CPU index: PyPI's torch on Linux is a CUDA build of several GB.
# `--build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128` builds an image with CUDA torch.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
RUN pip install --no-cache-dir torch==2.13.0 --index-url "$TORCH_INDEX_URL"
COPY --from=build /dist /dist
RUN pip install --no-cache-dir /dist/*.whl
# The example keeps its store in ./mmlib-store: under /data, where a volume can keep it (-v DIR:/data).
WORKDIR /data
CMD ["python", "-m", "mmlib.demo.baseline"]
