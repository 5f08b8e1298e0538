"""Resources of the assets, configured from the environment through ``PlatformSettings``.

``PySparkResource`` (dagster-pyspark) gives the assets their SparkSession, on both paths (its subclass
here only hides an empty ``SPARK_REMOTE`` from PySpark's builder while the in-process session is made):

- ``SPARK_REMOTE=sc://…`` (the default: the local stack's Spark Connect server, ``local_stack.spark_connect``):
  its builder sees ``spark.remote`` and returns a Spark Connect session, so a run attaches to the warm
  server instead of starting a JVM. Only SQL settings can be set on such a session (the JDBC jar, the
  master and the JVM's time zone are the server's); the assets use DataFrames and JDBC options only,
  never ``sparkContext`` (``PySparkResource.spark_context`` does not exist on Connect). The session is
  not stopped: the run's process exit ends the client, and the server drops idle sessions.
- ``SPARK_REMOTE=`` (empty): the in-process SparkSession on ``SPARK_MASTER``, a JVM per run process. It
  never calls ``spark.stop()``: under ``dagster dev`` each run is a process of its own and the JVM ends
  with it; in one process (tests, the backfill CLI) the session is shared on purpose and stopped by its owner.

A process is in one mode or the other: PySpark switches itself to Connect for the whole process when a
Connect session is created (``pyspark.sql.functions`` then build Connect columns).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import dagster as dg
from dagster_pyspark import PySparkResource
from pyspark.sql import SparkSession

from crypto_assets.candle_store import MarketStore
from crypto_assets.transforms import SPARK_EXACTNESS_CONFIG
from crypto_platform.credentials import CANDLE_WRITER, role_database_url
from crypto_platform.settings import PlatformSettings


class MarketDatabase(dg.ConfigurableResource):
    """The market-data PostgreSQL. ``database_url`` empty = DATABASE_URL's server as role ``candle_writer``
    at run time, so no password ever sits in Dagster's resource config."""

    database_url: str = ""

    def store(self) -> MarketStore:
        return MarketStore(self.database_url or role_database_url(PlatformSettings.from_env(), CANDLE_WRITER))


# Settings a session may carry itself (also the Connect server's defaults): exact decimals, UTC, small shuffles.
SESSION_SQL_CONFIG = {
    "spark.sql.shuffle.partitions": "4",
    "spark.sql.adaptive.enabled": "true",
    **SPARK_EXACTNESS_CONFIG,
}


def jdbc_driver_option(driver: str) -> str:
    """A jar on disk goes to ``spark.jars``; a Maven coordinate to ``spark.jars.packages``."""
    return "spark.jars" if driver.endswith(".jar") else "spark.jars.packages"


def spark_config(settings: PlatformSettings) -> dict[str, str]:
    """SparkSession settings. Connect: the URL and the session's SQL settings. In process: master from
    SPARK_MASTER, the JDBC driver jar, UTC everywhere, exact decimals."""
    if settings.spark_remote:
        return {"spark.remote": settings.spark_remote, **SESSION_SQL_CONFIG}
    utc = "-Duser.timezone=UTC"
    return {
        "spark.master": settings.spark_master,
        "spark.app.name": "crypto-assets",
        jdbc_driver_option(settings.spark_jdbc_driver): settings.spark_jdbc_driver,
        "spark.driver.host": settings.bind_host,
        "spark.driver.bindAddress": settings.bind_host,
        "spark.driver.extraJavaOptions": utc,
        "spark.executor.extraJavaOptions": utc,
        "spark.ui.enabled": "false",
        "spark.ui.showConsoleProgress": "false",
        # The driver's RPC ports refuse unauthenticated peers (local mode makes its own secret).
        **({"spark.authenticate": "true"} if settings.secure else {}),
        **SESSION_SQL_CONFIG,
    }


@contextmanager
def _builder_environment(config: dict[str, str]) -> Iterator[None]:
    """The environment PySpark's builder reads while it makes an in-process session: without SPARK_REMOTE,
    whose mere presence (even empty, as the user sets it to choose this path) it takes as "use Connect".
    The variable is back as the user set it afterwards, for whatever reads the settings next."""
    if "spark.remote" in config or "SPARK_REMOTE" not in os.environ:
        yield
        return
    spark_remote = os.environ.pop("SPARK_REMOTE")
    try:
        yield
    finally:
        os.environ["SPARK_REMOTE"] = spark_remote


class PlatformPySparkResource(PySparkResource):
    """dagster-pyspark's resource, making its session in the environment ``_builder_environment`` gives."""

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        with _builder_environment(self.spark_config):
            super().setup_for_execution(context)


def spark_session(settings: PlatformSettings) -> SparkSession:
    """A SparkSession with the assets' settings, outside Dagster (tests, benchmarks); quiet console."""
    config = spark_config(settings)
    with _builder_environment(config):  # the builder checks the environment at every config() too
        builder = SparkSession.builder
        for key, value in config.items():
            builder = builder.config(key, value)
        session = builder.getOrCreate()
    if not settings.spark_remote:
        session.sparkContext.setLogLevel("ERROR")
    return session


def build_resources(settings: PlatformSettings | None = None) -> dict[str, dg.ConfigurableResource]:
    settings = settings or PlatformSettings.from_env()
    return {"pyspark": PlatformPySparkResource(spark_config=spark_config(settings)), "market_db": MarketDatabase()}
