"""``make import``: Binance files straight into PostgreSQL, on the test stack's real PostgreSQL (and Kafka for
the live replay it overlaps). Rows are compared with the files id by id, digit by digit."""

from __future__ import annotations

import csv
import functools
import hashlib
import http.server
import io
import os
import signal
import subprocess
import sys
import threading
import time
import zipfile
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import psycopg2
import pytest

from crypto_assets.candle_store import MarketStore
from crypto_assets.candles import FIVE_MINUTES, ONE_MINUTE
from crypto_assets_tests.candle_reference import differences, fetch_candles, reference_candles, trades_from_csv
from crypto_assets_tests.ingestion_harness import (
    IngestionChain,
    as_decimal_strings,
    count_rows,
    expected_trades,
    stored_trades,
    wait_until,
)
from local_stack.ephemeral import make_state_dir
from streaming_services import importer

pytestmark = pytest.mark.integration

BTC_2024 = "spot_BTCUSDT_ETHUSDT_2024-08-08/spot_BTCUSDT_trades_2024-08-08T235415_to_2024-08-09T000505.csv"
ETH_2024 = "spot_BTCUSDT_ETHUSDT_2024-08-08/spot_ETHUSDT_trades_2024-08-08T235415_to_2024-08-09T000505.csv"


def agg_trades_rows(trades_csv: Path, microseconds: bool = True) -> list[list[str]]:
    """A trades CSV as Binance's aggTrades rows (no header; f = l = id; µs times as in spot files since 2025)."""
    with trades_csv.open(newline="") as handle:
        return [[row["id"], row["price"], row["qty"], row["id"], row["id"],
                 str(int(row["time"]) * (1000 if microseconds else 1)), row["is_buyer_maker"], row["is_best_match"]]
                for row in csv.DictReader(handle)]


def write_zip(path: Path, rows: list[list[str]], checksum: bool = True) -> Path:
    text = io.StringIO()
    csv.writer(text, lineterminator="\n").writerows(rows)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(path.with_suffix(".csv").name, text.getvalue())
    if checksum:
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        path.with_name(path.name + ".CHECKSUM").write_text(f"{digest}  {path.name}\n")
    return path


def run_import(*args: object) -> int:
    return importer.main([*(str(a) for a in args), "--quiet"])


def imported_rows(url: str) -> dict[tuple[str, int], tuple]:
    """Every column the importer writes, as PostgreSQL stores it."""
    with psycopg2.connect(url) as connection, connection.cursor() as cursor:
        cursor.execute("SELECT symbol, agg_trade_id, price::text, volume::text, timestamp, event_time,"
                       " first_trade_id, last_trade_id, trades, is_buyer_maker FROM stock.real_time_prices")
        return {(r[0], r[1]): r[2:] for r in cursor.fetchall()}


def expected_rows(paths: list[Path]) -> dict[tuple[str, int], tuple]:
    """The same columns straight from the trades CSVs (an independent reading of the files)."""
    from datetime import UTC, datetime, timedelta
    from decimal import Decimal

    rows = {}
    for path in paths:
        symbol = path.name.split("_")[1]
        with path.open(newline="") as handle:
            for row in csv.DictReader(handle):
                ms = int(row["time"])
                rows[(symbol, int(row["id"]))] = (
                    f"{Decimal(row['price']):.8f}", f"{Decimal(row['qty']):.8f}", ms,
                    datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=ms), int(row["id"]), int(row["id"]), 1,
                    row["is_buyer_maker"] == "True")
    return rows


def file_states(url: str) -> dict[str, tuple]:
    with psycopg2.connect(url) as connection, connection.cursor() as cursor:
        cursor.execute("SELECT file_name, status, rows_done, rows_new FROM stock.imported_files")
        return {r[0]: r[1:] for r in cursor.fetchall()}


@pytest.fixture
def pair_env(platform_env, db):
    return platform_env(SYMBOLS="BTCUSDT,ETHUSDT")


def test_files_imported_twice_and_in_another_format_leave_each_agg_id_once_digit_for_digit(
        pair_env, shared_data: Path, tmp_path: Path) -> None:
    files = [shared_data / BTC_2024, shared_data / ETH_2024]
    expected = expected_rows(files)
    url = pair_env.database_url

    assert run_import(*files, "--no-candles") == 0
    assert imported_rows(url) == expected
    assert run_import(*files, "--no-candles") == 0
    # The same trades as Binance's aggTrades files: zipped, no header, µs times, a .CHECKSUM beside each.
    zips = [write_zip(tmp_path / f"{s}-aggTrades-2024-08-08.zip", agg_trades_rows(f))
            for s, f in (("BTCUSDT", files[0]), ("ETHUSDT", files[1]))]
    assert run_import(*zips, "--no-candles", "--batch-rows", 5000) == 0

    assert imported_rows(url) == expected
    states = file_states(url)
    assert states[zips[0].name] == ("loaded", 19_904, 0)
    assert states[files[0].name] == ("loaded", 19_904, 19_904)
    with psycopg2.connect(url) as connection, connection.cursor() as cursor:
        cursor.execute("SELECT DISTINCT source, ingest_xid::text FROM stock.real_time_prices")
        assert cursor.fetchall() == [(pair_env.source, importer.IMPORTED_XID)]


def test_an_import_overlapping_a_live_replay_leaves_each_agg_id_once(
        platform_env, kafka_topic, db, shared_data: Path) -> None:
    files = [shared_data / BTC_2024, shared_data / ETH_2024]
    settings = platform_env(KAFKA_TOPIC=kafka_topic, SYMBOLS="BTCUSDT,ETHUSDT", CONSUMER_GROUP=f"group-{kafka_topic}")
    expected = as_decimal_strings(expected_trades(files))
    chain = IngestionChain.start_server(settings, files, settings.symbols, make_state_dir("crypto-test-import-"),
                                        speed=0, retime=False)
    try:
        chain.start_consumer()
        chain.start_producer()
        wait_until(lambda: count_rows(settings.database_url) > 2_000, 240, "the live stream's first rows")
        assert run_import(*files, "--no-candles", "--batch-rows", 3000) == 0
        wait_until(lambda: count_rows(settings.database_url) >= len(expected), 240, f"{len(expected)} rows")
        time.sleep(2)  # a late duplicate would land now
    finally:
        chain.stop()
    assert stored_trades(settings.database_url) == expected
    with psycopg2.connect(settings.database_url) as connection, connection.cursor() as cursor:
        cursor.execute("SELECT ingest_xid = '0'::xid8, count(*) FROM stock.real_time_prices GROUP BY 1 ORDER BY 1")
        by_writer = dict(cursor.fetchall())
    assert by_writer.get(False, 0) > 0 and by_writer.get(True, 0) > 0, f"no overlap happened: {by_writer}"


def test_a_bad_line_a_corrupt_zip_and_a_wrong_checksum_each_stop_with_one_line(
        pair_env, shared_data: Path, tmp_path: Path) -> None:
    rows = agg_trades_rows(shared_data / BTC_2024)
    bad = [*rows[:1000], [rows[1000][0], "12x.5", *rows[1000][2:]], *rows[1001:]]
    bad_csv = tmp_path / "BTCUSDT-aggTrades-2024-08-07.csv"
    bad_csv.write_text("".join(",".join(r) + "\n" for r in bad))
    corrupt = write_zip(tmp_path / "BTCUSDT-aggTrades-2024-08-08.zip", rows, checksum=False)
    data = bytearray(corrupt.read_bytes())
    data[len(data) // 2: len(data) // 2 + 64] = bytes(64)
    corrupt.write_bytes(bytes(data))
    wrong = write_zip(tmp_path / "BTCUSDT-aggTrades-2024-08-09.zip", rows)
    wrong.with_name(wrong.name + ".CHECKSUM").write_text(f"{'0' * 64}  {wrong.name}\n")
    unknown = write_zip(tmp_path / "DOGEUSDT-aggTrades-2024-08-09.zip", rows)

    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    expectations = [(bad_csv, f"{bad_csv}:1001: price '12x.5' is not a plain decimal number"),
                    (corrupt, f"{corrupt}!{corrupt.with_suffix('.csv').name}:"),
                    (wrong, f"{wrong}: SHA-256 "),
                    (unknown, f"{unknown}!DOGEUSDT-aggTrades-2024-08-09.csv:1: unknown symbol 'DOGEUSDT'")]
    for path, start in expectations:
        done = subprocess.run([sys.executable, "-m", "streaming_services.importer", str(path), "--no-candles"],
                              env=env, capture_output=True, text=True, timeout=120)
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 2, done.stderr
        assert len(lines) == 1 and lines[0].startswith(f"import: {start}"), done.stderr
    # What came before the bad line is in, with its position: a corrected file resumes from there.
    states = file_states(pair_env.database_url)
    assert states[bad_csv.name][:2] == ("loading", 1000)
    assert states[corrupt.name][0] == "loading" and states[corrupt.name][1] < len(rows)
    assert wrong.name not in states and unknown.name in states and states[unknown.name][1] == 0


def big_agg_trades_file(path: Path, rows: int) -> Path:
    """A synthetic, valid aggTrades CSV (ms times, no header) large enough to stop an import halfway."""
    t0 = 1_723_161_600_000
    with path.open("w") as handle:
        for i in range(rows):
            price, qty = f"{60000 + (i * 7919) % 100000 / 100:.2f}", f"{((i * 104729) % 100000 + 1) / 100000:.5f}"
            handle.write(f"{1_000_000 + i},{price},{qty},"
                         f"{5_000_000 + 2 * i},{5_000_001 + 2 * i},{t0 + i * 3},{'true' if i % 2 else 'false'},true\n")
    return path


def test_an_import_stopped_with_sigterm_halfway_resumes_to_the_same_result(pair_env, tmp_path: Path) -> None:
    total = 400_000
    path = big_agg_trades_file(tmp_path / "BTCUSDT-aggTrades-2024-08-09.csv", total)
    url = pair_env.database_url
    command = [sys.executable, "-m", "streaming_services.importer", str(path), "--no-candles", "--quiet",
               "--batch-rows", "10000"]
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: file_states(url).get(path.name, ("", 0))[1] >= 50_000, 300, "the first batches")
        process.send_signal(signal.SIGTERM)
        process.wait(60)
    finally:
        if process.poll() is None:
            process.kill()
    stopped_at = file_states(url)[path.name][1]
    assert 0 < stopped_at < total, f"the import was not stopped halfway ({stopped_at} of {total})"
    assert count_rows(url) == stopped_at

    assert run_import(path, "--no-candles") == 0
    status, rows_done, rows_new = file_states(url)[path.name]
    assert (status, rows_done, rows_new) == ("loaded", total, total)
    with psycopg2.connect(url) as connection, connection.cursor() as cursor:
        cursor.execute("SELECT count(*), count(DISTINCT agg_trade_id), min(agg_trade_id), max(agg_trade_id),"
                       " sum(price * volume)::text, sum(first_trade_id + last_trade_id), sum(timestamp),"
                       " count(*) FILTER (WHERE is_buyer_maker) FROM stock.real_time_prices")
        stored = cursor.fetchone()
    with path.open(newline="") as handle:
        from decimal import Decimal
        rows = list(csv.reader(handle))
    expected = (total, total, 1_000_000, 1_000_000 + total - 1,
                str(sum(Decimal(r[1]) * Decimal(r[2]) for r in rows).quantize(Decimal("1E-16"))),
                sum(int(r[3]) + int(r[4]) for r in rows), sum(int(r[5]) for r in rows),
                sum(r[6] == "true" for r in rows))
    assert stored == expected


@pytest.fixture
def data_site(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A local HTTP server with Binance's public data layout (data/spot/daily/aggTrades/SYMBOL/...)."""
    root = tmp_path / "site"
    root.mkdir()
    handler = functools.partial(_QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", root
    finally:
        server.shutdown()
        server.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


def test_download_fetches_verifies_and_imports_from_a_binance_layout(
        platform_env, db, data_site, shared_data: Path, tmp_path: Path, capsys) -> None:
    url, root = data_site
    settings = platform_env(SYMBOLS="BTCUSDT", BINANCE_DATA_URL=url)
    folder = root / "data" / "spot" / "daily" / "aggTrades" / "BTCUSDT"
    folder.mkdir(parents=True)
    rows = agg_trades_rows(shared_data / BTC_2024)
    write_zip(folder / "BTCUSDT-aggTrades-2024-08-08.zip", [r for r in rows if int(r[5]) < 1_723_161_600_000_000])
    write_zip(folder / "BTCUSDT-aggTrades-2024-08-09.zip", [r for r in rows if int(r[5]) >= 1_723_161_600_000_000])

    assert run_import("--download", "BTCUSDT", "2024-08-08", "2024-08-09", "--into", tmp_path / "dl",
                      "--no-candles") == 0
    assert imported_rows(settings.database_url) == expected_rows([shared_data / BTC_2024])

    (folder / "BTCUSDT-aggTrades-2024-08-09.zip.CHECKSUM").write_text(f"{'a' * 64}  BTCUSDT-aggTrades-2024-08-09.zip\n")
    capsys.readouterr()
    assert run_import("--download", "BTCUSDT", "2024-08-09", "2024-08-09", "--into", tmp_path / "dl2",
                      "--no-candles") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "BTCUSDT-aggTrades-2024-08-09.zip: SHA-256" in err[0] and "does not match" in err[0]
    assert run_import("--download", "BTCUSDT", "2024-08-10", "2024-08-10", "--into", tmp_path / "dl3") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "HTTP 404" in err[0]


TIMEFRAMES = (ONE_MINUTE, FIVE_MINUTES)
BTC_2023 = "spot_BTCUSDT_2023-04-05/spot_BTCUSDT_trades_2023-04-04T235959_to_2023-04-05T000654.csv"


@pytest.mark.slow
def test_an_import_recomputes_its_candles_and_the_sensor_does_not_read_it_as_new(
        platform_env, db, shared_data: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    settings = platform_env(SYMBOLS="BTCUSDT", SPARK_MASTER="local[2]", SPARK_REMOTE="")
    path = shared_data / BTC_2023
    assert run_import(path) == 0

    trades = trades_from_csv(path, "BTCUSDT")
    for timeframe in TIMEFRAMES:
        problems = differences(reference_candles(trades, timeframe.minutes), fetch_candles(db, timeframe.table))
        assert not problems, f"{timeframe.table}: " + "\n".join(problems[:20])
    assert file_states(settings.database_url)[path.name] == ("complete", len(trades), len(trades))
    _cursor, waiting, _newest = MarketStore(settings.database_url).pending_trades(ONE_MINUTE)
    assert waiting == 0


EDGE_AMOUNTS = ["1", "0", "0.00000000", "0.00000001", "0.000000001", "1.100000000", "999999999999.99999999",
                "1000000000000", "0000000000001000000", "00000000000000000001", "10000000", "9999999.99999999",
                "10000000.00000001", "99999999", "1000000"]


def test_the_batch_checker_refuses_exactly_what_check_trade_refuses_with_its_message() -> None:
    """Arrow expressions only clear rows; each row (edge amounts, times, ids) gets check_trade's verdict."""
    import pyarrow as pa

    from streaming_services.feeds import BATCH_SCHEMA
    from streaming_services.messages import EARLIEST_TRADE_MS, InvalidMessage, TradeMessage, check_trade
    now = time.time_ns() // 1_000_000
    rows = [(1, p, q, 5, 5, 1_723_161_600_000) for p in EDGE_AMOUNTS for q in EDGE_AMOUNTS]
    rows += [(1, "1.5", "2", f, last, t) for f, last, t in [
        (5, 4, 1_723_161_600_000), (0, 2**31 - 2, 1_723_161_600_000), (0, 2**31 - 1, 1_723_161_600_000),
        (-1, 3, 1_723_161_600_000), (5, 5, EARLIEST_TRADE_MS - 1), (5, 5, EARLIEST_TRADE_MS),
        (5, 5, now + 2 * 86_400_000)]]
    rows += [(-7, "1.5", "2", 5, 5, 1_723_161_600_000)]
    checker = importer.BatchChecker(frozenset({"BTCUSDT"}), "replay")
    for line, (agg, price, qty, first, last, at) in enumerate(rows, start=1):
        batch = pa.RecordBatch.from_pylist([{"agg_id": agg, "price": price, "qty": qty, "first_id": first,
                                             "last_id": last, "time_ms": at, "is_buyer_maker": True,
                                             "line": line}], schema=BATCH_SCHEMA)
        try:
            check_trade(TradeMessage("BTCUSDT", Decimal(price), Decimal(qty), at, agg, first, last, True, "replay"),
                        frozenset({"BTCUSDT"}), now)
            expected = None
        except InvalidMessage as exc:
            expected = f"f:{line}: {exc}"
        good, stop = checker.check("BTCUSDT", "f", batch)
        assert (None if stop is None else str(stop)) == expected, (price, qty, first, last, at)
        assert good.num_rows == (1 if expected is None else 0)
    assert str(importer.BatchChecker(frozenset({"ETHUSDT"}), "replay").check("BTCUSDT", "f", batch)[1]) == (
        f"f:{len(rows)}: unknown symbol 'BTCUSDT'")
