"""What an operator sees is true: the pids `make status` shows are the services' own, `make up` fails
loudly with one line, restarts what runs with other settings, `make down` leaves nothing behind.

One platform (without Superset) for the whole module, driven through `make` like a user would."""

from __future__ import annotations

import re
import subprocess
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from crypto_assets_tests.platform_harness import REPO_ROOT, PlatformUnderTest

pytestmark = pytest.mark.slow

SERVICES = ("postgres", "kafka", "replay-server", "consumer", "producer", "dagster")
OWN_COMMAND = {"postgres": "postgres", "kafka": "kafka.Kafka", "replay-server": "streaming_services.replay_server",
               "consumer": "streaming_services.consumer", "producer": "streaming_services.producer",
               "dagster": "dagster"}
RESTART_DEADLINE_S = 10
MAKE_ERROR = re.compile(r"make(\[\d+\])?: \*\*\* ")  # make[1] when the tests themselves run under make


@pytest.fixture(scope="module")
def platform() -> Iterator[PlatformUnderTest]:
    under_test = PlatformUnderTest.create(SUPERSET="0")
    try:
        under_test.make("up")
        yield under_test
    finally:
        under_test.destroy()


def make(platform: PlatformUnderTest, target: str, **overrides: str) -> subprocess.CompletedProcess:
    return subprocess.run(["make", "--no-print-directory", target], cwd=REPO_ROOT, env={**platform.env, **overrides},
                          capture_output=True, text=True, timeout=600, check=False)


def status_table(platform: PlatformUnderTest) -> dict[str, tuple[str, int | None]]:
    table = {}
    for line in make(platform, "status").stdout.splitlines()[1:]:
        parts = line.split()
        if len(parts) == 4 and parts[1] in {"up", "down"}:
            table[parts[0]] = (parts[1], int(parts[3]) if parts[3].isdigit() else None)
    return table


def one_error_line(result: subprocess.CompletedProcess) -> str:
    """The one line the command printed on stderr (make's own ``make[N]: *** … Error`` aside)."""
    assert "Traceback" not in result.stdout + result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.strip() and not MAKE_ERROR.match(line)]
    assert len(errors) == 1, result.stderr
    return errors[0]


def test_status_pids_are_the_services_own_processes(platform: PlatformUnderTest) -> None:
    table = status_table(platform)
    for name in SERVICES:
        state, pid = table[name]
        assert state == "up" and pid is not None, table
        command = " ".join(psutil.Process(pid).cmdline())
        assert "rotating_log" not in command and OWN_COMMAND[name] in command, f"{name}: pid {pid} is {command}"


def test_killing_each_pid_status_shows_stops_it_and_up_brings_it_back(platform: PlatformUnderTest) -> None:
    before = status_table(platform)
    for name in SERVICES:
        psutil.Process(before[name][1]).kill()
    platform.wait_for("every service down", lambda: all(
        status_table(platform)[name][0] == "down" for name in SERVICES), timeout=60)

    result = make(platform, "up")
    assert result.returncode == 0, result.stdout + result.stderr
    after = status_table(platform)
    for name in SERVICES:
        assert after[name][0] == "up" and after[name][1] != before[name][1], (name, before, after)
    assert "left over" not in make(platform, "status").stdout


def test_a_restarted_consumer_writes_within_ten_seconds(platform: PlatformUnderTest) -> None:
    platform.wait_for("rows flowing", lambda: platform.query(
        "SELECT count(*) FROM stock.real_time_prices WHERE created_at > now() - interval '5 seconds'")[0][0] > 0, 120)
    consumer = psutil.Process(status_table(platform)["consumer"][1])
    killed_at = platform.query("SELECT now()")[0][0]
    consumer.kill()
    time.sleep(3)  # trades queue up in Kafka meanwhile
    assert make(platform, "up").returncode == 0
    consumer = psutil.Process(status_table(platform)["consumer"][1])

    def first_new_row():
        return platform.query("SELECT min(created_at) FROM stock.real_time_prices WHERE created_at > %s",
                              (killed_at,))[0][0]

    platform.wait_for("a row from the restarted consumer", lambda: first_new_row() is not None, timeout=120)
    seconds = first_new_row().timestamp() - consumer.create_time()
    print(f"restarted consumer: first new row {seconds:.1f} s after its process started")
    assert seconds < RESTART_DEADLINE_S


def test_make_up_with_other_settings_restarts_what_they_affect(platform: PlatformUnderTest) -> None:
    before = status_table(platform)
    result = make(platform, "up", SYMBOLS="BTCUSDT,ETHUSDT")
    assert result.returncode == 0, result.stdout + result.stderr
    for name in ("replay-server", "producer", "consumer"):
        assert f"{name} runs with other settings (SYMBOLS='BTCUSDT,ETHUSDT'" in result.stdout, result.stdout
    after = status_table(platform)
    assert {n for n in SERVICES if after[n][1] != before[n][1]} == {"replay-server", "producer", "consumer"}

    refused = make(platform, "up", KAFKA_HEAP="640m")
    assert refused.returncode != 0
    line = one_error_line(refused)
    assert "KAFKA_HEAP='640m'" in line and "make down" in line, line

    empty = make(platform, "up", SYMBOLS="")
    assert empty.returncode != 0 and "SYMBOLS" in one_error_line(empty)

    restored = make(platform, "up")
    assert restored.returncode == 0 and "SYMBOLS='BTCUSDT,ETHUSDT,BNBUSDT,SOLUSDT,XRPUSDT'" in restored.stdout


def _corrupt_files(folder: Path) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    not_utf8 = folder / "BTCUSDT-aggTrades-2024-01-01.csv"
    not_utf8.write_bytes(b"1,2.5,1.0,1,1,1704067200000,True,True\n\xff\xfe\x00\n")
    broken_zip = folder / "ETHUSDT-aggTrades-2024-01-01.zip"
    with zipfile.ZipFile(broken_zip, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("ETHUSDT-aggTrades-2024-01-01.csv", "1,2.5,1.0,1,1,1704067200000,True,True\n" * 5000)
    broken_zip.write_bytes(broken_zip.read_bytes()[:-300])
    return {"missing": folder / "BTCUSDT-aggTrades-1999-01-01.csv", "not-utf8": not_utf8, "broken-zip": broken_zip}


@pytest.mark.parametrize("kind", ["missing", "not-utf8", "broken-zip"])
def test_make_up_with_a_bad_replay_file_fails_with_one_line(platform: PlatformUnderTest, kind: str,
                                                            tmp_path: Path) -> None:
    path = _corrupt_files(tmp_path)[kind]
    result = make(platform, "up", REPLAY_FILES=str(path))
    assert result.returncode != 0, result.stdout + result.stderr
    line = one_error_line(result)
    assert line.startswith("crypto-platform: replay-server exited during start:") and str(path) in line, line
    assert status_table(platform)["replay-server"][0] == "down"


def test_status_shows_the_newest_final_candle_and_no_log_noise(platform: PlatformUnderTest) -> None:
    assert make(platform, "up").returncode == 0
    platform.query(
        "INSERT INTO stock.aggregated_prices_1min (symbol, window_start, window_end, open_price, close_price,"
        " high_price, low_price, avg_price, total_volume, quote_volume, taker_buy_volume, trade_count, is_final)"
        " VALUES ('TESTUSDT', date_trunc('minute', now()) - interval '2 minutes',"
        " date_trunc('minute', now()) - interval '1 minute', 1, 1, 1, 1, 1, 1, 1, 0, 1, true) RETURNING 1")
    result = make(platform, "status")
    assert result.returncode == 0
    assert "alembic" not in result.stdout + result.stderr, result.stderr
    lines = result.stdout.splitlines()
    trade = next(line for line in lines if line.startswith("newest trade:"))
    candle = next(line for line in lines if line.startswith("newest candle:"))
    assert lines.index(candle) == lines.index(trade) + 1 and "s ago" in candle, lines
    lag = next(line for line in lines if line.startswith("consumer lag:"))
    assert "-" not in lag, lag


def test_make_down_leaves_no_process_and_no_port(platform: PlatformUnderTest) -> None:
    dagster = psutil.Process(status_table(platform)["dagster"][1])
    dagster.kill()  # its webserver and daemon live on as orphans
    dagster.wait(30)
    result = make(platform, "down")
    assert result.returncode == 0, result.stdout + result.stderr
    assert platform.own_processes() == [] and platform.held_ports() == []
