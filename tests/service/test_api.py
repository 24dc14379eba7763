"""Every endpoint through httpx against the real app (TestClient runs the lifespan), on the
in-process store and on the real Redis, including the error cases."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.config import Settings
from service.main import create_app
from tests.helpers import item_ids, redis_url


@pytest.fixture(params=["memory", "redis"])
def client(request, artifact: Path) -> TestClient:
    if request.param == "redis":
        prefix = request.getfixturevalue("redis_prefix")
        settings = Settings(artifact=artifact, redis_url=redis_url(), redis_prefix=prefix, max_history=100,
                            max_body_bytes=64 * 1024)
    else:
        settings = Settings(artifact=artifact, max_history=100, max_body_bytes=64 * 1024)
    with TestClient(create_app(settings)) as c:
        yield c


def ids(artifact: Path, n: int, start: int = 0) -> list:
    return item_ids(artifact)[start:start + n].tolist()


def test_recommend_with_history(client: TestClient, artifact: Path) -> None:
    history = ids(artifact, 5)
    r = client.post("/v1/recommend", json={"history": history, "k": 20})
    assert r.status_code == 200, r.text
    body = r.json()
    assert len(body["items"]) == 20 and body["fallback"] is None and body["unknown_items"] == 0
    assert body["history_source"] == "request" and body["history_used"] == 5
    scores = [i["score"] for i in body["items"]]
    assert scores == sorted(scores, reverse=True)
    assert r.headers["x-model-version"] == body["model_version"]
    assert set(i["item_id"] for i in body["items"]) <= set(item_ids(artifact).tolist())


def test_unknown_items_are_counted_and_ignored(client: TestClient, artifact: Path) -> None:
    known = ids(artifact, 3)
    r = client.post("/v1/recommend", json={"history": [*known, "no-such-item", 987654321], "k": 10})
    assert r.status_code == 200
    assert r.json()["unknown_items"] == 2 and r.json()["history_used"] == 3


def test_no_usable_history_falls_back_to_popular(client: TestClient) -> None:
    for payload in ({"k": 7}, {"history": ["nope"], "k": 7}, {"user_id": "never-seen", "k": 7}):
        body = client.post("/v1/recommend", json=payload).json()
        assert body["fallback"] == "popular" and len(body["items"]) == 7
        assert all(i["score"] is None for i in body["items"])


def test_exclude_seen_and_category_filter(client: TestClient, artifact: Path) -> None:
    with np.load(artifact / "items.npz") as a:
        all_ids, cats, item_cat = a["item_ids"], a["category_ids"], a["item_category"]
    history = all_ids[:30].tolist()
    plain = client.post("/v1/recommend", json={"history": history, "k": 100}).json()["items"]
    filtered = client.post("/v1/recommend", json={"history": history, "k": 100, "exclude_seen": True}).json()["items"]
    assert len(filtered) == 100
    assert not {i["item_id"] for i in filtered} & set(history)
    assert len(plain) == 100
    wanted = cats[:2].tolist()
    body = client.post("/v1/recommend", json={"history": history, "k": 25, "categories": wanted}).json()
    allowed = set(all_ids[np.isin(item_cat, [0, 1])].tolist())
    assert len(body["items"]) == min(25, len(allowed))
    assert {i["item_id"] for i in body["items"]} <= allowed


def test_an_empty_category_allow_list_is_refused(client: TestClient, artifact: Path) -> None:
    """`categories: []` is a 422 that says how to ask for no filter, not a silent empty answer;
    the published schema says so too (minItems 1)."""
    r = client.post("/v1/recommend", json={"history": ids(artifact, 3), "k": 5, "categories": []})
    assert r.status_code == 422, r.text
    assert r.json()["message"].startswith("categories: ") and "leave categories out" in r.json()["message"]
    assert "Value error" not in r.json()["message"]
    schema = client.get("/openapi.json").json()["components"]["schemas"]["RecommendRequest"]["properties"]
    assert schema["categories"]["anyOf"][0]["minItems"] == 1
    assert client.post("/v1/recommend", json={"history": ids(artifact, 3), "k": 5}).json()["items"]


def test_fallback_reason_says_why(client: TestClient, artifact: Path) -> None:
    """A history the model knows none of is `unknown_history` (with the count), not `no_history`,
    whether it came in the request or from the behaviour store."""
    body = client.post("/v1/recommend", json={"history": ["nope", 987654321, "nope"], "k": 7}).json()
    assert body["fallback"] == "popular" and body["fallback_reason"] == "unknown_history"
    assert body["unknown_items"] == 3 and body["history_used"] == 0 and body["history_source"] == "request"
    for payload in ({"k": 7}, {"history": [], "k": 7}, {"user_id": "never-seen", "k": 7}):
        body = client.post("/v1/recommend", json=payload).json()
        assert body["fallback_reason"] == "no_history" and body["unknown_items"] == 0, payload
    client.post("/v1/events", json={"events": [{"user_id": "ghost", "item_id": f"gone-{i}"} for i in range(4)]})
    body = client.post("/v1/recommend", json={"user_id": "ghost", "k": 7}).json()
    assert body["fallback_reason"] == "unknown_history" and body["unknown_items"] == 4
    assert body["history_source"] == "store"
    known = client.post("/v1/recommend", json={"history": [*ids(artifact, 2), "nope"], "k": 7}).json()
    assert known["fallback"] is None and known["fallback_reason"] is None and known["unknown_items"] == 1
    assert "unknown_history" in str(client.get("/openapi.json").json()["components"]["schemas"]["RecommendResponse"])


@pytest.mark.parametrize("path, payload", [("/v1/recommend", {"history": [1, 2], "k": 5}),
                                           ("/v1/events", {"user_id": "a", "item_id": 1})])
def test_a_body_not_sent_as_json_gets_415(client: TestClient, path: str, payload: dict) -> None:
    """A JSON body with another content type is named in a 415, instead of the 422 `body: Input
    should be a valid dictionary` FastAPI would give (curl -d without a content-type header)."""
    import json

    raw = json.dumps(payload).encode()
    for content_type, named in (("text/plain", "'text/plain'"),
                                ("application/x-www-form-urlencoded", "'application/x-www-form-urlencoded'"),
                                (None, "no content-type header")):
        headers = {} if content_type is None else {"content-type": content_type}
        r = client.post(path, content=raw, headers=headers)
        assert r.status_code == 415, (content_type, r.text)
        assert r.json()["error"] == "unsupported_media_type" and named in r.json()["message"]
        assert "application/json" in r.json()["message"]
    for content_type in ("application/json; charset=utf-8", "application/merge-patch+json"):
        r = client.post(path, content=raw, headers={"content-type": content_type})
        assert r.status_code in (200, 202), (content_type, r.text)
    r = client.post(path, content=b"", headers={"content-type": "text/plain"})
    assert r.status_code == 422  # no body at all: the missing fields are the problem


def test_docs_load_no_asset_from_the_network(client: TestClient) -> None:
    """/docs and /redoc reference only the app's own assets (they work offline), and each is served."""
    import re

    for page in ("/docs", "/redoc"):
        r = client.get(page)
        assert r.status_code == 200 and "text/html" in r.headers["content-type"]
        references = re.findall(r'(?:src|href)\s*=\s*["\']([^"\']+)', r.text)
        assert references, r.text
        assert not [u for u in references if "//" in u], r.text  # no http(s):// or protocol-relative URL
        for url in references:
            asset = client.get(url)
            assert asset.status_code == 200 and len(asset.content) > 1000, url
    assert "openapi.json" in client.get("/docs").text


def test_events_feed_the_store(client: TestClient, artifact: Path) -> None:
    items = ids(artifact, 4, start=10)
    r = client.post("/v1/events", json={"user_id": "alice", "item_id": items[0], "timestamp": 1})
    assert r.status_code == 202 and r.json()["accepted"] == 1
    r = client.post("/v1/events", json={"events": [{"user_id": "alice", "item_id": i} for i in items[1:]]})
    assert r.status_code == 202 and r.json()["accepted"] == 3
    body = client.post("/v1/recommend", json={"user_id": "alice", "k": 10}).json()
    assert body["history_source"] == "store" and body["history_used"] == 4 and body["fallback"] is None
    # The same history given in the request (oldest first) gives the same answer.
    direct = client.post("/v1/recommend", json={"history": items, "k": 10}).json()
    assert [i["item_id"] for i in direct["items"]] == [i["item_id"] for i in body["items"]]


@pytest.mark.parametrize("payload, field", [
    ({"k": 0}, "k"),
    ({"k": 1001}, "k"),
    ({"k": "5"}, "k"),
    ({"history": "abc"}, "history"),
    ({"history": [1.5]}, "history"),
    ({"k": 5, "colour": "red"}, "colour"),
    ({"exclude_seen": "yes"}, "exclude_seen"),
    ({"beam": 0}, "beam"),
    ({"history": list(range(101))}, "history"),
])
def test_bad_requests_get_422_naming_the_field(client: TestClient, payload: dict, field: str) -> None:
    r = client.post("/v1/recommend", json=payload)
    assert r.status_code == 422, r.text
    assert r.json()["error"] == "validation" and field in r.json()["message"]


@pytest.mark.parametrize(("path", "raw", "field"), [
    ("/v1/events", b'{"user_id": "\\ud800", "item_id": 1}', "user_id"),
    ("/v1/events", b'{"user_id": "a", "item_id": "x\\udfff"}', "item_id"),
    ("/v1/recommend", b'{"user_id": "\\ud800", "k": 5}', "user_id"),
    ("/v1/recommend", b'{"history": [1, "\\ud800"], "k": 5}', "history.1"),
])
def test_a_lone_surrogate_id_gets_422_not_a_500_from_the_store(client: TestClient, path: str, raw: bytes,
                                                               field: str) -> None:
    """JSON can escape a lone surrogate that UTF-8 cannot encode; on Redis it used to reach the
    key and fail there with a 500. Nothing is stored."""
    r = client.post(path, content=raw, headers={"content-type": "application/json"})
    assert r.status_code == 422, r.text
    assert field in r.json()["message"] and "surrogate" in r.json()["message"]
    assert client.post("/v1/recommend", json={"user_id": "a", "k": 3}).json()["history_used"] == 0


def test_malformed_json_and_oversized_bodies(client: TestClient) -> None:
    r = client.post("/v1/recommend", content=b'{"k": ', headers={"content-type": "application/json"})
    assert r.status_code == 422 and "malformed JSON" in r.json()["message"]
    big = b'{"history": [' + b",".join(b"1" for _ in range(40_000)) + b"]}"
    r = client.post("/v1/recommend", content=big, headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.json()["error"] == "too_large"
    r = client.post("/v1/events", json={"events": []})
    assert r.status_code == 422
    r = client.post("/v1/events", json={"user_id": "a"})
    assert r.status_code == 422


def test_model_health_ready_metrics(client: TestClient) -> None:
    model = client.get("/v1/model").json()
    assert model["serving"]["version"] and model["serving"]["items"] > 0
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["version"] == model["serving"]["version"]
    client.post("/v1/recommend", json={"history": [1, 2, 3], "k": 5})
    text = client.get("/metrics").text
    for name in ("jtm_http_request_seconds_bucket", "jtm_scorer_batch_rows", "jtm_model_info", "jtm_fallback_total"):
        assert name in text
    r = client.get("/healthz", headers={"X-Request-ID": "abc123"})
    assert r.headers["x-request-id"] == "abc123"
    assert client.get("/nope").status_code == 404


def test_model_reports_the_defaults_a_request_is_served_with(client: TestClient, artifact: Path) -> None:
    """/v1/model's `defaults` are the k and beam a request that names neither gets: its answer
    equals the one to a request naming them, and differs once either is changed."""
    defaults = client.get("/v1/model").json()["serving"]["defaults"]
    schema = client.get("/openapi.json").json()["components"]["schemas"]["RecommendRequest"]["properties"]
    assert defaults["k"] == schema["k"]["default"] == 200
    history = ids(artifact, 8)

    def items(**knobs: int) -> list:
        r = client.post("/v1/recommend", json={"history": history, **knobs})
        assert r.status_code == 200, r.text
        return r.json()["items"]

    served = items()
    assert served == items(k=defaults["k"], beam=defaults["beam"])
    assert len(served) == min(defaults["k"], len(item_ids(artifact)))
    assert served != items(k=defaults["k"], beam=1)  # the beam is applied: a narrower one answers otherwise


def test_concurrent_batched_answers_equal_unbatched(artifact: Path) -> None:
    """Micro-batching returns each request its own results under concurrency."""
    histories = [ids(artifact, n, start=s) for n, s in ((3, 0), (10, 40), (1, 100), (25, 7), (6, 300))] * 6
    with TestClient(create_app(Settings(artifact=artifact, batching=False))) as plain:
        expected = [plain.post("/v1/recommend", json={"history": h, "k": 30}).json()["items"] for h in histories]
    # A generous queue budget: this test is about batching correctness, not load shedding; on a slow
    # CI machine 30 simultaneous requests can wait longer than the default 250 ms for a worker.
    settings = Settings(artifact=artifact, batching=True, batch_max_wait_ms=20, queue_budget_ms=60_000)
    with TestClient(create_app(settings)) as batched:
        got: dict[int, list] = {}

        def call(i: int) -> None:
            response = batched.post("/v1/recommend", json={"history": histories[i], "k": 30})
            assert response.status_code == 200, response.text
            got[i] = response.json()["items"]

        threads = [threading.Thread(target=call, args=(i,)) for i in range(len(histories))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        text = batched.get("/metrics").text
    assert sorted(got) == list(range(len(histories))), "a request failed: see the thread's assertion above"
    for i, items in enumerate(expected):
        assert [x["item_id"] for x in got[i]] == [x["item_id"] for x in items]
        np.testing.assert_allclose([x["score"] for x in got[i]], [x["score"] for x in items], rtol=1e-5, atol=1e-5)
    # Some scorer calls carried more than one request's rows: mean jobs per call > 1.
    values = {line.split()[0]: float(line.split()[1]) for line in text.splitlines()
              if line.startswith("jtm_scorer_batch_jobs_")}
    assert values["jtm_scorer_batch_jobs_sum"] > values["jtm_scorer_batch_jobs_count"]


def test_deployment_limits_are_enforced_and_published(artifact: Path) -> None:
    """Every request-size limit a deployment sets (k, beam, history, categories, events per call,
    body bytes, also for a chunked body that declares no length) is enforced at its value, the
    value itself is accepted, and /openapi.json publishes it."""
    limits = {"max_k": 50, "max_beam": 300, "max_history": 20, "max_events": 5, "max_body_bytes": 4096}
    with TestClient(create_app(Settings(artifact=artifact, **limits))) as client:
        history = ids(artifact, 20)
        for field, at_limit, over in (("k", {"k": 50}, {"k": 51}), ("beam", {"beam": 300}, {"beam": 301}),
                                      ("history", {"history": history}, {"history": [*history, history[0]]}),
                                      ("categories", {"categories": list(range(20))},
                                       {"categories": list(range(21))})):
            base = {"history": history[:3], "k": 10}  # the schema's default k (200) is over this max_k
            assert client.post("/v1/recommend", json={**base, **at_limit}).status_code == 200
            r = client.post("/v1/recommend", json={**base, **over})
            assert r.status_code == 422 and r.json()["message"].startswith(field), (field, r.text)
        events = [{"user_id": "u", "item_id": i} for i in history[:6]]
        assert client.post("/v1/events", json={"events": events[:5]}).status_code == 202
        r = client.post("/v1/events", json={"events": events})
        assert r.status_code == 413 and "at most 5" in r.json()["message"]
        r = client.post("/v1/events", json={"user_id": "u", "item_id": 1, "event_id": "e" * 129})
        assert r.status_code == 422 and "event_id" in r.json()["message"]
        big = b'{"history": [' + b",".join(b"1" for _ in range(3000)) + b"]}"
        for content in (big, iter([big[:2048], big[2048:]])):  # with Content-Length, then chunked
            r = client.post("/v1/recommend", content=content, headers={"content-type": "application/json"})
            assert r.status_code == 413 and r.json()["error"] == "too_large"
        schema = client.get("/openapi.json").json()["components"]["schemas"]
        request = schema["RecommendRequest"]["properties"]
        assert request["k"]["maximum"] == 50 and request["beam"]["anyOf"][0]["maximum"] == 300
        assert request["history"]["anyOf"][0]["maxItems"] == 20
        assert schema["EventBatch"]["properties"]["events"]["maxItems"] == 5
