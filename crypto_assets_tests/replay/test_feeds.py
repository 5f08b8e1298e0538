"""Replay feeds: Binance's file shapes (aggTrades/trades, header or not, ms or µs, csv or zip), retiming,
and a reproducible synthetic market."""

from __future__ import annotations

import re
import zipfile
from itertools import pairwise
from pathlib import Path

import pytest

from streaming_services.feeds import FeedError, load_files, read_binance_file, retime, synthetic_market

AGG_ROWS = ("26129,0.01633102,4.70443515,27781,27781,1498793709153,True,True\n"
            "26128,0.01633103,1.0,27779,27780,1498793709000,False,True\n")
AGG_ROWS_US = "26129,0.01633102,4.70443515,27781,27781,1735689600123456,True,True\n"


def test_aggtrades_csv_without_header_sorted_by_id(tmp_path: Path) -> None:
    path = tmp_path / "BNBBTC-aggTrades-2017-07-01.csv"
    path.write_text(AGG_ROWS)
    trades = read_binance_file(path)
    assert [t.agg_id for t in trades] == [26128, 26129]
    first = trades[0]
    fields = (first.symbol, first.price, first.qty, first.first_id, first.last_id, first.time_ms, first.is_buyer_maker)
    assert fields == ("BNBBTC", "0.01633103", "1.0", 27779, 27780, 1498793709000, False)


def test_microsecond_times_become_milliseconds(tmp_path: Path) -> None:
    path = tmp_path / "BTCUSDT-aggTrades-2025-01-01.csv"
    path.write_text(AGG_ROWS_US)
    assert read_binance_file(path)[0].time_ms == 1735689600123


def test_trades_csv_with_header_is_an_aggtrade_per_trade(shared_data: Path) -> None:
    path = next((shared_data / "spot_BTCUSDT_2023-04-05").glob("*trades*.csv"))
    trades = read_binance_file(path)
    assert len(trades) == 3144
    assert all(t.first_id == t.last_id == t.agg_id for t in trades)
    assert [t.agg_id for t in trades] == list(range(3071245454, 3071248598))
    assert trades[0].price == "28165.47000000" and trades[0].is_buyer_maker is True


def test_zip_archives_are_read(tmp_path: Path) -> None:
    archive = tmp_path / "ETHUSDT-aggTrades-2024-08-08.zip"
    with zipfile.ZipFile(archive, "w") as handle:
        handle.writestr("ETHUSDT-aggTrades-2024-08-08.csv", AGG_ROWS)
    assert [t.symbol for t in read_binance_file(archive)] == ["ETHUSDT", "ETHUSDT"]


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [("nosymbol.csv", AGG_ROWS, "no symbol"), ("BTCUSDT-x-1.csv", "1,2,3\n", "3 columns"),
     ("BTCUSDT-x-1.csv", "a,1,1,1,1,1,True,True\n2,x,1,1,1,zz,True,True\n", ":2:")],
)
def test_bad_files_name_the_file_and_line(tmp_path: Path, name: str, content: str, message: str) -> None:
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(FeedError, match=message):
        read_binance_file(path)


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FeedError, match="not a file"):
        load_files([tmp_path / "BTCUSDT-aggTrades-1.csv"])


def test_retime_shifts_every_trade_and_keeps_the_rest(tmp_path: Path) -> None:
    path = tmp_path / "BNBBTC-aggTrades-2017-07-01.csv"
    path.write_text(AGG_ROWS)
    trades = read_binance_file(path)
    shifted = retime(trades, 1000)
    assert [t.time_ms - s.time_ms for t, s in zip(shifted, trades, strict=True)] == [1000, 1000]
    assert [(t.agg_id, t.price) for t in shifted] == [(t.agg_id, t.price) for t in trades]


def test_synthetic_market_is_reproducible_consecutive_and_independent_of_tick_size() -> None:
    coarse, fine = synthetic_market(["BTCUSDT"], 1)["BTCUSDT"], synthetic_market(["BTCUSDT"], 1)["BTCUSDT"]
    coarse.start(0)
    fine.start(0)
    in_one = list(coarse.trades_until(60_000))
    in_steps = [t for end in [*range(7, 60_000, 7), 60_000] for t in fine.trades_until(end)]
    assert in_one == in_steps
    assert 150 < len(in_one) < 450, "several trades a second"
    assert [t.agg_id for t in in_one] == list(range(1, len(in_one) + 1))
    assert all(b.first_id == a.last_id + 1 for a, b in pairwise(in_one))
    assert all(float(t.price) > 0 and float(t.qty) > 0 for t in in_one)


def _bad_file(tmp_path: Path, kind: str) -> Path:
    """A file a user might name in REPLAY_FILES by mistake."""
    if kind == "not-utf8":
        path = tmp_path / "BTCUSDT-aggTrades-2024-01-01.csv"
        path.write_bytes(b"26129,0.0163,4.7,27781,27781,1498793709153,True,True\n" + b"\xff\xfe\x00garbage\n")
    elif kind == "broken-zip":
        path = tmp_path / "BTCUSDT-aggTrades-2024-01-01.zip"
        path.write_bytes(b"PK\x03\x04" + b"\x00" * 40 + b"not a zip at all")
    elif kind == "truncated-zip":
        path = tmp_path / "BTCUSDT-aggTrades-2024-01-01.zip"
        with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            archive.writestr("BTCUSDT-aggTrades-2024-01-01.csv", AGG_ROWS * 2000)
        path.write_bytes(path.read_bytes()[:-200])
    elif kind == "nul-bytes":
        path = tmp_path / "BTCUSDT-aggTrades-2024-01-01.csv"
        path.write_bytes(b"26129,0.0163,4.7\x00,27781\n")
    else:
        path = tmp_path / "BTCUSDT-aggTrades-2024-01-01.csv"
    return path


@pytest.mark.parametrize("kind", ["missing", "not-utf8", "broken-zip", "truncated-zip", "nul-bytes"])
def test_a_bad_file_is_one_feed_error_naming_it(tmp_path: Path, kind: str) -> None:
    path = _bad_file(tmp_path, kind)
    with pytest.raises(FeedError) as error:
        load_files([path])
    message = str(error.value)
    assert str(path) in message and "\n" not in message, message


def test_a_file_is_read_under_the_symbol_of_symbols_its_name_carries(tmp_path: Path) -> None:
    """Failed on the old code: the name gave the symbol DERIVED, and the server replaced XRPETH by a
    synthetic market without a word."""
    path = tmp_path / "derived_XRPETH-aggTrades-2019-10-11_to_2019-10-13.csv"
    path.write_text(AGG_ROWS)
    assert {t.symbol for t in read_binance_file(path, ("BTCUSDT", "XRPETH"))} == {"XRPETH"}
    assert set(load_files([path], ("XRPETH",))) == {"XRPETH"}
    with pytest.raises(FeedError, match=rf"^REPLAY_FILES: {re.escape(str(path))} names none of SYMBOLS=BTCUSDT;"
                                        r" rename it"):
        read_binance_file(path, ("BTCUSDT",))
