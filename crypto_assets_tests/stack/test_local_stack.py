"""The foundation: real Kafka and PostgreSQL, the schema, the CLI's entry points and its one-line errors."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import psutil
import psycopg2
import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from crypto_platform.raw_partitions import ensure_days, utc_day
from local_stack.ephemeral import make_state_dir, process_environment, stack_environment
from local_stack.migrations import apply_migrations
from local_stack.stack import LocalStack

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_trades_topic_has_three_partitions(stack: LocalStack) -> None:
    assert stack.kafka.partition_count(stack.settings.kafka_topic) == 3


def test_round_trip_across_three_partitions_keeps_per_key_order(stack: LocalStack, kafka_topic: str) -> None:
    symbols = ["BTCUSDT", "ETHUSDT", "BNBUSDT", "SOLUSDT", "XRPUSDT", "ADAUSDT"]
    producer = KafkaProducer(bootstrap_servers=stack.settings.kafka_bootstrap_servers, acks="all")
    for sequence in range(200):
        for symbol in symbols:
            producer.send(kafka_topic, key=symbol.encode(), value=f"{symbol}:{sequence}".encode())
    producer.flush()
    producer.close()

    consumer = KafkaConsumer(
        bootstrap_servers=stack.settings.kafka_bootstrap_servers, auto_offset_reset="earliest",
        enable_auto_commit=False, consumer_timeout_ms=5000,
    )
    consumer.assign([TopicPartition(kafka_topic, p) for p in range(3)])
    seen: dict[str, list[int]] = defaultdict(list)
    partitions_of: dict[str, set[int]] = defaultdict(set)
    for record in consumer:
        symbol, sequence = record.value.decode().split(":")
        seen[symbol].append(int(sequence))
        partitions_of[symbol].add(record.partition)
        if sum(map(len, seen.values())) == 200 * len(symbols):
            break
    consumer.close()

    assert {symbol: len(values) for symbol, values in seen.items()} == {symbol: 200 for symbol in symbols}
    assert all(values == list(range(200)) for values in seen.values()), "order within a key was lost"
    assert all(len(parts) == 1 for parts in partitions_of.values()), "a key was split over partitions"
    assert len(set().union(*partitions_of.values())) > 1, "every key landed in one partition"


def _schema_fingerprint(database_url: str) -> list[tuple]:
    connection = psycopg2.connect(database_url)
    try:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT table_name, column_name, data_type, numeric_precision, numeric_scale, is_nullable"
                " FROM information_schema.columns WHERE table_schema = 'stock' ORDER BY 1, 2"
            )
            columns = cursor.fetchall()
            cursor.execute("SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'stock' ORDER BY 1")
            return columns + cursor.fetchall()
    finally:
        connection.close()


def test_migrations_applied_twice_change_nothing(stack: LocalStack) -> None:
    before = _schema_fingerprint(stack.settings.database_url)
    assert apply_migrations(stack.settings.database_url) == []
    assert apply_migrations(stack.settings.database_url) == []
    assert _schema_fingerprint(stack.settings.database_url) == before
    assert any(row[0] == "real_time_prices" and row[1] == "agg_trade_id" for row in before)


def test_prices_are_numeric_never_float(stack: LocalStack) -> None:
    types = {(row[0], row[1]): row[2] for row in _schema_fingerprint(stack.settings.database_url) if len(row) == 6}
    for (table, column), data_type in types.items():
        if column.endswith(("price", "volume", "vwap")) or column in {"price", "volume"}:
            assert data_type == "numeric", f"stock.{table}.{column} is {data_type}"


TRADE_INSERT = (
    "INSERT INTO stock.real_time_prices (symbol, price, timestamp, event_time, volume, agg_trade_id,"
    " first_trade_id, last_trade_id, trades, is_buyer_maker, source)"
    " VALUES (%s, %s, %s, to_timestamp(%s / 1000.0), %s, %s, %s, %s, %s, %s, %s)"
)


def test_unique_keys_reject_duplicates(db) -> None:
    trade = ("BTCUSDT", "28165.47000000", 1680652799999, 1680652799999, "0.00056000", 42, 100, 101, 2, True, "test")
    with db.cursor() as cursor:
        ensure_days(cursor, [utc_day(trade[2])])
        cursor.execute(TRADE_INSERT, trade)
        with pytest.raises(psycopg2.errors.UniqueViolation):
            cursor.execute(TRADE_INSERT, trade)
        cursor.execute(TRADE_INSERT, ("ETHUSDT", *trade[1:]))  # the key is (symbol, agg_trade_id, event_time)
        cursor.execute("SELECT price::text, volume::text FROM stock.real_time_prices WHERE symbol = 'BTCUSDT'")
        assert cursor.fetchone() == ("28165.47000000", "0.00056000")

        candle = (
            "INSERT INTO stock.{} (symbol, window_start, window_end, open_price, close_price, high_price,"
            " low_price, avg_price, total_volume, quote_volume, taker_buy_volume, trade_count)"
            " VALUES ('BTCUSDT', '2023-04-05T00:00Z', '2023-04-05T00:01Z', 1, 1, 1, 1, 1, 0, 0, 0, 0)"
        )
        for table in ("aggregated_prices_1min", "aggregated_prices_5min"):
            cursor.execute(candle.format(table))
            with pytest.raises(psycopg2.errors.UniqueViolation):
                cursor.execute(candle.format(table))

        dead_letter = (
            "INSERT INTO stock.rejected_messages (topic, partition, \"offset\", raw_payload, error)"
            " VALUES ('binance-prices', 0, 7, %s, 'malformed JSON')"
        )
        cursor.execute(dead_letter, (b"{",))
        with pytest.raises(psycopg2.errors.UniqueViolation):
            cursor.execute(dead_letter, (b"{",))


def _run_make(target: str, env: dict[str, str], *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["make", "--no-print-directory", target, *extra], cwd=REPO_ROOT, env=env,
        capture_output=True, text=True, timeout=300, check=False,
    )


@pytest.fixture
def cli_env(tmp_path_factory) -> dict[str, str]:
    """Environment for a second, independent stack driven through `make` (its own folder and ports)."""
    state_dir = make_state_dir("crypto-test-cli-")
    env = {**os.environ, **stack_environment(state_dir), "PYTHON": sys.executable, "VENV": str(Path(sys.prefix)),
           "SUPERSET": "0"}
    yield env
    _run_make("down", env)
    shutil.rmtree(state_dir, ignore_errors=True)


@pytest.mark.slow
def test_make_down_and_up_keep_rows_and_up_is_idempotent(cli_env: dict[str, str]) -> None:
    first = _run_make("up", cli_env)
    assert first.returncode == 0, first.stdout + first.stderr
    status = _run_make("status", cli_env)
    assert "postgres        up" in status.stdout and "kafka           up" in status.stdout, status.stdout

    url = (f"postgresql://crypto:crypto-local-dev@127.0.0.1:{cli_env['PG_PORT']}/crypto")
    with psycopg2.connect(url) as connection, connection.cursor() as cursor:
        # An id the running replay feed never reaches, told apart by its source; an old day, whose partition
        # (made now) the next ups' retention keeps.
        ensure_days(cursor, [utc_day(1680652800000)])
        cursor.execute(TRADE_INSERT, ("SOLUSDT", "20.5", 1680652800000, 1680652800000, "3", 10**15, 1, 1, 1, False,
                                      "test"))
    pids_before = status.stdout

    again = _run_make("up", cli_env)
    assert again.returncode == 0, again.stderr
    servers_now = _run_make("status", cli_env).stdout.splitlines()[1:3]
    assert servers_now == pids_before.splitlines()[1:3], "second up restarted a server"

    assert _run_make("down", cli_env).returncode == 0
    down_status = _run_make("status", cli_env).stdout
    assert "postgres        down" in down_status and "kafka           down" in down_status
    assert _run_make("up", cli_env).returncode == 0
    with psycopg2.connect(url) as connection, connection.cursor() as cursor:
        cursor.execute("SELECT symbol, price::text FROM stock.real_time_prices WHERE source = 'test'")
        assert cursor.fetchall() == [("SOLUSDT", "20.50000000")]


@pytest.mark.parametrize("variable", ["PG_PORT", "KAFKA_PORT"])
@pytest.mark.slow  # runs a CLI in a new Python process
def test_taken_port_fails_with_one_line_naming_the_variable(cli_env: dict[str, str], variable: str) -> None:
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        port = blocker.getsockname()[1]
        result = _run_make("up", {**cli_env, variable: str(port)})
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("crypto-platform:")]
    assert len(errors) == 1, result.stderr
    assert f"port {port}" in errors[0] and variable in errors[0]
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("variable", "value"),
    [("KAFKA_PORT", "abc"), ("PG_PORT", "70000"), ("SOURCE", "nyse"), ("SYMBOLS", ","), ("SYMBOLS", ""),
     ("REPLAY_SPEED", "-1"), ("KAFKA_BROKERS", "2"), ("KAFKA_MIN_INSYNC_REPLICAS", "2")],
)
def test_bad_setting_exits_with_one_readable_line(variable: str, value: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "local_stack.cli", "status"], cwd=REPO_ROOT,
        env={**os.environ, variable: value}, capture_output=True, text=True, timeout=60, check=False,
    )
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and variable in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.slow  # runs a CLI in a new Python process
def test_config_says_which_settings_do_nothing_as_configured() -> None:
    def config(**overrides: str) -> dict[str, str]:
        result = subprocess.run([sys.executable, "-m", "local_stack.cli", "config"], cwd=REPO_ROOT,
                                env={**os.environ, "SOURCE": "replay", "SPARK_CLUSTER": "0", **overrides},
                                capture_output=True, text=True, timeout=60, check=True)
        return {line.split()[0]: line for line in result.stdout.splitlines()}

    synthetic = config(REPLAY_FILES="")
    assert "no effect now: REPLAY_FILES is empty" in synthetic["REPLAY_SPEED"]
    assert "no effect now: SPARK_CLUSTER=0" in synthetic["SPARK_WORKER_CORES"]
    replaying = config(REPLAY_FILES="/data/BTCUSDT-aggTrades-2024-08-08.zip")
    assert "no effect" not in replaying["REPLAY_SPEED"] and "no effect" not in replaying["REPLAY_RETIME"]
    assert "no effect now: SOURCE=binance" in config(SOURCE="binance")["REPLAY_FILES"]


def _status_table(env: dict[str, str]) -> dict[str, tuple[str, str]]:
    lines = _run_make("status", env).stdout.splitlines()
    table = {}
    for line in lines[1:]:
        parts = line.split()
        if len(parts) == 4 and parts[1] in {"up", "down"}:
            table[parts[0]] = (parts[1], parts[3])
    return table


@pytest.mark.slow
def test_a_dead_server_shows_down_and_up_restarts_only_it(cli_env: dict[str, str]) -> None:
    assert _run_make("up", cli_env).returncode == 0
    before = _status_table(cli_env)
    assert before["kafka"][0] == before["postgres"][0] == "up"

    broker = psutil.Process(int(before["kafka"][1]))  # the pid status shows is the broker's own
    assert broker.name() == "java"
    broker.kill()
    psutil.wait_procs([broker], timeout=20)
    deadline = time.monotonic() + 20
    while _status_table(cli_env)["kafka"][0] != "down" and time.monotonic() < deadline:
        time.sleep(0.5)
    assert _status_table(cli_env)["kafka"][0] == "down"

    assert _run_make("up", cli_env).returncode == 0
    after = _status_table(cli_env)
    assert after["kafka"][0] == "up" and after["kafka"][1] != before["kafka"][1]
    assert after["postgres"] == before["postgres"], "up touched a server that was running"


def test_process_environment_sets_values_for_the_block_then_restores_the_environment_exactly(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CRYPTO_TEST_KEPT", "before")
    monkeypatch.delenv("CRYPTO_TEST_ADDED", raising=False)
    before = dict(os.environ)
    with process_environment({"CRYPTO_TEST_KEPT": "inside", "CRYPTO_TEST_ADDED": "inside"}):
        assert (os.environ["CRYPTO_TEST_KEPT"], os.environ["CRYPTO_TEST_ADDED"]) == ("inside", "inside")
        os.environ["CRYPTO_TEST_SET_IN_THE_BLOCK"] = "1"
    assert dict(os.environ) == before
