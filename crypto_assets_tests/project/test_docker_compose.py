"""docker-compose.yml describes the same platform as the local stack, always with SECURE=1 (no Docker engine here
to run it: the parsed file, its helper files and the code its services run are checked instead)."""

from __future__ import annotations

import re
import shutil
import stat
import subprocess
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
import yaml

from crypto_platform.credentials import KAFKA_PRINCIPALS, RUNTIME_ROLES
from crypto_platform.settings import PlatformSettings
from local_stack import compose
from local_stack.certificates import platform_certificates
from local_stack.kafka_cluster import KafkaCluster
from local_stack.redis_server import LEGACY_PASSWORD_FILE, broker_url

REPO_ROOT = Path(__file__).resolve().parents[2]
COMPOSE_TEXT = (REPO_ROOT / "docker-compose.yml").read_text()
COMPOSE = yaml.safe_load(COMPOSE_TEXT)
SERVICES = COMPOSE["services"]
PLATFORM_IMAGE = "crypto-market-platform:0.1.0"
# The services that run this repository's image (and so the platform's code and settings).
PLATFORM = {name for name, service in SERVICES.items() if service.get("image") == PLATFORM_IMAGE}
ONE_SHOT = "certificates"
IMAGE_BIND_HOST = re.search(r"\bBIND_HOST=(\S+)", (REPO_ROOT / "Dockerfile").read_text()).group(1)
PLATFORM_VARIABLES = {variable for variable, _, _ in PlatformSettings.docs()}
# Variables the compose file passes that are not platform settings: the images' own and libpq's.
FOREIGN_VARIABLE = re.compile(r"^(POSTGRES_[A-Z_]+|PG(SSLMODE|SSLROOTCERT))$")


EXAMPLE_ENV = dict(line.split("=", 1) for line in (REPO_ROOT / ".env.example").read_text().splitlines()
                   if line and not line.startswith("#"))
REFERENCE = re.compile(r"\$\{(\w+)(?::-([^}]*)|:\?[^}]*)\}")


def environment(name: str) -> dict[str, str]:
    return {key: str(value) for key, value in SERVICES[name].get("environment", {}).items()}


def interpolated(value: str) -> str:
    """``${VAR:-default}`` and ``${VAR:?message}`` as docker-compose resolves them with ``.env.example``."""
    return REFERENCE.sub(lambda match: EXAMPLE_ENV.get(match.group(1)) or match.group(2) or "", value)


def volumes(name: str) -> list[str]:
    return SERVICES[name].get("volumes", [])


def settings_of(name: str, state_dir: Path) -> PlatformSettings:
    """What the service's code reads: the image's BIND_HOST, its environment, a test's state folder."""
    variables = {key: interpolated(value) for key, value in environment(name).items()}
    return PlatformSettings.from_env({"BIND_HOST": IMAGE_BIND_HOST, **variables, "STATE_DIR": str(state_dir)})


def test_services_volumes_and_network() -> None:
    assert {ONE_SHOT, "kafka", "postgres", "migrate", "redis", "superset", "dagster-webserver"} <= set(SERVICES)
    assert {"platform-ca", "platform-tls", "platform-secrets", "kafka-data", "postgres-data"} <= set(COMPOSE["volumes"])
    assert COMPOSE["networks"]["stock-network"]["name"] == "stock-network"
    assert "kafka-data:/data" in volumes("kafka")
    assert any(v.startswith("postgres-data:") for v in volumes("postgres"))
    for name, service in SERVICES.items():
        # Superset's Celery worker and beat share its network namespace (they fetch chart data from it), Dagster
        # spark-connect's (the Connect token goes to localhost only).
        assert service.get("networks") == ["stock-network"] or service.get("network_mode") in (
            "service:superset", "service:spark-connect"), name


def test_images_are_pinned_and_kafka_is_the_local_stacks_broker() -> None:
    assert SERVICES["kafka"]["image"] == PLATFORM_IMAGE
    assert SERVICES["kafka"]["command"] == ["python", "-m", "local_stack.compose", "kafka", "--node", "1"]
    assert SERVICES["postgres"]["image"] == "postgres:16"
    for name, service in SERVICES.items():
        image = service.get("image", "")
        assert image and ":" in image and not image.endswith(":latest"), f"{name} image is not pinned"


def test_every_platform_service_runs_with_secure_on() -> None:
    assert PLATFORM >= {ONE_SHOT, "kafka", "migrate", "binance-producer", "kafka-consumer", "spark-connect",
                        "dagster-webserver", "superset", "superset-worker", "superset-beat"}
    for name in PLATFORM:
        assert environment(name)["SECURE"] == "1", name
        assert settings_of(name, Path("/data")).secure, name


def test_the_one_shot_service_makes_the_certificates_and_every_other_service_waits_for_it() -> None:
    one_shot = SERVICES[ONE_SHOT]
    assert one_shot["command"] == ["python", "-m", "local_stack.compose", "secrets"]
    assert one_shot["restart"] == "no"
    assert set(volumes(ONE_SHOT)) == {"platform-ca:/data/ca", "platform-tls:/data/tls",
                                      "platform-secrets:/data/secrets"}
    for name, service in SERVICES.items():
        if name != ONE_SHOT:
            assert service["depends_on"][ONE_SHOT] == {"condition": "service_completed_successfully"}, name
    assert SERVICES["migrate"]["depends_on"]["postgres"] == {"condition": "service_healthy"}
    for name in ("binance-producer", "kafka-consumer", "dagster-webserver", "superset"):
        assert SERVICES[name]["depends_on"]["migrate"] == {"condition": "service_completed_successfully"}, name


def test_the_other_services_read_the_shared_volumes_and_none_gets_the_ca_key() -> None:
    for name in SERVICES:
        if name == ONE_SHOT:
            continue
        shared = [v for v in volumes(name) if v.startswith(("platform-tls:", "platform-secrets:", "platform-ca:"))]
        assert not any(v.startswith("platform-ca:") for v in shared), name
        assert all(v.endswith(":ro") for v in shared), f"{name} may write {shared}"
    for name in PLATFORM - {ONE_SHOT}:
        # The local stack's STATE_DIR-relative paths: STATE_DIR/tls/ca.crt, STATE_DIR/secrets/<name>.
        assert {"platform-tls:/data/tls:ro", "platform-secrets:/data/secrets:ro"} <= set(volumes(name)), name
        assert environment(name)["STATE_DIR"] == "/data"


def test_the_one_shot_makes_certificates_and_secrets_once_without_the_ca_key_in_the_shared_folder(tmp_path) -> None:
    settings = settings_of(ONE_SHOT, tmp_path)
    compose.make_secrets(settings)
    tls, secrets = tmp_path / "tls", tmp_path / "secrets"
    assert sorted(p.name for p in tls.iterdir()) == ["ca.crt", "server.crt", "server.key", "trust.pem"]
    assert (tmp_path / compose.CA_FOLDER / "ca.key").exists()
    expected = {*RUNTIME_ROLES, *(f"kafka-{p}" for p in KAFKA_PRINCIPALS), "redis", "spark-connect-token",
                "dagster-ui"}
    assert {p.name for p in secrets.iterdir()} == expected
    made = {path: path.read_bytes() for path in (*tls.iterdir(), *secrets.iterdir())}
    for path in made:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    compose.make_secrets(settings)
    assert {path: path.read_bytes() for path in made} == made
    # A service reading the shared folder (read-only in compose) finds its certificate there as it is.
    served = platform_certificates(settings_of("kafka", tmp_path))
    assert served.folder == tls and not served.ca_key.exists()
    assert {path: path.read_bytes() for path in made} == made


def test_kafka_listens_with_sasl_ssl_and_tls_only_and_advertises_its_service_name(tmp_path) -> None:
    compose.make_secrets(settings_of(ONE_SHOT, tmp_path))
    node = KafkaCluster(settings_of("kafka", tmp_path)).nodes[0]
    node.root.mkdir(parents=True)
    lines = node._write_properties().read_text().splitlines()
    properties = dict(line.split("=", 1) for line in lines)
    assert properties["listeners"] == "SASL_SSL://0.0.0.0:9092,CONTROLLER://0.0.0.0:9093"
    assert properties["listener.security.protocol.map"] == "SASL_SSL:SASL_SSL,CONTROLLER:SSL"
    assert properties["advertised.listeners"] == "SASL_SSL://kafka:9092"
    assert properties["controller.quorum.voters"] == "1@kafka:9093"
    assert properties["listener.name.controller.ssl.client.auth"] == "required"
    assert properties["allow.everyone.if.no.acl.found"] == "false"
    assert properties["group.initial.rebalance.delay.ms"] == "3000"  # consumer workers started together: one assignment
    assert "PLAINTEXT" not in COMPOSE_TEXT


def test_three_kafka_nodes_share_one_volume_and_each_advertises_its_service_name(tmp_path, monkeypatch) -> None:
    """With .env.example's three-node lines: kafka-2 and kafka-3 in their profile, each node its own ports,
    the quorum of all three by service name, every partition on three nodes, a write acknowledged on two."""
    for line in (REPO_ROOT / ".env.example").read_text().splitlines():
        if line.startswith("# KAFKA_") or line.startswith("# COMPOSE_"):
            variable, value = line[2:].split("=", 1)
            monkeypatch.setitem(EXAMPLE_ENV, variable, value)
    compose.make_secrets(settings_of(ONE_SHOT, tmp_path))
    nodes = KafkaCluster(settings_of("kafka", tmp_path)).nodes
    assert [node.name for node in nodes] == ["kafka", "kafka-2", "kafka-3"]
    assert EXAMPLE_ENV["COMPOSE_PROFILES"] in SERVICES["kafka-2"]["profiles"] == SERVICES["kafka-3"]["profiles"]
    for node in nodes:
        service = SERVICES[node.name]
        assert service["command"][-2:] == ["--node", str(node.node_id)]
        assert "kafka-data:/data" in volumes(node.name)
        assert service["ports"] == [f"127.0.0.1:{node.port}:{node.port}"]
        node.root.mkdir(parents=True, exist_ok=True)
        properties = dict(line.split("=", 1) for line in node._write_properties().read_text().splitlines())
        assert properties["advertised.listeners"] == f"SASL_SSL://{node.name}:{node.port}"
        assert properties["controller.quorum.voters"] == "1@kafka:9095,2@kafka-2:9096,3@kafka-3:9097"
        assert (properties["default.replication.factor"], properties["min.insync.replicas"]) == ("3", "2")


def test_postgres_takes_tls_connections_only_and_clients_verify_it() -> None:
    command = SERVICES["postgres"]["command"]
    options = dict(command[i + 1].split("=", 1) for i, word in enumerate(command) if word == "-c")
    assert options["ssl"] == "on" and options["hba_file"] == "/platform/pg_hba.conf"
    assert options["ssl_key_file"].startswith("/var/lib/postgresql/tls/")  # the postgres user's own 0600 copy
    hba = [line.split() for line in (REPO_ROOT / "docker" / "pg_hba.conf").read_text().splitlines()
           if line.strip() and not line.startswith("#")]
    assert {line[0] for line in hba} == {"local", "hostssl"} and {line[-1] for line in hba} == {"scram-sha-256"}
    entrypoint = (REPO_ROOT / "docker" / "postgres-entrypoint.sh").read_text()
    assert "-o postgres -g postgres -m 0600" in entrypoint and "exec docker-entrypoint.sh" in entrypoint
    for name in PLATFORM:
        url = urlsplit(interpolated(environment(name)["DATABASE_URL"]))
        assert parse_qs(url.query) == {"sslmode": ["verify-full"], "sslrootcert": ["/data/tls/ca.crt"]}, name
        assert environment(name)["PGSSLMODE"] == "verify-full", name


def test_only_migrate_logs_in_as_the_administrator() -> None:
    """The services log in as their own roles (their URLs are derived from a DATABASE_URL without credentials)."""
    for name in PLATFORM:
        has_credentials = urlsplit(interpolated(environment(name)["DATABASE_URL"])).username is not None
        assert has_credentials == (name == "migrate"), name
    users_of_the_password = {name for name in SERVICES if "PG_PASSWORD" in yaml.safe_dump(SERVICES[name])}
    assert users_of_the_password == {"postgres", "migrate"}


def test_redis_wants_the_generated_password_and_superset_is_served_over_https() -> None:
    entrypoint = (REPO_ROOT / "docker" / "redis-entrypoint.sh").read_text()
    assert "requirepass %s" in entrypoint and "/platform/secrets/redis" in entrypoint
    assert "platform-secrets:/platform/secrets:ro" in volumes("redis")
    assert "REDISCLI_AUTH" in SERVICES["redis"]["healthcheck"]["test"][1]
    assert environment("superset")["REDIS_HOST"] == "redis" and "REDIS_URL" not in environment("superset")
    assert "https://localhost:8088/" in SERVICES["superset"]["healthcheck"]["test"][1]
    assert environment("superset")["SUPERSET_PUBLIC_URL"].startswith("${SUPERSET_PUBLIC_URL:-https://")


def test_superset_reaches_redis_with_the_password_the_one_shot_made(tmp_path) -> None:
    compose.make_secrets(settings_of(ONE_SHOT, tmp_path))
    url = urlsplit(broker_url(settings_of("superset", tmp_path)))
    assert (url.hostname, url.port) == ("redis", 6379)
    assert url.password == (tmp_path / "secrets" / "redis").read_text().strip()


def test_a_local_stacks_older_redis_password_moves_to_the_secrets_folder(tmp_path) -> None:
    legacy = tmp_path / LEGACY_PASSWORD_FILE
    legacy.parent.mkdir()
    legacy.write_text("older-password\n")
    assert urlsplit(broker_url(PlatformSettings.from_env({"STATE_DIR": str(tmp_path)}))).password == "older-password"
    assert not legacy.exists() and (tmp_path / "secrets" / "redis").read_text() == "older-password\n"


def test_no_service_listens_for_anyone_on_the_network_without_a_login() -> None:
    """Spark's standalone master and worker are left out (the Connect server runs local[N]); the metrics endpoints
    listen on their containers' loopback; the rest want a password, a SCRAM user, a token or a certificate."""
    assert not {"spark-master", "spark-worker"} & set(SERVICES)
    assert "SPARK_MASTER" not in COMPOSE_TEXT
    for name in ("binance-producer", "kafka-consumer"):
        assert environment(name)["BIND_HOST"] == "127.0.0.1" and "ports" not in SERVICES[name], name
    assert "ports" not in SERVICES["redis"]


def test_published_ports_bind_to_loopback() -> None:
    for name, service in SERVICES.items():
        for port in service.get("ports", []):
            assert port.startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"
    assert "127.0.0.1:9092:9092" in SERVICES["kafka"]["ports"]
    assert "127.0.0.1:5432:5432" in SERVICES["postgres"]["ports"]


def test_environment_uses_the_local_stacks_variable_names() -> None:
    for name, service in SERVICES.items():
        for variable in service.get("environment", {}):
            assert variable in PLATFORM_VARIABLES or FOREIGN_VARIABLE.match(variable), f"{name}: unknown {variable}"


def test_no_secret_is_written_in_the_compose_file() -> None:
    secret_names = re.compile(r"PASSWORD|SECRET|TOKEN|_KEY\b|REDIS_URL|WEBHOOK")
    for name, service in SERVICES.items():
        for variable, value in service.get("environment", {}).items():
            if secret_names.search(variable):
                assert str(value).startswith("${") and str(value).endswith("}"), f"{name}: {variable} is written"
    for line in COMPOSE_TEXT.splitlines():
        credentials = re.search(r"://([^/@\s]+)@", line)
        assert credentials is None or "${" in credentials.group(1), f"credentials written in: {line.strip()}"
    assert {variable for variable in EXAMPLE_ENV if "PASSWORD" in variable} == {"PG_PASSWORD"}


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="Debian's docker-compose is not installed")
def test_docker_compose_config_accepts_the_file() -> None:
    result = subprocess.run(
        ["docker-compose", "--env-file", ".env.example", "-f", "docker-compose.yml", "config", "--quiet"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=60, check=False,
    )
    assert result.returncode == 0, result.stderr


def test_producer_and_consumer_workers_are_supervised_in_their_containers() -> None:
    for name, variable in (("binance-producer", "PRODUCER_WORKERS"), ("kafka-consumer", "CONSUMER_WORKERS")):
        service = SERVICES[name]
        assert service["command"][-2:] == ["streaming_services.workers", name.split("-")[1]]
        assert service["environment"][variable].startswith(f"${{{variable}:-")


def test_dagster_attaches_to_the_spark_connect_service_on_a_shared_loopback() -> None:
    """PySpark sends the Connect token without TLS to localhost only: Dagster shares spark-connect's network
    namespace, where the Connect server listens on loopback; spark-connect publishes Dagster's port."""
    assert SERVICES["spark-connect"]["command"] == ["python", "-m", "local_stack.spark_connect"]
    assert SERVICES["dagster-webserver"]["command"] == ["python", "-m", "local_stack.compose", "dagster"]
    assert "spark-connect" in SERVICES["dagster-webserver"]["depends_on"]
    assert SERVICES["dagster-webserver"]["network_mode"] == "service:spark-connect"
    assert environment("spark-connect")["BIND_HOST"] == "127.0.0.1"
    assert environment("dagster-webserver")["SPARK_REMOTE"] == "sc://localhost:15002"
    assert SERVICES["spark-connect"]["ports"] == ["127.0.0.1:3000:3000"]
