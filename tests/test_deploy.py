"""Deployment files, checked without a Docker engine or a cluster (these machines have neither):
every file, port, environment variable, CLI flag and probe path they reference exists in the
project and matches the service's settings; every command line is accepted by the program's own
parser; the learning loop's processes share the volumes they need; Prometheus scrapes what
exports metrics and the dashboard queries only metrics that exist; shutdown timings fit; pinned
versions are consistent. Commands that can run here are run: the compose ingest and refresher
commands (local Redis, paths mapped), the trainer job and `make demo` (stub `python`).

`Settings` ignores unknown JTM_ variables (pydantic-settings only forbids unknown *keyword*
arguments), so a misspelt variable in a manifest would silently do nothing: these tests are
what catches it."""

from __future__ import annotations

import json
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


def cronjob_pod(name: str = "jtm-trainer") -> dict:
    cron = next(d for d in of_kind("CronJob") if d["metadata"]["name"] == name)
    return cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]


def ingest_deployment() -> dict:
    return next(d for d in of_kind("Deployment") if d["metadata"]["name"] == "jtm-ingest")


def project_pods() -> list[dict]:
    """The pod templates (Deployments and CronJobs) that run the project's images."""
    pods = [d["spec"]["template"]["spec"] for d in of_kind("Deployment")]
    pods += [d["spec"]["jobTemplate"]["spec"]["template"]["spec"] for d in of_kind("CronJob")]
    return [p for p in pods if any(c["image"].startswith(("jtm-service:", "jtm-trainer:")) for c in p["containers"])]


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


def trainer_command(argv: list[str]) -> dict[str, object]:
    """`python -m trainer ARGV` parsed by the trainer's own parser (an unknown option, a missing
    required one or a bad value fails here as it would in the container); the options given."""
    from trainer.cli import build_parser

    parser = build_parser(argv[0])
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        pytest.fail(f"python -m trainer {' '.join(argv)}: rejected by the trainer's parser ({exc})")
    given = {word for word in argv if word.startswith("--")}
    return {name: value for name, value in vars(args).items() if f"--{name.replace('_', '-')}" in given}


def volume_mounts(service: dict) -> dict[str, tuple[str, bool]]:
    """A compose service's mounts: container path -> (source, read-only)."""
    mounts = {}
    for spec in service.get("volumes", []):
        source, target, *mode = spec.split(":")
        mounts[target] = (source, mode == ["ro"])
    return mounts


def replica_settings(monkeypatch: pytest.MonkeyPatch) -> Settings:
    svc = compose()["services"]["service-1"]
    env = dockerfile_env("service.Dockerfile") | {k: interpolate(v) for k, v in svc["environment"].items()}
    return settings_from_env(monkeypatch, env, registry=svc["command"][1])


def exposed_metrics() -> set[str]:
    """Every series name the service, ingest and the refresher expose (a Counter `x` as
    x_total, a Histogram as x_bucket, x_sum, x_count)."""
    from service.telemetry import Metrics
    from trainer.online.ingest import IngestMetrics
    from trainer.online.refresh import RefreshMetrics

    suffixes = {"counter": ("_total", "_created"), "gauge": ("",), "info": ("_info",),
                "histogram": ("_bucket", "_sum", "_count", "_created"), "summary": ("", "_sum", "_count", "_created")}
    return {family.name + suffix for registry in (Metrics().registry, IngestMetrics().registry,
                                                   RefreshMetrics().registry)
            for family in registry.collect() for suffix in suffixes[family.type]}


PROMQL_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless",
                   "offset"}


def promql_metrics(expr: str) -> set[str]:
    """The metric names a PromQL expression reads: identifiers outside strings, label matchers,
    ranges and grouping clauses that are neither functions nor keywords."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    expr = re.sub(r"\{[^}]*\}", "", expr)
    expr = re.sub(r"\[[^\]]*\]", "", expr)
    expr = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    names = set()
    for match in re.finditer(r"(?<![\w.$])[A-Za-z_:][\w:]*", expr):
        if match.group() not in PROMQL_KEYWORDS and not expr[match.end():].lstrip().startswith("("):
            names.add(match.group())
    return names


# --------------------------------------------------------------------------- compose


def test_compose_services_and_references() -> None:
    services = compose()["services"]
    assert {"redis", "trainer", "service-1", "service-2", "proxy", "ingest", "refresher", "prometheus",
            "grafana"} <= set(services)
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


def test_compose_runs_the_learning_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    """ingest and the refresher run the trainer image with commands its parser accepts, on the
    replicas' Redis and Stream, sharing the log volume (ingest writes it) and the registry volume
    the replicas follow (the refresher publishes into it); the interval comes from the environment."""
    services = compose()["services"]
    settings = replica_settings(monkeypatch)
    for name in ("ingest", "refresher"):
        assert services[name]["build"] == services["trainer"]["build"], name  # the trainer image
        assert "entrypoint" not in services[name]  # python -m trainer (the image's ENTRYPOINT)
        assert services[name]["restart"] == "unless-stopped" and services[name]["init"] is True
        assert services[name]["depends_on"]["redis"]["condition"] == "service_healthy"
    ingest = trainer_command([interpolate(w) for w in services["ingest"]["command"]])
    refresh = trainer_command([interpolate(w) for w in services["refresher"]["command"]])
    assert services["ingest"]["command"][0] == "ingest" and services["refresher"]["command"][0] == "refresh"

    assert ingest["redis_url"] == refresh["redis_url"] == settings.redis_url
    assert ingest["redis_prefix"] == settings.redis_prefix  # the Stream the replicas append to
    assert settings.event_log_max > 0  # the replicas do log their events
    assert "once" not in ingest and ingest["metrics_port"]  # a daemon, scraped

    ingest_mounts, refresh_mounts = volume_mounts(services["ingest"]), volume_mounts(services["refresher"])
    log_volume, read_only = ingest_mounts[ingest["log"]]
    assert log_volume in compose()["volumes"] and not read_only
    assert refresh_mounts[refresh["log"]][0] == log_volume  # the refresher reads what ingest writes
    registry_volume, read_only = refresh_mounts[refresh["registry"]]
    assert not read_only  # it publishes
    replica_mounts = volume_mounts(services["service-1"])
    assert replica_mounts[str(settings.registry)][0] == registry_volume
    assert volume_mounts(services["trainer"])[services["trainer"]["environment"]["JTM_REGISTRY"]][0] == registry_volume
    # A first version is published before the first refresh (and before the replicas start).
    assert services["refresher"]["depends_on"]["trainer"]["condition"] == "service_completed_successfully"

    command = " ".join(services["refresher"]["command"])
    interval = re.search(r"--interval \$\{(JTM_REFRESH_INTERVAL_S):-(\d+)\}", command)
    assert interval and float(interval.group(2)) == refresh["interval"] > 0
    for name, port in (("ingest", ingest["metrics_port"]), ("refresher", refresh["metrics_port"])):
        assert f"127.0.0.1:{port}/metrics" in " ".join(services[name]["healthcheck"]["test"])


def test_compose_named_volumes_are_owned_by_the_containers_user() -> None:
    """A named volume starts as a copy of its mount point in the image, owner included: every
    path the trainer image's services mount a named volume on is created and chowned to 10001."""
    services = compose()["services"]
    dockerfile = (DEPLOY / "trainer.Dockerfile").read_text()
    chowned = set(re.search(r"^RUN mkdir -p [^&]+&& chown 10001 (.+)$", dockerfile, flags=re.M).group(1).split())
    for name, svc in services.items():
        if svc.get("build", {}).get("dockerfile") != "deploy/trainer.Dockerfile":
            continue
        for target, (source, _) in volume_mounts(svc).items():
            if source in compose()["volumes"]:
                assert target in chowned, (name, target)


def test_compose_variables_are_documented() -> None:
    """Every ${VAR} the compose file reads from the environment is explained in deploy/README.md."""
    text = (ROOT / "docker-compose.yml").read_text()
    readme = (DEPLOY / "README.md").read_text()
    variables = set(re.findall(r"\$\{([A-Z_]+)", text))
    assert {"JTM_REFRESH_INTERVAL_S", "JTM_ADMIN_TOKEN"} <= variables
    for variable in variables:
        assert f"`{variable}`" in readme, variable


def test_images_are_pinned() -> None:
    """Third-party images name an exact version (x.y.z), never a moving tag."""
    images = [svc["image"] for svc in compose()["services"].values() if "image" in svc]
    images += [c["image"] for d in of_kind("Deployment") for c in d["spec"]["template"]["spec"]["containers"]]
    for image in images:
        if image.startswith(("jtm-service:", "jtm-trainer:")):
            continue  # built from this repository
        assert re.fullmatch(r"[\w./-]+:v?\d+\.\d+\.\d+(-[a-z]+)?", image), image


def _with_values(words: list[str], values: dict[str, str]) -> list[str]:
    """`words` with the value after each option of `values` replaced (each option must be there)."""
    words = list(words)
    for option, value in values.items():
        words[words.index(option) + 1] = value
    return words


def _scrape(port: int) -> dict[str, float]:
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return samples


def _wait_for(port: int, series: str, value: float, process, timeout_s: float = 30.0) -> dict[str, float]:
    import time

    deadline = time.monotonic() + timeout_s
    samples: dict[str, float] = {}
    while time.monotonic() < deadline:
        assert process.poll() is None, f"exited with {process.returncode}"
        try:
            samples = _scrape(port)
        except OSError:
            samples = {}
        if samples.get(series) == value:
            return samples
        time.sleep(0.2)
    pytest.fail(f"{series} never reached {value}: {samples}")


def test_compose_ingest_command_runs(tmp_path, redis_prefix: str) -> None:
    """The compose ingest command itself (Redis, prefix, log directory and metrics port mapped to
    this machine): it logs what the service's store appended to the Stream, exports it on the
    metrics port Prometheus scrapes, and stops on SIGTERM within compose's default grace period."""
    import signal
    import subprocess
    import sys

    from service.behavior_store import RedisStore, StoredEvent
    from tests.helpers import free_port, redis_url
    from trainer.online.event_log import Segments

    store = RedisStore(redis_url(), capacity=10, prefix=redis_prefix)
    assert store.append([StoredEvent("u1", "i1", "e1"), StoredEvent("u1", "i2", "e2")]) == 2
    store.close()
    port = free_port()
    words = _with_values([interpolate(w) for w in compose()["services"]["ingest"]["command"]],
                         {"--redis-url": redis_url(), "--redis-prefix": redis_prefix, "--log": str(tmp_path / "log"),
                          "--metrics-port": str(port)})
    with open(tmp_path / "ingest.out", "w") as out:
        process = subprocess.Popen([sys.executable, "-m", "trainer", *words], cwd=ROOT, stdout=out,
                                   stderr=subprocess.STDOUT)
    try:
        samples = _wait_for(port, "jtm_ingest_events_total", 2.0, process)
        assert samples["jtm_ingest_lag_events"] == 0.0 and samples["jtm_ingest_segments_total"] >= 1
        assert Segments(tmp_path / "log").load_state().events == 2
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0, (tmp_path / "ingest.out").read_text()
    finally:
        process.kill()
        process.wait()


def test_compose_refresher_command_runs_and_survives_a_failed_refresh(tmp_path) -> None:
    """The compose refresher command itself, on a registry that serves nothing yet: the refresh
    fails, the failure is counted on the metrics port, and the loop goes on."""
    import subprocess
    import sys

    from tests.helpers import free_port, redis_url

    port = free_port()
    words = _with_values([interpolate(w) for w in compose()["services"]["refresher"]["command"]],
                         {"--registry": str(tmp_path / "registry"), "--log": str(tmp_path / "log"),
                          "--redis-url": redis_url(), "--metrics-port": str(port)})
    with open(tmp_path / "refresh.out", "w") as out:
        process = subprocess.Popen([sys.executable, "-m", "trainer", *words], cwd=ROOT, stdout=out,
                                   stderr=subprocess.STDOUT)
    try:
        samples = _wait_for(port, 'jtm_refresh_runs_total{decision="error"}', 1.0, process)
        assert samples["jtm_refresh_last_run_timestamp_seconds"] > 0
        assert process.poll() is None  # still looping: the next attempt comes after --interval
        assert "serves nothing yet" in (tmp_path / "refresh.out").read_text()
    finally:
        process.terminate()
        process.wait(timeout=10)


# --------------------------------------------------------------------------- observability


def test_prometheus_scrapes_every_process_that_exports_metrics(monkeypatch: pytest.MonkeyPatch) -> None:
    services = compose()["services"]
    prometheus = services["prometheus"]
    config_path = next(a.split("=", 1)[1] for a in prometheus["command"] if a.startswith("--config.file="))
    mounts = volume_mounts(prometheus)
    assert mounts[config_path] == ("./deploy/prometheus.yml", True)
    config = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    scraped = {}
    for job in config["scrape_configs"]:
        for group in job["static_configs"]:
            for target in group["targets"]:
                host, port = target.split(":")
                scraped[host] = (int(port), job.get("metrics_path", "/metrics"))
    settings = replica_settings(monkeypatch)
    expected = {name: (settings.port, "/metrics") for name in ("service-1", "service-2")}
    assert "/metrics" in app_paths()
    for name in ("ingest", "refresher"):
        expected[name] = (trainer_command([interpolate(w) for w in services[name]["command"]])["metrics_port"],
                          "/metrics")
    assert scraped == expected  # every target is a compose service on the port it serves metrics on


def test_grafana_provisions_the_datasource_and_the_dashboard() -> None:
    services = compose()["services"]
    grafana = services["grafana"]
    mounts = volume_mounts(grafana)
    provisioning = DEPLOY / "grafana" / "provisioning"
    assert mounts["/etc/grafana/provisioning"] == ("./deploy/grafana/provisioning", True)
    (datasource,) = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())["datasources"]
    host, port = re.fullmatch(r"http://([\w-]+):(\d+)", datasource["url"]).groups()
    assert host in services and "--web.listen-address" not in " ".join(services[host]["command"])
    assert int(port) == 9090 and any(p.endswith(":9090") for p in services[host]["ports"])  # Prometheus' default
    (provider,) = yaml.safe_load((provisioning / "dashboards" / "jtm.yml").read_text())["providers"]
    source = next(s for t, (s, _) in mounts.items() if t == provider["options"]["path"])
    dashboards = sorted((ROOT / source).glob("*.json"))
    assert dashboards
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert (ROOT / source / os.path.relpath(home, provider["options"]["path"])).is_file()
    for path in dashboards:
        dashboard = json.loads(path.read_text())
        assert dashboard["uid"] and dashboard["title"]
        for panel in dashboard["panels"]:
            if panel["type"] != "row":
                assert panel["datasource"]["uid"] == datasource["uid"], panel["title"]
                assert panel["targets"], panel["title"]


def test_dashboard_queries_read_metrics_that_exist() -> None:
    assert promql_metrics('histogram_quantile(0.99, sum by (le) (rate(a_bucket{route="/x"}[$__rate_interval])))'
                          ' / on (job) b + time() - max(c) offset 5m') == {"a_bucket", "b", "c"}
    exposed = exposed_metrics() | {"up"}  # `up`: Prometheus' own, per target
    used = set()
    for path in (DEPLOY / "grafana" / "dashboards").glob("*.json"):
        for panel in json.loads(path.read_text())["panels"]:
            for target in panel.get("targets", []):
                names = promql_metrics(target["expr"])
                assert names and names <= exposed, (panel["title"], names - exposed)
                used |= names
    # What the dashboard is for: traffic, latency, fallbacks, rejections, the served version, the
    # ingest lag and throughput, refresh decisions and held-out recall.
    assert {"jtm_http_request_seconds_count", "jtm_http_request_seconds_bucket", "jtm_fallback_total",
            "jtm_rejected_total", "jtm_model_info", "jtm_ingest_lag_events", "jtm_ingest_events_total",
            "jtm_refresh_runs_total", "jtm_refresh_heldout_recall"} <= used


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
    for pod in project_pods():
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


def _container_args(container: dict) -> list[str]:
    """The container's args with $(VAR) expanded from its env (values and ConfigMap keys), as the
    kubelet does; a reference to a variable the container does not define fails here (Kubernetes
    would pass it on literally)."""
    env = {}
    for variable in container.get("env", []):
        if "value" in variable:
            env[variable["name"]] = variable["value"]
        else:
            ref = variable["valueFrom"]["configMapKeyRef"]
            configmap = next(d for d in of_kind("ConfigMap") if d["metadata"]["name"] == ref["name"])
            env[variable["name"]] = configmap["data"][ref["key"]]
    return [re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], arg) for arg in container["args"]]


def _claim(pod: dict, container: dict, path: str) -> tuple[str, bool]:
    """(claim name, read-only) of the volume `container` mounts at `path`."""
    mount = next(m for m in container["volumeMounts"] if m["mountPath"] == path)
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    return volume["persistentVolumeClaim"]["claimName"], bool(mount.get("readOnly"))


def test_k8s_learning_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    """jtm-ingest (Deployment) and jtm-refresh (CronJob): the trainer image, commands the
    trainer's parser accepts, the service's Redis and Stream (from its ConfigMap), the log on a
    claim that both mount (ingest writing), the registry claim the replicas follow."""
    configmap = next(d for d in of_kind("ConfigMap") if d["metadata"]["name"] == "jtm-service")
    settings = settings_from_env(monkeypatch, dockerfile_env("service.Dockerfile") | configmap["data"])
    claims = {d["metadata"]["name"]: d for d in of_kind("PersistentVolumeClaim")}
    trainer_image = cronjob_pod()["containers"][0]["image"]

    deployment = ingest_deployment()
    # The Stream's only consumer and the log's only writer: one pod, never two during a rollout.
    assert deployment["spec"]["replicas"] == 1 and deployment["spec"]["strategy"]["type"] == "Recreate"
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"] == trainer_image and "command" not in container  # python -m trainer
    ingest = trainer_command(_container_args(container))
    assert container["args"][0] == "ingest" and "once" not in ingest
    assert ingest["redis_url"] == settings.redis_url and ingest["redis_prefix"] == settings.redis_prefix
    assert settings.event_log_max > 0
    port = next(p for p in container["ports"] if p["name"] == "metrics")["containerPort"]
    assert ingest["metrics_port"] == port
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert int(annotations["prometheus.io/port"]) == port and annotations["prometheus.io/path"] == "/metrics"
    assert container["livenessProbe"]["httpGet"]["port"] in ("metrics", port)
    log_claim, read_only = _claim(pod, container, ingest["log"])
    assert log_claim in claims and not read_only

    cron = next(d for d in of_kind("CronJob") if d["metadata"]["name"] == "jtm-refresh")
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"  # each refresh continues from the last one's version
    pod = cronjob_pod("jtm-refresh")
    (container,) = pod["containers"]
    assert container["image"] == trainer_image and "command" not in container
    refresh = trainer_command(_container_args(container))
    assert container["args"][0] == "refresh" and "interval" not in refresh  # one refresh per job
    assert refresh["redis_url"] == settings.redis_url
    assert _claim(pod, container, refresh["log"])[0] == log_claim
    registry_claim, read_only = _claim(pod, container, refresh["registry"])
    service_pod = service_deployment()["spec"]["template"]["spec"]
    assert registry_claim == _claim(service_pod, service_pod["containers"][0], str(settings.registry))[0]
    assert not read_only  # it publishes
    # Two pods (ingest, each refresh job) on any nodes mount the log.
    assert "ReadWriteMany" in claims[log_claim]["spec"]["accessModes"]
    for pod in (ingest_deployment()["spec"]["template"]["spec"], cronjob_pod("jtm-refresh")):
        names = {e["name"] for c in pod["containers"] for e in c.get("env", [])}
        assert not {n for n in names if n.startswith("JTM_")} - SETTING_NAMES


# --------------------------------------------------------------------------- make demo

# `python` for scripts/demo.sh: records each call (pid, JTM_SPOOL_DIR, arguments), makes what
# the next step looks for (the data set, the artifact, the registry's pointer), stays up as
# ingest and refresh do, and as the service records whether those two are running.
DEMO_STUB = r"""#!/bin/sh
line=$(printf '%s\t' "$$" "${JTM_SPOOL_DIR:-}" "$@")
printf '%s\n' "$line" >> "$DEMO_CALLS"
prev=
for a in "$@"; do
    case "$prev" in
        --out) [ "$3" = synth ] && mkdir -p "$(dirname "$a")" && : > "$a" ;;
        --export) mkdir -p "$a" && : > "$a/manifest.json" && : > "$a/trainer.npz" ;;
        --registry) [ "$3" = publish ] && mkdir -p "$a" && echo v1 > "$a/CURRENT" ;;
    esac
    prev=$a
done
case "$2 $3" in
    "trainer ingest"|"trainer refresh") exec sleep 60 ;;
esac
if [ "$2" = service ]; then
    for _ in 1 2 3 4 5 6 7 8 9 10; do
        [ "$(grep -cE 'trainer.(ingest|refresh)' "$DEMO_CALLS")" -ge 2 ] && break
        sleep 0.5
    done
    for pid in $(grep -E 'trainer.(ingest|refresh)' "$DEMO_CALLS" | cut -f1); do
        kill -0 "$pid" && echo "$pid" >> "$DEMO_CALLS.alive"
    done
    if [ -n "${DEMO_CTRL_C:-}" ]; then kill -INT "$PPID"; exit 130; fi
fi
"""


def _run_demo(tree, **env: str) -> tuple[int, str, list[list[str]], list[int]]:
    """scripts/demo.sh in a copy of the repository's layout with a stub setup and `python`;
    its exit code, output, calls and the pids of the calls alive when the service started."""
    import shutil
    import signal
    import subprocess

    (tree / "scripts").mkdir(parents=True, exist_ok=True)
    shutil.copy2(ROOT / "scripts" / "demo.sh", tree / "scripts" / "demo.sh")
    (tree / "scripts" / "setup.sh").write_text("#!/bin/sh\nexit 0\n")
    stub = tree / ".venv" / "bin" / "python"
    stub.parent.mkdir(parents=True, exist_ok=True)
    stub.write_text(DEMO_STUB)
    for path in (tree / "scripts" / "setup.sh", stub):
        path.chmod(0o755)
    calls = tree / "calls.txt"
    for path in (calls, tree / "calls.txt.alive"):
        path.unlink(missing_ok=True)
    result = subprocess.run(["bash", str(tree / "scripts" / "demo.sh")], capture_output=True, text=True, timeout=60,
                            env={"PATH": "/usr/bin:/bin", "DEMO_CALLS": str(calls), **env},
                            # Ctrl-C must reach the script even when the tests run with SIGINT ignored
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    lines = [line.split("\t") for line in calls.read_text().splitlines()]
    alive_path = tree / "calls.txt.alive"
    alive = [int(p) for p in alive_path.read_text().split()] if alive_path.exists() else []
    return result.returncode, result.stdout + result.stderr, [[x for x in line if x != ""] for line in lines], alive


def _demo_calls(calls: list[list[str]]) -> dict[str, tuple[int, str, list[str]]]:
    """{command: (pid, JTM_SPOOL_DIR, arguments after `-m trainer` / `-m`)}."""
    out = {}
    for pid, *rest in calls:
        spool = rest[0] if rest and not rest[0].startswith("-") else ""
        args = rest[1:] if spool else rest
        assert args[0] == "-m", args
        name = args[2] if args[1] == "trainer" else args[1]
        out[name] = (int(pid), spool, args[2:])
    return out


def _gone(pid: int) -> bool:
    """Whether `pid` has exited; one still running is killed (the test's, not to be left behind)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    os.kill(pid, 9)
    return False


def test_demo_closes_the_loop_and_stops_it(tmp_path) -> None:
    """make demo: train, publish into a registry, serve it with the spool on, ingest the spool
    into the log and refresh the registry from the log in the background; every command as its
    parser accepts it, and ingest and refresh stopped when the demo stops."""
    from service.cli import build_parser as service_parser

    code, output, calls, alive = _run_demo(tmp_path, PORT="8999", REFRESH_INTERVAL="7")
    assert code == 0, output
    commands = _demo_calls(calls)
    # in this order; ingest and refresh start (in the background) before the service
    assert [c for c in commands if c not in ("ingest", "refresh")] == ["synth", "train", "publish", "service"]
    parsed = {name: trainer_command(args) for name, (_, _, args) in commands.items() if name != "service"}
    service = service_parser().parse_args(commands["service"][2])
    assert parsed["train"]["export"] == parsed["publish"]["artifact"]
    assert parsed["publish"]["registry"] == service.registry == parsed["refresh"]["registry"]
    assert service.port == 8999 and service.artifact is None
    spool = commands["service"][1]
    assert spool and parsed["ingest"]["spool"] == spool and "redis_url" not in parsed["ingest"]
    assert parsed["ingest"]["log"] == parsed["refresh"]["log"]
    assert parsed["refresh"]["interval"] == 7 and "redis_url" not in parsed["refresh"]
    background = [commands["ingest"][0], commands["refresh"][0]]
    assert sorted(alive) == sorted(background)  # running beside the service
    assert all([_gone(pid) for pid in background])  # and stopped with the demo
    for text in ("/v1/recommend", "/v1/events", "/v1/model", "every 7 s"):
        assert text in output, text

    # Again: the artifact and the registry are reused, the loop starts where it was.
    code, output, calls, alive = _run_demo(tmp_path, PORT="8999")
    assert code == 0, output
    commands = _demo_calls(calls)
    assert set(commands) == {"ingest", "refresh", "service"}
    assert trainer_command(commands["refresh"][2])["interval"] == 60  # the default
    assert all([_gone(pid) for pid, _, _ in commands.values()])

    # An artifact exported before trainer.npz existed cannot be refreshed: retrained, new registry.
    (tmp_path / "artifacts" / "demo" / "trainer.npz").unlink()
    (tmp_path / "registry" / "demo" / "stale").write_text("")
    code, output, calls, _ = _run_demo(tmp_path)
    assert code == 0, output
    assert list(_demo_calls(calls))[:2] == ["train", "publish"]
    assert not (tmp_path / "registry" / "demo" / "stale").exists()


def test_demo_ctrl_c_stops_ingest_and_refresh(tmp_path) -> None:
    code, output, calls, alive = _run_demo(tmp_path, DEMO_CTRL_C="1")
    assert code == 130, output
    background = [pid for pid, _, args in _demo_calls(calls).values() if args[0] in ("ingest", "refresh")]
    assert len(background) == 2 and sorted(alive) == sorted(background)
    assert all([_gone(pid) for pid in background])
    assert "stopping ingest and refresh" in output


# --------------------------------------------------------------------------- docs


def test_deploy_readme_names_only_real_metrics_and_variables() -> None:
    """deploy/README.md: every metric it names is exported by the service, ingest or the
    refresher, and every JTM_ name is a setting, a variable of the trainer job or of the compose
    file, or one of the names Kubernetes would inject (which it warns about)."""
    text = (DEPLOY / "README.md").read_text()
    exposed = exposed_metrics()
    exposed |= {name.removesuffix("_bucket") for name in exposed if name.endswith("_bucket")}  # a histogram's name
    named = set(re.findall(r"\bjtm_[a-z_]+[a-z]\b", text))
    assert named and named <= exposed, named - exposed
    injected = {f"{s['metadata']['name'].upper().replace('-', '_')}_PORT" for s in of_kind("Service")}
    known = (SETTING_NAMES | trainer_job_variables() | injected
             | set(re.findall(r"\$\{([A-Z_]+)", (ROOT / "docker-compose.yml").read_text())))
    variables = set(re.findall(r"\bJTM_[A-Z_]+[A-Z]\b", text))
    assert variables <= known, variables - known


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
