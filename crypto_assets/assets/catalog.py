"""Every asset and check of the code location, in one list the Definitions, the candle job, the backfill CLI
and the tests share. The candle assets come in ``candles.TIMEFRAMES`` order."""

from crypto_assets.assets.aggregated_1min import aggregated_1min, aggregated_1min_checks
from crypto_assets.assets.aggregated_5min import aggregated_5min, aggregated_5min_checks
from crypto_assets.assets.latest_prices import latest_prices, latest_prices_match_candles
from crypto_assets.assets.real_time_prices import real_time_prices, source_is_fresh
from crypto_assets.assets.rollups import ROLLUP_ASSETS, ROLLUP_CHECKS

CANDLE_ASSETS = [aggregated_1min, aggregated_5min, *ROLLUP_ASSETS]
CANDLE_CHECKS = [*aggregated_1min_checks, *aggregated_5min_checks, *ROLLUP_CHECKS]
# What one candle run materializes (the minute-close job, a backfill); the source is only observed.
RUN_ASSETS = [*CANDLE_ASSETS, latest_prices]
ASSETS = [real_time_prices, *RUN_ASSETS]
CHECKS = [*CANDLE_CHECKS, latest_prices_match_candles, source_is_fresh]
DEFINITIONS = [*ASSETS, *CHECKS]
