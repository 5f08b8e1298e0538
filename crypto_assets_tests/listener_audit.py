"""Every TCP port a SECURE=1 platform listens on, tried as a stranger on the same machine would: without a
password, a token or a client certificate, and in plaintext where TLS is wanted. Each must refuse.

The ports come from the kernel (what ``ss -ltn`` lists), not from the settings, so a listener nobody
declared fails the audit too. Two kinds are named exceptions: the replay server (the stand-in for
Binance's public market data, which has no login on Binance either) and the Spark driver's RPC ports
of the Connect server (random ports; ``spark.authenticate`` is checked on its command line, as the
RPC handshake is not a protocol a short probe can speak).
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Callable

import psutil
import psycopg2
import pytest
import requests
from kafka import KafkaProducer
from kafka.errors import KafkaError

from crypto_assets_tests.platform_harness import PlatformUnderTest
from crypto_platform.settings import PlatformSettings


def listeners(platform: PlatformUnderTest) -> dict[int, tuple[str, psutil.Process]]:
    """Port → (address, process) of every listening socket of the platform's processes and their children."""
    processes = {process.pid: process for process in platform.own_processes()}
    for process in list(processes.values()):
        try:
            processes.update({child.pid: child for child in process.children(recursive=True)})
        except psutil.NoSuchProcess:
            continue
    return {c.laddr.port: (c.laddr.ip, processes[c.pid]) for c in psutil.net_connections("tcp")
            if c.status == psutil.CONN_LISTEN and c.pid in processes}


def refused_in_plaintext(host: str, port: int) -> bool:
    """A plaintext HTTP request gets no HTTP answer (the server speaks TLS only)."""
    try:
        requests.get(f"http://{host}:{port}/", timeout=10)
    except requests.ConnectionError:
        return True
    return False


def tls_without_client_certificate_fails(settings: PlatformSettings, port: int) -> bool:
    """A client that trusts the CA but shows no certificate is cut off before any application byte."""
    context = ssl.create_default_context(cafile=str(settings.tls_ca_cert))
    try:
        with socket.create_connection((settings.bind_host, port), timeout=10) as raw, \
                context.wrap_socket(raw, server_hostname=settings.bind_host) as tls:
            tls.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
            return tls.recv(1) == b""
    except (ssl.SSLError, ConnectionError):
        return True


def _postgres(settings: PlatformSettings, _: int) -> None:
    with pytest.raises(psycopg2.OperationalError, match="no encryption|SSL off"):
        psycopg2.connect(settings.database_url.split("?")[0] + "?sslmode=disable", connect_timeout=10)
    stranger = settings.database_url_as("crypto", "not-the-password")
    with pytest.raises(psycopg2.OperationalError, match="password authentication failed"):
        psycopg2.connect(stranger, connect_timeout=10)


def _kafka(settings: PlatformSettings, port: int) -> None:
    with pytest.raises(KafkaError, match="Unable to bootstrap"):
        producer = KafkaProducer(bootstrap_servers=f"{settings.bind_host}:{port}", bootstrap_timeout_ms=5_000,
                                 max_block_ms=10_000)
        producer.send("binance-prices", b"x").get(timeout=5)


def _kafka_controller(settings: PlatformSettings, port: int) -> None:
    assert tls_without_client_certificate_fails(settings, port)


def _spark_connect(settings: PlatformSettings, port: int) -> None:
    from pyspark.sql.connect.session import SparkSession

    # Stopped here, while the server still answers: a client left open cleans up at interpreter exit, against
    # a server long gone, and PySpark's retries then held pytest's exit for about ten minutes.
    session = SparkSession.builder.remote(f"sc://localhost:{port}").create()
    try:
        with pytest.raises(Exception, match="UNAUTHENTICATED|Invalid authentication"):  # noqa: PT011 - gRPC's own
            session.range(1).collect()
    finally:
        session.stop()


def _web(path: str, refusal: int) -> Callable[[PlatformSettings, int], None]:
    def probe(settings: PlatformSettings, port: int) -> None:
        assert refused_in_plaintext(settings.bind_host, port)
        answer = requests.get(f"https://{settings.bind_host}:{port}{path}", verify=settings.tls_ca_cert, timeout=30)
        assert answer.status_code == refusal, (path, answer.status_code, answer.text[:200])
    return probe


def _redis(settings: PlatformSettings, port: int) -> None:
    with socket.create_connection((settings.bind_host, port), timeout=10) as connection:
        connection.sendall(b"PING\r\n")
        assert connection.recv(100).startswith(b"-NOAUTH")


def _metrics(settings: PlatformSettings, port: int) -> None:
    assert refused_in_plaintext(settings.bind_host, port)
    assert tls_without_client_certificate_fails(settings, port)


def assert_no_listener_without_authentication(platform: PlatformUnderTest) -> dict[int, str]:
    """Tries every listener; returns port → what it is, for the test's log."""
    s = platform.settings
    probes: dict[int, tuple[str, Callable[[PlatformSettings, int], None]]] = {
        s.pg_port: ("postgres", _postgres),
        s.kafka_port: ("kafka", _kafka),
        s.kafka_controller_port: ("kafka controller", _kafka_controller),
        s.spark_connect_port: ("spark connect", _spark_connect),
        s.dagster_port: ("dagster", _web("/server_info", 401)),
        s.superset_port: ("superset", _web("/api/v1/chart/", 401)),
        s.redis_port: ("redis", _redis),
        s.consumer_metrics_port: ("consumer metrics", _metrics),
        s.producer_metrics_port: ("producer metrics", _metrics),
    }
    seen: dict[int, str] = {}
    for port, (address, process) in sorted(listeners(platform).items()):
        assert address.removeprefix("::ffff:") == s.bind_host, f"port {port} ({process.name()}) listens on {address}"
        if port == s.replay_port:
            seen[port] = "replay server (public market data)"
        elif port in probes:
            name, probe = probes[port]
            probe(s, port)
            seen[port] = name
        else:
            command = " ".join(process.cmdline())
            assert "SparkConnectServer" in command and "spark.authenticate=true" in command, \
                f"port {port}: an unknown listener ({command[:200]})"
            seen[port] = "spark driver RPC (spark.authenticate)"
    assert set(seen) >= {port for port in probes if port != s.redis_port or s.embedded_redis}, seen
    return seen
