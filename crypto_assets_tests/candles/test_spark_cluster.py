"""SPARK_CLUSTER=1: the local stack's standalone Spark master and worker run jobs sent to spark://, and with
SECURE=1 only for drivers that know the cluster's secret."""

from __future__ import annotations

import json
import shutil
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request

import psutil
import pytest

from crypto_platform.settings import PlatformSettings
from local_stack.certificates import client_context
from local_stack.ephemeral import make_state_dir, stack_environment
from local_stack.processes import free_port
from local_stack.spark_cluster import cluster_properties_file, driver_properties_file, master_ui_url
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


INTRUDER_JOB = """
import sys
from pyspark.sql import SparkSession
spark = (SparkSession.builder.master(sys.argv[1]).appName("intruder").config("spark.driver.host", "127.0.0.1")
         .config("spark.executor.memory", "512m").getOrCreate())
print(spark.range(10).count())
"""
REFUSAL_WATCH_S = 20  # the intruder tries to register this long (Spark would retry for ~60 s)


def _get(url: str, context: ssl.SSLContext | None = None) -> tuple[int, dict[str, str], bytes]:
    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args, **kwargs):  # noqa: ANN002, ANN003, ANN202 - urllib's signature
            return None

    opener = urllib.request.build_opener(NoRedirect, urllib.request.HTTPSHandler(context=context))
    try:
        with opener.open(url, timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


@pytest.mark.slow
@pytest.mark.integration
def test_secure_cluster_wants_its_secret_and_a_client_certificate(monkeypatch: pytest.MonkeyPatch) -> None:
    """SECURE=1 with SPARK_CLUSTER=1: the Connect server (a driver knowing the secret) runs its warm-up query on
    the cluster's executors; a driver without the secret never registers; the UI is HTTPS with a client
    certificate only; no secret is on a command line."""
    state_dir = make_state_dir("crypto-test-spark-secure-")
    for name, value in stack_environment(state_dir).items():
        monkeypatch.setenv(name, value)
    for name, value in {"SECURE": "1", "SPARK_CLUSTER": "1", "SPARK_MASTER": "", "SPARK_WORKER_MEMORY": "1g",
                        "SPARK_CONNECT_CORES": "1"}.items():
        monkeypatch.setenv(name, value)
    settings = PlatformSettings.from_env()
    services = [s for s in LocalStack(settings).services() if s.name.startswith("spark-")]
    intruder = None
    try:
        for service in services:  # master, worker, then the Connect server, ready once its query ran
            service.start()
        master_json = f"{master_ui_url(settings)}/json/"
        status, _, body = _get(master_json, client_context(settings, with_certificate=True))
        cluster = json.loads(body)
        assert status == 200 and cluster["aliveworkers"] == 1
        assert [app["name"] for app in cluster["activeapps"]] == ["crypto-spark-connect"]

        plain_status, headers, plain_body = _get(f"http://{settings.bind_host}:{settings.spark_master_webui_port}/json/")
        assert plain_status in (301, 302, 307, 308) and headers["Location"].startswith("https://")
        assert b"aliveworkers" not in plain_body
        with pytest.raises(OSError):  # ssl.SSLError or a reset: the handshake wants a certificate
            _get(master_json, client_context(settings))

        intruder = subprocess.Popen([sys.executable, "-c", INTRUDER_JOB, settings.spark_master],
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + REFUSAL_WATCH_S
        while time.monotonic() < deadline and intruder.poll() is None:
            apps = json.loads(_get(master_json, client_context(settings, with_certificate=True))[2])["activeapps"]
            assert "intruder" not in [app["name"] for app in apps]
            time.sleep(1)
        assert intruder.poll() is None or intruder.returncode != 0

        secrets = {path.read_text().strip() for path in (state_dir / "secrets").iterdir()}
        for process in psutil.process_iter(["cmdline"]):
            command_line = " ".join(process.info["cmdline"] or [])
            assert not [secret for secret in secrets if secret in command_line], process.pid
        for conf in (cluster_properties_file(settings), driver_properties_file(settings)):
            assert conf.stat().st_mode & 0o777 == 0o600, conf
        assert "spark.ssl" not in driver_properties_file(settings).read_text()
    finally:
        if intruder is not None:
            intruder.kill()
            intruder.wait()
        for service in reversed(services):
            service.stop()
        shutil.rmtree(state_dir, ignore_errors=True)
