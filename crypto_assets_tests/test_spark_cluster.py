"""SPARK_CLUSTER=1: the local stack's standalone Spark master and worker run jobs sent to spark://."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from crypto_platform.settings import PlatformSettings
from local_stack.ephemeral import make_state_dir, stack_environment
from local_stack.processes import free_port
from local_stack.stack import LocalStack

CLUSTER_JOB = """
import sys
from pyspark.sql import SparkSession
spark = (SparkSession.builder.master(sys.argv[1]).appName("cluster-smoke")
         .config("spark.driver.host", "127.0.0.1").config("spark.executor.memory", "512m").getOrCreate())
print(spark.sparkContext.master, spark.range(1, 100_001).selectExpr("sum(id) AS s").first()["s"])
spark.stop()
"""


@pytest.mark.slow
@pytest.mark.integration
def test_standalone_cluster_from_the_pyspark_package_runs_a_job(monkeypatch: pytest.MonkeyPatch) -> None:
    state_dir = make_state_dir("crypto-test-spark-")
    for name, value in stack_environment(state_dir).items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("SPARK_CLUSTER", "1")
    monkeypatch.setenv("SPARK_MASTER", "")
    monkeypatch.setenv("SPARK_MASTER_PORT", str(free_port()))
    monkeypatch.setenv("SPARK_MASTER_WEBUI_PORT", str(free_port()))
    monkeypatch.setenv("SPARK_WORKER_MEMORY", "1g")
    settings = PlatformSettings.from_env()
    services = [s for s in LocalStack(settings).services() if s.name.startswith("spark-")]
    assert [s.name for s in services] == ["spark-master", "spark-worker", "spark-connect"]
    services = services[:2]  # the cluster alone; test_spark_connect.py runs the Connect server on it
    assert settings.spark_master == f"spark://127.0.0.1:{settings.spark_master_port}"
    try:
        for service in services:
            service.start()
        # A driver process of its own, so the suite's shared local SparkSession is never touched.
        result = subprocess.run(
            [sys.executable, "-c", CLUSTER_JOB, settings.spark_master], capture_output=True, text=True,
            timeout=240, check=False,
        )
        assert result.returncode == 0, result.stderr[-2000:]
        assert result.stdout.split() == [settings.spark_master, "5000050000"]
    finally:
        for service in reversed(services):
            service.stop()
        shutil.rmtree(state_dir, ignore_errors=True)
    assert not any(service.is_running() for service in services)
