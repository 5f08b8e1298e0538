"""The candle tests' Spark: one in-process SparkSession per module (SPARK_REMOTE empty), which the assets'
PySparkResource finds (getOrCreate); test_spark_connect.py runs the assets through a Spark Connect server."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import pytest
from pyspark.sql import SparkSession

from crypto_assets.resources import spark_session
from crypto_platform.settings import PlatformSettings


@pytest.fixture(scope="module")
def spark(stack) -> SparkSession:
    return spark_session(dataclasses.replace(stack.settings, spark_master="local[2]", spark_remote=""))


@pytest.fixture
def candles_env(platform_env: Callable[..., PlatformSettings], spark: SparkSession,
                monkeypatch: pytest.MonkeyPatch) -> PlatformSettings:
    """The platform's settings with that session's master, for runs through Dagster in this process."""
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    return platform_env(SPARK_MASTER="local[2]", SPARK_REMOTE="")
