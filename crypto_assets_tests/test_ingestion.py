"""Every trade the exchange sends lands exactly once, with Binance's digits, through faults and restarts."""

from __future__ import annotations

from pathlib import Path

import pytest

from crypto_assets_tests.conftest import make_state_dir
from crypto_assets_tests.ingestion_harness import (
    IngestionChain,
    as_decimal_strings,
    count_rows,
    expected_trades,
    stored_trades,
    wait_until,
)

BTC_2023 = "spot_BTCUSDT_2023-04-05/spot_BTCUSDT_trades_2023-04-04T235959_to_2023-04-05T000654.csv"
BTC_2024 = "spot_BTCUSDT_ETHUSDT_2024-08-08/spot_BTCUSDT_trades_2024-08-08T235415_to_2024-08-09T000505.csv"
ETH_2024 = "spot_BTCUSDT_ETHUSDT_2024-08-08/spot_ETHUSDT_trades_2024-08-08T235415_to_2024-08-09T000505.csv"


@pytest.fixture
def chain_factory(platform_env, kafka_topic, db):
    chains: list[IngestionChain] = []

    def create(files: list[Path], symbols: tuple[str, ...], **kwargs) -> IngestionChain:
        settings = platform_env(KAFKA_TOPIC=kafka_topic, SYMBOLS=",".join(symbols),
                                CONSUMER_GROUP=f"group-{kafka_topic}")
        chain = IngestionChain.start_server(settings, files, symbols, make_state_dir("crypto-test-chain-"), **kwargs)
        chains.append(chain)
        return chain

    yield create
    for chain in chains:
        chain.stop()


@pytest.mark.slow
def test_real_files_land_exactly_once_with_binances_digits(chain_factory, shared_data: Path) -> None:
    files = [shared_data / BTC_2024, shared_data / ETH_2024]
    expected = as_decimal_strings(expected_trades(files))
    chain = chain_factory(files, ("BTCUSDT", "ETHUSDT"))
    chain.start_consumer()
    chain.start_producer()
    url = chain.settings.database_url
    wait_until(lambda: count_rows(url) >= len(expected), 240, f"{len(expected)} rows")
    assert stored_trades(url) == expected
