"""The learning loop's costs: ingest throughput under an offered event rate, then a refresh on
the log it wrote.

A real service process (`python -m service`, Redis behaviour store, the event log on) serves a
synthetic artifact; an open-loop sender POSTs `--rate` events/s to /v1/events in batches of
`--batch-events` for `--seconds`, while `trainer ingest` (a real process) writes the Parquet
log. Reported: events accepted and refused, what ingest committed per second, the Stream's
backlog (sampled every 0.25 s), how long the log took to hold every accepted event after the
last one was sent, and the CPU seconds of the service, ingest and the sender. Then `trainer
refresh` runs once over that log (the events name the artifact's items and, for `--new-items`
of them, items it does not know), and its wall time and decision are reported.

    .venv/bin/python -m bench.bench_loop --rate 10000 --seconds 30 --items 100000 --json bench/results/loop.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np

from bench import command_line
from bench.bench_service import percentiles, process_tree_cpu_seconds

ROOT = Path(__file__).resolve().parents[1]


def artifact_for(n_items: int) -> Path:
    """A cached synthetic artifact (random weights) that `trainer refresh` can continue."""
    path = ROOT / "bench" / ".cache" / f"loop-artifact-{n_items}"
    if not (path / "manifest.json").exists():
        from bench.synthetic_artifact import build

        print(f"building a {n_items:,}-item artifact ...", file=sys.stderr, flush=True)
        build(n_items, path)
    return path


def start(command: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    handle = open(log, "w")  # noqa: SIM115 - the child writes to it until it stops
    return subprocess.Popen(command, cwd=ROOT, env={**os.environ, **env}, stdout=handle, stderr=subprocess.STDOUT)


def wait_ready(url: str, process: subprocess.Popen, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit("the service exited during start-up")
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise SystemExit("the service did not become ready")


def send(url: str, rate: float, seconds: float, batch: int, item_ids: np.ndarray, new_ids: np.ndarray,
         users: int, seed: int) -> dict:
    """Open loop: a batch every batch / rate seconds, on its schedule whatever the answers take
    (4 sender threads, so one slow answer does not hold the schedule)."""
    rng = np.random.default_rng(seed)
    interval, n_batches = batch / rate, int(rate * seconds / batch)
    accepted, refused, latencies, late = [0], [0], [], [0]
    lock = threading.Lock()
    start = time.monotonic() + 0.5
    counter = iter(range(n_batches))

    def worker() -> None:
        with httpx.Client(base_url=url, timeout=10) as client:
            while True:
                with lock:
                    i = next(counter, None)
                if i is None:
                    return
                due = start + i * interval
                pause = due - time.monotonic()
                if pause > 0:
                    time.sleep(pause)
                elif pause < -0.1:
                    with lock:
                        late[0] += 1
                pool = new_ids if len(new_ids) and rng.random() < 0.02 else item_ids
                events = [{"user_id": int(u), "item_id": int(x), "event_id": f"{i}-{j}"} for j, (u, x) in
                          enumerate(zip(rng.integers(0, users, batch), rng.choice(pool, batch), strict=True))]
                sent = time.monotonic()
                answer = client.post("/v1/events", json={"events": events})
                with lock:
                    latencies.append(time.monotonic() - sent)
                    if answer.status_code == 202:
                        accepted[0] += answer.json()["stored"]
                    else:
                        refused[0] += batch

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return {"accepted": accepted[0], "refused": refused[0], "batches": n_batches, "late_batches": late[0],
            "post_ms": percentiles(latencies), "send_seconds": time.monotonic() - start}


def run(args: argparse.Namespace) -> dict:
    import redis

    from service.core.event_log import stream_key
    from trainer.online.event_log import Segments

    artifact = artifact_for(args.items)
    with np.load(artifact / "items.npz") as archive:
        item_ids = archive["item_ids"]
    new_ids = np.arange(args.new_items, dtype=np.int64) + int(item_ids.max()) + 1
    work = Path(tempfile.mkdtemp(prefix="bench-loop-"))
    prefix = f"jtmbench-{os.getpid()}"
    registry, log_dir = work / "registry", work / "log"
    subprocess.run([sys.executable, "-m", "trainer", "publish", "--artifact", str(artifact), "--registry",
                    str(registry)], cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    port = 18_000 + os.getpid() % 1000
    env = {"JTM_REDIS_URL": args.redis_url, "JTM_REDIS_PREFIX": prefix, "JTM_MAX_EVENTS": str(args.batch_events)}
    service = start([sys.executable, "-m", "service", "--registry", str(registry), "--port", str(port)], env,
                    work / "service.log")
    ingest = start([sys.executable, "-m", "trainer", "ingest", "--redis-url", args.redis_url, "--redis-prefix",
                    prefix, "--log", str(log_dir)], {}, work / "ingest.log")
    client = redis.Redis.from_url(args.redis_url)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, service)
        backlog: list[int] = []
        sampling = threading.Event()

        def sample() -> None:
            while not sampling.is_set():
                backlog.append(int(client.xlen(stream_key(prefix))))
                time.sleep(0.25)

        sampler = threading.Thread(target=sample)
        sampler.start()
        cpu_before = {"service": process_tree_cpu_seconds(service.pid), "ingest": process_tree_cpu_seconds(ingest.pid)}
        sender_cpu = time.process_time()
        sent = send(url, args.rate, args.seconds, args.batch_events, item_ids, new_ids, args.users, args.seed)
        sender_cpu = time.process_time() - sender_cpu
        ended = time.monotonic()
        deadline = ended + 300
        while Segments(log_dir).load_state().events < sent["accepted"] and time.monotonic() < deadline:
            time.sleep(0.05)
        drained = time.monotonic() - ended
        cpu = {name: process_tree_cpu_seconds(p.pid) - cpu_before[name]
               for name, p in (("service", service), ("ingest", ingest))}
        sampling.set()
        sampler.join()
        logged = Segments(log_dir).load_state().events
        ingest_result = {
            "offered_per_s": args.rate, **sent, "logged": logged, "drain_seconds_after_last_send": drained,
            "ingest_events_per_s_mean": logged / (sent["send_seconds"] + drained),
            "segments": len(Segments(log_dir).segments()),
            "backlog_max": max(backlog or [0]), "backlog_p99": float(np.percentile(backlog, 99)) if backlog else 0.0,
            "cpu_seconds": {**cpu, "sender": sender_cpu},
            "cpu_ms_per_1000_events": {k: 1e6 * v / max(logged, 1) for k, v in cpu.items()},
        }
    finally:
        ingest.terminate()
        ingest.wait(timeout=30)
        service.terminate()
        service.wait(timeout=30)
        for key in client.scan_iter(f"{prefix}:*"):
            client.delete(key)
        client.close()
    started = time.perf_counter()
    refresh = subprocess.run([sys.executable, "-m", "trainer", "refresh", "--registry", str(registry), "--log",
                              str(log_dir)], cwd=ROOT, capture_output=True, text=True)
    refresh_result = {"wall_seconds": time.perf_counter() - started, "returncode": refresh.returncode,
                      "decision": refresh.stdout.strip().splitlines()[-1:] or refresh.stderr.strip().splitlines()[-1:],
                      "training": [line for line in refresh.stderr.splitlines()
                                   if " epoch " in line or "fine-tuned" in line or "added" in line]}
    decisions = sorted((registry / "decisions").glob("2*.json")) if (registry / "decisions").exists() else []
    if decisions:
        refresh_result["gate"] = json.loads(decisions[-1].read_text())
    return {"command": command_line(), "items": args.items, "ingest": ingest_result, "refresh": refresh_result,
            "work_dir": str(work)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=10_000, help="events offered per second")
    parser.add_argument("--seconds", type=float, default=30, help="how long events are offered")
    parser.add_argument("--batch-events", type=int, default=100, help="events per POST /v1/events")
    parser.add_argument("--items", type=int, default=100_000, help="the synthetic artifact's items")
    parser.add_argument("--new-items", type=int, default=200, help="items the artifact does not know, in 2%% of "
                                                                     "the batches")
    parser.add_argument("--users", type=int, default=20_000)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    result = run(args)
    ing, ref = result["ingest"], result["refresh"]
    print(f"\n{args.items:,} items; {args.rate:,.0f} events/s offered for {args.seconds:.0f} s in batches of "
          f"{args.batch_events}\n")
    print("| accepted | refused | late batches | logged (segments) | ingest events/s | backlog max / p99 "
          "| drained after last send | CPU s: service / ingest / sender | POST p50 / p99 |")
    print("|---|---|---|---|---|---|---|---|---|")
    print(f"| {ing['accepted']:,} | {ing['refused']:,} | {ing['late_batches']} | {ing['logged']:,} "
          f"({ing['segments']}) | {ing['ingest_events_per_s_mean']:,.0f} | "
          f"{ing['backlog_max']:,} / {ing['backlog_p99']:,.0f} | {ing['drain_seconds_after_last_send']:.2f} s | "
          f"{ing['cpu_seconds']['service']:.1f} / {ing['cpu_seconds']['ingest']:.1f} / "
          f"{ing['cpu_seconds']['sender']:.1f} | {ing['post_ms']['p50']:.1f} / {ing['post_ms']['p99']:.1f} ms |")
    print(f"\nrefresh over the log: {ref['wall_seconds']:.1f} s wall, {ref['decision']}")
    if "gate" in ref:
        print("phases (s): " + ", ".join(f"{k} {v:.1f}" for k, v in ref["gate"]["phases"].items()))
    print("\n".join(ref["training"]))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
