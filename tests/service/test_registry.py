"""Registry and hot reload: publish, follow, reject corrupted versions, rollback, A/B split,
admin auth, and two replicas converging through Redis."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import httpx
import pytest
import redis
from fastapi.testclient import TestClient

from service.config import Settings
from service.core.artifact import ArtifactError, verify_artifact
from service.core.registry import Registry
from service.main import create_app
from service.model_store import ab_bucket
from tests.helpers import item_ids, npy_bytes, redis_url, replace_members, resign, start_service
from trainer.cli import main as trainer_main

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def version_of(artifact: Path) -> str:
    return json.loads((artifact / "manifest.json").read_text())["version"]


@pytest.fixture
def two_artifacts(trained) -> tuple[Path, Path]:
    """Two artifacts with different trees (plain and hierarchical models)."""
    return trained["tdm"][1], trained["jtm-h"][1]


def test_published_directories_are_as_readable_as_their_files(artifact: Path, tmp_path: Path) -> None:
    """An exported artifact and its copy in a registry get a plain mkdir's permissions (0755 under
    the usual umask 022), not a temporary directory's private 0700: a service running as another
    user must be able to enter them, as it can read their files (0644)."""
    import stat

    plain_dir, plain_file = tmp_path / "plain", tmp_path / "plain.txt"
    plain_dir.mkdir()
    plain_file.write_bytes(b"x")
    mode = lambda path: stat.S_IMODE(path.stat().st_mode)  # noqa: E731
    if mode(plain_dir) == 0o755:
        assert mode(plain_file) == 0o644  # the usual umask: the case the service's user depends on
    registry = Registry(tmp_path / "registry")
    for directory in (artifact, registry.path(registry.add(artifact))):
        assert mode(directory) == mode(plain_dir), (directory, oct(mode(directory)))
        assert {mode(f) for f in directory.iterdir()} == {mode(plain_file)}, directory


def test_publish_copies_verifies_and_moves_pointer(two_artifacts, tmp_path: Path) -> None:
    a, b = two_artifacts
    registry = Registry(tmp_path / "reg")
    assert registry.current() is None
    va = registry.publish(a)
    assert registry.current() == va and registry.versions() == [va]
    verify_artifact(registry.path(va))
    vb = registry.publish(b)
    assert registry.current() == vb and registry.previous() == va
    assert registry.publish(a) == va and registry.current() == va  # re-publish: pointer only
    assert sorted(registry.versions()) == sorted([va, vb])
    assert [h["version"] for h in registry.history()] == [va, vb, va]
    assert (tmp_path / "reg" / "CURRENT").read_text().strip() == va


def test_publish_cli_refuses_corrupted_artifacts(two_artifacts, tmp_path: Path, capsys) -> None:
    a, b = two_artifacts
    reg = tmp_path / "reg"
    assert trainer_main(["publish", "--artifact", str(a), "--registry", str(reg)]) == 0
    truncated = tmp_path / "truncated"
    shutil.copytree(b, truncated)
    (truncated / "scorer.onnx").write_bytes((truncated / "scorer.onnx").read_bytes()[:1000])
    mismatched = tmp_path / "mismatched"  # a's tree with b's scorer, manifest re-signed: checksums pass
    shutil.copytree(b, mismatched)
    shutil.copyfile(a / "tree.npz", mismatched / "tree.npz")
    manifest = json.loads((mismatched / "manifest.json").read_text())
    from service.core.artifact import file_entries

    manifest["files"] = file_entries(mismatched, list(manifest["files"]))
    (mismatched / "manifest.json").write_text(json.dumps(manifest))
    for bad in (truncated, mismatched):
        assert trainer_main(["publish", "--artifact", str(bad), "--registry", str(reg)]) == 2
        assert "refused" in capsys.readouterr().err
    assert Registry(reg).current() == version_of(a)


def test_service_follows_registry_and_keeps_old_version_on_failure(two_artifacts, tmp_path: Path) -> None:
    a, b = two_artifacts
    registry = Registry(tmp_path / "reg")
    va = registry.publish(a)
    settings = Settings(registry=tmp_path / "reg", registry_poll_s=0.1, admin_token=TOKEN)
    with TestClient(create_app(settings)) as client:
        history = item_ids(a)[:5].tolist()
        assert client.post("/v1/recommend", json={"history": history, "k": 5}).json()["model_version"] == va
        vb = registry.publish(b)
        assert wait_for(lambda: client.get("/readyz").json().get("version") == vb)
        # A corrupted version in the registry: refused, the old one keeps serving, the error shows.
        broken = registry.path("19990101T000000-broken")
        shutil.copytree(registry.path(va), broken)
        (broken / "tree.npz").write_bytes(b"not a tree")
        registry.set_current(broken.name)
        assert wait_for(lambda: client.get("/v1/model").json()["last_error"] is not None)
        model = client.get("/v1/model").json()
        assert model["serving"]["version"] == vb and "broken" in model["last_error"]
        assert client.post("/v1/recommend", json={"history": history, "k": 5}).json()["model_version"] == vb
        assert 'jtm_model_loads_total{outcome="error"}' in client.get("/metrics").text


@pytest.mark.parametrize("member, data, fragment", [
    ("item_leaf.npy", npy_bytes("<i8", (10**12,)), "claims shape (1000000000000,)"),
    ("item_leaf.npy", npy_bytes("|O", (499,), b"\x80" * 64), "i.e. a pickle"),
])
def test_hostile_version_is_refused_and_the_old_one_keeps_serving(two_artifacts, tmp_path: Path, member: str,
                                                                   data: bytes, fragment: str) -> None:
    """A version that passes publishing (its manifest re-signed, so checksums hold) but whose
    tree.npz header is hostile: the follower refuses it, keeps serving, and reports it."""
    a, _ = two_artifacts
    registry = Registry(tmp_path / "reg")
    va = registry.publish(a)
    hostile = tmp_path / "hostile"
    shutil.copytree(a, hostile)
    replace_members(hostile / "tree.npz", {member: data})
    manifest = json.loads((hostile / "manifest.json").read_text())
    (hostile / "manifest.json").write_text(json.dumps({**manifest, "version": "19990101T000000-hostile"}))
    resign(hostile, tree={"n_items": 10**12} if "claims" in fragment else {})
    settings = Settings(registry=tmp_path / "reg", registry_poll_s=0.1)
    with TestClient(create_app(settings)) as client:
        history = item_ids(a)[:5].tolist()
        bad = registry.publish(hostile)
        assert wait_for(lambda: client.get("/v1/model").json()["last_error"] is not None)
        model = client.get("/v1/model").json()
        assert model["serving"]["version"] == va
        assert bad in model["last_error"] and "tree.npz" in model["last_error"] and fragment in model["last_error"]
        response = client.post("/v1/recommend", json={"history": history, "k": 5})
        assert response.status_code == 200 and response.json()["model_version"] == va
        assert client.get("/readyz").json()["version"] == va
        assert 'jtm_model_loads_total{outcome="error"} 1.0' in client.get("/metrics").text  # tried once, not per poll


def test_admin_reload_rollback_and_auth(two_artifacts, tmp_path: Path) -> None:
    a, b = two_artifacts
    registry = Registry(tmp_path / "reg")
    va = registry.publish(a)
    vb = registry.add(b)
    with TestClient(create_app(Settings(registry=tmp_path / "reg", registry_poll_s=30, admin_token=TOKEN))) as c:
        assert c.post("/v1/admin/reload", json={}).status_code == 401
        assert c.post("/v1/admin/reload", json={}, headers={"Authorization": "Bearer wrong"}).status_code == 403
        assert c.post("/v1/admin/rollback", headers={"Authorization": "Basic x"}).status_code == 401
        r = c.post("/v1/admin/reload", json={"version": vb}, headers=AUTH)
        assert r.status_code == 200 and r.json()["serving"] == vb and registry.current() == vb
        assert c.post("/v1/admin/reload", json={"version": "nope"}, headers=AUTH).status_code == 404
        # Version ids that are not plain short names are refused with 404 and a reason, never an
        # OSError: a 300-character name (over NAME_MAX, found by the fuzzer), NUL, a path, a dot.
        for bad in ("0" * 27 + "\x80" * 300, "a\x00b", "../reg", ".hidden", "v/1"):
            for method, path, body in (("post", "/v1/admin/reload", {"version": bad}),
                                       ("put", "/v1/admin/ab", {"candidate": bad, "share": 0.1})):
                r = getattr(c, method)(path, json=body, headers=AUTH)
                assert r.status_code == 404 and "is not a version id" in r.json()["message"], (bad, r.text)
        r = c.post("/v1/admin/rollback", headers=AUTH)
        assert r.status_code == 200 and r.json()["serving"] == va and registry.current() == va
    with TestClient(create_app(Settings(registry=tmp_path / "reg"))) as no_token:
        assert no_token.post("/v1/admin/reload", json={}, headers=AUTH).status_code == 403
    with TestClient(create_app(Settings(artifact=a, admin_token=TOKEN))) as fixed:
        assert fixed.post("/v1/admin/reload", json={}, headers=AUTH).status_code == 409


def test_ab_split_is_stable_and_close_to_the_share(two_artifacts, tmp_path: Path) -> None:
    a, b = two_artifacts
    registry = Registry(tmp_path / "reg")
    va = registry.publish(a)
    vb = registry.add(b)
    with TestClient(create_app(Settings(registry=tmp_path / "reg", registry_poll_s=30, admin_token=TOKEN))) as c:
        r = c.put("/v1/admin/ab", json={"candidate": vb, "share": 0.3}, headers=AUTH)
        assert r.status_code == 200 and r.json()["ab"] == {"candidate": vb, "share": 0.3}
        history = item_ids(a)[:3].tolist()
        users = [f"user-{i}" for i in range(400)]
        served = {}
        for user in users:
            response = c.post("/v1/recommend", json={"user_id": user, "history": history, "k": 3})
            assert response.headers["x-model-version"] == response.json()["model_version"]
            served[user] = response.json()["model_version"]
        share = sum(v == vb for v in served.values()) / len(users)
        # Binomial(400, 0.3): sd = 0.023; 4 sd tolerance.
        assert abs(share - 0.3) < 0.092, share
        assert all((served[u] == vb) == (ab_bucket(u) < 0.3) for u in users)
        again = {u: c.post("/v1/recommend", json={"user_id": u, "history": history, "k": 3}).json()["model_version"]
                 for u in users[:50]}
        assert all(again[u] == served[u] for u in again)  # stable per user
        assert f'jtm_requests_by_version_total{{version="{vb}"}}' in c.get("/metrics").text
        r = c.delete("/v1/admin/ab", headers=AUTH)
        assert r.status_code == 200 and r.json()["ab"] is None
        assert c.post("/v1/recommend", json={"user_id": users[0], "history": history}).json()["model_version"] == va
    assert registry.ab() is None


def test_registry_rejects_bad_versions(tmp_path: Path) -> None:
    registry = Registry(tmp_path / "reg")
    with pytest.raises(ArtifactError):
        registry.set_current("../etc")
    with pytest.raises(ArtifactError):
        registry.set_current("missing-version")


def test_two_replicas_converge(two_artifacts, tmp_path: Path, redis_prefix: str) -> None:
    a, b = two_artifacts
    reg = tmp_path / "reg"
    client = redis.Redis.from_url(redis_url())
    registry = Registry(reg, client, redis_prefix)
    va = registry.publish(a)
    common = ["--registry", str(reg), "--redis-url", redis_url()]
    env_prefix = {"JTM_REDIS_PREFIX": redis_prefix, "JTM_REGISTRY_POLL_S": "5"}
    replicas = [start_service(*common, env=env_prefix) for _ in range(2)]
    try:
        for _, url in replicas:
            assert httpx.get(f"{url}/readyz").json()["version"] == va
        published = time.monotonic()
        vb = registry.publish(b)
        for _, url in replicas:
            assert wait_for(lambda url=url: httpx.get(f"{url}/readyz").json().get("version") == vb, timeout=10)
        converged = time.monotonic() - published
        print(f"\nboth replicas serve {vb} {converged:.2f} s after publishing (poll every 5 s)")
        # Pub/sub woke them well before the 5 s poll.
        assert converged < 4.5, converged
    finally:
        for process, _ in replicas:
            process.terminate()
            process.wait(timeout=20)
        client.close()


def wait_for(condition, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if condition():
                return True
        except (httpx.HTTPError, KeyError):
            pass
        time.sleep(0.05)
    return False


@pytest.mark.slow
def test_swap_under_load_loses_no_request(two_artifacts, tmp_path: Path) -> None:
    """A real service process, 60 req/s for 20 s from a separate load-generator process, and
    6 publishes alternating two artifacts with different trees: zero failed requests."""
    from bench.swap_under_load import run

    result = run(list(two_artifacts), rate=60, duration=20, swaps=6, window=2.0, workdir=tmp_path)
    print(json.dumps({k: v for k, v in result.items() if k != "loadtest_output"}))
    assert result["sent"] >= 1150
    assert result["failed"] == 0, result["errors"]
    assert len(result["versions_seen"]) == 2
    assert result["p99_ms_during_swaps"] is not None and result["p99_ms_steady"] is not None
