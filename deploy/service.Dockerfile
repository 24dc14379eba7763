# The retrieval service: numpy + onnxruntime + FastAPI, no torch. Multi-stage, non-root.
#   docker build -f deploy/service.Dockerfile -t jtm-service .
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY service ./service
COPY deploy/constraints-serve.txt ./deploy/constraints-serve.txt
RUN pip install --no-cache-dir --prefix=/install -c deploy/constraints-serve.txt ".[serve]"

FROM python:3.11-slim
RUN useradd --create-home --uid 10001 jtm
COPY --from=build /install /usr/local
WORKDIR /app
ENV PYTHONUNBUFFERED=1 JTM_HOST=0.0.0.0 JTM_PORT=8000
USER 10001
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=2s --start-period=60s --retries=3 \
  CMD ["python", "-c", "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2).status != 200)"]
ENTRYPOINT ["python", "-m", "service"]
