"""The replay server's hand-written frames are exactly Binance's JSON, and feed files cannot break them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from streaming_services.feeds import FeedError, read_binance_file, synthetic_market

BTC_2024 = "spot_BTCUSDT_ETHUSDT_2024-08-08/spot_BTCUSDT_trades_2024-08-08T235415_to_2024-08-09T000505.csv"


def test_hand_written_payloads_equal_the_json_of_the_payload(shared_data: Path) -> None:
    walk = synthetic_market(["XRPUSDT"], 3)["XRPUSDT"]
    walk.start(1_795_600_000_000)
    trades = read_binance_file(shared_data / BTC_2024) + list(walk.trades_until(1_795_600_600_000))
    for trade in trades:
        assert json.loads(trade.payload_json(1_795_600_000_123)) == trade.payload(1_795_600_000_123)


@pytest.mark.parametrize("price", ['1"', "1e5", "NaN", "-3.5", " 1.0", "1,5", ""])
def test_a_price_that_is_not_a_plain_decimal_is_refused_with_its_line(tmp_path: Path, price: str) -> None:
    path = tmp_path / "BTCUSDT-aggTrades-2025-01-01.csv"
    quoted = '"' + price.replace('"', '""') + '"'
    path.write_text(f"1,2.5,0.1,1,1,1735689600000000,true,true\n2,{quoted},0.1,2,2,1735689600001000,true,true\n")
    with pytest.raises(FeedError, match=r":2: price .* is not a plain decimal number"):
        read_binance_file(path)
