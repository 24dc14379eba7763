# The trainer: PyTorch (CPU wheel) + the service extras it uses for export parity and publish.
# One image for the one-shot training job (jtm-trainer-job), `trainer ingest` and `trainer refresh`.
#   docker build -f deploy/trainer.Dockerfile -t jtm-trainer .
# Everything goes into one virtual environment in the build stage, copied whole into the final
# one. torch comes first from the CPU index, without its dependencies (that index mirrors only
# some versions); the second install resolves the rest from PyPI against both constraint files,
# sees torch 2.13.0+cpu installed (== 2.13.0 ignores the local +cpu label) and keeps it.
FROM python:3.11-slim AS build
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
RUN pip install --no-cache-dir --no-deps "torch==2.13.0" --index-url https://download.pytorch.org/whl/cpu
COPY pyproject.toml README.md ./
COPY trainer ./trainer
COPY service ./service
COPY deploy/constraints-serve.txt deploy/constraints-train.txt ./deploy/
RUN pip install --no-cache-dir -c deploy/constraints-serve.txt -c deploy/constraints-train.txt ".[train,serve]" \
 && python -c "import torch, sys; sys.exit(torch.version.cuda is not None)"  # still the CPU build

FROM python:3.11-slim
RUN useradd --create-home --uid 10001 jtm
COPY --from=build /opt/venv /opt/venv
COPY deploy/trainer-job.sh /usr/local/bin/jtm-trainer-job
WORKDIR /work
# Mount points of the named volumes (compose): an empty volume takes the owner of the directory it
# is mounted on, so these must belong to the user the containers run as.
RUN mkdir -p /registry /log /work/data /work/runs && chown 10001 /work /work/data /work/runs /registry /log
USER 10001
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1
ENTRYPOINT ["python", "-m", "trainer"]
