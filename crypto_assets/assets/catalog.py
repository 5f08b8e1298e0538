"""Every asset and check of the code location, in one list the Definitions, the candle job, the backfill CLI
and the tests share. The candle assets' keys come in ``candles.TIMEFRAMES`` order."""

from crypto_assets.assets.aggregated_1min import aggregated_1min, aggregated_1min_checks
from crypto_assets.assets.aggregated_5min import (
    aggregated_5min,
    aggregated_5min_checks,
    consistent_with_aggregated_1min,
)
from crypto_assets.assets.latest_prices import latest_prices, latest_prices_match_candles
from crypto_assets.assets.real_time_prices import real_time_prices, source_is_fresh
from crypto_assets.assets.rollups import ROLLUP_CHECKS, rollups

CANDLE_ASSETS = [aggregated_1min, aggregated_5min, rollups]
CANDLE_CHECKS = [aggregated_1min_checks, aggregated_5min_checks, consistent_with_aggregated_1min, *ROLLUP_CHECKS]
# What one candle run materializes (the minute-close job, a backfill); the source is only observed.
RUN_ASSETS = [*CANDLE_ASSETS, latest_prices]
ASSETS = [real_time_prices, *RUN_ASSETS]
CHECKS = [*CANDLE_CHECKS, latest_prices_match_candles, source_is_fresh]
DEFINITIONS = [*ASSETS, *CHECKS]
