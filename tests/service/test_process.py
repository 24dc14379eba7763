"""The service as a real process: uvicorn on a free port, bad artifacts refused with exit code
2 and one line, and no torch anywhere in the service."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import ROOT
from tests.helpers import free_port, item_ids, npy_bytes, replace_members, resign, start_service


def test_real_uvicorn_process(artifact: Path) -> None:
    process, url = start_service("--artifact", str(artifact))
    try:
        history = item_ids(artifact)[:5].tolist()
        r = httpx.post(f"{url}/v1/recommend", json={"history": history, "k": 10}, timeout=10)
        assert r.status_code == 200 and len(r.json()["items"]) == 10
        assert httpx.get(f"{url}/v1/model").json()["serving"]["version"] == r.json()["model_version"]
    finally:
        process.terminate()
        process.wait(timeout=20)
    # uvicorn shuts down gracefully on SIGTERM and then re-raises it (exit status -15).
    assert process.returncode in (0, -15)
    assert "Application shutdown complete" in Path(process.log_path).read_text()


def run_service(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "service", "--port", str(free_port()), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)


def broken_copy(artifact: Path, tmp_path: Path, how: str) -> Path:
    copy = tmp_path / how
    shutil.copytree(artifact, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    if how == "missing-file":
        (copy / "items.npz").unlink()
    elif how == "checksum":
        data = bytearray((copy / "scorer.onnx").read_bytes())
        data[len(data) // 2] ^= 0xFF
        (copy / "scorer.onnx").write_bytes(bytes(data))
    elif how == "manifest-mismatch":
        manifest["tree"]["depth"] += 1
        (copy / "manifest.json").write_text(json.dumps(manifest))
    elif how == "escape":
        manifest["files"]["../outside"] = {"sha256": "0" * 64, "bytes": 1}
        (copy / "manifest.json").write_text(json.dumps(manifest))
    elif how == "no-manifest":
        (copy / "manifest.json").unlink()
    elif how == "symlink":  # identical bytes through a link out of the directory: checksums pass
        (copy / "items.npz").unlink()
        (copy / "items.npz").symlink_to(artifact / "items.npz")
    elif how == "section-escape":  # the loader would open another artifact's tree, unchecked
        resign(copy, tree={"file": str(artifact / "tree.npz")})
    elif how == "hostile-npz":  # re-signed: only the header check stands between it and 8 TB
        replace_members(copy / "tree.npz", {"item_leaf.npy": npy_bytes("<i8", (10**12,))})
        resign(copy, tree={"n_items": 10**12})
    return copy


@pytest.mark.parametrize("how, fragment", [
    ("missing-file", "items.npz: listed in the manifest but missing"),
    ("checksum", "scorer.onnx: sha256 does not match"),
    ("manifest-mismatch", "the manifest says"),
    ("escape", "not a plain name"),
    ("no-manifest", "manifest.json: missing"),
    ("symlink", "items.npz: is a symbolic link"),
    ("section-escape", "is not a file listed in 'files'"),
    ("hostile-npz", "tree.npz: item_leaf.npy claims shape (1000000000000,)"),
])
def test_bad_artifact_refused_with_one_line(artifact: Path, tmp_path: Path, how: str, fragment: str) -> None:
    result = run_service("--artifact", str(broken_copy(artifact, tmp_path, how)))
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], result.stderr
    assert "Traceback" not in result.stderr


def test_nothing_to_serve() -> None:
    result = run_service()
    assert result.returncode == 2 and "nothing to serve" in result.stderr


def test_service_never_imports_torch() -> None:
    """Import every service module with torch made unimportable."""
    code = (
        "import sys, pkgutil, importlib\n"
        "sys.modules['torch'] = None\n"
        "import service\n"
        "for m in pkgutil.walk_packages(service.__path__, 'service.'):\n"
        "    if not m.name.endswith('__main__'):\n"
        "        importlib.import_module(m.name)\n"
        "assert 'trainer' not in sys.modules\n"
        "print('ok')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr


def test_sigterm_lets_in_flight_requests_finish(big_artifact: Path) -> None:
    """Graceful shutdown: requests already being served when SIGTERM arrives complete (200)."""
    import concurrent.futures
    import signal

    # A generous queue budget: this test is about shutdown, not load shedding.
    process, url = start_service("--artifact", str(big_artifact), "--no-batching",
                                 env={"JTM_QUEUE_BUDGET_MS": "60000"})
    history = item_ids(big_artifact)[:60].tolist()
    body = {"history": history, "k": 1000, "beam": 4000}  # ~8K candidates per level: tens of ms
    clients = [httpx.Client(base_url=url, timeout=30) for _ in range(24)]
    for client in clients:
        client.get("/healthz")  # connections open before the signal
    def call(client: httpx.Client) -> tuple[int, float]:
        response = client.post("/v1/recommend", json=body)
        return response.status_code, time.monotonic()

    with concurrent.futures.ThreadPoolExecutor(len(clients)) as pool:
        futures = [pool.submit(call, c) for c in clients]
        # Signal once the first answer is back: the others are being served at that moment.
        concurrent.futures.wait(futures, return_when=concurrent.futures.FIRST_COMPLETED)
        signalled = time.monotonic()
        process.send_signal(signal.SIGTERM)
        results = [f.result() for f in futures]
    statuses = [status for status, _ in results]
    assert max(done for _, done in results) > signalled  # some were really in flight
    for client in clients:
        client.close()
    process.wait(timeout=30)
    assert statuses == [200] * len(clients)
    assert "Application shutdown complete" in Path(process.log_path).read_text()
