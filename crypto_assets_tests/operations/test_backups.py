"""Backups and point-in-time recovery with real servers: `make backup`, more trades, `make restore TIME=…`
gives exactly the rows up to that instant; the producer and consumer then catch up with no trade lost or
doubled (ids compared with the replay server's REST history); `make restore` to the latest state with the
services running stops them, restores, and starts them again."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from unittest import mock

import psycopg2
import pytest

from crypto_platform.settings import PlatformSettings
from local_stack.ephemeral import make_state_dir, stack_environment
from local_stack.service import ManagedService
from local_stack.stack import LocalStack
from streaming_services.producer_state import acked_path, read_state_file

REPO_ROOT = Path(__file__).resolve().parents[2]
SYMBOLS = ("BTCUSDT", "ETHUSDT")
STREAMING = ("replay-server", "consumer", "producer")
CATCH_UP_TIMEOUT_S = 300


class StreamingPlatform:
    """PostgreSQL, Kafka and the streaming services of a state folder of its own; `make` runs against it."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.env = {**os.environ, **stack_environment(state_dir), "SYMBOLS": ",".join(SYMBOLS), "SUPERSET": "0",
                    "SPARK_REMOTE": "", "PYTHON": sys.executable, "VENV": str(Path(sys.prefix))}
        with mock.patch.dict(os.environ, self.env, clear=True):
            self.settings = PlatformSettings.from_env()
        self.stack = LocalStack(self.settings)

    def service(self, name: str) -> ManagedService:
        return next(service for service in self.stack.services() if service.name == name)

    def start(self, *names: str) -> None:
        with mock.patch.dict(os.environ, self.env, clear=True):
            for name in names:
                self.service(name).start()

    def make(self, *args: str) -> str:
        result = subprocess.run(["make", "--no-print-directory", *args], cwd=REPO_ROOT, env=self.env,
                                capture_output=True, text=True, timeout=900, check=False)
        assert result.returncode == 0, f"make {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
        return result.stdout

    def query(self, sql: str, params: tuple = ()) -> list[tuple]:
        with psycopg2.connect(self.settings.database_url, connect_timeout=10) as connection, \
                connection.cursor() as cursor:
            cursor.execute(sql, params)
            return cursor.fetchall() if cursor.description else []

    def ids(self) -> dict[str, list[int]]:
        found: dict[str, list[int]] = {symbol: [] for symbol in SYMBOLS}
        for symbol, agg_id in self.query("SELECT symbol, agg_trade_id FROM stock.real_time_prices ORDER BY 1, 2"):
            found[symbol].append(agg_id)
        return found

    def replay_ids(self, symbol: str, from_id: int, until_id: int) -> list[int]:
        """The replay server's own history (REST, as Binance serves it) of ``symbol`` in [from_id, until_id]."""
        ids: list[int] = []
        while not ids or ids[-1] < until_id:
            url = (f"http://127.0.0.1:{self.settings.replay_port}/api/v3/aggTrades?symbol={symbol}"
                   f"&fromId={ids[-1] + 1 if ids else from_id}&limit=1000")
            with urllib.request.urlopen(url, timeout=10) as response:
                page = [row["a"] for row in json.load(response)]
            assert page, f"the replay server has no {symbol} trades from {from_id}"
            ids += page
        return [agg_id for agg_id in ids if agg_id <= until_id]

    def wait_for(self, what: str, predicate: Callable[[], bool], timeout: float = CATCH_UP_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return
            time.sleep(1)
        logs = "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-2000:]}"
                         for p in sorted((self.state_dir / "logs").glob("*.log")))
        raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}\n{logs}")

    def acked(self) -> dict[str, int]:
        path = acked_path(self.state_dir, 0)
        return read_state_file(path)[1] if path.exists() else {}


@pytest.fixture
def platform() -> Iterator[StreamingPlatform]:
    state_dir = make_state_dir("crypto-backups-")
    platform = StreamingPlatform(state_dir)
    try:
        with mock.patch.dict(os.environ, platform.env, clear=True):
            platform.stack.start_servers()
        platform.start(*STREAMING)
        yield platform
    finally:
        with mock.patch.dict(os.environ, platform.env, clear=True):
            platform.stack.down()
        shutil.rmtree(state_dir, ignore_errors=True)


def assert_whole_and_single(platform: StreamingPlatform, reached: dict[str, int]) -> None:
    """Every symbol's ids are consecutive from its first to beyond ``reached``, stored once each, and the
    very ids the replay server published."""
    counts = dict(platform.query("SELECT symbol, count(*) - count(DISTINCT agg_trade_id) FROM stock.real_time_prices"
                                 " GROUP BY symbol"))
    assert not any(counts.values()), f"trades stored twice: {counts}"
    ids = platform.ids()
    for symbol in SYMBOLS:
        values = ids[symbol]
        assert values[-1] > reached[symbol], f"{symbol} did not catch up past {reached[symbol]}"
        assert values == platform.replay_ids(symbol, values[0], values[-1]), f"{symbol}: ids lost or foreign"


@pytest.mark.integration
@pytest.mark.slow
def test_point_in_time_restore_then_the_streams_catch_up_without_loss(platform: StreamingPlatform) -> None:
    platform.wait_for("first trades of every symbol", lambda: all(platform.ids().values()))
    listing = platform.make("backup")
    assert "base backup" in listing and "WAL archive:" in listing
    status = platform.make("status")
    assert "newest base backup" in status and "WAL archived" in status, status

    # More trades after the backup; then a quiet instant (the consumer paused) to restore to.
    before_target = {symbol: ids[-1] for symbol, ids in platform.ids().items()}
    platform.wait_for("trades after the backup",
                      lambda: all(ids[-1] > before_target[s] + 5 for s, ids in platform.ids().items()))
    platform.service("consumer").stop()
    time.sleep(1.5)
    target = datetime.now(UTC)
    at_target = platform.ids()
    time.sleep(1.5)
    platform.start("consumer")
    platform.wait_for("trades after the target",
                      lambda: all(ids[-1] > at_target[s][-1] + 5 for s, ids in platform.ids().items()))
    for name in STREAMING:
        platform.service(name).stop()
    reached = {symbol: ids[-1] for symbol, ids in platform.ids().items()}
    assert all(platform.acked().get(s, 0) > at_target[s][-1] for s in SYMBOLS)

    output = platform.make("restore", f"TIME={target.isoformat()}")
    assert "restored to" in output, output
    assert platform.ids() == at_target, "the restore did not give exactly the rows up to TIME"
    stored = dict(platform.query("SELECT partition, next_offset FROM stock.consumer_offsets"))
    assert stored, "the restored database knows where the consumer's writes reached"
    assert platform.acked() == {s: at_target[s][-1] for s in SYMBOLS}, "the producer runs ahead of the database"

    platform.start(*STREAMING)
    platform.wait_for("the streams to catch up past the trades the restore removed",
                      lambda: all(ids and ids[-1] > reached[s] + 5 for s, ids in platform.ids().items()))
    assert_whole_and_single(platform, reached)

    # To the latest state, with the services running: they are stopped, then started again.
    output = platform.make("restore")
    assert "started again: replay-server, consumer, producer" in output, output
    latest = {symbol: ids[-1] for symbol, ids in platform.ids().items()}
    platform.wait_for("the streams after the second restore",
                      lambda: all(ids[-1] > latest[s] + 5 for s, ids in platform.ids().items()))
    assert_whole_and_single(platform, latest)


@pytest.mark.slow  # runs a CLI in a new Python process
def test_restore_without_a_backup_or_with_a_bad_time_is_one_line(tmp_path: Path) -> None:
    env = {**os.environ, **stack_environment(tmp_path / "state"), "PYTHON": sys.executable,
           "VENV": str(Path(sys.prefix))}
    for args, expected in ((["TIME=yesterday"], "TIME='yesterday' is not an ISO instant such as 2026-11-28T16:30:00Z"),
                           ([], "no base backup in BACKUP_DIR yet; run make backup first")):
        result = subprocess.run(["make", "--no-print-directory", "restore", *args], cwd=REPO_ROOT, env=env,
                                capture_output=True, text=True, timeout=120, check=False)
        first_line = result.stderr.splitlines()[0]
        assert result.returncode != 0 and first_line == f"crypto-platform: {expected}", result.stderr
        assert "Traceback" not in result.stderr


@pytest.mark.integration
@pytest.mark.slow
def test_a_failed_restore_keeps_the_data_from_before_and_can_be_run_again() -> None:
    """PostgreSQL down (a crash), TIME past the last archived commit: recovery fails and says so; the
    next `make restore` (latest) still has the folder from before the first, with its unarchived WAL."""
    platform = StreamingPlatform(make_state_dir("crypto-backups-failed-"))
    try:
        with mock.patch.dict(os.environ, platform.env, clear=True):
            platform.stack.start_servers()
        platform.make("backup")
        platform.query("CREATE TABLE public.after_backup AS SELECT generate_series(1, 1000) AS n")
        with mock.patch.dict(os.environ, platform.env, clear=True):
            platform.stack.postgres.stop()
        time.sleep(1)
        failed = subprocess.run(["make", "--no-print-directory", "restore", f"TIME={datetime.now(UTC).isoformat()}"],
                                cwd=REPO_ROOT, env=platform.env, capture_output=True, text=True, timeout=600,
                                check=False)
        assert failed.returncode != 0 and len(failed.stderr.splitlines()) == 2, failed.stderr  # its line, make's
        expected = "crypto-platform: recovery failed: PostgreSQL: recovery ended before"
        assert failed.stderr.startswith(expected), failed.stderr
        assert "data.before-restore" in failed.stderr
        platform.make("restore")
        assert platform.query("SELECT count(*) FROM public.after_backup") == [(1000,)]
        kept = platform.state_dir / "postgres" / "data.before-restore"
        assert (kept / "PG_VERSION").exists() and not (kept / "recovery.signal").exists(), \
            "the folder from before the first restore was replaced by the failed one"
    finally:
        with mock.patch.dict(os.environ, platform.env, clear=True):
            platform.stack.down()
        shutil.rmtree(platform.state_dir, ignore_errors=True)
