"""docker-compose.yml describes the same platform as the local stack (no Docker engine here to run it)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from crypto_platform.settings import PlatformSettings

REPO_ROOT = Path(__file__).resolve().parent.parent
COMPOSE = yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())
POM = (REPO_ROOT / "local_stack" / "kafka" / "pom.xml").read_text()
PLATFORM_VARIABLES = {variable for variable, _, _ in PlatformSettings.docs()}
# Variables the compose file passes to services that are not platform settings: images' own and Dagster's.
FOREIGN_VARIABLE = re.compile(r"^(KAFKA_[A-Z_]+|POSTGRES_[A-Z_]+|DAGSTER_PG_[A-Z]+|SUPERSET_[A-Z_]+|SPARK_[A-Z_]+)$")


def test_services_volumes_and_network_of_the_seed() -> None:
    services = COMPOSE["services"]
    assert {"kafka", "postgres", "migrate"} <= set(services)
    assert {"kafka-data", "postgres-data"} <= set(COMPOSE["volumes"])
    assert COMPOSE["networks"]["stock-network"]["name"] == "stock-network"
    assert "kafka-data:/var/lib/kafka/data" in services["kafka"]["volumes"]
    assert any(v.startswith("postgres-data:") for v in services["postgres"]["volumes"])
    for name, service in services.items():
        # Superset's Celery worker and beat share its network namespace (they fetch chart data from it).
        assert service.get("networks") == ["stock-network"] or service.get("network_mode") == "service:superset", name


def test_images_are_pinned_and_kafka_matches_the_local_stack() -> None:
    kafka_version = re.search(r"<kafka.version>([^<]+)</kafka.version>", POM).group(1)
    assert COMPOSE["services"]["kafka"]["image"] == f"apache/kafka:{kafka_version}"
    assert COMPOSE["services"]["postgres"]["image"] == "postgres:16"
    for name, service in COMPOSE["services"].items():
        image = service.get("image", "")
        assert image and ":" in image and not image.endswith(":latest"), f"{name} image is not pinned"


def test_published_ports_bind_to_loopback() -> None:
    for name, service in COMPOSE["services"].items():
        for port in service.get("ports", []):
            assert port.startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"
    assert "127.0.0.1:9092:9092" in COMPOSE["services"]["kafka"]["ports"]
    assert "127.0.0.1:5432:5432" in COMPOSE["services"]["postgres"]["ports"]


def test_environment_uses_the_local_stacks_variable_names() -> None:
    for name, service in COMPOSE["services"].items():
        for variable in service.get("environment", {}):
            assert variable in PLATFORM_VARIABLES or FOREIGN_VARIABLE.match(variable), f"{name}: unknown {variable}"


def test_no_password_in_the_compose_file() -> None:
    text = (REPO_ROOT / "docker-compose.yml").read_text()
    for line in text.splitlines():
        if "PASSWORD" in line and ":" in line:
            assert "${" in line, f"a password is written in docker-compose.yml: {line.strip()}"


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="Debian's docker-compose is not installed")
def test_docker_compose_config_accepts_the_file() -> None:
    result = subprocess.run(
        ["docker-compose", "--env-file", ".env.example", "-f", "docker-compose.yml", "config", "--quiet"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=60, check=False,
    )
    assert result.returncode == 0, result.stderr


def test_producer_and_consumer_workers_are_supervised_in_their_containers() -> None:
    for name, variable in (("binance-producer", "PRODUCER_WORKERS"), ("kafka-consumer", "CONSUMER_WORKERS")):
        service = COMPOSE["services"][name]
        assert service["command"][-2:] == ["streaming_services.workers", name.split("-")[1]]
        assert service["environment"][variable].startswith(f"${{{variable}:-")


def test_dagster_attaches_to_the_spark_connect_service() -> None:
    services = COMPOSE["services"]
    assert services["spark-connect"]["command"] == ["python", "-m", "local_stack.spark_connect"]
    assert "spark-master" in services["spark-connect"]["depends_on"]
    assert "spark-connect" in services["dagster-webserver"]["depends_on"]
    assert services["dagster-daemon"]["environment"]["SPARK_REMOTE"] == "sc://spark-connect:15002"
    assert "ports" not in services["spark-connect"]  # reachable inside stock-network only
