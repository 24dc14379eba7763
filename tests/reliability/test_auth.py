"""Admin secrets: the token comes only from the environment, is never echoed (responses, metrics,
schema, logs, settings repr), and is compared in constant time."""

from __future__ import annotations

import ast
import inspect
import textwrap
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.api import admin
from service.cli import build_parser
from service.config import Settings
from service.main import create_app

TOKEN = "env-only-admin-token-7f3a9c"


def test_token_comes_only_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No flag (it would show in `ps` and shell history) and no settings file: JTM_ADMIN_TOKEN."""
    options = {option for action in build_parser()._actions for option in action.option_strings}  # noqa: SLF001
    assert not {o for o in options if "token" in o or "secret" in o}, options
    assert not Settings.model_config.get("env_file") and not Settings.model_config.get("secrets_dir")
    monkeypatch.setenv("JTM_ADMIN_TOKEN", TOKEN)
    settings = Settings()
    assert settings.admin_token is not None and settings.admin_token.get_secret_value() == TOKEN
    assert TOKEN not in repr(settings) and TOKEN not in settings.model_dump_json()


def test_token_is_never_echoed(artifact: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.setenv("JTM_ADMIN_TOKEN", TOKEN)
    with TestClient(create_app(Settings(artifact=artifact))) as client:
        answers = [client.get(path).text for path in ("/v1/model", "/readyz", "/metrics", "/openapi.json")]
        wrong = client.post("/v1/admin/reload", json={}, headers={"Authorization": f"Bearer {TOKEN}x"})
        right = client.post("/v1/admin/reload", json={}, headers={"Authorization": f"Bearer {TOKEN}"})
        answers += [wrong.text, right.text]
    assert wrong.status_code == 403 and right.status_code == 409  # authorised; fixed artifact: nothing to reload
    captured = capsys.readouterr()
    assert all(TOKEN not in text for text in [*answers, captured.out, captured.err])


def test_token_comparison_is_constant_time() -> None:
    """Timing a comparison in a test would flake; the code is checked instead: the token reaches
    hmac.compare_digest and is never compared with == / != (which stop at the first mismatch)."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(admin.require_admin)))
    calls = [ast.unparse(node.func) for node in ast.walk(tree) if isinstance(node, ast.Call)]
    assert "hmac.compare_digest" in calls
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare) and any(isinstance(op, ast.Eq | ast.NotEq) for op in node.ops):
            pytest.fail(f"equality comparison in require_admin: {ast.unparse(node)}")
