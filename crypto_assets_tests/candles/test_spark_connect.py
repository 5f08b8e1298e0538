"""The Spark Connect server of the local stack: start, answer, restart after a crash, stop; and the candle
assets run through it, exact against the Decimal reference and Binance's klines."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from crypto_assets_tests.candle_reference import insert_trades, trades_from_csv
from crypto_assets_tests.candles.test_candle_assets import (
    BTC_2023,
    assert_equals_binance_klines,
    assert_matches_reference,
)
from local_stack.processes import free_port, port_is_free, wait_until
from local_stack.service import ManagedService
from local_stack.spark_connect import server_command, spark_connect_service, warm_up
from local_stack.stack import LocalStack

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO_ROOT = Path(__file__).resolve().parents[2]
# One incremental run of the candle job in a process of its own: PySpark puts a whole process in Connect
# mode once it holds a Connect session, so the suite's in-process Spark tests cannot share this one.
CONNECT_RUN = """
import dagster as dg
from pyspark.sql.utils import is_remote
from crypto_assets.resources import build_resources
from crypto_assets_tests.candles.test_candle_assets import ALL_DEFS, CANDLE_ASSETS
result = dg.materialize(ALL_DEFS, selection=CANDLE_ASSETS, resources=build_resources(),
                        instance=dg.DagsterInstance.ephemeral(), raise_on_error=False)
checks = result.get_asset_check_evaluations()
print(is_remote(), result.success, len(checks),
      str([c.check_name for c in checks if not c.passed]).replace(" ", ""))
"""


@pytest.fixture(scope="module")
def connect_service(stack: LocalStack) -> Iterator[ManagedService]:
    settings = dataclasses.replace(stack.settings, spark_connect_port=free_port(), spark_connect_memory="768m")
    service = spark_connect_service(settings)
    service.start()
    try:
        yield service
    finally:
        service.stop()


def _url(service: ManagedService) -> str:
    return f"sc://{service.settings.bind_host}:{service.port}"


def test_the_local_stack_runs_the_server_unless_spark_remote_is_empty_or_elsewhere(platform_env) -> None:
    assert "spark-connect" in [s.name for s in LocalStack(platform_env()).services()]
    settings = platform_env(SPARK_REMOTE="")
    assert settings.spark_remote == "" and "spark-connect" not in [s.name for s in LocalStack(settings).services()]
    settings = platform_env(SPARK_REMOTE="sc://spark.example:15002")
    assert "spark-connect" not in [s.name for s in LocalStack(settings).services()]


def test_the_server_command_carries_the_jdbc_driver_utc_exactness_and_the_bind_address(platform_env) -> None:
    settings = platform_env(SPARK_CONNECT_CORES=1, SPARK_CONNECT_MEMORY="640m")
    command = " ".join(server_command(settings))
    for part in ("--master local[1]", "--driver-memory 640m", "postgresql-", "-Duser.timezone=UTC",
                 f"spark.connect.grpc.binding.address={settings.bind_host}",
                 f"spark.connect.grpc.binding.port={settings.spark_connect_port}",
                 "spark.sql.session.timeZone=UTC", "spark.sql.decimalOperations.allowPrecisionLoss=false",
                 "spark.sql.ansi.enabled=true"):
        assert part in command
    cluster = platform_env(SPARK_CLUSTER=1, SPARK_MASTER="")
    assert f"--master spark://{cluster.bind_host}:{cluster.spark_master_port}" in " ".join(server_command(cluster))
    assert "--properties-file" not in server_command(cluster)
    secure = server_command(platform_env(SECURE=1, SPARK_CLUSTER=1, SPARK_MASTER=""))
    assert secure[secure.index("--properties-file") + 1].endswith("spark/driver.conf")  # the secret, in a file


def _run_candles_through_connect(service: ManagedService) -> list[str]:
    env = {**os.environ, "SPARK_REMOTE": _url(service)}
    env.pop("DAGSTER_HOME", None)
    result = subprocess.run([sys.executable, "-c", CONNECT_RUN], cwd=REPO_ROOT, env=env, capture_output=True,
                            text=True, timeout=900, check=False)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout.split()


def test_candle_assets_through_spark_connect_equal_the_reference_and_binance(
        connect_service, db, platform_env, shared_data: Path) -> None:
    platform_env()
    trades = trades_from_csv(shared_data.joinpath(*BTC_2023), "BTCUSDT")
    insert_trades(db, trades)
    assert _run_candles_through_connect(connect_service) == ["True", "True", "13", "[]"]  # Connect, success, checks
    assert_matches_reference(db, trades)
    assert_equals_binance_klines(db, trades, shared_data)



def test_the_server_is_loopback_bound_restarts_after_a_crash_and_stops(connect_service) -> None:
    host, port = connect_service.settings.bind_host, connect_service.port
    listening = [c.laddr for c in psutil.net_connections("tcp")
                 if c.status == psutil.CONN_LISTEN and c.laddr.port == port]
    assert listening and all(address.ip in (host, f"::ffff:{host}") for address in listening)

    service = psutil.Process(connect_service.pid())  # spark-submit execs java: the service's pid is the JVM's
    [java] = [p for p in (service, *service.children(recursive=True)) if p.name() == "java"]
    java.send_signal(signal.SIGKILL)
    assert wait_until(lambda: not connect_service.is_running(), 30)

    connect_service.start()  # what the next `make up` does for a service that died
    assert connect_service.is_running() and warm_up(_url(connect_service))

    connect_service.stop()
    assert not connect_service.is_running()
    assert wait_until(lambda: port_is_free(host, port), 30)
