"""The recommend fast path (`service.api.fast_path`) answers exactly as FastAPI's route did.

Each request goes to two apps on the same artifact: the real one, and one built with
`fast_path=False` (every recommend request through FastAPI's route, dependencies and exception
handlers, as before the fast path). Status, every response header and the body bytes must be
the same, for well-formed requests and for every kind of bad one (415, 413 with and without a
length, 422 of all sorts, refusals from the deployment's limits, 503 from admission, the queue
budget and a missing model, 500). Also: the fast path does answer the well-formed ones (the
route's dependencies never run for them), counts them in the metrics and the access log like
the route's, and /openapi.json still documents the route.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import anyio.to_thread
import pytest
from fastapi import Request
from fastapi.testclient import TestClient

import service.api.routes
from service.api.deps import require_json
from service.config import Settings
from service.main import create_app
from service.model_store import ModelStore
from tests.helpers import item_ids

LIMITS = {"max_k": 300, "max_history": 50, "max_beam": 500, "max_body_bytes": 4096}


def pair(artifact: Path, **settings) -> tuple[TestClient, TestClient]:
    """(fast path, FastAPI route only), same settings, not yet started."""
    config = Settings(artifact=artifact, **{**LIMITS, **settings})
    return (TestClient(create_app(config), raise_server_exceptions=False),
            TestClient(create_app(config, fast_path=False), raise_server_exceptions=False))


def answer(client: TestClient, content: object, headers: dict[str, str] | None = None, method: str = "POST",
           path: str = "/v1/recommend") -> tuple[int, list, bytes]:
    r = client.request(method, path, content=content, headers={"x-request-id": "test-1", **(headers or {})})
    return r.status_code, r.headers.raw, r.content


def requests_to_compare(artifact: Path) -> list[tuple[str, object, dict[str, str]]]:
    """(what, body, headers): the well-formed kinds, then every kind of bad one."""
    ids = item_ids(artifact).tolist()
    as_json = {"content-type": "application/json"}

    def body(payload: object) -> bytes:
        return json.dumps(payload).encode()

    nested = b'{"history": ' + b"[" * 2000 + b"]" * 2000 + b"}"  # RecursionError in json.loads; 4,013 bytes
    cases = [
        ("history", body({"history": ids[:5], "k": 20}), as_json),
        ("history, exclude_seen, beam", body({"history": ids[3:40], "k": 50, "beam": 100, "exclude_seen": True}),
         as_json),
        ("categories", body({"history": ids[:8], "k": 10, "categories": [0, 1, "x"]}), as_json),
        ("unknown ids only", body({"history": ["nope", 987654321], "k": 7}), as_json),
        ("user without history", body({"user_id": "nobody", "k": 7}), as_json),
        ("empty object", b"{}", as_json),
        ("float k", b'{"k": 5.0, "history": [1]}', as_json),
        ("duplicate keys", b'{"k": 500, "k": 5}', as_json),
        ("charset parameter", body({"history": ids[:3], "k": 5}), {"content-type": "application/json; charset=utf-8"}),
        ("upper-case type", body({"history": ids[:3], "k": 5}), {"content-type": "Application/JSON"}),
        ("+json type", body({"history": ids[:3], "k": 5}), {"content-type": "application/merge-patch+json"}),
        ("chunked", iter([b'{"history": ', body(ids[:4]), b', "k": 9}']), as_json),
        ("lone surrogate id", b'{"history": ["\\ud800"], "k": 5}', as_json),
        ("fresh, nothing added", body({"history": ids[:5], "k": 5, "fresh": True}), as_json),
        ("BOM", b"\xef\xbb\xbf" + body({"k": 5}), as_json),
        ("UTF-16", json.dumps({"k": 5}).encode("utf-16"), as_json),
        # 415
        ("text/plain", body({"history": [1], "k": 5}), {"content-type": "text/plain"}),
        ("form", body({"k": 5}), {"content-type": "application/x-www-form-urlencoded"}),
        ("no content-type", body({"k": 5}), {}),
        ("application/json/x", body({"k": 5}), {"content-type": "application/json/x"}),
        # 413
        ("over the limit", body({"history": list(range(2000))}), as_json),
        ("over the limit, chunked", iter([body({"history": list(range(600))}), body(list(range(600)))]), as_json),
        # 422
        ("empty body", b"", as_json),
        ("empty body, text/plain", b"", {"content-type": "text/plain"}),
        ("malformed", b'{"k": ', as_json),
        ("not UTF-8", b'{"history": ["\xff"]}', as_json),
        ("nested lists", nested, as_json),
        ("a list", b"[1, 2]", as_json),
        ("null", b"null", as_json),
        ("a string", b'"abc"', as_json),
        ("NaN", b'{"k": NaN}', as_json),
        ("k = 0", body({"k": 0}), as_json),
        ("k as text", body({"k": "5"}), as_json),
        ("k a fraction", body({"k": 5.5}), as_json),
        ("unknown field", body({"k": 5, "colour": "red"}), as_json),
        ("bool as id", body({"history": [True]}), as_json),
        ("empty categories", body({"history": [1], "categories": []}), as_json),
        ("many errors", body({"k": 0, "beam": 0, "history": "x", "exclude_seen": 1, "a": 1, "b": 2}), as_json),
        # refused by the deployment's limits (service.recommend._admit)
        ("k over max_k", body({"history": ids[:3], "k": 301}), as_json),
        ("beam over max_beam", body({"history": ids[:3], "k": 5, "beam": 501}), as_json),
        ("history over max_history", body({"history": ids[:51], "k": 5}), as_json),
        ("categories over max_history", body({"history": ids[:3], "k": 5, "categories": list(range(51))}), as_json),
    ]
    return cases


def test_every_answer_is_the_routes_answer(artifact: Path) -> None:
    fast, plain = pair(artifact)
    with fast, plain:
        for what, content, headers in requests_to_compare(artifact):
            if isinstance(content, type(iter([]))):  # a generator is consumed: one per client
                parts = list(content)
                got, expected = answer(fast, iter(parts), headers), answer(plain, iter(parts), headers)
            else:
                got, expected = answer(fast, content, headers), answer(plain, content, headers)
            assert got == expected, what
        for method, path in (("GET", "/v1/recommend"), ("PUT", "/v1/recommend"), ("POST", "/v1/recommend/")):
            content = json.dumps({"k": 5}).encode()
            headers = {"content-type": "application/json"}
            assert answer(fast, content, headers, method, path) == answer(plain, content, headers, method, path)
        # the statuses themselves, as the API documents them
        statuses = {what: answer(fast, content, headers)[0] for what, content, headers in
                    requests_to_compare(artifact)}
    assert statuses["history"] == statuses["charset parameter"] == statuses["+json type"] == 200
    assert statuses["text/plain"] == statuses["no content-type"] == 415
    assert statuses["over the limit"] == statuses["over the limit, chunked"] == 413
    assert statuses["malformed"] == statuses["k over max_k"] == statuses["nested lists"] == 422


def test_the_fast_path_answers_well_formed_requests_itself(artifact: Path) -> None:
    """The route's dependencies run only for the requests the fast path hands over."""
    calls = []

    async def counted(request: Request) -> None:
        calls.append(request.headers.get("content-type"))
        await require_json(request)

    config = Settings(artifact=artifact, **LIMITS)
    app = create_app(config)
    app.dependency_overrides[require_json] = counted
    ids = item_ids(artifact).tolist()
    with TestClient(app) as client:
        for _ in range(3):
            assert client.post("/v1/recommend", json={"history": ids[:5], "k": 10}).status_code == 200
        assert client.post("/v1/recommend", json={"k": 0}).status_code == 422
        r = client.post("/v1/recommend", content=b'{"k": 5}', headers={"content-type": "text/plain"})
        assert r.status_code == 415
    assert calls == ["application/json", "text/plain"]


def metric(text: str, name: str, **labels: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.split()[-1])
    return 0.0


def test_metrics_access_log_and_request_id(artifact: Path, capfd: pytest.CaptureFixture) -> None:
    """Counted under the route's label and logged as the route's requests were, both ways."""
    ids = item_ids(artifact).tolist()
    for client in pair(artifact):
        with client:
            for _ in range(3):
                r = client.post("/v1/recommend", json={"history": ids[:5], "k": 10})
                assert r.status_code == 200 and len(r.headers["x-request-id"]) == 16
            r = client.post("/v1/recommend", json={"history": ids[:5], "k": 10}, headers={"X-Request-ID": "abc-123"})
            assert r.headers["x-request-id"] == "abc-123"
            client.post("/v1/recommend", json={"k": 0})
            client.post("/v1/recommend", json={"history": ids[:3], "k": 301})
            text = client.get("/metrics").text
        count = "jtm_http_request_seconds_count"
        assert metric(text, count, route="/v1/recommend", method="POST", status="200") == 4
        assert metric(text, count, route="/v1/recommend", method="POST", status="422") == 2
        assert metric(text, "jtm_requests_by_version_total") == 4
        lines = [json.loads(line) for line in capfd.readouterr().err.splitlines() if line.startswith("{")]
        access = [e for e in lines if e["msg"] == "POST /v1/recommend"]
        assert [e["status"] for e in access] == [200] * 4 + [422, 422]
        assert {e["route"] for e in access} == {"/v1/recommend"} and access[3]["request_id"] == "abc-123"
        assert all(e["ms"] > 0 and e["logger"] == "service" for e in access)


def test_openapi_still_documents_recommend(artifact: Path) -> None:
    fast, plain = pair(artifact)
    with fast, plain:
        schema = fast.get("/openapi.json").json()
        assert schema == plain.get("/openapi.json").json()
        assert fast.get("/docs").status_code == 200
    operation = schema["paths"]["/v1/recommend"]["post"]
    assert operation["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("RecommendRequest")
    assert {"200", "413", "415", "422", "503"} <= set(operation["responses"])


@pytest.fixture
def gate(monkeypatch: pytest.MonkeyPatch):
    """Recommend requests with user_id "hold" wait after their search, on their worker thread,
    until the gate opens."""
    opened = threading.Event()
    entered = threading.Event()
    original = service.api.routes.recommend_request

    def held(body, *args, **kwargs):
        result = original(body, *args, **kwargs)
        if body.user_id == "hold":
            entered.set()
            assert opened.wait(30)
        return result

    monkeypatch.setattr(service.api.routes, "recommend_request", held)
    yield entered, opened
    opened.set()


def in_background(client: TestClient, payload: dict) -> tuple[threading.Thread, list]:
    out: list = []
    thread = threading.Thread(target=lambda: out.append(client.post("/v1/recommend", json=payload)))
    thread.start()
    return thread, out


@pytest.mark.parametrize("fast_path", [True, False])
def test_admission_limit_answers_503_at_once(artifact: Path, gate, fast_path: bool) -> None:
    entered, opened = gate
    config = Settings(artifact=artifact, max_inflight=1)
    with TestClient(create_app(config, fast_path=fast_path)) as client:
        thread, out = in_background(client, {"user_id": "hold", "k": 5})
        assert entered.wait(30)
        started = time.perf_counter()
        r = client.post("/v1/recommend", json={"k": 5})
        assert time.perf_counter() - started < 5
        assert r.status_code == 503 and r.headers["retry-after"] == "1"
        assert r.json() == {"error": "unavailable", "message": "overloaded: 1 requests in progress"}
        opened.set()
        thread.join(30)
        assert out[0].status_code == 200
        assert client.post("/v1/recommend", json={"k": 5}).status_code == 200
        assert metric(client.get("/metrics").text, "jtm_rejected_total", reason="inflight_limit") == 1


def waiting_for_a_thread(client: TestClient) -> int:
    """Requests of the app's event loop waiting for a worker thread (its anyio thread limiter)."""
    return client.portal.call(lambda: anyio.to_thread.current_default_thread_limiter().statistics().tasks_waiting)


@pytest.mark.parametrize("fast_path", [True, False])
def test_queue_budget_counts_from_arrival(artifact: Path, gate, fast_path: bool) -> None:
    """With the one worker thread busy, a request that waits past the budget for it gets 503."""
    entered, opened = gate
    config = Settings(artifact=artifact, worker_threads=1, queue_budget_ms=100)
    with TestClient(create_app(config, fast_path=fast_path)) as client:
        thread, out = in_background(client, {"user_id": "hold", "k": 5})
        assert entered.wait(30)
        waiting, late = in_background(client, {"k": 5})
        deadline = time.monotonic() + 30
        while waiting_for_a_thread(client) < 1:  # the second request waits for the one worker...
            assert time.monotonic() < deadline
            time.sleep(0.01)
        time.sleep(0.3)  # ...past its budget
        opened.set()
        thread.join(30)
        waiting.join(30)
        assert out[0].status_code == 200
        r = late[0]
        assert r.status_code == 503 and r.headers["retry-after"] == "1", r.text
        assert r.json()["error"] == "unavailable" and r.json()["message"].startswith("overloaded: waited ")
        assert r.json()["message"].endswith(" ms for a worker")
        assert metric(client.get("/metrics").text, "jtm_rejected_total", reason="queue_budget") == 1


def test_no_model_and_internal_errors_as_before(artifact: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fast, plain = pair(artifact)
    content, headers = json.dumps({"history": [1, 2], "k": 5}).encode(), {"content-type": "application/json"}
    with fast, plain:
        with monkeypatch.context() as patch:
            patch.setattr(ModelStore, "bundle_for", lambda self, user_id: None)
            got = answer(fast, content, headers)
            assert got == answer(plain, content, headers)
        assert got[0] == 503 and (b"retry-after", b"1") in got[1]
        assert json.loads(got[2]) == {"error": "unavailable", "message": "no model loaded yet"}

        def broken(*args, **kwargs):
            raise RuntimeError("boom")

        monkeypatch.setattr(service.api.routes, "recommend_request", broken)
        got = answer(fast, content, headers)
        assert got == answer(plain, content, headers)
        assert got[0] == 500
        assert json.loads(got[2]) == {"error": "internal", "message": "internal error (request test-1)"}
        assert (b"x-request-id", b"test-1") in got[1]  # the id a client reports finds the log line
        text = fast.get("/metrics").text
    assert metric(text, "jtm_http_request_seconds_count", route="/v1/recommend", status="500") == 1
    assert metric(text, "jtm_http_request_seconds_count", route="/v1/recommend", status="503") == 1
