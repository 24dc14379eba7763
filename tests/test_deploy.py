"""Deployment files, checked statically (no Docker engine on these machines): every file,
port, environment variable and probe path they reference exists in the project and matches
the service's settings."""

from __future__ import annotations

import re

import pytest
import yaml

from service.config import Settings
from tests.conftest import ROOT

DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
SETTING_NAMES = {f"JTM_{name.upper()}" for name in Settings.model_fields}
APP_PATHS = None


def app_paths() -> set[str]:
    global APP_PATHS
    if APP_PATHS is None:
        from service.main import create_app

        APP_PATHS = set(create_app(Settings()).openapi()["paths"])
    return APP_PATHS


def k8s_documents() -> list[dict]:
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        docs += [d | {"__file": path.name} for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def of_kind(kind: str) -> list[dict]:
    return [d for d in k8s_documents() if d.get("kind") == kind]


def test_compose_services_and_references() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"redis", "trainer", "service-1", "service-2", "proxy"} <= set(services)
    for name in ("service-1", "service-2"):
        svc = services[name]
        assert (ROOT / svc["build"]["dockerfile"]).is_file()
        assert set(svc["environment"]) <= SETTING_NAMES, set(svc["environment"]) - SETTING_NAMES
        assert svc["command"][:2] == ["--registry", "/registry"]
        probe = " ".join(svc["healthcheck"]["test"])
        path = re.search(r"127\.0\.0\.1:(\d+)(/\w+)", probe)
        assert path and int(path.group(1)) == Settings().port and path.group(2) in app_paths()
    trainer = services["trainer"]
    assert (ROOT / trainer["build"]["dockerfile"]).is_file()
    assert trainer["entrypoint"] == ["jtm-trainer-job"]
    assert "COPY deploy/trainer-job.sh /usr/local/bin/jtm-trainer-job" in (DEPLOY / "trainer.Dockerfile").read_text()
    assert set(trainer["environment"]) <= SETTING_NAMES | {"JTM_METHOD", "JTM_TRAIN_DATA"}
    nginx = (DEPLOY / "nginx.conf").read_text()
    assert "service-1:8000" in nginx and "service-2:8000" in nginx
    assert (DEPLOY / "nginx.conf").name in services["proxy"]["volumes"][0]


def test_trainer_job_uses_real_cli_options() -> None:
    from trainer.cli import build_parser

    script = (DEPLOY / "trainer-job.sh").read_text()
    subcommands = build_parser()._subparsers._group_actions[0].choices  # noqa: SLF001
    for command in ("synth", "train"):
        flags = {o for a in subcommands[command]._actions for o in a.option_strings}  # noqa: SLF001
        line = script.split(f"python -m trainer {command}", 1)[1].split("\n\n", 1)[0].split("fi\n", 1)[0]
        used = set(re.findall(r"(--[a-z][a-z-]+)", line))
        assert used and used <= flags, used - flags


@pytest.mark.parametrize("dockerfile", ["service.Dockerfile", "trainer.Dockerfile"])
def test_dockerfiles(dockerfile: str) -> None:
    text = (DEPLOY / dockerfile).read_text()
    for source in re.findall(r"^COPY (?!--from)(\S+)", text, flags=re.M):
        assert (ROOT / source).exists(), source
    assert re.search(r"^USER 10001", text, flags=re.M)  # non-root
    assert text.count("FROM ") >= 2  # multi-stage
    assert "constraints-serve.txt" in text  # pinned versions
    if dockerfile == "service.Dockerfile":
        assert not re.search(r"pip install[^\n]*torch", text) and "HEALTHCHECK" in text and "/healthz" in text


def test_constraints_pin_every_serve_dependency() -> None:
    import tomllib

    def normalise(name: str) -> str:
        return re.split(r"[<>=\[ ]", name.strip())[0].lower().replace("_", "-")

    pinned = {normalise(line) for line in (DEPLOY / "constraints-serve.txt").read_text().splitlines()
              if "==" in line and not line.startswith("#")}
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = {normalise(req) for req in project["optional-dependencies"]["serve"] + project["dependencies"]}
    assert wanted <= pinned, wanted - pinned


def test_kustomization_lists_existing_files() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    listed = set(kustomization["resources"])
    assert listed == {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}


def test_deployment_probes_ports_and_settings() -> None:
    deployment = next(d for d in of_kind("Deployment") if d["metadata"]["name"] == "jtm-service")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    port = next(p for p in container["ports"] if p["name"] == "http")["containerPort"]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert int(env["JTM_PORT"]) == port
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["path"] in app_paths()
        assert container[probe]["httpGet"]["port"] in ("http", port)
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["lifecycle"]["preStop"] and pod["terminationGracePeriodSeconds"] >= 15
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["resources"]["requests"]["cpu"]
    configmap = next(d for d in of_kind("ConfigMap") if d["metadata"]["name"] == "jtm-service")
    secret = next(d for d in of_kind("Secret") if d["metadata"]["name"] == "jtm-admin")
    names = {ref.get("configMapRef", ref.get("secretRef"))["name"] for ref in container["envFrom"]}
    assert names == {"jtm-service", "jtm-admin"}
    assert set(configmap["data"]) | set(secret["stringData"]) | set(env) <= SETTING_NAMES
    Settings(**{k[4:].lower(): v for k, v in configmap["data"].items() if k != "JTM_REGISTRY"})  # values parse
    claims = {v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"] if "persistentVolumeClaim" in v}
    assert claims <= {d["metadata"]["name"] for d in of_kind("PersistentVolumeClaim")}


def test_service_hpa_and_cronjob_point_at_real_things() -> None:
    deployment = next(d for d in of_kind("Deployment") if d["metadata"]["name"] == "jtm-service")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    service = next(d for d in of_kind("Service") if d["metadata"]["name"] == "jtm-service")
    assert service["spec"]["selector"].items() <= labels.items()
    (hpa,) = of_kind("HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"]["name"] == "jtm-service" and hpa["spec"]["minReplicas"] >= 2
    (cron,) = of_kind("CronJob")
    container = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["jtm-trainer-job"]
    redis_host = next(e["value"] for e in container["env"] if e["name"] == "JTM_REDIS_URL").split("//")[1].split(":")[0]
    assert redis_host in {d["metadata"]["name"] for d in of_kind("Service")}
