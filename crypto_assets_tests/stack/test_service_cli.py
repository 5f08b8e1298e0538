"""The streaming services as processes: bad settings or a taken port give one line and exit code 2; a
broker that is not up yet is waited for, and SIGTERM meanwhile ends the process cleanly."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from local_stack.processes import free_port

pytestmark = pytest.mark.slow  # every test runs a service in a new Python process

SERVICES = {"consumer": "CONSUMER_METRICS_PORT", "producer": "PRODUCER_METRICS_PORT", "replay_server": "REPLAY_PORT"}


def service_env(tmp_path: Path, **overrides: str) -> dict[str, str]:
    env = {**os.environ, "STATE_DIR": str(tmp_path), "KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{free_port()}",
           "REPLAY_PORT": str(free_port()), "PRODUCER_METRICS_PORT": str(free_port()),
           "CONSUMER_METRICS_PORT": str(free_port()), "REPLAY_FILES": "", "DATABASE_URL": ""}
    return {**env, **overrides}


def run(module: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", f"streaming_services.{module}"], env=env, capture_output=True,
                          text=True, timeout=60, check=False)


@pytest.fixture
def taken_port() -> Iterator[int]:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        yield listener.getsockname()[1]


@pytest.mark.parametrize("module", sorted(SERVICES))
def test_a_bad_setting_is_one_line_and_exit_code_2(module: str, tmp_path: Path) -> None:
    result = run(module, service_env(tmp_path, REPLAY_SPEED="fast"))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"{module.replace('_', '-')}: REPLAY_SPEED='fast' is not a number"]


def test_a_replay_file_naming_no_symbol_of_symbols_is_refused_in_one_line(tmp_path: Path) -> None:
    """Failed on the old code: the server started and streamed a synthetic XRPETH instead of the file."""
    path = tmp_path / "derived_XRPETH-aggTrades-2019-10-11_to_2019-10-13.csv"
    path.write_text("26129,0.01633102,4.70443515,27781,27781,1498793709153,True,True\n")
    result = run("replay_server", service_env(tmp_path, REPLAY_FILES=str(path), SYMBOLS="BTCUSDT,ETHUSDT"))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"replay-server: REPLAY_FILES: {path} names none of SYMBOLS=BTCUSDT,ETHUSDT; rename it to"
        " <SYMBOL>-aggTrades-<date>.csv with one of them"]


def test_a_producer_refuses_the_state_of_another_source_in_one_line(tmp_path: Path) -> None:
    """Failed on the old code: SOURCE=binance reused the replay's acked.json (backfilling Binance from
    meaningless ids, or dropping live trades as already sent)."""
    state = tmp_path / "producer" / "acked.json"
    state.parent.mkdir(parents=True)
    state.write_text('{"source": "replay", "acked": {"BTCUSDT": 3071248597}}')
    result = run("producer", service_env(tmp_path, SOURCE="binance"))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"producer: {state} holds the positions of SOURCE=replay, not SOURCE=binance: sources never mix;"
        " use another STATE_DIR (or `make clean`) before switching SOURCE"]


@pytest.mark.parametrize("module", sorted(SERVICES))
def test_a_taken_port_names_the_variable_to_change(module: str, tmp_path: Path, taken_port: int) -> None:
    variable = SERVICES[module]
    result = run(module, service_env(tmp_path, **{variable: str(taken_port)}))
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and f"127.0.0.1:{taken_port}" in lines[0] and f"set {variable}" in lines[0], lines


@pytest.mark.parametrize("module", ["consumer", "producer"])
def test_a_service_waits_for_kafka_and_stops_cleanly_on_sigterm(module: str, tmp_path: Path) -> None:
    process = subprocess.Popen([sys.executable, "-m", f"streaming_services.{module}"], env=service_env(tmp_path),
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    # Its first line about Kafka says it is waiting, with its handlers installed (a fixed sleep was too short
    # for a loaded machine's imports: SIGTERM came first and killed it); the watchdog ends a silent one.
    watchdog = threading.Timer(120, process.kill)
    watchdog.start()
    try:
        lines = []
        for line in process.stderr:
            lines.append(line)
            if "connecting to Kafka" in line:
                break
        assert process.poll() is None, "".join(lines)
    finally:
        watchdog.cancel()
    process.send_signal(signal.SIGTERM)
    assert process.wait(15) == 0
    assert "Traceback" not in "".join(lines) + process.stderr.read()


def test_docker_compose_runs_the_producer_and_the_consumer() -> None:
    compose = yaml.safe_load((Path(__file__).resolve().parents[2] / "docker-compose.yml").read_text())
    for service, module in (("binance-producer", "producer"), ("kafka-consumer", "consumer")):
        definition = compose["services"][service]
        assert definition["command"] == ["python", "-m", "streaming_services.workers", module]  # *_WORKERS of them
        assert definition["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert "producer-data:/data" in compose["services"]["binance-producer"]["volumes"]
