"""TradeWriter on the real PostgreSQL: COPY straight in when the rows are new, a merge when some are
already there (a batch read again after a crash or rebalance), a dead letter for a row PostgreSQL refuses."""

from __future__ import annotations

from decimal import Decimal

import msgspec
import pytest

from streaming_services.messages import TradeMessage
from streaming_services.postgres_sink import Accepted, Rejected, TradeWriter, WriteOutcome

START_MS = 1_723_161_255_000


def batch(agg_ids: list[int], price: str = "61234.56000000") -> list[Accepted]:
    return [Accepted(TradeMessage("BTCUSDT", Decimal(price), Decimal("0.00120000"), START_MS + agg_id, agg_id,
                                  agg_id * 2, agg_id * 2 + 1, agg_id % 2 == 0, "test"), "trades", 0, agg_id)
            for agg_id in agg_ids]


def stored(db) -> dict[int, tuple[str, int]]:
    with db.cursor() as cursor:
        cursor.execute("SELECT agg_trade_id, price::text, trades FROM stock.real_time_prices")
        return {agg_id: (price, trades) for agg_id, price, trades in cursor.fetchall()}


@pytest.fixture
def writer(stack, db):
    trade_writer = TradeWriter(stack.settings.database_url)
    yield trade_writer
    trade_writer.close()


def test_new_rows_are_copied_and_a_batch_read_again_writes_nothing(writer, db) -> None:
    assert writer.write(batch(list(range(1, 1001))), []).written == 1000
    assert writer.write(batch(list(range(1, 1001))), []) == WriteOutcome(written=0, duplicates=1000)
    assert len(stored(db)) == 1000 and stored(db)[7] == ("61234.56000000", 2)


def test_texts_arrive_as_sent_through_copys_escapes(writer, db) -> None:
    """COPY's text format gives the backslash a meaning (and ``\\N`` is its NULL); a source may hold one. Both
    the direct COPY and, for a batch met again, the staging table's COPY keep it."""
    source = "r\\N\\t"

    def sourced(agg_ids: list[int]) -> list[Accepted]:
        return [msgspec.structs.replace(item, trade=msgspec.structs.replace(item.trade, source=source))
                for item in batch(agg_ids)]

    assert writer.write(sourced([1, 2, 3]), []).written == 3
    assert writer.write(sourced([3, 4]), []) == WriteOutcome(written=1, duplicates=1)
    with db.cursor() as cursor:
        cursor.execute("SELECT source, count(*) FROM stock.real_time_prices GROUP BY source")
        assert cursor.fetchall() == [(source, 4)]


def test_a_batch_partly_written_before_writes_only_its_new_rows(writer, db) -> None:
    writer.write(batch(list(range(1, 501))), [])
    assert writer.write(batch(list(range(251, 751))), []) == WriteOutcome(written=250, duplicates=250)
    assert sorted(stored(db)) == list(range(1, 751))


def test_a_conflicting_duplicate_is_dead_lettered_with_both_values(writer, db) -> None:
    """Failed on the old code: ON CONFLICT DO NOTHING dropped the second version without a trace."""
    writer.write(batch([1, 2, 3]), [])
    outcome = writer.write(batch([2], price="1.00000000") + batch([4]), [])
    assert outcome.written == 1 and len(outcome.refused) == 1
    assert stored(db)[2][0] == "61234.56000000"  # the stored row stays
    with db.cursor() as cursor:
        cursor.execute('SELECT "offset", error FROM stock.rejected_messages')
        ((offset, error),) = cursor.fetchall()
    assert offset == 2
    assert error.startswith("conflicting duplicate of BTCUSDT agg_trade_id 2: stored price=61234.56000000")
    assert "this message price=1.00000000" in error


def test_a_batch_holding_the_same_trade_twice_writes_it_once(writer, db) -> None:
    assert writer.write(batch([1, 2, 2, 3, 3, 3]), []) == WriteOutcome(written=3, duplicates=3)
    assert sorted(stored(db)) == [1, 2, 3]


def test_a_row_postgresql_refuses_becomes_a_dead_letter_with_the_others_written(writer, db) -> None:
    refused = batch([5], price="1234567890123.5")  # NUMERIC(20, 8) holds 12 integer digits
    dead = Rejected("trades", 0, 99, b"BTCUSDT", b"{", "malformed JSON: test")
    assert writer.write(batch([1, 2]) + refused + batch([3]), [dead]).written == 3
    assert sorted(stored(db)) == [1, 2, 3]
    with db.cursor() as cursor:
        cursor.execute('SELECT "offset", error FROM stock.rejected_messages ORDER BY "offset"')
        rows = cursor.fetchall()
    assert [offset for offset, _ in rows] == [5, 99]
    assert rows[0][1].startswith("refused by PostgreSQL: numeric field overflow")


def test_each_batch_records_where_its_partitions_reached_in_its_transaction(writer, db) -> None:
    refused = batch([5], price="1234567890123.5")
    writer.write(batch([1, 2, 3]) + [Accepted(batch([4])[0].trade, "trades", 1, 40)], [])
    writer.write(refused + batch([6]), [Rejected("trades", 2, 7, None, b"{", "malformed JSON: test")])
    with db.cursor() as cursor:
        cursor.execute("SELECT topic, partition, next_offset FROM stock.consumer_offsets ORDER BY partition")
        assert cursor.fetchall() == [("trades", 0, 7), ("trades", 1, 41), ("trades", 2, 8)]


def test_trades_of_another_source_never_mix_with_the_stored_ones(writer, db) -> None:
    """Failed on the old code: after a SOURCE switch, new ids were mixed in and colliding ids vanished."""
    writer.write(batch([1, 2, 3]), [])
    switched = [Accepted(TradeMessage("BTCUSDT", Decimal("60000.00000000"), Decimal("0.1"), START_MS + 9, agg_id,
                                      agg_id, agg_id, True, "binance"), "trades", 0, 100 + agg_id)
                for agg_id in (3, 4)]
    outcome = writer.write(switched, [])
    assert outcome.written == 0 and len(outcome.refused) == 2
    assert outcome.refused[0].error.startswith("conflicting duplicate of BTCUSDT agg_trade_id 3")
    assert outcome.refused[1].error.startswith("source 'binance' differs from source 'test' of the BTCUSDT trades")
    assert sorted(stored(db)) == [1, 2, 3]
