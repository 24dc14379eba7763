"""docs/OPERATIONS.md names only what exists: every JTM_ setting, Prometheus metric, rejection
reason and log message it quotes is checked against the code, and every setting is documented."""

from __future__ import annotations

import re

from service.config import Settings
from service.telemetry import Metrics
from tests.conftest import ROOT

DOC = (ROOT / "docs" / "OPERATIONS.md").read_text()
SERVICE_SOURCE = "\n".join(p.read_text() for p in (ROOT / "service").rglob("*.py"))


def test_every_setting_named_exists_and_every_setting_is_documented() -> None:
    settings = {f"JTM_{name.upper()}" for name in Settings.model_fields}
    named = set(re.findall(r"\bJTM_[A-Z_]+[A-Z]\b", DOC))
    assert named <= settings, named - settings
    assert settings <= named, settings - named


def test_every_metric_named_exists() -> None:
    from trainer.online.ingest import IngestMetrics
    from trainer.online.refresh import RefreshMetrics

    registries = (Metrics().registry, IngestMetrics().registry, RefreshMetrics().registry)
    families = {family.name for registry in registries for family in registry.collect()}
    exposed = families | {f"{name}_total" for name in families}
    named = set(re.findall(r"\bjtm_[a-z_]+[a-z]\b", DOC))
    assert named and named <= exposed, named - exposed


def test_every_reason_and_log_message_quoted_exists() -> None:
    for reason in re.findall(r'reason="(\w+)"', DOC):
        assert f'"{reason}"' in SERVICE_SOURCE, reason
    for message in ("failed to load", "unexpected error loading", "unhandled error", "no model loaded yet",
                    "registry channel unavailable", "requests in progress", "waited", "scorer rows already queued",
                    "behaviour store unavailable; no event of this call was stored, retry", "did not load",
                    "is not serving", "now serving", "is a symbolic link", "is not a file listed in 'files'"):
        assert message in " ".join(DOC.split()) and message in SERVICE_SOURCE, message
