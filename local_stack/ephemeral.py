"""A throwaway stack on free ports in a temporary folder: for the test suite and the benchmarks."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from crypto_platform.settings import PlatformSettings
from local_stack.jars import postgresql_jdbc_jar
from local_stack.processes import free_port
from local_stack.stack import LocalStack

PORT_VARIABLES = ("PG_PORT", "REPLAY_PORT", "PRODUCER_METRICS_PORT", "CONSUMER_METRICS_PORT", "DAGSTER_PORT",
                  "SUPERSET_PORT", "SPARK_MASTER_PORT", "SPARK_MASTER_WEBUI_PORT", "REDIS_PORT", "SPARK_CONNECT_PORT")
# The first of the ports of every Kafka node (KAFKA_BROKERS may be up to 3: node I uses port + I - 1).
KAFKA_PORT_VARIABLES = ("KAFKA_PORT", "KAFKA_CONTROLLER_PORT")
MOST_KAFKA_NODES = 3


def stack_environment(state_dir: Path) -> dict[str, str]:
    """Environment of a stack of its own: a state folder and free ports, nothing shared with `make up`."""
    return {"STATE_DIR": str(state_dir), **{name: str(free_port()) for name in PORT_VARIABLES},
            **{name: str(free_port(count=MOST_KAFKA_NODES)) for name in KAFKA_PORT_VARIABLES},
            "KAFKA_BOOTSTRAP_SERVERS": "", "DATABASE_URL": "", "REDIS_URL": "", "SUPERSET_PUBLIC_URL": "",
            "SPARK_MASTER": "", "LOG_LEVEL": "INFO", "SPARK_JDBC_DRIVER": str(postgresql_jdbc_jar())}


def make_state_dir(prefix: str) -> Path:
    """A temporary folder that PostgreSQL's unprivileged user can reach when running as root."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o755)
    return path


@contextmanager
def process_environment(values: Mapping[str, str]) -> Iterator[None]:
    """``os.environ`` with ``values`` while the block runs (for the settings read and the processes started
    in it), then exactly as it was before, whatever the block set meanwhile."""
    saved = dict(os.environ)
    os.environ.update(values)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


@contextmanager
def ephemeral_stack(prefix: str = "crypto-stack-") -> Iterator[LocalStack]:
    """Kafka + PostgreSQL with the schema and topic; os.environ points at them while the block runs."""
    state_dir = make_state_dir(prefix)
    with process_environment(stack_environment(state_dir)):
        stack = LocalStack(PlatformSettings.from_env())
        try:
            stack.start_servers()
            yield stack
        finally:
            stack.down()
            shutil.rmtree(state_dir, ignore_errors=True)
