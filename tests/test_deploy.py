"""Deployment files, checked statically (no Docker engine on these machines): every file,
port, environment variable, CLI flag and probe path they reference exists in the project and
matches the service's settings; shutdown timings fit; pinned versions are consistent.

`Settings` ignores unknown JTM_ variables (pydantic-settings only forbids unknown *keyword*
arguments), so a misspelt variable in a manifest would silently do nothing: these tests are
what catches it."""

from __future__ import annotations

import os
import re
import tomllib

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


def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def service_deployment() -> dict:
    return next(d for d in of_kind("Deployment") if d["metadata"]["name"] == "jtm-service")


def cronjob_pod() -> dict:
    (cron,) = of_kind("CronJob")
    return cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]


def trainer_job_variables() -> set[str]:
    """The JTM_ variables deploy/trainer-job.sh reads."""
    return set(re.findall(r"\$\{?(JTM_[A-Z_]+)", (DEPLOY / "trainer-job.sh").read_text()))


def dockerfile_env(dockerfile: str) -> dict[str, str]:
    env = {}
    for line in re.findall(r"^ENV (.+)$", (DEPLOY / dockerfile).read_text(), flags=re.M):
        env |= dict(pair.split("=", 1) for pair in line.split())
    return env


def graceful_shutdown_s() -> float:
    """uvicorn's timeout_graceful_shutdown as service/cli.py passes it."""
    match = re.search(r'"timeout_graceful_shutdown":\s*(\d+(?:\.\d+)?)', (ROOT / "service" / "cli.py").read_text())
    assert match, "service/cli.py no longer sets timeout_graceful_shutdown"
    return float(match.group(1))


def seconds(value: str | int) -> float:
    """A compose duration ("15s", "1m30s") or a plain number of seconds."""
    if isinstance(value, int | float):
        return float(value)
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", value)
    assert parts and "".join(n + u for n, u in parts) == value, value
    return sum(float(n) * units[u] for n, u in parts)


def interpolate(value: str) -> str:
    """Compose's ${VAR:-default} with VAR unset."""
    return re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", str(value))


def settings_from_env(monkeypatch: pytest.MonkeyPatch, env: dict[str, str], **overrides) -> Settings:
    """Settings exactly as a container with this environment builds them."""
    for name in list(os.environ):
        if name.upper().startswith("JTM_"):
            monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, str(value))
    return Settings(**overrides)


# --------------------------------------------------------------------------- compose


def test_compose_services_and_references() -> None:
    services = compose()["services"]
    assert {"redis", "trainer", "service-1", "service-2", "proxy"} <= set(services)
    for name in ("service-1", "service-2"):
        svc = services[name]
        assert (ROOT / svc["build"]["dockerfile"]).is_file()
        assert set(svc["environment"]) <= SETTING_NAMES, set(svc["environment"]) - SETTING_NAMES
        assert svc["command"][:2] == ["--registry", "/registry"]
        probe = " ".join(svc["healthcheck"]["test"])
        path = re.search(r"127\.0\.0\.1:(\d+)(/\w+)", probe)
        assert path and int(path.group(1)) == Settings().port and path.group(2) in app_paths()
        assert path.group(2) == "/readyz"  # the proxy waits for replicas that serve a model
        assert svc["depends_on"]["trainer"]["condition"] == "service_completed_successfully"
    trainer = services["trainer"]
    assert (ROOT / trainer["build"]["dockerfile"]).is_file()
    assert trainer["entrypoint"] == ["jtm-trainer-job"]
    assert "COPY deploy/trainer-job.sh /usr/local/bin/jtm-trainer-job" in (DEPLOY / "trainer.Dockerfile").read_text()
    assert set(trainer["environment"]) <= trainer_job_variables(), set(trainer["environment"]) - trainer_job_variables()
    nginx = (DEPLOY / "nginx.conf").read_text()
    assert "service-1:8000" in nginx and "service-2:8000" in nginx
    assert (DEPLOY / "nginx.conf").name in services["proxy"]["volumes"][0]
    listen = re.search(r"listen (\d+);", nginx).group(1)
    assert any(str(port).endswith(f":{listen}") for port in services["proxy"]["ports"])


def test_compose_service_environment_builds_valid_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """The replicas' environment (image ENV + compose) parses, and binds where the probes look."""
    svc = compose()["services"]["service-1"]
    env = dockerfile_env("service.Dockerfile") | {k: interpolate(v) for k, v in svc["environment"].items()}
    settings = settings_from_env(monkeypatch, env, registry=svc["command"][1])
    assert settings.host == "0.0.0.0" and settings.redis_url == "redis://redis:6379/0"
    assert str(settings.port) in " ".join(svc["healthcheck"]["test"])
    assert str(settings.port) in (DEPLOY / "nginx.conf").read_text()
    # The admin API moves the registry pointer: with a token the registry must be writable.
    if settings.admin_token is not None:
        mount = next(v for v in svc["volumes"] if v.split(":")[1] == "/registry")
        assert not mount.endswith(":ro"), "admin rollback/A-B would fail on a read-only registry"


def test_compose_registry_is_shared_and_shutdown_fits() -> None:
    services = compose()["services"]
    trainer = services["trainer"]
    registry = trainer["environment"]["JTM_REGISTRY"]
    volume = next(v.split(":")[0] for v in trainer["volumes"] if v.split(":")[1] == registry)
    assert volume in compose()["volumes"]  # a named volume, not a host path
    for name in ("service-1", "service-2"):
        svc = services[name]
        assert f"{volume}:{svc['command'][1]}" in " ".join(svc["volumes"])
        # docker stop waits stop_grace_period before SIGKILL: uvicorn's drain must fit in it.
        assert seconds(svc["stop_grace_period"]) > graceful_shutdown_s()


# --------------------------------------------------------------------------- images


def test_trainer_job_uses_real_cli_options() -> None:
    from trainer.cli import build_parser

    script = (DEPLOY / "trainer-job.sh").read_text()
    subcommands = build_parser()._subparsers._group_actions[0].choices  # noqa: SLF001
    for command in ("synth", "train"):
        flags = {o for a in subcommands[command]._actions for o in a.option_strings}  # noqa: SLF001
        line = script.split(f"python -m trainer {command}", 1)[1].split("\n\n", 1)[0].split("fi\n", 1)[0]
        used = set(re.findall(r"(--[a-z][a-z-]+)", line))
        assert used and used <= flags, used - flags
    assert re.search(r"python -m trainer train .*--publish", script, flags=re.S)  # the job publishes
    assert os.access(DEPLOY / "trainer-job.sh", os.X_OK)  # COPY keeps the mode: the entrypoint must run


def test_service_cli_options_in_manifests_exist() -> None:
    from service.cli import build_parser

    flags = {o for a in build_parser()._actions for o in a.option_strings}  # noqa: SLF001
    args = [*compose()["services"]["service-1"]["command"], *service_deployment()["spec"]["template"]["spec"][
        "containers"][0]["args"]]
    used = {a for a in args if a.startswith("--")}
    assert used and used <= flags, used - flags


def _run_trainer_job(directory, env: dict[str, str]) -> tuple[int, list[list[str]]]:
    """Run deploy/trainer-job.sh with a stub `python` (in `directory`) that records its arguments."""
    import subprocess

    log = directory / "calls.txt"
    stub = directory / "bin" / "python"
    stub.parent.mkdir(parents=True)
    stub.write_text(f'#!/bin/sh\nfor a in "$@"; do printf "%s\\t" "$a"; done >> {log}\necho >> {log}\n')
    stub.chmod(0o755)
    result = subprocess.run(["sh", str(DEPLOY / "trainer-job.sh")], capture_output=True, text=True, timeout=30,
                            env={"PATH": f"{stub.parent}:/usr/bin:/bin", **env})
    calls = [line.rstrip("\t").split("\t") for line in log.read_text().splitlines()] if log.exists() else []
    return result.returncode, calls


def test_trainer_job_generates_the_default_data_and_publishes(tmp_path) -> None:
    code, calls = _run_trainer_job(tmp_path, {"JTM_REGISTRY": "/reg", "JTM_REDIS_URL": "redis://r:6379/0"})
    assert code == 0 and [c[:3] for c in calls] == [["-m", "trainer", "synth"], ["-m", "trainer", "train"]]
    synth, train = (dict(zip(c[3::2], c[4::2], strict=False)) for c in calls)
    assert train["--data"] == synth["--out"] and synth["--seed"] == "0"
    assert train["--publish"] == "/reg" and train["--redis-url"] == "redis://r:6379/0"
    assert train["--method"] == "jtm"
    _, calls = _run_trainer_job(tmp_path / "no-redis", {})
    assert "--redis-url" not in calls[-1] and calls[-1][calls[-1].index("--publish") + 1] == "/registry"


def test_trainer_job_refuses_a_missing_log(tmp_path) -> None:
    """With JTM_TRAIN_DATA set (the CronJob), a missing file fails instead of training on synthetic data."""
    code, calls = _run_trainer_job(tmp_path, {"JTM_TRAIN_DATA": str(tmp_path / "absent.parquet")})
    assert code == 2 and calls == []
    log = tmp_path / "log.parquet"
    log.write_bytes(b"")
    code, calls = _run_trainer_job(tmp_path / "second", {"JTM_TRAIN_DATA": str(log)})
    assert code == 0 and len(calls) == 1 and calls[0][calls[0].index("--data") + 1] == str(log)


@pytest.mark.parametrize("dockerfile", ["service.Dockerfile", "trainer.Dockerfile"])
def test_dockerfiles(dockerfile: str) -> None:
    text = (DEPLOY / dockerfile).read_text()
    for sources in re.findall(r"^COPY (?!--from)(.+)$", text, flags=re.M):
        for source in sources.split()[:-1]:  # the last word is the destination
            assert (ROOT / source).exists(), source
    assert re.search(r"^USER 10001", text, flags=re.M)  # non-root
    assert text.count("FROM ") >= 2  # multi-stage
    assert "constraints-serve.txt" in text  # pinned versions
    entrypoint = yaml.safe_load(re.search(r"^ENTRYPOINT (.+)$", text, flags=re.M).group(1))
    assert entrypoint[:2] == ["python", "-m"] and (ROOT / entrypoint[2] / "__main__.py").is_file()
    if dockerfile == "service.Dockerfile":
        assert not re.search(r"pip install[^\n]*torch", text) and "HEALTHCHECK" in text and "/healthz" in text
        assert not re.search(r"^COPY trainer", text, flags=re.M)  # the service image has no trainer
        env = dockerfile_env(dockerfile)
        assert set(env) - {"PYTHONUNBUFFERED"} <= SETTING_NAMES
        assert re.search(rf"^EXPOSE {env['JTM_PORT']}$", text, flags=re.M)
        assert f"127.0.0.1:{env['JTM_PORT']}/healthz" in text and env["JTM_HOST"] == "0.0.0.0"
    else:
        assert "constraints-train.txt" in text
        assert re.search(r'"torch==[\d.]+"[^\n]*download\.pytorch\.org/whl/cpu', text)  # never the CUDA wheel


def test_build_context_excludes_data_and_environments() -> None:
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")}
    assert {".venv", ".git", "data", "runs", "artifacts", "registry"} <= ignored
    assert {"**/*.parquet", "**/*.csv.gz", "**/*.npz"} <= ignored


# --------------------------------------------------------------------------- pinned versions


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", re.split(r"[<>=!~;\[ ]", name.strip())[0]).lower()


def _pins(filename: str) -> dict[str, str]:
    pins = {}
    for line in (DEPLOY / filename).read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            name, version = line.split("==")
            pins[_normalise(name)] = version.strip()
    return pins


def _project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


@pytest.mark.parametrize(("extra", "files"), [("serve", ["constraints-serve.txt"]),
                                               ("train", ["constraints-serve.txt", "constraints-train.txt"])])
def test_constraints_pin_the_whole_closure(extra: str, files: list[str]) -> None:
    """Every package `pip install -c ... ".[extra]"` installs is pinned, each pin satisfies every
    requirement on it, and no package is pinned twice with different versions."""
    from importlib.metadata import PackageNotFoundError, distribution

    from packaging.requirements import Requirement
    from packaging.version import Version

    pins: dict[str, str] = {}
    for filename in files:
        for name, version in _pins(filename).items():
            assert pins.setdefault(name, version) == version, f"{name} pinned twice"
    project = _project()
    pending = [Requirement(r) for r in project["dependencies"] + project["optional-dependencies"][extra]]
    seen: set[tuple[str, frozenset]] = set()
    while pending:
        requirement = pending.pop()
        name = _normalise(requirement.name)
        assert name in pins, f"{name} (needed by the {extra} extra) is not pinned in {files}"
        assert requirement.specifier.contains(Version(pins[name]), prereleases=True), (
            f"{name}=={pins[name]} does not satisfy {requirement}")
        key = (name, frozenset(requirement.extras))
        if key in seen:
            continue
        seen.add(key)
        try:
            installed = distribution(requirement.name)
        except PackageNotFoundError:
            pytest.skip(f"{name} is not installed here: its dependencies cannot be read")
        if Version(installed.version).public != Version(pins[name]).public:
            continue  # this environment has another version: its requirements may differ
        for raw in installed.requires or []:
            dependency = Requirement(raw)
            environments = [{"extra": e} for e in requirement.extras] or [{"extra": ""}]
            if dependency.marker is None or any(dependency.marker.evaluate(e) for e in environments):
                pending.append(dependency)


# --------------------------------------------------------------------------- kubernetes


def test_kustomization_lists_existing_files() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    listed = set(kustomization["resources"])
    assert listed == {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}


def test_deployment_probes_ports_and_settings() -> None:
    deployment = service_deployment()
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    port = next(p for p in container["ports"] if p["name"] == "http")["containerPort"]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert int(env["JTM_PORT"]) == port
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["path"] in app_paths()
        assert container[probe]["httpGet"]["port"] in ("http", port)
    assert container["startupProbe"]["httpGet"]["path"] == "/readyz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["resources"]["requests"]["cpu"] and container["resources"]["requests"]["memory"]
    configmap = next(d for d in of_kind("ConfigMap") if d["metadata"]["name"] == "jtm-service")
    secret = next(d for d in of_kind("Secret") if d["metadata"]["name"] == "jtm-admin")
    names = {ref.get("configMapRef", ref.get("secretRef"))["name"] for ref in container["envFrom"]}
    assert names == {"jtm-service", "jtm-admin"}
    assert set(configmap["data"]) | set(secret["stringData"]) | set(env) <= SETTING_NAMES
    claims = {v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"] if "persistentVolumeClaim" in v}
    assert claims <= {d["metadata"]["name"] for d in of_kind("PersistentVolumeClaim")}
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/path"] in app_paths() and int(annotations["prometheus.io/port"]) == port


def test_deployment_environment_builds_valid_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """The pod's environment (image ENV + ConfigMap + Secret + env) parses into Settings, and the
    registry it follows is the mounted volume, writable for the admin API."""
    pod = service_deployment()["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    configmap = next(d for d in of_kind("ConfigMap") if d["metadata"]["name"] == "jtm-service")
    secret = next(d for d in of_kind("Secret") if d["metadata"]["name"] == "jtm-admin")
    env = (dockerfile_env("service.Dockerfile") | configmap["data"] | secret["stringData"]
           | {e["name"]: e["value"] for e in container["env"]})
    args = dict(zip(container["args"][::2], container["args"][1::2], strict=True))
    settings = settings_from_env(monkeypatch, env, registry=args["--registry"])
    assert str(settings.registry) == configmap["data"]["JTM_REGISTRY"] == args["--registry"]
    mount = next(m for m in container["volumeMounts"] if m["mountPath"] == str(settings.registry))
    if settings.admin_token is not None:
        assert not mount.get("readOnly"), "admin rollback/A-B would fail on a read-only registry"
    redis_host = settings.redis_url.split("//")[1].split(":")[0]
    assert redis_host in {d["metadata"]["name"] for d in of_kind("Service")}


def test_graceful_shutdown_fits_the_grace_period() -> None:
    """preStop sleep + uvicorn's drain of in-flight requests must end before SIGKILL."""
    pod = service_deployment()["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    command = " ".join(container["lifecycle"]["preStop"]["exec"]["command"])
    sleep = float(re.search(r"sleep\(?\s*(\d+(?:\.\d+)?)", command).group(1))
    assert 0 < sleep and sleep + graceful_shutdown_s() + 5 <= pod["terminationGracePeriodSeconds"]
    # A rollout never goes below capacity while old pods drain.
    assert service_deployment()["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


def test_no_injected_variables_in_the_settings_namespace() -> None:
    """Kubernetes injects <SERVICE>_PORT, <SERVICE>_SERVICE_HOST, ... for every Service: with
    Services named jtm-*, those land in the JTM_ namespace. Pods turn service links off, and no
    Service name may ever produce a real setting's name."""
    for pod in (service_deployment()["spec"]["template"]["spec"], cronjob_pod()):
        assert pod.get("enableServiceLinks") is False
    for service in of_kind("Service"):
        prefix = service["metadata"]["name"].upper().replace("-", "_")
        injected = {f"{prefix}_SERVICE_HOST", f"{prefix}_SERVICE_PORT", f"{prefix}_PORT"}
        for port in service["spec"]["ports"]:
            injected |= {f"{prefix}_SERVICE_PORT_{port['name'].upper()}", f"{prefix}_PORT_{port['port']}_TCP"}
        assert not injected & SETTING_NAMES, injected & SETTING_NAMES


def test_service_hpa_and_cronjob_point_at_real_things() -> None:
    deployment = service_deployment()
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    service = next(d for d in of_kind("Service") if d["metadata"]["name"] == "jtm-service")
    assert service["spec"]["selector"].items() <= labels.items()
    port_names = {p["name"] for p in deployment["spec"]["template"]["spec"]["containers"][0]["ports"]}
    assert {p["targetPort"] for p in service["spec"]["ports"]} <= port_names
    (hpa,) = of_kind("HorizontalPodAutoscaler")
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    assert hpa["spec"]["minReplicas"] >= 2 and hpa["spec"]["maxReplicas"] >= hpa["spec"]["minReplicas"]
    # CPU-utilisation scaling needs CPU requests on every container it measures.
    assert all(c["resources"]["requests"].get("cpu") for c in deployment["spec"]["template"]["spec"]["containers"])

    pod = cronjob_pod()
    (container,) = pod["containers"]
    assert container["command"] == ["jtm-trainer-job"]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert set(env) <= trainer_job_variables(), set(env) - trainer_job_variables()
    redis_host = env["JTM_REDIS_URL"].split("//")[1].split(":")[0]
    assert redis_host in {d["metadata"]["name"] for d in of_kind("Service")}
    # The job publishes into the same claim the replicas follow, at the path JTM_REGISTRY names.
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    registry_claim = volumes[mounts[env["JTM_REGISTRY"]]]["persistentVolumeClaim"]["claimName"]
    service_pod = deployment["spec"]["template"]["spec"]
    service_claims = {v["persistentVolumeClaim"]["claimName"] for v in service_pod["volumes"]
                      if "persistentVolumeClaim" in v}
    assert registry_claim in service_claims
    assert not next(m for m in container["volumeMounts"] if m["mountPath"] == env["JTM_REGISTRY"]).get("readOnly")
    assert os.path.dirname(env["JTM_TRAIN_DATA"]) in mounts  # the log comes from a mounted volume


# --------------------------------------------------------------------------- docs


def test_scaling_doc_names_only_real_knobs_and_files() -> None:
    """docs/SCALING.md: every CLI flag, JTM_ setting and repository path it names exists."""
    from service.cli import build_parser as service_parser
    from trainer.cli import build_parser as trainer_parser

    text = (ROOT / "docs" / "SCALING.md").read_text()
    subcommands = trainer_parser()._subparsers._group_actions[0].choices  # noqa: SLF001
    flags = {o for p in [*subcommands.values(), service_parser()] for a in p._actions  # noqa: SLF001
             for o in a.option_strings} | {"--nproc_per_node", "--nnodes"}  # torchrun's
    # the benchmarks the doc runs (`python -m bench.NAME`) or points to (`bench/NAME.py`)
    for name in set(re.findall(r"-m bench\.(\w+)", text)) | set(re.findall(r"\bbench/(\w+)\.py\b", text)):
        script = (ROOT / "bench" / f"{name}.py").read_text()
        flags |= set(re.findall(r"add_argument\(\s*\"(--[a-z][a-z_-]+)\"", script))
    named_flags = set(re.findall(r"(?<![\w-])(--[a-z][a-z_-]+)", text))
    assert named_flags and named_flags <= flags, named_flags - flags
    named_settings = set(re.findall(r"\bJTM_[A-Z_]+\b", text))
    assert named_settings and named_settings <= SETTING_NAMES, named_settings - SETTING_NAMES
    for path in re.findall(r"`((?:deploy|docs|bench|trainer|service|tests)/[\w./-]+)`", text):
        assert (ROOT / path).exists(), path
