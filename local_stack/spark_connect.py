"""The Spark Connect server: one long-lived Spark driver that every candle run attaches to over gRPC.

A run then costs a client session (well under a second on a warm server) instead of a JVM start and a
cold JIT (10-34 s on the 2-core machine). The server is the pyspark wheel's own
(``pyspark/jars/spark-connect_*.jar``), run in the foreground by ``spark-submit`` under the stack's
pid file and rotated log. Everything a client cannot set on a Connect session lives here: the JDBC
driver on the classpath, the JVM's time zone, the master (``local[SPARK_CONNECT_CORES]``, or the
standalone cluster with ``SPARK_CLUSTER=1``). The exactness settings are the server's defaults and are
set again by every session (``crypto_assets.resources``), so a foreign server cannot weaken them.

Bound to ``BIND_HOST`` only (loopback by default): a Connect client can run any code as this user, so
with SECURE=1 every client must also show the pre-shared token (``crypto_platform.credentials``).
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable
from pathlib import Path

from crypto_platform.credentials import spark_connect_environment
from crypto_platform.settings import PlatformSettings
from local_stack.jars import postgresql_jdbc_jar
from local_stack.service import ManagedService
from local_stack.spark_cluster import driver_properties_file, spark_home, write_driver_properties

SERVER_CLASS = "org.apache.spark.sql.connect.service.SparkConnectServer"
LOG_CONFIG = Path(__file__).with_name("spark") / "log4j2.properties"
# Server start plus the first query's JIT warm-up: ~45 s on the 2-core machine, 8 min seen at load average 50.
READY_TIMEOUT_S = 900
# A run's session is released by the client's exit; the server forgets idle sessions after this.
SESSION_TIMEOUT = "10min"

log = logging.getLogger(__name__)


def server_master(settings: PlatformSettings) -> str:
    """The standalone cluster when SPARK_MASTER names one (SPARK_CLUSTER=1), else local[SPARK_CONNECT_CORES]."""
    if settings.spark_master.startswith("spark://"):
        return settings.spark_master
    return f"local[{settings.spark_connect_cores}]"


def server_confs(settings: PlatformSettings) -> dict[str, str]:
    from crypto_assets.resources import SESSION_SQL_CONFIG  # the sessions' own settings, one definition

    host, utc = settings.bind_host, "-Duser.timezone=UTC"
    # Executors (SPARK_CLUSTER=1, containers) reach the driver by name when it listens on every address.
    driver_host = socket.gethostname() if host in ("0.0.0.0", "::") else host
    driver_options = f"{utc} -Dlog4j2.configurationFile={LOG_CONFIG}"
    confs = {
        "spark.connect.grpc.binding.address": host,
        "spark.connect.grpc.binding.port": str(settings.spark_connect_port),
        "spark.connect.session.manager.defaultSessionTimeout": SESSION_TIMEOUT,
        "spark.driver.host": driver_host,
        "spark.driver.bindAddress": host,
        "spark.driver.extraJavaOptions": driver_options,
        "spark.executor.extraJavaOptions": utc,
        "spark.local.dir": str(settings.state_dir / "spark-connect" / "tmp"),
        "spark.ui.enabled": "false",
        "spark.ui.showConsoleProgress": "false",
        **SESSION_SQL_CONFIG,
    }
    if settings.secure:  # the driver's RPC ports refuse unauthenticated peers (the secret: see server_command)
        confs["spark.authenticate"] = "true"
    if server_master(settings).startswith("spark://"):
        confs["spark.cores.max"] = str(settings.spark_connect_cores)
    return confs


def server_command(settings: PlatformSettings) -> list[str]:
    """``spark-submit`` of the Connect server in the foreground (no daemon script, so the pid is ours)."""
    jdbc = str(postgresql_jdbc_jar())
    command = [str(spark_home() / "bin" / "spark-submit"), "--class", SERVER_CLASS,
               "--name", "crypto-spark-connect", "--master", server_master(settings),
               "--driver-memory", settings.spark_connect_memory, "--driver-class-path", jdbc, "--jars", jdbc]
    if _authenticates_to_a_cluster(settings):
        command += ["--properties-file", str(driver_properties_file(settings))]
    for key, value in server_confs(settings).items():
        command += ["--conf", f"{key}={value}"]
    return command


def _authenticates_to_a_cluster(settings: PlatformSettings) -> bool:
    """SECURE=1 on a standalone cluster: the driver needs the cluster's secret (local mode makes its own)."""
    return settings.secure and server_master(settings).startswith("spark://")


def _prepare(settings: PlatformSettings) -> None:
    (settings.state_dir / "spark-connect" / "tmp").mkdir(parents=True, exist_ok=True)
    if _authenticates_to_a_cluster(settings):
        write_driver_properties(settings)


def _answers_a_query(settings: PlatformSettings) -> Callable[[], bool]:
    """Ready = a Connect session ran a small exact-decimal aggregation (which also warms the JIT up,
    so the first candle run does not pay for it). The port is probed first: the client would retry."""
    host, port = settings.bind_host, settings.spark_connect_port
    token = spark_connect_environment(settings).get("SPARK_CONNECT_AUTHENTICATE_TOKEN")

    def ready() -> bool:
        try:
            with socket.create_connection((host, port), timeout=1):
                pass
        except OSError:
            return False
        # The port of these settings (a test replaces it), at localhost when a token must be shown.
        return warm_up(f"sc://{'localhost' if token else host}:{port}", token)

    return ready


def warm_up(url: str, token: str | None = None) -> bool:
    """One small exact aggregation on the server at ``url`` (showing ``token`` when it wants one)."""
    from pyspark.sql.connect.session import SparkSession

    try:
        session = SparkSession.builder.remote(url + (f"/;token={token}" if token else "")).create()
        try:
            rows = (session.range(100_000).selectExpr("id % 5 AS k", "CAST(id AS DECIMAL(20, 8)) AS p")
                    .groupBy("k").agg({"p": "sum"}).collect())
        finally:
            session.stop()
    except Exception as exc:  # noqa: BLE001 - any failure means "not ready yet"; the deadline decides
        log.debug("spark connect not ready", extra={"error": str(exc).splitlines()[0] if str(exc) else repr(exc)})
        return False
    return len(rows) == 5


def spark_connect_service(settings: PlatformSettings) -> ManagedService:
    home = spark_home()
    env = {"SPARK_HOME": str(home), "SPARK_LOCAL_IP": settings.bind_host, "SPARK_NO_DAEMONIZE": "1",
           "SPARK_LOG_DIR": str(settings.state_dir / "spark-connect" / "logs"), **spark_connect_environment(settings)}
    return ManagedService(
        "spark-connect", settings, server_command(settings), port=settings.spark_connect_port,
        port_variable="SPARK_CONNECT_PORT", env=env, ready=_answers_a_query(settings),
        before_start=lambda: _prepare(settings),
        ready_timeout_s=READY_TIMEOUT_S, watched=("BIND_HOST", "SPARK_", "SECURE"),
    )


def main() -> None:
    """The server in the foreground, as docker-compose's ``spark-connect`` service runs it."""
    settings = PlatformSettings.from_env()
    command = server_command(settings)
    _prepare(settings)
    os.execvpe(command[0], command, {**os.environ, "SPARK_HOME": str(spark_home()), "SPARK_NO_DAEMONIZE": "1",
                                     **spark_connect_environment(settings)})


if __name__ == "__main__":
    main()
