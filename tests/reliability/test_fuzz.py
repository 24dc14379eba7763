"""Fuzzing the HTTP API from its own OpenAPI schema (schemathesis + hypothesis): a bounded
number of generated requests per operation, schema-valid (positive) and schema-invalid
(negative). No 5xx ever; every response conforms to the schema; valid requests are accepted
and invalid ones rejected (schemathesis's default checks). The app runs its real lifespan
with a real artifact."""

from __future__ import annotations

from pathlib import Path

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode

from service.config import Settings
from service.main import create_app

CASES_PER_OPERATION = 60  # per generation mode: about 1,000 requests in all, ~20 s


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=lambda m: m.value)
def test_api_never_fails_and_conforms(artifact: Path, mode: GenerationMode) -> None:
    # Admin endpoints need a token the fuzzer does not have (their auth is tested directly):
    # they must still answer 4xx, never 5xx.
    app = create_app(Settings(artifact=artifact, admin_token="fuzz-token-not-given"))
    with TestClient(app):  # the lifespan runs: model loaded, behaviour store created
        schema = schemathesis.openapi.from_asgi("/openapi.json", app)
        operations = [result.ok() for result in schema.get_all_operations()]
        assert len(operations) >= 8
        seen: dict[str, dict[int, int]] = {}

        for operation in operations:
            if mode is GenerationMode.NEGATIVE and not _has_inputs(operation):
                continue  # nothing to make invalid (GET /healthz ...)

            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(max_examples=CASES_PER_OPERATION, deadline=None, suppress_health_check=list(HealthCheck),
                      database=None)
            def fuzz(case) -> None:
                response = case.call()
                assert response.status_code < 500, (case.method, case.path, case.body, response.text[:300])
                counts = seen.setdefault(f"{case.method} {case.path}", {})
                counts[response.status_code] = counts.get(response.status_code, 0) + 1
                if response.status_code not in (401, 403, 409, 413, 503):
                    case.validate_response(response)

            fuzz()
    total = sum(sum(c.values()) for c in seen.values())
    print(f"\n{mode.value}: {total} requests over {len(seen)} operations: {seen}")
    recommend = seen["POST /v1/recommend"]
    # Unauthenticated admin calls are rejected before their body matters.
    assert set(seen["POST /v1/admin/reload"]) <= {401, 422}
    if mode is GenerationMode.POSITIVE:
        assert recommend.get(200, 0) > 0
        assert 202 in seen["POST /v1/events"]
    else:
        assert recommend.get(422, 0) > 0


def _has_inputs(operation) -> bool:
    return bool(len(operation.body) or len(operation.query) or len(operation.path_parameters) or len(operation.headers))


def test_admin_api_with_token_never_fails(trained, tmp_path: Path) -> None:
    """The admin operations with a valid token, against a registry holding two versions:
    generated versions and A/B settings must give 2xx/4xx (404 unknown version, 409 ...)."""
    from service.core.registry import Registry

    registry = Registry(tmp_path / "reg")
    for method in ("tdm", "jtm-h"):
        registry.publish(trained[method][1])
    token = "fuzz-admin-token"
    app = create_app(Settings(registry=registry.root, admin_token=token, registry_poll_s=60))
    seen: dict[str, set[int]] = {}
    with TestClient(app):
        schema = schemathesis.openapi.from_asgi("/openapi.json", app)
        for result in schema.get_all_operations():
            operation = result.ok()
            if not operation.path.startswith("/v1/admin"):
                continue

            @given(case=operation.as_strategy())
            @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), database=None)
            def fuzz(case) -> None:
                response = case.call(headers={"Authorization": f"Bearer {token}"})
                assert response.status_code < 500, (case.method, case.path, case.body, response.text[:300])
                seen.setdefault(f"{case.method} {case.path}", set()).add(response.status_code)
                case.validate_response(response, excluded_checks=[schemathesis.checks.positive_data_acceptance])

            fuzz()
    print(f"\nadmin with token: {seen}")
    assert len(seen) == 4 and all(codes <= {200, 404, 409} for codes in seen.values())
    assert 200 in seen["POST /v1/admin/reload"]
