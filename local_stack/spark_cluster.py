"""The standalone Spark master and one worker from the pyspark package (``SPARK_CLUSTER=1``).

With SECURE=1 the master and the worker read ``STATE_DIR/spark/cluster.conf`` and the drivers that use
them (the Spark Connect server) ``STATE_DIR/spark/driver.conf``, both 0600 and written at each start:

- ``spark.authenticate`` with a shared secret (``STATE_DIR/secrets/spark-cluster``): the master's, the
  worker's, the driver's and the executors' RPC ports refuse a peer that does not know it (the worker hands
  it to its executors in their environment, never on a command line), and their RPC traffic is encrypted
  with keys derived from it (``spark.network.crypto``);
- the master's and the worker's web UIs speak HTTPS only and want a client certificate signed by the
  platform CA (``spark.ssl.standalone.*``, Java key stores made from ``STATE_DIR/tls``, in ``cluster.conf``
  only). Spark's Jetty keeps each UI's plain HTTP port as a redirect to the HTTPS one.
"""

from __future__ import annotations

import importlib.util
import json
import urllib.request
from collections.abc import Callable
from pathlib import Path

from crypto_platform.credentials import generated_secret, secrets_dir
from crypto_platform.settings import PlatformSettings
from local_stack.certificates import client_context, java_key_stores
from local_stack.permissions import write_private
from local_stack.service import HTTP_PROBE_TIMEOUT_S, ManagedService, port_answers

CLUSTER_SECRET = "spark-cluster"
KEY_STORE_SECRET = "java-key-stores"
HTTPS_PORT_OFFSET = 400  # a UI's HTTPS port is its HTTP port's Utils.userPort(port, 400)


def spark_home() -> Path:
    """The pyspark package: its ``bin/`` and ``jars/`` are a whole Spark distribution."""
    return Path(importlib.util.find_spec("pyspark").submodule_search_locations[0])


def cluster_properties_file(settings: PlatformSettings) -> Path:
    return settings.state_dir / "spark" / "cluster.conf"


def driver_properties_file(settings: PlatformSettings) -> Path:
    return settings.state_dir / "spark" / "driver.conf"


def _write_properties(path: Path, properties: dict[str, str]) -> Path:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    write_private(path, "".join(f"{key}={value}\n" for key, value in properties.items()).encode())
    return path


def _authentication(settings: PlatformSettings) -> dict[str, str]:
    """The shared secret, and RPC traffic encrypted with keys derived from it (AES-GCM)."""
    return {"spark.authenticate": "true",
            "spark.authenticate.secret": generated_secret(settings, CLUSTER_SECRET, 32),
            "spark.network.crypto.enabled": "true"}


def write_cluster_properties(settings: PlatformSettings) -> Path:
    """The master's and the worker's properties: the shared secret, and their UIs' TLS (see the docstring)."""
    password = generated_secret(settings, KEY_STORE_SECRET)
    key_store, trust_store = java_key_stores(settings, secrets_dir(settings) / KEY_STORE_SECRET)
    ssl = "spark.ssl.standalone"
    return _write_properties(cluster_properties_file(settings), {
        **_authentication(settings),
        f"{ssl}.enabled": "true",
        f"{ssl}.protocol": "TLSv1.3",
        f"{ssl}.keyStore": str(key_store),
        f"{ssl}.keyStoreType": "PKCS12",
        f"{ssl}.keyStorePassword": password,
        f"{ssl}.keyPassword": password,
        f"{ssl}.needClientAuth": "true",
        f"{ssl}.trustStore": str(trust_store),
        f"{ssl}.trustStoreType": "PKCS12",
        f"{ssl}.trustStorePassword": password,
    })


def write_driver_properties(settings: PlatformSettings) -> Path:
    """A driver's (the Connect server's) properties: the shared secret only. Spark copies a driver's
    ``spark.ssl.*`` onto its executors' command lines, so the key stores' password stays out of this file."""
    return _write_properties(driver_properties_file(settings), _authentication(settings))


def https_port(http_port: int) -> int:
    """Spark's HTTPS port of a UI with a fixed HTTP port (``Utils.userPort``: past 65535 it wraps to 1024)."""
    return (http_port + HTTPS_PORT_OFFSET - 1024) % (65536 - 1024) + 1024


def master_ui_url(settings: PlatformSettings) -> str:
    """The master's UI: its HTTPS port with SECURE=1 (the HTTP one only redirects there)."""
    if settings.secure:
        return f"https://{settings.bind_host}:{https_port(settings.spark_master_webui_port)}"
    return f"http://{settings.bind_host}:{settings.spark_master_webui_port}"


def spark_cluster_services(settings: PlatformSettings) -> list[ManagedService]:
    """The master on ``BIND_HOST:SPARK_MASTER_PORT`` and a worker registered with it."""
    spark_class = str(spark_home() / "bin" / "spark-class")
    host, work_dir = settings.bind_host, settings.state_dir / "spark"
    env = {"SPARK_HOME": str(spark_home()), "SPARK_LOCAL_IP": host, "SPARK_WORKER_DIR": str(work_dir / "work"),
           "SPARK_LOG_DIR": str(work_dir / "logs"), "SPARK_NO_DAEMONIZE": "1"}
    secure = ["--properties-file", str(cluster_properties_file(settings))] if settings.secure else []
    before_start = (lambda: write_cluster_properties(settings)) if settings.secure else None
    master = ManagedService(
        "spark-master", settings,
        [spark_class, "org.apache.spark.deploy.master.Master", "--host", host, "--port",
         str(settings.spark_master_port), "--webui-port", str(settings.spark_master_webui_port), *secure],
        port=settings.spark_master_port, port_variable="SPARK_MASTER_PORT", env=env, before_start=before_start,
        ready=port_answers(host, settings.spark_master_port), watched=("BIND_HOST", "SPARK_", "SECURE"),
    )
    worker = ManagedService(
        "spark-worker", settings,
        [spark_class, "org.apache.spark.deploy.worker.Worker", "--host", host, "--webui-port", "0",
         "--cores", str(settings.spark_worker_cores), "--memory", settings.spark_worker_memory, *secure,
         settings.spark_master],
        env=env, before_start=before_start, ready=worker_registered(settings),
        watched=("BIND_HOST", "SPARK_", "SECURE"),
    )
    return [master, worker]


def worker_registered(settings: PlatformSettings) -> Callable[[], bool]:
    """The master's JSON lists an ALIVE worker (asked with the platform's client certificate, SECURE=1)."""
    url = f"{master_ui_url(settings)}/json/"

    def registered() -> bool:
        try:
            with urllib.request.urlopen(url, timeout=HTTP_PROBE_TIMEOUT_S,
                                        context=client_context(settings, with_certificate=True)) as response:
                return json.load(response).get("aliveworkers", 0) > 0
        except (OSError, ValueError):
            return False

    return registered
