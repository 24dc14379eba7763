"""`python -m service`: validate the artifact, then serve it with uvicorn.

The artifact is fully loaded and checked *before* a port is bound, so a bad artifact stops the
process with one line naming the file and the problem, and exit code 2.
"""

from __future__ import annotations

import argparse
import os
import sys

from pydantic import ValidationError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m service", description=__doc__)
    parser.add_argument("--artifact", help="artifact directory to serve (or JTM_ARTIFACT; no default: give this or "
                        "--registry)")
    parser.add_argument("--registry", help="registry directory: serve and follow its current version (default: "
                        "none, serve --artifact)")
    parser.add_argument("--host", help="bind address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port (default 8000)")
    parser.add_argument("--redis-url", help="behaviour store, e.g. redis://127.0.0.1:6379/0 (default: in-process)")
    parser.add_argument("--no-batching", action="store_true", help="score each request on its own")
    parser.add_argument("--ort-threads", type=int, help="onnxruntime intra-op threads per scoring call "
                        "(default 1: concurrent requests run in parallel instead)")
    parser.add_argument("--device", choices=["cpu", "cuda"], help="onnxruntime execution provider (default cpu)")
    parser.add_argument("--log-level", choices=["debug", "info", "warning", "error"],
                        help="log level (default info)")
    parser.add_argument("--workers", type=int, help="server processes, each with its own copy of the model "
                        "(or JTM_WORKERS; default: one per usable CPU, at most 8, 1 with --device cuda)")
    return parser


MAX_DEFAULT_WORKERS = 8  # each process holds its own model copy: bound the memory a big host implies


def usable_cpus() -> int:
    """CPUs this process may run on: the affinity mask, lowered by a cgroup v2 CPU quota (a
    container limited to 2 CPUs on a 64-core node sees 64 in its mask)."""
    try:
        count = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        count = os.cpu_count() or 1
    try:
        quota, period = open("/sys/fs/cgroup/cpu.max").read().split()[:2]
        if quota != "max":
            count = min(count, max(1, int(int(quota) // int(period))))
    except (OSError, ValueError):
        pass
    return max(1, count)


def default_workers(device: str) -> int:
    """One process per usable CPU on CPU (at most MAX_DEFAULT_WORKERS); one with cuda, where
    the GPU is shared and micro-batching across requests needs them in one process."""
    return 1 if device == "cuda" else min(usable_cpus(), MAX_DEFAULT_WORKERS)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    overrides = {k: v for k, v in {
        "artifact": args.artifact, "registry": args.registry, "host": args.host, "port": args.port,
        "redis_url": args.redis_url, "ort_threads": args.ort_threads, "device": args.device,
        "log_level": args.log_level, "batching": False if args.no_batching else None, "workers": args.workers,
    }.items() if v is not None}
    try:
        from service.config import Settings

        settings = Settings(**overrides)
    except ValidationError as exc:
        first = exc.errors()[0]
        print(f"error: setting {'.'.join(map(str, first['loc']))}: {first['msg']}", file=sys.stderr)
        return 2
    if settings.artifact is None and settings.registry is None:
        print("error: nothing to serve: pass --artifact DIR or --registry DIR (or set JTM_ARTIFACT)", file=sys.stderr)
        return 2

    if settings.registry is not None and not settings.registry.is_dir():
        print(f"error: {settings.registry}: registry directory does not exist", file=sys.stderr)
        return 2

    import uvicorn

    from service.core.artifact import ArtifactError
    from service.main import create_app
    from service.model_store import load_bundle
    from service.telemetry import Metrics

    metrics = Metrics()
    try:
        bundle = load_bundle(settings.artifact, settings, metrics) if settings.artifact else None
    except ArtifactError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    common = {"host": settings.host, "port": settings.port, "log_level": settings.log_level, "access_log": False,
              "timeout_graceful_shutdown": 10, "timeout_keep_alive": 30}
    workers = settings.workers or default_workers(settings.device)
    log_line = f"serving with {workers} worker process{'es' if workers > 1 else ''}"
    print(log_line + ("" if settings.workers else " (one per usable CPU; --workers or JTM_WORKERS to change)"),
          file=sys.stderr)
    if workers > 1:
        # Each worker process builds its app from the environment and loads the model itself
        # (the one loaded above only validated it): processes sidestep the GIL on the beam
        # search's numpy work, so throughput scales with cores.
        if bundle is not None:
            bundle.close()
        for key, value in overrides.items():
            os.environ[f"JTM_{key.upper()}"] = str(value)
        uvicorn.run("service.main:create_app_from_env", factory=True, workers=workers, **common)
        return 0
    uvicorn.run(create_app(settings, bundle=bundle, metrics=metrics), **common)
    return 0
