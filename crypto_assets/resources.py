"""Resources of the assets, configured once from the environment through ``PlatformSettings``.

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
from pathlib import Path

import dagster as dg
from dagster_pyspark import PySparkResource
from pyspark.sql import SparkSession

from crypto_assets.candle_store import MarketStore
from crypto_assets.transforms import SPARK_EXACTNESS_CONFIG
from crypto_platform.credentials import CANDLE_WRITER, private_secret, secret_path
from crypto_platform.settings import PlatformSettings, url_as


class MarketDatabase(dg.ConfigurableResource):
    """The market-data PostgreSQL as role ``candle_writer``, its values fixed once by ``from_settings``.

    ``server_url`` is DATABASE_URL's server, database and TLS options without any login. The password is
    ``password`` when CANDLE_WRITER_PASSWORD is set (a ``dg.EnvVar``: the resource config, and so the UI,
    holds the variable's name, never its value), else the one generated into ``password_file``."""

    server_url: str
    password: str = ""
    password_file: str = ""

    @classmethod
    def from_settings(cls, settings: PlatformSettings) -> MarketDatabase:
        password = dg.EnvVar("CANDLE_WRITER_PASSWORD") if settings.candle_writer_password else ""
        return cls(server_url=url_as(settings.database_url), password=password,
                   password_file=str(secret_path(settings, CANDLE_WRITER)))

    def store(self) -> MarketStore:
        password = self.password.strip() or private_secret(Path(self.password_file))
        return MarketStore(url_as(self.server_url, CANDLE_WRITER, password))


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
    """The assets' resources, their values taken once from ``settings`` (default: the environment's)."""
    settings = settings or PlatformSettings.from_env()
    return {"pyspark": PlatformPySparkResource(spark_config=spark_config(settings)),
            "market_db": MarketDatabase.from_settings(settings)}
