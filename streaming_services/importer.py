"""Binance's public aggTrades (or trades) files straight into ``stock.real_time_prices``, bypassing Kafka.

``python -m streaming_services.importer FILE...`` or ``... --download SYMBOL FROM TO`` (``make import``).

Per file: its ``.CHECKSUM`` (SHA-256) verified when one lies beside it; its rows parsed by the replay
server's parser (``feeds.iter_trade_batches``: Arrow's CSV reader, column by column) and checked by the
consumer's rules (``BatchChecker``: Arrow expressions clear rows, ``messages.check_trade`` judges every
row they do not clear); encoded as COPY's CSV by Arrow and COPYed in batches (a writer thread sends one
while the next is read), each batch committed together with the file's position
in ``stock.imported_files``, so an import stopped anywhere (SIGTERM, a crash) resumes where it stopped.

Invariants:
- each (symbol, agg id) once: the table's unique key, (symbol, agg_trade_id, event_time) since the table
  has a partition per UTC day (``sql/013``): the same trade has the same time in a file as in the stream.
  A batch that meets rows already there (the file imported before, or the live stream that wrote the same
  trades) is merged with ON CONFLICT DO NOTHING. Rows carry the live stream's ``source`` (SOURCE), so they
  are the same rows under any keying. Each batch makes the partitions of its days first.
- imported rows carry ``ingest_xid`` 0, below every candle cursor: the sensor never reads history as
  new rows. Instead, once its files are in, the imported range's candles of every interval are
  recomputed by the backfill (``crypto_assets.backfill``), and only then is a file marked complete; a
  file left ``loaded`` (candles not recomputed) is picked up by the next import.
- a bad line or a corrupt archive stops the import with one line naming the file and the line; the
  batches before it stay committed with their position.

Exit 0 on success, 1 when the candle backfill failed, 2 on a bad file or argument.
"""

from __future__ import annotations

import argparse
import functools
import os
import subprocess
import sys
import threading
import time
import zipfile
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import psycopg2
import psycopg2.errors
import psycopg2.extensions
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
from tqdm import tqdm

from crypto_platform.raw_partitions import ensure_days, utc_days
from crypto_platform.settings import PlatformSettings, SettingsError
from streaming_services.binance_data import DataFileError, download, verified_sha256
from streaming_services.feeds import FeedError, iter_trade_batches, symbol_from_filename
from streaming_services.messages import (
    EARLIEST_TRADE_MS,
    MAX_CLOCK_SKEW_MS,
    MAX_DECIMAL_PLACES,
    MAX_INTEGER_DIGITS,
    MAX_SOURCE_LENGTH,
    MAX_TRADE_QUOTE,
    MAX_TRADES_PER_AGGREGATE,
    InvalidMessage,
    TradeMessage,
    check_trade,
)

DEFAULT_BATCH_ROWS = 200_000
IMPORTED_XID = "0"
SAMPLE_BYTES = 1 << 16
COPY_CHUNK_BYTES = 1 << 20
AMOUNT = rf"^0*[0-9]{{1,{MAX_INTEGER_DIGITS}}}(\.[0-9]{{1,{MAX_DECIMAL_PLACES}}})?$"  # NUMERIC(20, 8)'s digits
QUOTE_CERTAINLY_BELOW = float(MAX_TRADE_QUOTE) / 10  # floats of price × volume only preselect (× 10 margin)

COLUMNS = ("symbol, price, timestamp, event_time, volume, agg_trade_id, first_trade_id, last_trade_id, trades,"
           " is_buyer_maker, source, ingest_xid")
COPY_DIRECT = f"COPY stock.real_time_prices ({COLUMNS}) FROM STDIN WITH (FORMAT csv)"
STAGING = ("CREATE TEMP TABLE IF NOT EXISTS imported_rows (LIKE stock.real_time_prices INCLUDING DEFAULTS)"
           " ON COMMIT DELETE ROWS")
COPY_STAGING = f"COPY imported_rows ({COLUMNS}) FROM STDIN WITH (FORMAT csv)"
MERGE = (f"INSERT INTO stock.real_time_prices ({COLUMNS}) SELECT {COLUMNS} FROM imported_rows"  # noqa: S608
         " ON CONFLICT (symbol, agg_trade_id, event_time) DO NOTHING")


class ImportStopped(Exception):
    """An import that must stop; the message is the one line to print."""


@dataclass(frozen=True)
class FileState:
    rows_done: int
    status: str


@dataclass(frozen=True)
class FileResult:
    path: Path
    rows: int
    new_rows: int
    skipped: bool


class BatchChecker:
    """The consumer's rules (``messages.check_trade``) over a batch of trades at once.

    The Arrow expressions below only ever prove rows fine: a row any of them doubts is judged by
    ``check_trade`` itself, so the rules and their messages stay the consumer's, and the first row it
    refuses stops the import. A doubted row it accepts (say price × volume just under the bound, which
    floats cannot decide) is imported like any other."""

    def __init__(self, symbols: frozenset[str], source: str) -> None:
        self.symbols = symbols
        self.source = source

    def check(self, symbol: str, origin: str, rows: pa.RecordBatch) -> tuple[pa.RecordBatch, ImportStopped | None]:
        """The rows before the first bad one, and the one line naming it (None when every row is good)."""
        now_ms = time.time_ns() // 1_000_000
        agg, first, last, at = (rows.column(n) for n in ("agg_id", "first_id", "last_id", "time_ms"))
        price, qty = rows.column("price"), rows.column("qty")
        price_f, qty_f = price.cast(pa.float64()), qty.cast(pa.float64())
        fine = [pc.greater_equal(at, EARLIEST_TRADE_MS), pc.less_equal(at, now_ms + MAX_CLOCK_SKEW_MS),
                pc.greater_equal(agg, 0), pc.greater_equal(first, 0), pc.greater_equal(last, first),
                pc.less(pc.subtract(last, first), MAX_TRADES_PER_AGGREGATE),
                pc.match_substring_regex(price, AMOUNT), pc.match_substring_regex(qty, AMOUNT),
                pc.greater(price_f, 0), pc.greater(qty_f, 0),
                pc.less(pc.multiply(price_f, qty_f), QUOTE_CERTAINLY_BELOW)]
        ok = functools.reduce(pc.and_, fine)
        if not (symbol in self.symbols and source_is_valid(self.source)):
            ok = pc.and_(ok, False)
        if pc.all(ok).as_py():
            return rows, None
        for index in pc.indices_nonzero(pc.invert(ok)).to_pylist():
            values = {n: rows.column(n)[index].as_py() for n in rows.schema.names}
            try:
                check_trade(TradeMessage(symbol, Decimal(values["price"]), Decimal(values["qty"]), values["time_ms"],
                                         values["agg_id"], values["first_id"], values["last_id"],
                                         values["is_buyer_maker"], self.source), self.symbols, now_ms)
            except InvalidMessage as exc:
                return rows.slice(0, index), ImportStopped(f"{origin}:{values['line']}: {exc}")
        return rows, None


def source_is_valid(source: str) -> bool:
    """``check_trade``'s rule on the source, for the whole file at once."""
    return bool(source) and len(source) <= MAX_SOURCE_LENGTH and source.isprintable()


def copy_rows(rows: pa.Table, symbol: str, source: str) -> pa.Buffer:
    """The batch as COPY's CSV in ``COLUMNS`` order. ``event_time`` is written without a zone: the
    importer's session runs in UTC (``ImportStore``)."""
    count = rows.num_rows
    first, last = rows.column("first_id"), rows.column("last_id")
    table = pa.table([pa.repeat(symbol, count), rows.column("price"), rows.column("time_ms"),
                      rows.column("time_ms").cast(pa.timestamp("ms")), rows.column("qty"), rows.column("agg_id"),
                      first, last, pc.add(pc.subtract(last, first), 1), rows.column("is_buyer_maker"),
                      pa.repeat(source, count), pa.repeat(IMPORTED_XID, count)],
                     names=[c.strip() for c in COLUMNS.split(",")])
    out = pa.BufferOutputStream()
    pa_csv.write_csv(table, out, pa_csv.WriteOptions(include_header=False))
    return out.getvalue()


def estimated_rows(path: Path) -> int | None:
    """The file's rows estimated from its (uncompressed) size and its first 64 KiB, for the progress bar."""
    try:
        if path.suffix.lower() == ".zip":
            with zipfile.ZipFile(path) as archive:
                members = [i for i in archive.infolist() if i.filename.lower().endswith(".csv")]
                if not members:
                    return None
                with archive.open(members[0]) as member:
                    sample = member.read(SAMPLE_BYTES)
                size = sum(i.file_size for i in members)
        else:
            with path.open("rb") as handle:
                sample = handle.read(SAMPLE_BYTES)
            size = path.stat().st_size
    except (zipfile.BadZipFile, OSError):
        return None
    lines = sample.count(b"\n")
    return None if lines == 0 else int(size * lines / len(sample))


class ImportStore:
    """The importer's PostgreSQL side: file states and batch writes (a writer thread's own connection).

    The session runs in UTC: ``copy_rows`` writes ``event_time`` without a zone."""

    def __init__(self, database_url: str) -> None:
        self.database_url = database_url
        self.connection = self._connect()

    def _connect(self) -> psycopg2.extensions.connection:
        return psycopg2.connect(self.database_url, connect_timeout=10, application_name="importer",
                                options="-c TimeZone=UTC")

    def close(self) -> None:
        self.connection.close()

    def start_file(self, name: str, sha256: str, symbol: str) -> FileState:
        """The file's recorded state; a file whose content changed since starts over."""
        with self.connection, self.connection.cursor() as cursor:
            cursor.execute("SELECT sha256, rows_done, status FROM stock.imported_files WHERE file_name = %s FOR UPDATE",
                           (name,))
            row = cursor.fetchone()
            if row is not None and row[0] == sha256:
                return FileState(int(row[1]), row[2])
            cursor.execute(
                "INSERT INTO stock.imported_files (file_name, sha256, symbol) VALUES (%s, %s, %s)"
                " ON CONFLICT (file_name) DO UPDATE SET sha256 = EXCLUDED.sha256, symbol = EXCLUDED.symbol,"
                " rows_done = 0, rows_new = 0, first_ms = NULL, last_ms = NULL, status = 'loading',"
                " started_at = now(), updated_at = now()",
                (name, sha256, symbol),
            )
        return FileState(0, "loading")

    def write_batch(self, name: str, data: pa.Buffer, rows_done: int, first_ms: int, last_ms: int) -> int:
        """The batch's rows and the file's new position, in one transaction; returns the rows that were new.

        COPY straight into the table; a batch meeting rows that are already there is merged instead. The
        partitions of its days are made first, in a transaction of their own: making one locks the table."""
        with self.connection, self.connection.cursor() as cursor:
            ensure_days(cursor, utc_days(first_ms, last_ms))
        with self.connection, self.connection.cursor() as cursor:
            cursor.execute("SAVEPOINT direct_copy")
            try:
                rows = pa.BufferReader(data)
                cursor.copy_expert(COPY_DIRECT, rows, size=COPY_CHUNK_BYTES)
                written = cursor.rowcount
                cursor.execute("RELEASE SAVEPOINT direct_copy")
            except psycopg2.errors.UniqueViolation:
                cursor.execute("ROLLBACK TO SAVEPOINT direct_copy")
                rows.seek(0)
                cursor.execute(STAGING)
                cursor.copy_expert(COPY_STAGING, rows, size=COPY_CHUNK_BYTES)
                cursor.execute(MERGE)
                written = cursor.rowcount
            cursor.execute(
                "UPDATE stock.imported_files SET rows_done = %s, rows_new = rows_new + %s,"
                " first_ms = least(first_ms, %s), last_ms = greatest(last_ms, %s), updated_at = now()"
                " WHERE file_name = %s",
                (rows_done, written, first_ms, last_ms, name),
            )
        return written

    def set_status(self, names: list[str], status: str) -> None:
        with self.connection, self.connection.cursor() as cursor:
            cursor.execute("UPDATE stock.imported_files SET status = %s, updated_at = now() WHERE file_name = ANY(%s)",
                           (status, names))

    def pending_candles(self) -> tuple[list[str], tuple[int, int] | None]:
        """Files whose rows are in but whose candles were not recomputed yet, and the range they span."""
        with self.connection, self.connection.cursor() as cursor:
            cursor.execute("SELECT file_name, first_ms, last_ms FROM stock.imported_files WHERE status = 'loaded'"
                           " ORDER BY file_name")
            rows = cursor.fetchall()
        spans = [(lo, hi) for _name, lo, hi in rows if lo is not None]
        span = (min(s[0] for s in spans), max(s[1] for s in spans) + 1) if spans else None
        return [r[0] for r in rows], span


class FileImporter:
    """Streams one file into the table: parse and check on this thread, COPY on a writer thread."""

    def __init__(self, store: ImportStore, settings: PlatformSettings, batch_rows: int, show_progress: bool) -> None:
        self.store = store
        self.symbols = frozenset(settings.symbols)
        self.source = settings.source
        self.batch_rows = batch_rows
        self.show_progress = show_progress
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="import-writer")
        self._in_flight: Future | None = None
        self._new_rows = 0
        self._lock = threading.Lock()

    def close(self) -> None:
        self._writer.shutdown(wait=True)

    def run(self, path: Path) -> FileResult:
        try:
            sha256 = verified_sha256(path)
            symbol = symbol_from_filename(path)
        except (DataFileError, FeedError) as exc:
            raise ImportStopped(str(exc)) from None
        except OSError as exc:
            raise ImportStopped(f"{path}: {exc.strerror or exc}") from None
        state = self.store.start_file(path.name, sha256, symbol)
        if state.status != "loading":
            return FileResult(path, state.rows_done, 0, skipped=True)
        self._new_rows = 0
        total = estimated_rows(path)
        with tqdm(total=total, initial=state.rows_done, unit=" rows", unit_scale=True, desc=path.name,
                  disable=not self.show_progress, dynamic_ncols=True, mininterval=0.5) as bar:
            position = self._stream(path, symbol, state.rows_done, bar)
            bar.total = position
            bar.refresh()
        self.store.set_status([path.name], "loaded")
        return FileResult(path, position, self._new_rows, skipped=False)

    def _stream(self, path: Path, symbol: str, skip: int, bar: tqdm) -> int:
        """Checks and COPYs the file's trades past its first ``skip``; returns the file's new position.

        Batches hold exactly ``batch_rows`` trades (the last one fewer), so positions are trade counts."""
        checker = BatchChecker(self.symbols, self.source)
        pending: list[pa.RecordBatch] = []
        count, seen, position = 0, 0, skip
        stop: ImportStopped | None = None
        try:
            for batch in iter_trade_batches(path):
                rows = batch.columns
                seen += rows.num_rows
                if seen <= skip:
                    continue
                if seen - rows.num_rows < skip:
                    rows = rows.slice(skip - (seen - rows.num_rows))
                good, stop = checker.check(batch.symbol, batch.origin, rows)
                pending.append(good)
                count += good.num_rows
                while count >= self.batch_rows:
                    table = pa.Table.from_batches(pending)
                    position += self.batch_rows
                    self._submit(path.name, symbol, table.slice(0, self.batch_rows), position, bar)
                    pending, count = table.slice(self.batch_rows).to_batches(), count - self.batch_rows
                if stop is not None:
                    break
        except FeedError as exc:
            stop = ImportStopped(str(exc))
        # The rows before a bad one are committed with their position: a corrected file resumes there.
        if count:
            position += count
            self._submit(path.name, symbol, pa.Table.from_batches(pending), position, bar)
        self._drain()
        if stop is not None:
            raise stop
        return position

    def _submit(self, name: str, symbol: str, rows: pa.Table, position: int, bar: tqdm) -> None:
        """Encodes the batch, waits for the batch in flight, then hands this one to the writer (reading and
        checking go on meanwhile)."""
        data = copy_rows(rows, symbol, self.source)
        lo, hi = (value.as_py() for value in pc.min_max(rows.column("time_ms")).values())
        self._drain()

        def write() -> None:
            new = self.store.write_batch(name, data, position, lo, hi)
            with self._lock:
                self._new_rows += new
            bar.update(rows.num_rows)

        self._in_flight = self._writer.submit(write)

    def _drain(self) -> None:
        if self._in_flight is not None:
            future, self._in_flight = self._in_flight, None
            future.result()


def recompute_candles(store: ImportStore, python: str = sys.executable) -> int:
    """The backfill of every interval over the range of the files loaded but not yet complete."""
    names, span = store.pending_candles()
    if not names:
        return 0
    if span is None:
        store.set_status(names, "complete")
        return 0
    start, end = (datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat() for ms in span)
    print(f"import: recomputing candles {start} → {end} ({len(names)} file(s))", file=sys.stderr)
    status = subprocess.run([python, "-m", "crypto_assets.backfill", "--start", start, "--end", end],
                            check=False).returncode
    if status == 0:
        store.set_status(names, "complete")
    return status


class _OneLineParser(argparse.ArgumentParser):
    def error(self, message: str) -> None:
        print(f"import: {message}", file=sys.stderr)
        raise SystemExit(2)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = _OneLineParser(prog="python -m streaming_services.importer",
                            description="Binance aggTrades/trades files (.zip or .csv) straight into PostgreSQL.")
    parser.add_argument("files", nargs="*", type=Path, help="BTCUSDT-aggTrades-2024-08-08.zip ...")
    parser.add_argument("--download", nargs=3, metavar=("SYMBOL", "FROM", "TO"),
                        help="fetch daily (YYYY-MM-DD) or monthly (YYYY-MM) files from BINANCE_DATA_URL first")
    parser.add_argument("--into", type=Path, help="folder for downloads (default: STATE_DIR/downloads)")
    parser.add_argument("--batch-rows", type=int, default=DEFAULT_BATCH_ROWS, help="rows per transaction")
    parser.add_argument("--no-candles", action="store_true",
                        help="leave the candles to a later import (the files stay 'loaded')")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    if not args.files and not args.download:
        parser.error("give files to import or --download SYMBOL FROM TO")
    if args.batch_rows < 1:
        parser.error("--batch-rows must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        settings = PlatformSettings.from_env()
    except SettingsError as exc:
        print(f"import: {exc}", file=sys.stderr)
        return 2
    files = list(args.files)
    missing = [path for path in files if not path.is_file()]
    if missing:
        print(f"import: {missing[0]} is not a file", file=sys.stderr)
        return 2
    try:
        if args.download:
            symbol, start, end = args.download
            files += download(settings.binance_data_url, symbol, start, end,
                              args.into or settings.state_dir / "downloads")
    except DataFileError as exc:
        print(f"import: {exc}", file=sys.stderr)
        return 2
    try:
        store = ImportStore(settings.database_url)
    except psycopg2.OperationalError as exc:
        print(f"import: cannot reach PostgreSQL ({str(exc).strip().splitlines()[0]})", file=sys.stderr)
        return 2
    importer = FileImporter(store, settings, args.batch_rows, show_progress=not args.quiet and sys.stderr.isatty())
    try:
        for path in files:
            started = time.perf_counter()
            result = importer.run(path)
            seconds = time.perf_counter() - started
            verdict = "already imported" if result.skipped else (
                f"{result.rows} rows, {result.new_rows} new, {result.rows / max(seconds, 1e-9):,.0f} rows/s")
            print(f"import: {path.name}: {verdict}", file=sys.stderr)
        return 0 if args.no_candles else (1 if recompute_candles(store) else 0)
    except ImportStopped as exc:
        print(f"import: {exc}", file=sys.stderr)
        return 2
    finally:
        importer.close()
        store.close()


if __name__ == "__main__":
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    sys.exit(main())
