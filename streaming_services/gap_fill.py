"""The gap rule of the producer, pure: what one REST page contributes to filling ids ``[next_id, until_id)``.

Invariants: trades are returned in id order, each id at most once, none below ``next_id`` nor at or above
``until_id``; a gap is never declared closed while ids of it may still come (a page that stops short of
``until_id`` without reaching it means the REST side is behind the stream, and the caller must retry).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from streaming_services.messages import TradeMessage


class RestBehindStream(Exception):
    """REST has not yet got the ids the stream already went past; ask again after reconnecting."""


@dataclass(frozen=True)
class GapPage:
    missing: tuple[TradeMessage, ...]  # to send now, in id order
    next_id: int  # the first id still to fetch
    done: bool  # nothing more to fetch for this gap
    absent: bool = False  # the source skipped these ids for good (its first id lies past the gap)


def gap_page(trades: Sequence[TradeMessage], next_id: int, until_id: int | None, page_size: int) -> GapPage:
    """``trades``: one REST page from ``next_id`` on. ``until_id`` None: up to the newest trade."""
    missing = tuple(t for t in trades if t.agg_trade_id >= next_id and (until_id is None or t.agg_trade_id < until_id))
    if not missing:
        if until_id is None:
            return GapPage((), next_id, done=True)  # caught up with the newest trade
        if trades and trades[0].agg_trade_id >= until_id:
            return GapPage((), next_id, done=True, absent=True)
        raise RestBehindStream(f"REST has no id from {next_id} yet, the stream is at {until_id}")
    following = missing[-1].agg_trade_id + 1
    done = following >= until_id if until_id is not None else len(trades) < page_size
    return GapPage(missing, following, done)
