"""The whole platform as a newcomer meets it: `make up` on the replay feed, data flowing end to end,
`make down` + `make up` losing and doubling nothing, and `make down` leaving nothing behind."""

from __future__ import annotations

from pathlib import Path

import pytest

from crypto_assets_tests.platform_harness import PlatformUnderTest

REAL_FILES = (
    "spot_BTCUSDT_ETHUSDT_2024-08-08/spot_BTCUSDT_trades_2024-08-08T235415_to_2024-08-09T000505.csv",
    "spot_BTCUSDT_ETHUSDT_2024-08-08/spot_ETHUSDT_trades_2024-08-08T235415_to_2024-08-09T000505.csv",
)
SYMBOLS = ("BTCUSDT", "ETHUSDT", "BNBUSDT", "SOLUSDT", "XRPUSDT")


def ids_by_symbol(platform: PlatformUnderTest) -> dict[str, list[int]]:
    rows = platform.query("SELECT symbol, agg_trade_id FROM stock.real_time_prices ORDER BY symbol, agg_trade_id")
    ids: dict[str, list[int]] = {}
    for symbol, agg_id in rows:
        ids.setdefault(symbol, []).append(agg_id)
    return ids


def assert_contiguous(ids: dict[str, list[int]]) -> None:
    for symbol, values in ids.items():
        assert values == list(range(values[0], values[-1] + 1)), f"{symbol}: ids missing between {values[0]} and {values[-1]}"


@pytest.fixture
def platform(shared_data: Path):
    under_test = PlatformUnderTest.create(
        REPLAY_FILES=",".join(str(shared_data / name) for name in REAL_FILES), REPLAY_SPEED="1", REPLAY_RETIME="1",
        SYMBOLS=",".join(SYMBOLS),
    )
    yield under_test
    under_test.destroy()
    print("stage timings: " + ", ".join(f"{name} {seconds:.1f} s" for name, seconds in under_test.timings.items()))


@pytest.mark.slow
@pytest.mark.integration
def test_make_up_runs_the_platform_end_to_end_and_survives_a_restart(platform: PlatformUnderTest) -> None:
    with platform.stage("make up"):
        platform.make("up")
    with platform.stage("trades of every symbol in PostgreSQL"):
        platform.wait_for("trades of every symbol",
                          lambda: {s for s, in platform.query("SELECT DISTINCT symbol FROM stock.real_time_prices")}
                          == set(SYMBOLS), 180)
    status = platform.make("status").stdout
    for service in ("postgres", "kafka", "replay-server", "consumer", "producer"):
        assert any(line.split()[:2] == [service, "up"] for line in status.splitlines()), status
    assert "consumer lag:" in status and "newest trade:" in status

    before = ids_by_symbol(platform)
    assert_contiguous(before)
    with platform.stage("make down + make up"):
        platform.make("down")
        platform.make("up")
    with platform.stage("trades after the restart"):
        platform.wait_for("new trades of every symbol after the restart",
                          lambda: all(max(ids_by_symbol(platform).get(s, [0])) > max(before[s]) for s in SYMBOLS), 180)
    after = ids_by_symbol(platform)
    assert_contiguous(after)
    for symbol, values in before.items():
        assert set(values) <= set(after[symbol]), f"{symbol}: rows lost over the restart"
    assert platform.query("SELECT count(*) - count(DISTINCT (symbol, agg_trade_id)) FROM stock.real_time_prices") == [(0,)]
    assert platform.query("SELECT count(*) FROM stock.rejected_messages") == [(0,)]

    with platform.stage("make down"):
        platform.make("down")
    assert platform.own_processes() == []
    assert platform.held_ports() == []
