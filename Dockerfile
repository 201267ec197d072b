FROM python:3.11-slim
WORKDIR /mmlib
COPY . /mmlib
RUN pip install --no-cache-dir torch==2.13.0 \
    && pip install --no-cache-dir build \
    && python -m build --outdir dist . \
    && pip install --no-cache-dir dist/*.whl
CMD ["python", "examples/baseline_save.py"]
