"""The producer's gap rule alone (``streaming_services.gap_fill``): pages as REST answers them, no server."""

from __future__ import annotations

import time

import pytest

from streaming_services.gap_fill import RestBehindStream, gap_page
from streaming_services.messages import TradeMessage

NOW_MS = int(time.time() * 1000)


def trades(*ids: int) -> list[TradeMessage]:
    return [TradeMessage.from_agg_trade({"s": "BTCUSDT", "p": "1.5", "q": "2", "T": NOW_MS, "a": i, "f": i, "l": i,
                                         "m": False}, "replay") for i in ids]


def ids(page) -> list[int]:
    return [t.agg_trade_id for t in page.missing]


def test_a_gap_is_filled_up_to_the_trade_that_revealed_it_and_no_further() -> None:
    page = gap_page(trades(9, 10, 11, 12, 13), next_id=10, until_id=13, page_size=1000)
    assert ids(page) == [10, 11, 12] and page.next_id == 13 and page.done and not page.absent


def test_a_gap_longer_than_a_page_asks_again_from_the_next_id() -> None:
    page = gap_page(trades(10, 11, 12), next_id=10, until_id=100, page_size=3)
    assert ids(page) == [10, 11, 12] and page.next_id == 13 and not page.done


def test_catching_up_without_an_end_stops_at_a_short_page_or_an_empty_one() -> None:
    full = gap_page(trades(5, 6), next_id=5, until_id=None, page_size=2)
    assert ids(full) == [5, 6] and not full.done
    short = gap_page(trades(7), next_id=7, until_id=None, page_size=2)
    assert ids(short) == [7] and short.done
    empty = gap_page([], next_id=8, until_id=None, page_size=2)
    assert ids(empty) == [] and empty.done and empty.next_id == 8


def test_ids_the_source_never_had_end_the_gap_as_absent() -> None:
    page = gap_page(trades(20, 21), next_id=10, until_id=20, page_size=1000)
    assert ids(page) == [] and page.done and page.absent


@pytest.mark.parametrize("page", [[], trades(3, 4)])
def test_rest_behind_the_stream_is_never_a_closed_gap(page: list[TradeMessage]) -> None:
    with pytest.raises(RestBehindStream):
        gap_page(page, next_id=10, until_id=20, page_size=1000)
