"""Binance's REST ``/api/v3/aggTrades``, the two questions the producer asks it; nothing else.

Errors are the caller's to handle: a network failure raises ``OSError`` (``urllib.error.URLError`` is one),
an answer that is not a JSON list raises ``ValueError``. The producer treats both as a broken connection
and reconnects with backoff, which also retries the question.
"""

from __future__ import annotations

import json
import urllib.parse
import urllib.request
from typing import Any

PAGE = 1000  # Binance's largest page of aggTrades
MINUTE_MS = 60_000
NO_TRADE_YET = 2**63 - 1  # the first id of a minute that has no trade yet: above every real id


class BinanceRest:
    def __init__(self, base_url: str, timeout_s: float = 10.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s

    def _agg_trades(self, **params: object) -> list[dict[str, Any]]:
        query = urllib.parse.urlencode(params)
        with urllib.request.urlopen(f"{self.base_url}/api/v3/aggTrades?{query}", timeout=self.timeout_s) as response:
            rows = json.load(response)
        if not isinstance(rows, list):
            raise ValueError(f"aggTrades answered {str(rows)[:200]}, not a list of trades")
        return rows

    def agg_trades(self, symbol: str, from_id: int) -> list[dict[str, Any]]:
        """Up to ``PAGE`` aggregate trades of ``symbol`` from id ``from_id`` on, in id order."""
        return self._agg_trades(symbol=symbol, fromId=from_id, limit=PAGE)

    def first_id_since(self, symbol: str, start_ms: int) -> int:
        """The first agg id in the minute that starts at ``start_ms``; ``NO_TRADE_YET`` when it has none."""
        rows = self._agg_trades(symbol=symbol, startTime=start_ms, endTime=start_ms + MINUTE_MS - 1, limit=1)
        return int(rows[0]["a"]) if rows else NO_TRADE_YET
