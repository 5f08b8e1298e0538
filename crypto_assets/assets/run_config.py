"""Which windows a candle run recomputes: incremental (the default) or a backfill of ``[start, end)``."""

from datetime import datetime

import dagster as dg

from crypto_assets.candles import Timeframe, align_range


class CandleRunConfig(dg.Config):
    """Empty: incremental, the windows touched by rows since the cursor. ``start`` and ``end`` (ISO-8601
    with a zone): a backfill that recomputes every window of ``[start, end)`` from scratch."""

    start: str = ""
    end: str = ""

    def backfill_range(self, timeframe: Timeframe) -> tuple[int, int] | None:
        if not self.start and not self.end:
            return None
        start, end = parse_range(self.start, self.end)
        return align_range(start, end, timeframe.size_ms)


def parse_range(start: str, end: str) -> tuple[datetime, datetime]:
    """Both ISO-8601 instants with a zone, start before end; raises ValueError with a one-line reason."""
    if not start or not end:
        raise ValueError("give both start and end")
    moments = []
    for name, text in (("start", start), ("end", end)):
        try:
            moment = datetime.fromisoformat(text)
        except ValueError:
            raise ValueError(f"{name}={text!r} is not an ISO-8601 date-time (e.g. 2024-08-08T23:00:00Z)") from None
        if moment.tzinfo is None:
            raise ValueError(f"{name}={text!r} has no time zone; add Z or +00:00")
        moments.append(moment)
    if moments[0] >= moments[1]:
        raise ValueError(f"start {start} is not before end {end}")
    return moments[0], moments[1]
