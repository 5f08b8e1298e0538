"""Drives a whole platform through its user entry points (`make up`, `make status`, `make down`) in a
folder of its own on free ports: what the end-to-end tests and benchmarks use."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from unittest import mock

import psutil
import psycopg2

from crypto_assets_tests.candle_reference import Trade, fetch_candles, reference_candles
from crypto_platform.settings import PlatformSettings
from local_stack.ephemeral import make_state_dir, stack_environment
from local_stack.status import RunSummary, dagster_runs

REPO_ROOT = Path(__file__).resolve().parent.parent


@dataclass
class PlatformUnderTest:
    """One platform started with `make`, its environment, and the time each stage took."""

    env: dict[str, str]
    state_dir: Path
    timings: dict[str, float] = field(default_factory=dict)

    @classmethod
    def create(cls, **overrides: str) -> PlatformUnderTest:
        state_dir = make_state_dir("crypto-e2e-")
        env = {**os.environ, **stack_environment(state_dir), "PYTHON": sys.executable,
               "VENV": str(Path(sys.prefix)), **overrides}
        return cls(env=env, state_dir=state_dir)

    def make(self, target: str, timeout: float = 600) -> subprocess.CompletedProcess:
        result = subprocess.run(["make", "--no-print-directory", target], cwd=REPO_ROOT, env=self.env,
                                capture_output=True, text=True, timeout=timeout, check=False)
        if result.returncode != 0:
            raise AssertionError(f"make {target} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
        return result

    @property
    def database_url(self) -> str:
        """The migration owner's URL (over TLS, checked against the CA, with SECURE=1)."""
        return self.settings.database_url

    def query(self, sql: str, params: tuple = ()) -> list[tuple]:
        with psycopg2.connect(self.database_url, connect_timeout=5) as connection, connection.cursor() as cursor:
            cursor.execute(sql, params)
            return cursor.fetchall()

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        started = time.monotonic()
        yield
        self.timings[name] = time.monotonic() - started
        print(f"stage {name!r}: {self.timings[name]:.1f} s", flush=True)

    def wait_for(self, what: str, predicate: Callable[[], bool], timeout: float, interval: float = 2.0) -> None:
        deadline = time.monotonic() + timeout
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            try:
                if predicate():
                    return
            except (psycopg2.Error, OSError) as exc:
                last_error = exc
            time.sleep(interval)
        logs = "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}"
                         for p in sorted((self.state_dir / "logs").glob("*.log")))
        raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what} (last error: {last_error})\n{logs}")

    def sensor_runs(self) -> list[RunSummary]:
        """Every run the sensor launched, with its asset-check results."""
        return dagster_runs(self.settings, limit=None, sensor="minute_close_sensor")

    @property
    def settings(self) -> PlatformSettings:
        with mock.patch.dict(os.environ, self.env, clear=True):
            return PlatformSettings.from_env()

    def own_processes(self) -> list[psutil.Process]:
        """Processes whose command line or environment points at this platform's state folder."""
        mine = []
        marker = str(self.state_dir)
        for process in psutil.process_iter(["cmdline", "environ"]):
            try:
                cmdline = " ".join(process.info["cmdline"] or [])
                environ = process.info["environ"] or {}
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            if marker in cmdline or environ.get("STATE_DIR") == marker:
                mine.append(process)
        return mine

    def held_ports(self) -> list[int]:
        ports = {int(v) for k, v in self.env.items() if k.endswith("_PORT") and v.isdigit()}
        listening = {c.laddr.port for c in psutil.net_connections("tcp") if c.status == psutil.CONN_LISTEN}
        return sorted(ports & listening)

    def destroy(self) -> None:
        subprocess.run(["make", "--no-print-directory", "down"], cwd=REPO_ROOT, env=self.env,
                       capture_output=True, timeout=300, check=False)
        shutil.rmtree(self.state_dir, ignore_errors=True)


def assert_candles_match_the_reference(platform: PlatformUnderTest) -> None:
    """Both tables against the independent Decimal reference over the stored trades: every final candle
    equals it, and every window the reference calls final up to the last run's watermark exists, final.

    The watermark (the laggard symbol's, ``stock.candle_cursors``) is read first: trades and candles
    read after it can only be newer, so each window it covers must be in the table.
    """
    marks = dict(platform.query("SELECT name, watermark_ms FROM stock.candle_cursors"))
    rows = platform.query("SELECT symbol, agg_trade_id, price, volume, timestamp, is_buyer_maker, trades"
                          " FROM stock.real_time_prices")
    trades = [Trade(s, a, p, q, t, m, n) for s, a, p, q, t, m, n in rows]
    clock = dict(platform.query("SELECT symbol, max(closed_until_ms) FROM stock.market_clock GROUP BY symbol"))
    with psycopg2.connect(platform.database_url) as connection:
        for table, asset, minutes in (("aggregated_prices_1min", "aggregated_1min", 1),
                                      ("aggregated_prices_5min", "aggregated_5min", 5)):
            expected = reference_candles(trades, minutes, clock)
            candles = fetch_candles(connection, table)
            stored = {key: candle for key, candle in candles.items() if candle["is_final"]}
            # A final 5-minute window can take 5 minutes to come; the 1-minute ones must be there.
            assert stored or minutes == 5, f"no final candle in {table}"
            for key, candle in stored.items():
                assert candle == expected[key], f"{table} {key}: {candle} != {expected[key]}"
            covered = [key for key, candle in expected.items() if candle["is_final"]
                       and ms_of(key[1]) + minutes * 60_000 <= marks[asset]]
            missing = [key for key in covered if key not in stored]
            assert not missing, f"{table}: windows final by the watermark but not published final: {missing[:10]}"


def ms_of(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)
