# The trainer: PyTorch (CPU wheel) + the service extras it uses for export parity and publish.
#   docker build -f deploy/trainer.Dockerfile -t jtm-trainer .
FROM python:3.11-slim AS build
WORKDIR /src
RUN pip install --no-cache-dir --prefix=/install "torch==2.13.0" --index-url https://download.pytorch.org/whl/cpu
COPY pyproject.toml README.md ./
COPY trainer ./trainer
COPY service ./service
COPY deploy/constraints-serve.txt ./deploy/constraints-serve.txt
RUN PYTHONPATH=/install/lib/python3.11/site-packages \
    pip install --no-cache-dir --prefix=/install -c deploy/constraints-serve.txt ".[train,serve]"

FROM python:3.11-slim
RUN useradd --create-home --uid 10001 jtm
COPY --from=build /install /usr/local
COPY deploy/trainer-job.sh /usr/local/bin/jtm-trainer-job
WORKDIR /work
RUN mkdir -p /registry && chown 10001 /work /registry
USER 10001
ENV PYTHONUNBUFFERED=1
ENTRYPOINT ["python", "-m", "trainer"]
